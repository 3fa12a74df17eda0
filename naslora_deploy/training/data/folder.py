"""Find image/mask pairs in a folder data set and check every file before training.

A folder holds ``images/`` + ``masks/`` (``masks.py``), or COCO JSON, LabelMe JSON or ``.npz``
files (``formats.FORMATS``: each reader gives the same pairs). An element of a pair is a
path or an item (``imaging.ImageItem``, ``sources.LabelItem``) that reads itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import (
    IGNORE_INDEX,
    ImageReadError,
    InputMapping,
    read_image,
)
from naslora_deploy.common.masks import binarize_mask, read_binary_mask, read_mask
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data.formats import FORMATS, detect_format
from naslora_deploy.training.data.masks import Pair
from naslora_deploy.training.data.sources import LabelItem, MappedFile, SourceOptions


@dataclass
class DataSplits:
    """Checked (image, mask) pairs per split, and the classes they use."""

    root: Path
    classes: ClassSpec
    splits: Dict[str, List[Pair]] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)
    format: str = "masks"  # a name in formats.FORMATS

    def split(self, name: str) -> List[Pair]:
        """The pairs of one split (empty list if it has none)."""
        return self.splits.get(name, [])


def load_labels(mask_path, classes: ClassSpec) -> np.ndarray:
    """A mask file as class indices: 0/1 for binary, 0..K-1 for multi-class, 255 ignored.

    Binary masks follow ``masks.binarize_mask`` (0/k: foreground = non-zero; JPEG or
    0..255 grey: above half range; label maps such as 0/1/2 are refused, naming the file).
    """
    if isinstance(mask_path, LabelItem):
        return mask_path.read_labels(classes)
    if not classes.binary:
        return read_mask(mask_path, classes.palette_lookup())
    if classes.palette is None:
        return read_binary_mask(mask_path)
    return binarize_mask(read_mask(mask_path, classes.palette_lookup()), source=mask_path)


def check_pair(pair: Pair, classes: ClassSpec) -> None:
    """Read both files fully, as training will; raise ImageReadError naming the file on any problem."""
    image_path, mask_path = pair
    image = read_image(image_path)
    raw = load_labels(mask_path, classes)
    if raw.shape != image.shape[:2]:
        raise ImageReadError(
            f"{mask_path}: mask is {raw.shape[1]}x{raw.shape[0]} but its image is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    if not classes.binary:
        values = np.unique(raw)
        bad = values[(values >= classes.num_classes) & (values != IGNORE_INDEX)]
        if bad.size:
            raise ImageReadError(
                f"{mask_path}: label {int(bad[0])} is out of range for {classes.num_classes} classes (255 = "
                "ignore)"
            )


def _check_all(result: DataSplits, skip_bad: bool) -> None:
    for split, pairs in result.splits.items():
        kept = []
        for pair in pairs:
            try:
                check_pair(pair, result.classes)
                kept.append(pair)
            except ImageReadError as exc:
                if not skip_bad:
                    raise ImageReadError(f"{exc} (fix or remove it, or pass --skip-bad)") from None
                warnings.warn(f"{exc}; skipped")
                result.skipped.append(str(exc))
        result.splits[split] = kept


def discover(
    root,
    num_classes: Optional[int] = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
    check: bool = True,
    category: Optional[Sequence[str]] = None,
    bands: Optional[Sequence[int]] = None,
    stretch: Optional[Sequence[float]] = None,
) -> DataSplits:
    """Find, pair, split and (unless ``check=False``) fully read every file once.

    With ``train/ val/ test/`` sub-folders they are the splits; otherwise the
    pairs are split with a seeded shuffle, ``val_fraction`` going to ``val``.
    ``category``: COCO / LabelMe names (npz label values) that the binary head learns;
    ``bands`` / ``stretch``: the run's ``imaging.InputMapping``, applied to every image.
    """
    root = Path(root)
    if not root.is_dir():
        raise NasloraError(f"data folder {root} not found")
    try:
        mapping = InputMapping.of(bands, stretch)
    except ValueError as exc:
        raise NasloraError(str(exc)) from None
    kind = detect_format(root) or "masks"  # none found: the mask-folder reader says what a folder needs
    result = DataSplits(root=root, classes=ClassSpec(), format=kind)
    options = SourceOptions(num_classes, category, mapping, val_fraction, seed, skip_bad, result.skipped)
    result.classes, result.splits = FORMATS[kind][1](root, options)
    if not mapping.identity:
        for split, pairs in result.splits.items():
            result.splits[split] = [
                (MappedFile(i, mapping) if isinstance(i, Path) else i, m) for i, m in pairs
            ]
    if check:
        _check_all(result, skip_bad)
    if result.skipped:
        warnings.warn(
            f"{root}: {len(result.skipped)} file(s) or entries skipped under --skip-bad, each named above"
        )
    if not result.split("train"):
        raise NasloraError(f"{root}: no usable training pairs")
    return result
