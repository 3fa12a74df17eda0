#!/usr/bin/env bash
# Fine-tune SAM on a folder data set, export it, and segment new images - end to end.
# Usage: examples/finetune_export_predict.sh DATA_DIR SAM_CHECKPOINT [VARIANT]
#   DATA_DIR: images/ + masks/ (or train/ val/ test/ sub-folders), see the README
#   SAM_CHECKPOINT: e.g. sam_vit_b_01ec64.pth from the segment-anything release
set -euo pipefail
data=${1:?data folder}; base=${2:?SAM checkpoint}; variant=${3:-vit_b}
run=runs/example

naslora-deploy train --data "$data" --model "$variant" --checkpoint "$base" --method nas_pc_lora --out "$run"
naslora-deploy eval "$run" --data "$data" --json "$run/test_metrics.json"
naslora-deploy inspect "$run" --plot "$run/ops.png"

# dense merge: plain SAM, zero overhead; the fidelity report says what the fold lost
naslora-deploy export "$run" --out artifacts --merge dense --calibration "$data" --prompts
naslora-deploy verify artifacts --images "$data/test/images" --against-plain-sam

# torch-free inference (works where only onnxruntime or TensorRT is installed)
naslora-deploy predict artifacts "$data/test/images" --out predictions
naslora-deploy bench artifacts --batch-sizes 1,4
