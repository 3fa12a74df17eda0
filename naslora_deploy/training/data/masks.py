"""Mask folders: ``images/`` + ``masks/`` (optionally under ``train/ val/ test/``), paired by stem.

The ``masks`` entry of ``formats.FORMATS``, beside COCO, LabelMe and npz: ``detect``
says whether a folder holds mask folders, ``load`` gives its ``ClassSpec`` (``--classes N``
or ``classes.json``: ``resolve_classes``, which the npz reader shares) and split -> pairs.

An entry of ``images/`` or ``masks/`` with an image suffix that is not a regular file after
its links (a FIFO, a device, a folder, a broken link) is refused, never opened (a FIFO
would block the reader) and never dropped silently: ``--skip-bad`` skips it with a warning.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.filechecks import check_regular
from naslora_deploy.common.imaging import IMAGE_SUFFIXES, ImageReadError
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data.sources import SourceOptions

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


def _bad(message: str, todo: str, skip_bad: bool, skipped: List[str]) -> None:
    """An unusable entry: a ``NasloraError`` saying ``todo``, or under ``--skip-bad`` a warning and a note."""
    if not skip_bad:
        raise NasloraError(f"{message} ({todo}, or pass --skip-bad)")
    warnings.warn(message + "; skipped")
    skipped.append(message)


def _images_in(folder: Path, skip_bad: bool, skipped: List[str]) -> List[Path]:
    """The image files of ``folder``; entries with an image suffix that are not regular files are ``_bad``."""
    found = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            check_regular(path)
        except ImageReadError as exc:
            _bad(str(exc), "replace or remove it", skip_bad, skipped)
            continue
        found.append(path)
    return found


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
    for mask in _images_in(masks_dir, skip_bad, skipped):
        masks.setdefault(mask_key(mask.stem), mask)
    pairs = []
    for image in _images_in(images_dir, skip_bad, skipped):
        mask = masks.get(image.stem)
        if mask is None:
            _bad(
                f"{image}: no mask for this image in {masks_dir}",
                "add it, remove the image",
                skip_bad,
                skipped,
            )
            continue
        pairs.append((image, mask))
    if not pairs:
        raise NasloraError(f"{images_dir}: no image/mask pairs found (png, jpg, jpeg, bmp, tif)")
    return pairs


def resolve_classes(root: Path, num_classes: Optional[int]) -> ClassSpec:
    """``--classes N`` or the data set's ``classes.json``; binary otherwise."""
    classes_json = root / "classes.json"
    if os.path.lexists(classes_json):  # a FIFO or broken link named so is refused, not passed over
        spec = ClassSpec.from_classes_json(classes_json)
        if num_classes is not None and num_classes != spec.num_classes:
            raise NasloraError(
                f"--classes {num_classes} disagrees with {classes_json} ({spec.num_classes} names)"
            )
        return spec
    return ClassSpec(num_classes or 1)


def detect(root: Path) -> bool:
    """Whether ``root`` (or one of its split folders) holds ``images/`` and ``masks/``."""
    return any(
        (folder / "images").is_dir() and (folder / "masks").is_dir()
        for folder in [root, *(root / s for s in SPLITS)]
    )


def load(root: Path, options: SourceOptions) -> Tuple[ClassSpec, Dict[str, List[Pair]]]:
    """The classes and the split -> (image, mask) pairs of a mask-folder data set."""
    if options.category:
        raise NasloraError(
            f"--category picks COCO / LabelMe categories or npz labels; {root} holds mask folders "
            "(name the classes in a classes.json instead)"
        )
    classes = resolve_classes(root, options.num_classes)
    splits: Dict[str, List[Pair]] = {}
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:
        if "train" not in present:
            raise NasloraError(f"{root} has {', '.join(present)}/ but no train/ folder")
        for split in present:
            splits[split] = pair_folder(root / split, options.skip_bad, options.skipped)
    else:
        pairs = pair_folder(root, options.skip_bad, options.skipped)
        random.Random(options.seed).shuffle(pairs)
        n_val = int(round(len(pairs) * options.val_fraction)) if len(pairs) > 1 else 0
        splits["val"], splits["train"] = sorted(pairs[:n_val]), sorted(pairs[n_val:])
    return classes, splits
