#!/usr/bin/env bash
# The pieces still missing after 2026-12-07's first sessions, most valuable first (run by
# benchmarks/compare_queue.sh's rules: one process at a time, a finished piece is skipped, an
# unfinished one resumes). compare_queue.sh's box pieces (blocks 8-9, fp32) are superseded by the
# box comparison on the default recipe at the end of this list.
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
# full fine-tuning's rate was never swept (1e-5 for seed 0; MedSAM fine-tunes at 1e-4): a 100-step
# sweep first; if it picks another rate, seed 0 runs again at it (its 1e-5 result kept under superseded/)
piece sweep-none-full sweep --arm full --prompt none --lrs 1e-5,3e-5,1e-4 --steps 100
lr_of() { $PY -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2" 2>/dev/null; }
chosen=$(lr_of benchmarks/results/compare/sweep/none-full.json chosen_lr)
ran=$(lr_of benchmarks/results/compare/runs/none-full-s0.json lr)
if [ -n "$chosen" ] && [ -n "$ran" ] && [ "$chosen" != "$ran" ]; then
  mkdir -p benchmarks/results/compare/superseded
  cp benchmarks/results/compare/runs/none-full-s0.json "benchmarks/results/compare/superseded/none-full-s0-lr$ran.json"
  piece run-none-full-s0-swept run --arm full --prompt none --seed 0 --force
fi
for seed in 1 2; do piece "run-none-full-s$seed" run --arm full --prompt none --seed "$seed"; done
# box-prompted, on the default recipe (2026-12-07: all blocks, cache, bf16 where native; three paired
# seeds kept test IoU): every arm in bf16, the decoder alone included, so each pairs with its own kind
for seed in 0 1 2; do
  piece "run-box-decoder-s$seed-bf16" run --arm decoder --prompt box --seed "$seed" --precision bf16
  for arm in lora nas_pc_lora nas_lora; do
    piece "run-box-$arm-s$seed-bf16-blocksall" run --arm "$arm" --prompt box --seed "$seed" --blocks all --precision bf16
  done
done
# full fine-tuning box-prompted (bf16) comes last; its rate is the prompt-free sweep's, passed by hand
# (chosen_lr reads the same prompt's sweep only)
