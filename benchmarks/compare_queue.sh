#!/usr/bin/env bash
# The comparison's pieces in order, each its own process; a finished piece is skipped and an unfinished
# one resumes from its last epoch, so running this again (another session) runs only what is missing. Logs: benchmarks/results/.logs/. Commit the
# result files under benchmarks/results/compare/ as they land.
set -uo pipefail
cd "$(dirname "$0")/.."
. benchmarks/queue_lib.sh  # waits for a running piece; defines piece()
[ -f benchmarks/results/compare/baselines/baselines.json ] || piece baselines baselines
[ -f benchmarks/results/compare/gonogo/gonogo-none.json ] || piece gonogo-none gonogo --prompt none
piece sweep-none-decoder sweep --arm decoder --prompt none --lrs 1e-4,3e-4,1e-3 --steps 100
piece sweep-none-lora sweep --arm lora --prompt none --lrs 3e-4,1e-3,3e-3 --steps 100
runs() {  # seed, arms...
  local seed=$1; shift
  for arm in "$@"; do piece "run-none-$arm-s$seed" run --arm "$arm" --prompt none --seed "$seed"; done
}
runs 0 decoder lora nas_pc_lora
# paired checks on seed 0: bf16 autocast (the precision default) and adapters on all blocks (the recipe)
piece run-none-lora-s0-bf16 run --arm lora --prompt none --seed 0 --precision bf16
runs 1 decoder lora nas_pc_lora
runs 2 decoder lora nas_pc_lora
runs 0 nas_lora
# the dense and fused merges of the best prompt-free arm so far (NAS-PC-LoRA, seed 0), on the test photographs
[ -f benchmarks/results/compare/merges/none-nas_pc_lora-s0.json ] || \
  piece merge-none-nas_pc_lora-s0 merge --arm nas_pc_lora --prompt none --seed 0
# full fine-tuning (~2.4 h fp32 on the 2-core CPU): one seed first; a piece killed with its session
# resumes from its last epoch next time (bench_compare.resumable)
piece run-none-full-s0 run --arm full --prompt none --seed 0
runs 1 nas_lora
runs 2 nas_lora
piece run-none-lora-s0-blocksall run --arm lora --prompt none --seed 0 --blocks all
piece sweep-box-decoder sweep --arm decoder --prompt box --lrs 1e-4,3e-4,1e-3 --steps 100
piece sweep-box-lora sweep --arm lora --prompt box --lrs 3e-4,1e-3,3e-3 --steps 100
for seed in 0 1 2; do
  for arm in decoder lora nas_pc_lora nas_lora; do
    piece "run-box-$arm-s$seed" run --arm "$arm" --prompt box --seed "$seed"
  done
done
for prompt in none box; do for seed in 0 1 2; do
  piece "run-$prompt-full-s$seed" run --arm full --prompt "$prompt" --seed "$seed"
done; done
