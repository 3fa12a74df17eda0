#!/usr/bin/env bash
# Wall time and peak RSS of `merge --mode dense`, `export` and `verify` on LiteMedSAM (issue 28).
# Usage: benchmarks/deploy_timings.sh WORK [before|after]
#   WORK:  folder for the run, merged checkpoint, artifacts and the logs (created)
#   before: `export` takes the adapter run and repeats the dense merge (how issue 28 found it)
#   after:  `export` takes merge's checkpoint and its report (the merge is done once; issue 26)
# Environment: STEPS (default "merge export verify": which to time; "export verify" with `before`
#   times today's code on the old path), PYTHON (default .venv/bin/python; PYTHONPATH: another checkout),
#   DATA (default: the comparison's 16-image photo set, written if missing),
#   RUN (an existing LiteMedSAM nas_pc_lora run to reuse; default: trained here, 2 steps, untimed).
# Each command's output goes to WORK/<step>.log (stderr is a file: one line per phase, block, image
# and model, no bars) and `/usr/bin/time -v` to WORK/<step>.time; the last lines print
# "phase step wall h:mm:ss peak_rss_mb N". `verify` runs its default: no latency comparison.
set -euo pipefail
work=${1:?usage: $0 WORK [before|after]}
phase=${2:-after}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$work"
cli=("$python" -m naslora_deploy)
data=${DATA:-$("$python" -c 'import sys; sys.path.insert(0, "benchmarks"); from compare_data import photo_set; print(photo_set(16, 4, 4))')}
run=${RUN:-$work/run}

if [ ! -f "$run/best/adapter_config.json" ]; then
    "${cli[@]}" train --data "$data" --model litemedsam --method nas_pc_lora --prompt box --epochs 1 \
        --max-steps 2 --out "$run" --no-progress >"$work/train.log" 2>&1
fi

timed() {  # timed STEP COMMAND...: runs it with its output in WORK/STEP.log
    local step=$1
    shift
    echo "$step start: $(uptime)" >>"$work/load.txt"  # what else ran: these are not idle figures
    /usr/bin/time -v -o "$work/$step.time" "$@" >"$work/$step.log" 2>&1
    echo "$step end: $(uptime)" >>"$work/load.txt"
}

steps=${STEPS:-merge export verify}
if [[ " $steps " == *" merge "* ]]; then
    timed merge "${cli[@]}" merge "$run/best" --mode dense --calibration "$data" --out "$work/merged.pth" \
        --overwrite
fi
if [ "$phase" = before ]; then
    timed export "${cli[@]}" export "$run/best" --out "$work/artifacts" --overwrite --merge dense \
        --calibration "$data" --prompts
else
    timed export "${cli[@]}" export "$work/merged.pth" --out "$work/artifacts" --overwrite --prompts
fi
# verify exits 1 when a row misses its criteria: the timing still counts
timed verify "${cli[@]}" verify "$work/artifacts" --images "$data/test/images" || true

for step in $steps; do
    wall=$(grep 'Elapsed (wall clock)' "$work/$step.time" | awk '{print $NF}')
    rss=$(grep 'Maximum resident' "$work/$step.time" | awk '{print int($NF / 1024)}')
    echo "$phase $step wall $wall peak_rss_mb $rss"
done
