#!/usr/bin/env bash
# The pieces still missing, most valuable first (benchmarks/queue_lib.sh's rules: one process at a
# time, a finished piece is skipped, an unfinished one resumes within a checkout).
#
# 2026-12-07, third session: the rest of the comparison runs on the default recipe (all ten blocks,
# prefix cache, bf16 where the CPU has it native), every arm and the decoder alone included, so each
# arm pairs with its own kind. Three fp32/bf16 pairs of LoRA on all blocks kept test IoU (mean
# bf16 - fp32 +0.008, RESULTS.md) at 2.2x the steps per hour; finishing the fp32 table instead would
# cost ~9 h more of full fine-tuning alone (28 s per fp32 step). The fp32 rows already measured stay.
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/queue_lib.sh  # waits for a running piece; defines piece()
# prompt-free (the paper's setting): the decoder alone in bf16 (minutes), then the NAS arms per seed
for seed in 0 1 2; do
  piece "run-none-decoder-s$seed-bf16" run --arm decoder --prompt none --seed "$seed" --precision bf16
done
for seed in 0 1 2; do
  for arm in nas_pc_lora nas_lora; do
    piece "run-none-$arm-s$seed-bf16-blocksall" run --arm "$arm" --prompt none --seed "$seed" --blocks all --precision bf16
  done
done
# full fine-tuning: its rate was never swept (1e-5 for fp32 seed 0; MedSAM fine-tunes at 1e-4), so a
# 100-step sweep in bf16 first, then three seeds at the rate it picks (passed by hand: an off-recipe
# sweep is read, not used, by bench_compare.py's own rule)
piece sweep-none-full-bf16 sweep --arm full --prompt none --lrs 1e-5,3e-5,1e-4 --steps 100 --precision bf16
lr_of() { $PY -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2" 2>/dev/null; }
full_lr=$(lr_of benchmarks/results/compare/sweep/none-full-bf16.json chosen_lr)
if [ -n "$full_lr" ]; then
  for seed in 0 1 2; do
    piece "run-none-full-s$seed-bf16" run --arm full --prompt none --seed "$seed" --precision bf16 --lr "$full_lr"
  done
fi
# box-prompted, on the same recipe
for seed in 0 1 2; do
  piece "run-box-decoder-s$seed-bf16" run --arm decoder --prompt box --seed "$seed" --precision bf16
  for arm in lora nas_pc_lora nas_lora; do
    piece "run-box-$arm-s$seed-bf16-blocksall" run --arm "$arm" --prompt box --seed "$seed" --blocks all --precision bf16
  done
done
if [ -n "$full_lr" ]; then
  for seed in 0 1 2; do
    piece "run-box-full-s$seed-bf16" run --arm full --prompt box --seed "$seed" --precision bf16 --lr "$full_lr"
  done
fi
