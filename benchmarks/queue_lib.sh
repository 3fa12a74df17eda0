# Sourced by the comparison queues: wait until no piece runs (one at a time), then `piece NAME ARGS...`
# runs `bench_compare.py ARGS...` with its log in benchmarks/results/.logs/NAME.log.
PY=${PY:-.venv/bin/python}
mkdir -p benchmarks/results/.logs
while pgrep -f "benchmarks/bench_compare.py" > /dev/null; do sleep 10; done
piece() {  # name, then the bench_compare.py arguments
  local name=$1; shift
  echo "$(date -u +%H:%M:%S) start $name"
  $PY benchmarks/bench_compare.py "$@" > "benchmarks/results/.logs/$name.log" 2>&1
  local rc=$?
  echo "$(date -u +%H:%M:%S) end $name (exit $rc)"
}
