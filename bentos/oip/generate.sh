#!/usr/bin/env bash
# Regenerates inference_pb2.py(i) / inference_pb2_grpc.py from inference.proto.  grpcio-tools 1.75 carries
# protoc 6.31: its code loads on protobuf 6.31 and later, the range tritonclient (the tests' client) accepts.
# Not a dependency of the project: it runs in a throwaway virtualenv.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOOLS=$(mktemp -d)
trap 'rm -rf "$TOOLS"' EXIT
python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install -q "grpcio-tools==1.75.1"
cd "$HERE"
"$TOOLS/bin/python" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. inference.proto
# The generated service module imports its messages as a top-level module; they live in this package.
sed -i 's/^import inference_pb2 as inference__pb2$/from modelyard.bentos.oip import inference_pb2 as inference__pb2/' inference_pb2_grpc.py
