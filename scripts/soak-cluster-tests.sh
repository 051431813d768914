#!/usr/bin/env bash
# Run the operator and cluster tests RUNS times in a row (default 20), optionally with one core
# held busy (LOAD=1, the default), to flush out tests that depend on timing.  Prints one line
# per run and exits non-zero if any run failed.  Logs: $OUT/run-N.log (default /tmp/modelyard-soak).
#
#   bash scripts/soak-cluster-tests.sh [RUNS]
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
out=${OUT:-/tmp/modelyard-soak}
mkdir -p "$out"
load_pid=""
if [ "${LOAD:-1}" = 1 ]; then
  python3 -c "while True: pass" &
  load_pid=$!
  trap 'kill "$load_pid" 2>/dev/null' EXIT
fi
failed=0
for i in $(seq 1 "$runs"); do
  started=$SECONDS
  .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_operator.py tests/test_cluster_charts.py \
    >"$out/run-$i.log" 2>&1
  rc=$?
  [ $rc = 0 ] || failed=$((failed + 1))
  echo "run $i: rc $rc, $((SECONDS - started)) s: $(tail -1 "$out/run-$i.log")"
done
echo "$((runs - failed)) of $runs runs passed"
[ $failed = 0 ]
