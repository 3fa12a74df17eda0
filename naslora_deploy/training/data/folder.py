"""Find image/mask pairs in a folder data set and check every file before training.

A folder holds ``images/`` + ``masks/`` (here), or COCO JSON, LabelMe JSON or ``.npz``
files (``formats.FORMATS``: each reader gives the same pairs). An element of a pair is a
path or an item (``imaging.ImageItem``, ``sources.LabelItem``) that reads itself.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import (
    IGNORE_INDEX,
    IMAGE_SUFFIXES,
    ImageReadError,
    InputMapping,
    read_image,
)
from naslora_deploy.common.masks import binarize_mask, read_binary_mask, read_mask
from naslora_deploy.core.classes import ClassSpec
from naslora_deploy.training.data.sources import LabelItem, MappedFile, SourceOptions

MASK_SUFFIXES = (
    "_segmentation",
    "_Segmentation",
    "_mask",
    "_Mask",
    "_gt",
    "_GT",
    "-mask",
    "_label",
    "_labels",
)
SPLITS = ("train", "val", "test")
Pair = Tuple[Path, Path]


@dataclass
class DataSplits:
    """Checked (image, mask) pairs per split, and the classes they use."""

    root: Path
    classes: ClassSpec
    splits: Dict[str, List[Pair]] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)
    format: str = "masks"  # masks, or a name in formats.FORMATS

    def split(self, name: str) -> List[Pair]:
        """The pairs of one split (empty list if it has none)."""
        return self.splits.get(name, [])


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def mask_key(stem: str) -> str:
    """The image stem a mask file belongs to ('ISIC_0001_segmentation' -> 'ISIC_0001')."""
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def pair_folder(folder: Path, skip_bad: bool, skipped: List[str]) -> List[Pair]:
    """Pair ``folder/images/*`` with ``folder/masks/*`` by stem."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    for needed in (images_dir, masks_dir):
        if not needed.is_dir():
            raise NasloraError(
                f"{needed} not found; a data set needs images/ and masks/ (optionally under train/ val/ "
                "test/), or COCO JSON, LabelMe JSON or .npz files (README: Training on your data)"
            )
    masks: Dict[str, Path] = {}
    for mask in _images_in(masks_dir):
        masks.setdefault(mask_key(mask.stem), mask)
    pairs = []
    for image in _images_in(images_dir):
        mask = masks.get(image.stem)
        if mask is None:
            message = f"{image}: no mask for this image in {masks_dir}"
            if not skip_bad:
                raise NasloraError(message + " (add it, remove the image, or pass --skip-bad)")
            warnings.warn(message + "; skipped")
            skipped.append(message)
            continue
        pairs.append((image, mask))
    if not pairs:
        raise NasloraError(f"{images_dir}: no image/mask pairs found (png, jpg, jpeg, bmp, tif)")
    return pairs


def resolve_classes(root: Path, num_classes: Optional[int]) -> ClassSpec:
    """``--classes N`` or the data set's ``classes.json``; binary otherwise."""
    classes_json = root / "classes.json"
    if classes_json.is_file():
        spec = ClassSpec.from_classes_json(classes_json)
        if num_classes is not None and num_classes != spec.num_classes:
            raise NasloraError(
                f"--classes {num_classes} disagrees with {classes_json} ({spec.num_classes} names)"
            )
        return spec
    return ClassSpec(num_classes or 1)


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


def _mask_folders(root: Path, val_fraction, seed, skip_bad, result: DataSplits) -> None:
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:
        if "train" not in present:
            raise NasloraError(f"{root} has {', '.join(present)}/ but no train/ folder")
        for split in present:
            result.splits[split] = pair_folder(root / split, skip_bad, result.skipped)
    else:
        pairs = pair_folder(root, skip_bad, result.skipped)
        random.Random(seed).shuffle(pairs)
        n_val = int(round(len(pairs) * val_fraction)) if len(pairs) > 1 else 0
        result.splits["val"], result.splits["train"] = sorted(pairs[:n_val]), sorted(pairs[n_val:])


def _format_of(root: Path) -> str:
    """``masks`` for images/ + masks/ folders, else the detected format (``masks`` when none matches)."""
    from naslora_deploy.training.data.formats import detect_format

    if any(
        (folder / "images").is_dir() and (folder / "masks").is_dir()
        for folder in [root, *(root / s for s in SPLITS)]
    ):
        return "masks"
    return detect_format(root) or "masks"


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
    kind = _format_of(root)
    result = DataSplits(root=root, classes=ClassSpec(), format=kind)
    if kind == "masks":
        if category:
            raise NasloraError(
                f"--category picks COCO / LabelMe categories or npz labels; {root} holds mask folders "
                "(name the classes in a classes.json instead)"
            )
        result.classes = resolve_classes(root, num_classes)
        _mask_folders(root, val_fraction, seed, skip_bad, result)
    else:
        from naslora_deploy.training.data.formats import FORMATS

        options = SourceOptions(num_classes, category, mapping, val_fraction, seed, skip_bad, result.skipped)
        result.classes, result.splits = FORMATS[kind][1](root, options)
    if not mapping.identity:
        for split, pairs in result.splits.items():
            result.splits[split] = [
                (MappedFile(i, mapping) if isinstance(i, Path) else i, m) for i, m in pairs
            ]
    if check:
        _check_all(result, skip_bad)
    if not result.split("train"):
        raise NasloraError(f"{root}: no usable training pairs")
    return result
