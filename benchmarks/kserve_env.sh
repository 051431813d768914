#!/usr/bin/env bash
# A virtualenv with KServe's Python model server, the peer benchmarks/serving_bench.py measures side by side
# (kserve pins its own FastAPI, uvicorn, grpcio and protobuf ranges, so it gets an environment of its own).
# torch is the project's, so the peer loads the very same .pt2 program.  Made once per recipe; set KSERVE to
# try another release.  Prints its python.
set -euo pipefail
KSERVE=${KSERVE:-kserve==0.21.0}
TORCH=${TORCH:-torch==2.13.0}
RECIPE="$KSERVE $TORCH 1"
DIR="${MODELYARD_CACHE_DIR:-$HOME/.cache/modelyard}/kserve-env-$(echo "$RECIPE" | sha256sum | cut -c1-12)"
if [ ! -x "$DIR/bin/python" ] || [ ! -f "$DIR/.made" ]; then
  echo "kserve_env.sh: making $DIR ($KSERVE; a minute or two, once)" >&2
  rm -rf "$DIR"
  python3 -m venv "$DIR"
  "$DIR/bin/pip" install -q "$TORCH" "$KSERVE" >&2
  touch "$DIR/.made"
fi
echo "$DIR/bin/python"
