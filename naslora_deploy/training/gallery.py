"""``eval --gallery DIR``: per-image metrics, and overlays of the worst and best images.

What DIR holds (and nothing else; ``GALLERY_NAMES``):

* ``per_image.csv`` and ``per_image.jsonl``: one row per evaluated image, in the data set's
  order: its index, image and mask files, the figures (binary: IoU, Dice, BER (%), computed
  by ``BinaryMetrics`` itself, so their mean is eval's figure; multi-class: the image's own
  mIoU, accuracy and mBER, whose mean is *not* eval's pooled mIoU), the share of the image
  that is foreground in the ground truth and in the prediction, and the overlays drawn of it;
* ``worst/NN_<image>.png`` and ``best/NN_<image>.png``: the ``count`` lowest and highest
  scoring images (binary: IoU, multi-class: mIoU; ties in data set order): the prediction
  filled, the ground truth outlined (cyan) and the prompt boxes drawn (yellow) when the
  evaluation was box-prompted;
* ``gallery.png``: a contact sheet of both rows, captioned with the score and the file;
* ``.naslora-gallery``: the marker by which ``--overwrite`` knows an earlier gallery.

The folder follows the project's output rules (``common.outputs``): new or empty, or (with
``--overwrite``) an earlier gallery holding nothing else; never inside the data folder.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set

import numpy as np

from naslora_deploy.common.imaging import IGNORE_INDEX, overlay, read_image, save_png
from naslora_deploy.common.io import atomic_write_text
from naslora_deploy.common.outputs import is_within, prepare_output_dir, refusal, take_marked_folder
from naslora_deploy.common.plots import long_labels, picture_grid
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data.dataset import load_labels
from naslora_deploy.training.metrics import MultiClassMetrics

GALLERY_MARKER = ".naslora-gallery"
GALLERY_FORMAT = "naslora-deploy gallery"
PER_IMAGE = "per_image"
GALLERY_NAMES = {GALLERY_MARKER, f"{PER_IMAGE}.csv", f"{PER_IMAGE}.jsonl", "worst", "best", "gallery.png"}
FLAG = "--gallery"
PRUNE_EVERY = 32  # predictions kept beyond the worst and best before the others are dropped


@dataclass
class EvaluatedImage:
    """One image as ``evaluate`` saw it: its place, files, ground truth, prediction and prompt."""

    index: int
    pair: tuple  # (image, mask): paths or data set items
    labels: np.ndarray  # (H, W) class indices, IGNORE_INDEX ignored
    probability: np.ndarray  # (H, W) foreground or (K, H, W) class probabilities
    boxes: Optional[np.ndarray] = None  # (K, 4) box prompts, when box-prompted


def _earlier_gallery(folder: Path) -> Optional[Set[str]]:
    return GALLERY_NAMES if (folder / GALLERY_MARKER).is_file() else None


def check_gallery_dir(path, overwrite: bool, data=None) -> Path:
    """Refuse, before any work, a ``--gallery`` folder that may not be written: a file, a folder of
    someone else's files, an earlier gallery without ``--overwrite``, or a folder inside ``data``
    (the overlays would be read as images next time). Returns the folder (links resolved)."""
    if data is not None and is_within(path, data):
        raise refusal(FLAG, path, f"lies inside the data folder {data}", "give a folder outside the data")
    earlier, writer = _earlier_gallery, "eval --gallery"
    return prepare_output_dir(
        path, kind="eval gallery", earlier=earlier, replace=overwrite, flag=FLAG, writer=writer
    )


def prepare_gallery_dir(path, overwrite: bool, data=None) -> Path:
    """``check_gallery_dir``, then lock the folder, remove an earlier gallery's names and mark it."""
    folder = check_gallery_dir(path, overwrite, data)
    return take_marked_folder(folder, GALLERY_NAMES, GALLERY_MARKER, {"format": GALLERY_FORMAT}, FLAG)


class Gallery:
    """Collects ``evaluate``'s images (``add``, its ``on_image``), keeping the predictions of the
    ``count`` worst and best only; ``write`` puts the gallery into a folder."""

    def __init__(self, classes: ClassSpec, count: int = 8, prompt: str = "none") -> None:
        if count < 0:
            raise ValueError(f"--gallery-count takes 0 or more images, got {count}")
        self.classes, self.count, self.prompt = classes, count, prompt
        self.key = "iou" if classes.binary else "miou"
        self.records: List[Dict[str, object]] = []
        self.kept: Dict[int, tuple] = {}  # index -> (prediction, boxes, pair), for the worst and best only

    def add(self, seen: EvaluatedImage, metrics) -> None:
        """Record one evaluated image; ``metrics`` is the ``BinaryMetrics`` it was just added to."""
        prediction, figures = self._figures(seen, metrics)
        truth = (seen.labels != 0) & (seen.labels != IGNORE_INDEX)
        record = {
            "index": seen.index,
            "file": str(seen.pair[0]),
            "mask": str(seen.pair[1]),
            **figures,
            "truth_share": float(truth.mean()),
            "prediction_share": float((prediction != 0).mean()),
        }
        self.records.append(record)
        self.kept[seen.index] = (prediction, seen.boxes, seen.pair)
        if len(self.kept) > 2 * self.count + PRUNE_EVERY:  # now and then: ranking is O(n log n)
            self._prune()

    def _prune(self) -> None:
        """Forget the predictions of images that are neither among the worst nor the best."""
        shown = {r["index"] for r in self.worst() + self.best()}
        self.kept = {index: kept for index, kept in self.kept.items() if index in shown}

    def _figures(self, seen: EvaluatedImage, metrics):
        """The prediction (bool mask or class map) and this image's figures."""
        if self.classes.binary:  # the figures BinaryMetrics appended for this image: eval's own
            prediction = np.clip(seen.probability, 0.0, 1.0) >= metrics.threshold
            return prediction, {"iou": metrics.iou[-1], "dice": metrics.dice[-1], "ber": metrics.ber[-1]}
        alone = MultiClassMetrics(self.classes.num_classes, self.classes.names)
        alone.update(seen.probability, seen.labels)
        result = alone.results()
        prediction = np.clip(seen.probability, 0.0, None).argmax(0).astype(np.uint8)
        return prediction, {k: result[k] for k in ("miou", "accuracy", "mber")}

    def _ranked(self, reverse: bool) -> List[Dict[str, object]]:
        order = sorted(self.records, key=lambda r: (-r[self.key] if reverse else r[self.key], r["index"]))
        return order[: self.count]

    def worst(self) -> List[Dict[str, object]]:
        """The ``count`` lowest-scoring records, lowest first (ties: data set order)."""
        return self._ranked(reverse=False)

    def best(self) -> List[Dict[str, object]]:
        """The ``count`` highest-scoring records, highest first (ties: data set order)."""
        return self._ranked(reverse=True)

    def write(self, path, overwrite: bool = False, data=None, title: str = "") -> Path:
        """Write the gallery into folder ``path`` (see the module); returns the folder."""
        folder = prepare_gallery_dir(path, overwrite, data)
        rows = {"worst": self.worst(), "best": self.best()}
        drawn: Dict[str, List[np.ndarray]] = {}
        for row, records in rows.items():
            drawn[row] = []
            for rank, record in enumerate(records, 1):
                name = f"{row}/{rank:02d}_{_safe_name(record['file'])}.png"
                picture = self._overlay(record)
                save_png(folder / name, picture)
                record.setdefault("overlays", []).append(name)
                drawn[row].append(picture)
        self._write_tables(folder)
        if self.count and self.records:
            captions = [[self._caption(r) for r in records] for records in rows.values()]
            sheet = picture_grid(
                [drawn["worst"], drawn["best"]],
                ["worst", "best"],
                [str(rank) for rank in range(1, len(drawn["best"]) + 1)],
                captions,
                cell=180,
                title=title,
            )
            save_png(folder / "gallery.png", sheet)
        return folder

    def _caption(self, record: Dict[str, object]) -> str:
        return f"{self.key} {record[self.key]:.3f} {_short(record['file'])}"

    def _overlay(self, record: Dict[str, object]) -> np.ndarray:
        prediction, boxes, (image_item, mask_item) = self.kept[record["index"]]
        labels = load_labels(mask_item, self.classes)
        truth = labels == 1 if self.classes.binary else np.where(labels == IGNORE_INDEX, 0, labels)
        class_map = None if self.classes.binary else prediction
        mask = prediction if self.classes.binary else prediction != 0
        shown = boxes if self.prompt == "box" and boxes is not None and len(boxes) else None
        return overlay(read_image(image_item), mask, class_map, truth=truth, boxes=shown)

    def _write_tables(self, folder: Path) -> None:
        lines = "".join(json.dumps(record) + "\n" for record in self.records)
        atomic_write_text(folder / f"{PER_IMAGE}.jsonl", lines)
        columns = [k for k in self.records[0] if k != "overlays"] + ["overlays"] if self.records else []
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        for record in self.records:
            writer.writerow({**record, "overlays": " ".join(record.get("overlays", []))})
        atomic_write_text(folder / f"{PER_IMAGE}.csv", text.getvalue())


def _safe_name(file: str) -> str:
    """A file's name without its suffix as a safe output name (odd characters as ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(file).stem)[:80] or "image"


def _short(file: str) -> str:
    return long_labels([Path(file).name], 14)[0]
