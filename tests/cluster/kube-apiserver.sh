#!/usr/bin/env bash
# A real kube-apiserver + etcd on 127.0.0.1 for the test suite, built from Debian's
# `kubernetes` source package (no server binary can be installed from the package
# registries here).  One build makes the control plane and the node's binaries
# (apiserver, scheduler, controller-manager, kubelet, kube-proxy: tests/cluster/node.sh
# uses the last four), cached by package version, so a machine builds them once.
#
#   tests/cluster/kube-apiserver.sh build            # apt deps + source + build (cached)
#   tests/cluster/kube-apiserver.sh start DIR [rbac] # etcd + apiserver; writes DIR/kubeconfig (admin),
#                                                    # DIR/operator.kubeconfig (the operator's identity), DIR/env
#   tests/cluster/kube-apiserver.sh stop DIR         # stops only the processes start recorded
#   tests/cluster/kube-apiserver.sh env DIR          # prints KUBECONFIG=…
#   tests/cluster/kube-apiserver.sh binary [NAME]    # the cached binary's path (empty when not built)
set -euo pipefail

CACHE="${MODELYARD_CACHE_DIR:-$HOME/.cache/modelyard}/kubernetes"
BINARIES=(kube-apiserver kube-scheduler kube-controller-manager kubelet kube-proxy)
GO_BIN=/usr/lib/go-1.19/bin
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
log() { echo "kube-apiserver.sh: $*" >&2; }

apt_deps() {
  local missing=()
  [ -x "$GO_BIN/go" ] || missing+=(golang-1.19-go)
  command -v rsync >/dev/null || missing+=(rsync)
  command -v etcd >/dev/null || missing+=(etcd-server)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || missing+=(golang-github-modern-go-reflect2-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# deb-src entries derived from the machine's own apt sources, in a private directory:
# the system's apt configuration is never touched.
private_apt() {
  local dir=$1; mkdir -p "$dir/sources" "$dir/lists/partial"
  local out="$dir/sources/src.sources"; : > "$out"
  if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
    for f in /etc/apt/sources.list.d/*.sources; do
      sed -e 's/^Types:.*/Types: deb-src/' "$f" >> "$out"; echo >> "$out"
    done
  fi
  if [ -f /etc/apt/sources.list ]; then
    grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > "$dir/sources/src.list" || true
  fi
  echo "-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$dir/sources -o Dir::State::Lists=$dir/lists"
}

package_version() {
  local opts=$1
  # shellcheck disable=SC2086
  apt-cache $opts showsrc kubernetes 2>/dev/null | awk '/^Version:/ {print $2; exit}'
}

build() {
  apt_deps
  local work; work=$(mktemp -d "${TMPDIR:-/tmp}/kube-src.XXXXXX"); chmod 755 "$work"  # apt's _apt user downloads into it
  local opts; opts=$(private_apt "$work/apt")
  # shellcheck disable=SC2086
  apt-get $opts update -qq
  local version; version=$(package_version "$opts")
  [ -n "$version" ] || { log "no kubernetes source package found"; exit 1; }
  local binary="$CACHE/$version/kube-apiserver"
  if [ -f "$CACHE/$version/complete" ]; then log "cached: $CACHE/$version"; rm -rf "$work"; echo "$binary"; return; fi
  log "building ${BINARIES[*]} from kubernetes $version (about 4 minutes on 2 cores)"
  local started=$SECONDS
  # shellcheck disable=SC2086
  (cd "$work" && apt-get $opts source --download-only kubernetes >/dev/null)
  local orig; orig=$(ls "$work"/kubernetes_*.orig.tar.gz | head -1)
  mkdir -p "$work/src" && tar -xzf "$orig" -C "$work/src" --strip-components=1
  cd "$work/src"
  # The vendored reflect2 1.0.1 crashes kube-apiserver (SIGSEGV in map iteration) under Go >= 1.18.
  rm -rf vendor/github.com/modern-go/reflect2
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
  rm -f vendor/github.com/modern-go/reflect2/go.mod
  mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
  mkdir -p "$work/home"
  PATH="$GO_BIN:$PATH" GOPATH="$PWD/.go" GO111MODULE=off CGO_ENABLED=0 GOPROXY=off \
    HOME="$work/home" GOCACHE="$work/gocache" make WHAT="${BINARIES[*]/#/cmd/}" >"$work/build.log" 2>&1 \
    || { tail -50 "$work/build.log" >&2; exit 1; }
  mkdir -p "$CACHE/$version"
  local name built
  for name in "${BINARIES[@]}"; do
    built=$(find _output -type f -name "$name" -perm -u+x | head -1)
    [ -n "$built" ] || { log "$name was not built"; exit 1; }
    cp "$built" "$CACHE/$version/$name.tmp" && mv "$CACHE/$version/$name.tmp" "$CACHE/$version/$name"
  done
  touch "$CACHE/$version/complete"  # written last: a cache is whole or ignored
  log "built in $((SECONDS - started)) s: $CACHE/$version"
  cd / && rm -rf "$work"
  echo "$binary"
}

cached_binary() {
  local done; done=$(ls -1 "$CACHE"/*/complete 2>/dev/null | sort | tail -1)
  if [ -n "$done" ]; then echo "$(dirname "$done")/${1:-kube-apiserver}"; fi
}

OPERATOR_USER=system:serviceaccount:modelyard:modelyard-operator

kubeconfig() {
  local server=$1 user=$2 token=$3
  cat <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "https://$server", insecure-skip-tls-verify: true}
users:
- name: $user
  user: {token: "$token"}
contexts:
- name: test
  context: {cluster: test, user: $user, namespace: default}
current-context: test
KUBECONFIG
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {
  local dir=$1 mode=${2:-AlwaysAllow}
  [ "$mode" = rbac ] && mode=RBAC
  local binary; binary=$(cached_binary); [ -n "$binary" ] || binary=$(build | tail -1)
  mkdir -p "$dir/etcd" "$dir/certs"
  local etcd_port peer_port api_port
  etcd_port=$(free_port); peer_port=$(free_port)
  # With NODE_IP set (tests/cluster/node.sh), the apiserver serves pods too: it listens on the
  # node's address, keeps the `kubernetes` Service's endpoint, and gives pods service-account tokens.
  local address=${NODE_IP:-127.0.0.1} node_flags=()
  if [ -n "${NODE_IP:-}" ]; then
    api_port=6443
    node_flags=(--endpoint-reconciler-type lease --kubelet-preferred-address-types InternalIP
                --allow-privileged=false)
  else
    api_port=$(free_port)
    node_flags=(--disable-admission-plugins ServiceAccount --endpoint-reconciler-type none)
  fi
  etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" >"$dir/etcd.log" 2>&1 &
  echo $! > "$dir/etcd.pid"
  openssl genrsa -out "$dir/certs/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/certs/sa.key" -pubout -out "$dir/certs/sa.pub" 2>/dev/null
  local token op_token
  token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  op_token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  # admin: system:masters.  operator: the identity charts/modelyard's operator ServiceAccount
  # has when released as "modelyard" in namespace "modelyard", so the RBAC test can act as it.
  {
    echo "$token,admin,admin,system:masters"
    echo "$op_token,$OPERATOR_USER,operator,\"system:serviceaccounts,system:serviceaccounts:modelyard\""
  } > "$dir/tokens.csv"
  "$binary" --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address "$address" \
    --advertise-address "$address" --secure-port "$api_port" --cert-dir "$dir/certs" \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$dir/certs/sa.pub" \
    --service-account-signing-key-file "$dir/certs/sa.key" --token-auth-file "$dir/tokens.csv" \
    --authorization-mode "$mode" --service-cluster-ip-range 10.96.0.0/16 \
    "${node_flags[@]}" >"$dir/apiserver.log" 2>&1 &
  echo $! > "$dir/apiserver.pid"
  kubeconfig "$address:$api_port" admin "$token" > "$dir/kubeconfig"
  kubeconfig "$address:$api_port" operator "$op_token" > "$dir/operator.kubeconfig"
  echo "KUBECONFIG=$dir/kubeconfig" > "$dir/env"
  (umask 077 && echo "$token" > "$dir/admin.token")
  local started=$SECONDS
  until curl -skf -H "Authorization: Bearer $token" "https://$address:$api_port/readyz" >/dev/null; do
    if ! kill -0 "$(cat "$dir/apiserver.pid")" 2>/dev/null; then
      tail -30 "$dir/apiserver.log" >&2; stop "$dir"; exit 1  # etcd too: leave nothing running
    fi
    if [ $((SECONDS - started)) -gt 120 ]; then log "not ready after 120 s"; stop "$dir"; exit 1; fi
    sleep 0.2
  done
  log "ready in $((SECONDS - started)) s at https://$address:$api_port ($mode)"
}

stop() {
  local dir=$1
  for name in apiserver etcd; do
    if [ -f "$dir/$name.pid" ]; then
      local pid; pid=$(cat "$dir/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
}

case "${1:-}" in
  build) build ;;
  binary) cached_binary "${2:-kube-apiserver}" ;;
  start) start "${2:?DIR}" "${3:-}" ;;
  stop) stop "${2:?DIR}" ;;
  env) cat "${2:?DIR}/env" ;;
  *) echo "usage: $0 build | binary [NAME] | start DIR [rbac] | stop DIR | env DIR" >&2; exit 2 ;;
esac
