#!/usr/bin/env bash
# Fine-tune SAM on a folder data set, export it, and segment new images - end to end.
# Usage: examples/finetune_export_predict.sh DATA_DIR [VARIANT] [CHECKPOINT]
#   DATA_DIR:   images/ + masks/, or train/ val/ test/ sub-folders of them (see the README)
#   VARIANT:    litemedsam (default: real weights that ship with the package), vit_b, vit_l, vit_h
#               or vit_tiny (the tests' small model, random weights)
#   CHECKPOINT: SAM's weights for vit_b/l/h, e.g. sam_vit_b_01ec64.pth from
#               https://github.com/facebookresearch/segment-anything#model-checkpoints
# Environment: WORK (default naslora-example) holds the run, the artifacts and the predictions;
#   TRAIN_OPTIONS adds options to `train`, e.g. TRAIN_OPTIONS="--epochs 2 --max-steps 4" for a quick try.
set -euo pipefail
data=${1:?usage: $0 DATA_DIR [VARIANT] [CHECKPOINT]}
variant=${2:-litemedsam}
checkpoint=()
if [ $# -ge 3 ]; then checkpoint=(--checkpoint "$3"); fi
work=${WORK:-naslora-example}
run=$work/run
# images to segment: the test split where there is one, else the data set's images
images=$data/test/images
[ -d "$images" ] || images=$data/images

# shellcheck disable=SC2086  # TRAIN_OPTIONS holds several options
naslora-deploy train --data "$data" --model "$variant" ${checkpoint[@]+"${checkpoint[@]}"} \
    --method nas_pc_lora --out "$run" --no-progress ${TRAIN_OPTIONS:-}
naslora-deploy eval "$run" --data "$data" --json "$work/eval_metrics.json"  # test split, else held-out val
naslora-deploy inspect "$run" --json "$work/architecture.json"  # --plot ops.png with the plot extra

# dense merge: plain SAM, zero overhead. The least-squares fold needs --calibration images:
# without them a NAS-LoRA run loses far more of its adaptation; the fidelity report says how much.
naslora-deploy export "$run" --out "$work/artifacts" --merge dense --calibration "$data" --prompts
naslora-deploy verify "$work/artifacts" --images "$images" --against-plain-sam

# torch-free inference (works where only onnxruntime or TensorRT is installed)
naslora-deploy predict "$work/artifacts" "$images" --out "$work/predictions"
naslora-deploy bench "$work/artifacts" --batch-sizes 1,4
