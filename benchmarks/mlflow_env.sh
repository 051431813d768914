#!/usr/bin/env bash
# A virtualenv with MLflow's tracking server (its model registry), the peer benchmarks/registry_bench.py
# measures side by side (MLflow pins its own SQLAlchemy, alembic and Flask ranges, so it gets an
# environment of its own), with psycopg 3 for PostgreSQL (the driver our URLs name).  Made once per recipe; set MLFLOW to try another
# release.  Prints its python.
set -euo pipefail
MLFLOW=${MLFLOW:-mlflow==3.17.0}
RECIPE="$MLFLOW psycopg[binary] 1"
DIR="${MODELYARD_CACHE_DIR:-$HOME/.cache/modelyard}/mlflow-env-$(echo "$RECIPE" | sha256sum | cut -c1-12)"
if [ ! -x "$DIR/bin/python" ] || [ ! -f "$DIR/.made" ]; then
  echo "mlflow_env.sh: making $DIR ($MLFLOW; a minute or two, once)" >&2
  rm -rf "$DIR"
  python3 -m venv "$DIR"
  "$DIR/bin/pip" install -q "$MLFLOW" "psycopg[binary]" >&2
  touch "$DIR/.made"
fi
echo "$DIR/bin/python"
