#!/usr/bin/env bash
# The runtime-only install, for real: a fresh virtualenv outside the repo, `pip install "REPO[runtime]"`
# (not editable), no torch in it, its size, then `predict` and `bench` on an exported artifact folder
# (e.g. `naslora-deploy export lite_medsam.pth --model litemedsam --prompts --out ART` made beforehand).
# usage: benchmarks/runtime_install_check.sh ARTIFACT_DIR [VENV (default /tmp/rtvenv, replaced)]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
art=$(cd "$1" && pwd)
venv=${2:-/tmp/rtvenv}
rm -rf "$venv" && python3 -m venv "$venv"
start=$(date +%s)
"$venv/bin/pip" install -q "$repo[runtime]"
echo "install: $(($(date +%s) - start)) s"
if "$venv/bin/pip" list 2>/dev/null | grep -i -E '^(torch|torchvision|segment-anything|scikit-image|albumentations) '; then
    echo "FAIL: the runtime install pulled training packages" && exit 1
fi
"$venv/bin/python" -c 'import importlib.util as u; assert u.find_spec("torch") is None; print("torch importable: no")'
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "site-packages: $(du -sh "$site" | cut -f1) (whole venv $(du -sh "$venv" | cut -f1)); largest:"
du -s "$site"/* | sort -rn | head -5 | awk '{printf "  %6.1f MB %s\n", $1 / 1024, $2}'
work=$(mktemp -d)
cd "$work"
"$venv/bin/python" -c 'import numpy as np; from PIL import Image; y, x = np.mgrid[:480, :640]; disk = (x - 320) ** 2 + (y - 240) ** 2 < 120 ** 2; Image.fromarray(np.where(disk[..., None], [200, 80, 60], [30, 40, 50]).astype(np.uint8)).save("photo.jpg")'
time "$venv/bin/naslora-deploy" predict "$art" photo.jpg --out pred --device cpu
time "$venv/bin/naslora-deploy" predict "$art" photo.jpg --out pred-box --box 200,120,440,360 --device cpu
time "$venv/bin/naslora-deploy" predict "$art" photo.jpg --out objects --everything --points-per-side 4 --device cpu
time "$venv/bin/naslora-deploy" bench "$art" --repeats 5 --warmup 1 --device cpu
# a command that needs torch says which extra brings it, in one line (exit 2)
set +e
"$venv/bin/naslora-deploy" train --data . --out run 2>&1 | tail -1
echo "train exit: ${PIPESTATUS[0]}"
ls pred pred-box objects
rm -rf "$work"
