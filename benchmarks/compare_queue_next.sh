#!/usr/bin/env bash
# The pieces still missing after 2026-12-07's first sessions, most valuable first (run by
# benchmarks/compare_queue.sh's rules: one process at a time, a finished piece is skipped, an
# unfinished one resumes). compare_queue.sh remains the whole list.
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/queue_lib.sh  # waits for a running piece; defines piece()
piece run-none-nas_lora-s1 run --arm nas_lora --prompt none --seed 1
piece run-none-nas_lora-s2 run --arm nas_lora --prompt none --seed 2
piece run-none-lora-s0-blocksall run --arm lora --prompt none --seed 0 --blocks all
# all ten blocks adapted reached val IoU 0.91 by epoch 10 (blocks 8-9: 0.75): is bf16 (3.3x the old
# recipe's steps per hour with all blocks) as good there? The paired check the default recipe needs.
piece run-none-lora-s0-bf16-blocksall run --arm lora --prompt none --seed 0 --blocks all --precision bf16
# LoRA on all ten blocks: test IoU 0.878 on seed 0 against 0.701 on blocks 8-9 and 0.801 for full
# fine-tuning. The adapter arms on all blocks are the comparison that decides what the method is worth.
for arm in nas_pc_lora nas_lora; do
  piece "run-none-$arm-s0-blocksall" run --arm "$arm" --prompt none --seed 0 --blocks all
done
# The third fp32/bf16 pair (seed 2) first: it decides whether bf16 may become the CPU default (the
# 3x target at equal IoU); pairs so far: bf16 - fp32 = -0.008 (s0), +0.053 (s1).
piece run-none-lora-s2-blocksall run --arm lora --prompt none --seed 2 --blocks all
piece run-none-lora-s2-bf16-blocksall run --arm lora --prompt none --seed 2 --blocks all --precision bf16
# the speed target on this CPU, once per CPU model: the old recipe, the train default (all blocks +
# cache, fp32) and its bf16 twin, steps interleaved in one process (bench_train_speed.py's rule)
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //; s/[^A-Za-z0-9]\{1,\}/-/g')
speed=benchmarks/results/train_speed-$cpu.json
if [ ! -f "$speed" ]; then
  echo "$(date -u +%H:%M:%S) start train speed on $cpu"
  $PY benchmarks/bench_train_speed.py --recipes old,all+cache,all+cache+bf16 --rounds 5 --out "$speed" \
    > "benchmarks/results/.logs/train_speed-$cpu.log" 2>&1
  rc=$?
  echo "$(date -u +%H:%M:%S) end train speed (exit $rc)"
fi
# per seed, LoRA (the best arm so far) and its bf16 twin first: bf16 on all blocks gave 0.869 against
# fp32's 0.878 on seed 0 (3.3x the old recipe's steps per hour); two more pairs decide whether it may be
# the CPU default, then the NAS arms of that seed
for seed in 1 2; do
  piece "run-none-lora-s$seed-blocksall" run --arm lora --prompt none --seed "$seed" --blocks all
  piece "run-none-lora-s$seed-bf16-blocksall" run --arm lora --prompt none --seed "$seed" --blocks all --precision bf16
  for arm in nas_pc_lora nas_lora; do
    piece "run-none-$arm-s$seed-blocksall" run --arm "$arm" --prompt none --seed "$seed" --blocks all
  done
done
for seed in 1 2; do piece "run-box-decoder-s$seed" run --arm decoder --prompt box --seed "$seed"; done
for arm in lora nas_pc_lora nas_lora; do piece "run-box-$arm-s0" run --arm "$arm" --prompt box --seed 0; done
exec bash benchmarks/compare_queue.sh
