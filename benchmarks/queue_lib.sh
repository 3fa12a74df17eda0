# Sourced by the comparison queues: wait until no piece runs (one at a time), then `piece NAME ARGS...`
# runs `bench_compare.py ARGS...` with its log in benchmarks/results/.logs/NAME.log.
PY=${PY:-.venv/bin/python}
mkdir -p benchmarks/results/.logs
while pgrep -f "benchmarks/bench_compare.py" > /dev/null; do sleep 10; done
piece() {  # name, then the bench_compare.py arguments
  local name=$1; shift
  # QUEUE_NO_START_AFTER (epoch seconds): start nothing after it, so a session's last piece can finish
  # (an unfinished piece's run folder is not kept from one session's checkout to the next)
  if [ -n "${QUEUE_NO_START_AFTER:-}" ] && [ "$(date +%s)" -gt "$QUEUE_NO_START_AFTER" ]; then
    echo "$(date -u +%H:%M:%S) not started $name (past QUEUE_NO_START_AFTER)"; return
  fi
  echo "$(date -u +%H:%M:%S) start $name"
  $PY benchmarks/bench_compare.py "$@" > "benchmarks/results/.logs/$name.log" 2>&1
  local rc=$?
  echo "$(date -u +%H:%M:%S) end $name (exit $rc)"
}
