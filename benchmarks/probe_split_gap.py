"""Probe: why does decoder-only score far higher on validation than on test (prompt-free photo set)?

Replays the photo set's generator to recover each image's two photographs (the one in the blob,
``front``, and the one around it, ``back``), then scores the ``best/`` of finished comparison runs
image by image on val and test. Prints, per run and split, the mean and median IoU and the images
at IoU < 0.1 (which photograph in which).
Writes ``results/compare/probe/split_gap.json``.

    python benchmarks/probe_split_gap.py none-decoder-s0 none-lora-s0 none-nas_pc_lora-s0
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from PIL import Image

from naslora_deploy.core.runs.checkpoint import load_adapter
from naslora_deploy.training.data.photos import PHOTOS, load_photos, photo_folder, photo_sample
from naslora_deploy.training.evaluate import predict_probabilities

HERE = Path(__file__).parent
RUNS = HERE / "results" / ".runs"
OUT = HERE / "results" / "compare" / "probe" / "split_gap.json"
SPLITS = {"train": 64, "val": 16, "test": 32}  # compare_data.photo_set's defaults, in generation order


class _Recorder:
    """A numpy Generator that remembers its last ``choice`` (photo_sample's back and front photos)."""

    def __init__(self, rng) -> None:
        self.rng, self.last = rng, None

    def choice(self, *args, **kwargs):
        self.last = self.rng.choice(*args, **kwargs)
        return self.last

    def __getattr__(self, name):
        return getattr(self.rng, name)


def identities(seed: int = 0) -> dict:
    """split -> per image (back, front) photograph names, replaying ``write_photo_dataset``."""
    photos, names = load_photos(), [n for n in PHOTOS if (photo_folder() / n).is_file()]
    rng = _Recorder(np.random.default_rng(seed))
    found = {}
    for split, count in SPLITS.items():
        found[split] = []
        for _ in range(count):
            photo_sample(rng, photos)
            back, front = (int(i) for i in rng.last)
            found[split].append((names[back], names[front]))
    return found


def per_image_iou(run: str, data: Path, split: str) -> list:
    """IoU of each image of ``split`` under the run's ``best/`` (prompt-free)."""
    model = load_adapter(RUNS / run / "best")
    folder = data / split
    stems = sorted(p.stem for p in (folder / "images").glob("*.png"))
    ious = []
    for start in range(0, len(stems), 4):
        chunk = stems[start : start + 4]
        images = [np.asarray(Image.open(folder / "images" / f"{s}.png").convert("RGB")) for s in chunk]
        masks = [np.asarray(Image.open(folder / "masks" / f"{s}_mask.png")) > 0 for s in chunk]
        for prob, mask in zip(predict_probabilities(model, images, "cpu"), masks):
            pred = prob > 0.5
            union = (pred | mask).sum()
            ious.append(float((pred & mask).sum() / union) if union else 1.0)
    return ious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run names under results/.runs (e.g. none-decoder-s0)")
    args = parser.parse_args()
    data = HERE / "results" / ".data" / "photos-64-16-32-s0"
    names = identities()
    record = {"identities": names, "runs": {}}
    for run in args.runs:
        record["runs"][run] = {}
        for split in ("val", "test"):
            ious = per_image_iou(run, data, split)
            failed = [names[split][i] for i, iou in enumerate(ious) if iou < 0.1]
            record["runs"][run][split] = {"iou": ious, "failed": failed}
            shown = ", ".join(f"{front.split('.')[0]} on {back.split('.')[0]}" for back, front in failed)
            print(
                f"{run:22} {split:4} mean {statistics.mean(ious):.3f}  median {statistics.median(ious):.3f}  "
                f"IoU<0.1: {len(failed):2}/{len(ious)}  ({shown})"
            )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
