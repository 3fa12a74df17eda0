"""What the annotation formats share: label items, the class choice, painting order and splits.

A format reader (``coco``, ``labelme``, ``npz``) turns its files into the same
(image, labels) pairs a mask folder gives. An element of a pair is a file path, an
``imaging.ImageItem`` (read by ``read_image``) or a ``LabelItem`` (read by
``folder.load_labels``): the trainer, ``evaluate`` and the checks read them all alike.

Rules every annotation reader applies (``named_path``, ``check_coordinates``):

* a file named inside an annotation (a COCO ``file_name``, a LabelMe ``imagePath``) is a
  path relative to its folder that, normalised (``..`` resolved by name), stays inside the
  data folder; an absolute path or one that leads out of the data folder is refused. Links
  found in the data folder are followed: they are the folder owner's choice (an image folder
  linked to a shared drive), not the annotation file's;
* coordinates are finite numbers within one image width (height) of the image: x in
  [-W, 2W], y in [-H, 2H]. Farther points are annotation errors, and the rasteriser would
  allocate memory in proportion to the distance.
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import IGNORE_INDEX, ImageItem, ImageReadError, InputMapping, read_image
from naslora_deploy.core.model.classes import ClassSpec

BACKGROUND_NAMES = ("_background_", "background")  # LabelMe's convention (and a plain word): class 0
IGNORE_NAMES = ("__ignore__",)  # LabelMe's convention: painted 255, left out of the loss
Lookup = Dict[str, Optional[int]]  # object name -> painted value (None: not painted)
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "test": "test"}  # Roboflow says "valid"


class LabelItem:
    """Labels that are not a mask file (annotations in a JSON file, a slice of an ``.npz`` array)."""

    def read_labels(self, classes: ClassSpec) -> np.ndarray:
        """(H, W) class indices: 0/1 binary or 0..K-1, 255 ignored."""
        raise NotImplementedError


@dataclass
class PaintedLabels(LabelItem):
    """Labels drawn from annotations (COCO, LabelMe): each of ``layers`` is a tuple whose first item is
    the painted value; ``region`` turns a layer into its (H, W) bool region, painted in order."""

    source: str
    height: int
    width: int
    layers: List[tuple]

    def region(self, layer: tuple, shape: Tuple[int, int]) -> np.ndarray:
        """The (H, W) bool region one layer covers."""
        raise NotImplementedError

    def read_labels(self, classes: ClassSpec) -> np.ndarray:
        """The layers painted into an (H, W) label map (``paint``: later layers win)."""
        shape = (self.height, self.width)
        return paint(shape, ((layer[0], self.region(layer, shape)) for layer in self.layers))


@dataclass(frozen=True)
class MappedFile(ImageItem):
    """An image file read through the run's ``InputMapping`` (``--bands``, ``--stretch``)."""

    path: Path
    mapping: InputMapping

    def read(self) -> np.ndarray:
        """The file's pixels mapped to (H, W, 3) uint8."""
        return read_image(self.path, self.mapping)

    def __str__(self) -> str:
        return str(self.path)


@dataclass
class SourceOptions:
    """What a format reader needs besides its folder (see ``folder.discover``)."""

    num_classes: Optional[int] = None
    category: Optional[Sequence[str]] = None
    mapping: InputMapping = field(default_factory=InputMapping)
    val_fraction: float = 0.1
    seed: int = 0
    skip_bad: bool = False
    skipped: List[str] = field(default_factory=list)

    def bad(self, message: str) -> None:
        """A file that cannot be used: a ``NasloraError``, or skipped with a warning under ``--skip-bad``."""
        if not self.skip_bad:
            raise NasloraError(f"{message} (fix or remove it, or pass --skip-bad)")
        warnings.warn(f"{message}; skipped")
        self.skipped.append(message)


def split_folders(root: Path) -> Dict[str, Path]:
    """``train/ val/ (or valid/) test/`` under ``root`` -> split name -> folder."""
    found = {}
    for name, split in SPLIT_FOLDERS.items():
        if (root / name).is_dir() and split not in found:
            found[split] = root / name
    if found and "train" not in found:
        raise NasloraError(f"{root} has {', '.join(sorted(found))}/ but no train/ folder")
    return found


def random_split(groups: List[list], val_fraction: float, seed: int) -> Dict[str, list]:
    """Seeded shuffle of ``groups`` (one per file: a volume's slices stay together), some to val."""
    groups = list(groups)
    random.Random(seed).shuffle(groups)
    n_val = int(round(len(groups) * val_fraction)) if len(groups) > 1 else 0
    return {"val": flatten(groups[:n_val]), "train": flatten(groups[n_val:])}


def grouped_splits(groups: Dict[str, List[list]], options: SourceOptions) -> Dict[str, list]:
    """Split -> pairs from split -> groups of pairs (a group: one file's pairs, e.g. a volume's
    slices): the data set's own splits, or for ``all`` (no split folders) a seeded ``random_split``."""
    if "all" in groups:
        return random_split(groups["all"], options.val_fraction, options.seed)
    return {split: flatten(grouped) for split, grouped in groups.items()}


def flatten(groups: List[list]) -> list:
    """The pairs of ``groups`` in one list, in a stable order (by name)."""
    return sorted((pair for group in groups for pair in group), key=lambda p: (str(p[0]), str(p[1])))


def choose_classes(names: List[str], options: SourceOptions, where: object) -> Tuple[ClassSpec, Lookup]:
    """The classes of a data set whose objects carry names (COCO categories, LabelMe labels).

    ``--category`` names -> binary on those; ``--classes 1`` or a single name -> binary on
    every object; otherwise background (0) + the names in the given order. Returns the
    spec and name -> painted value (``__ignore__``: 255; ``_background_``: 0; left out: None).
    """
    special = {n: IGNORE_INDEX for n in IGNORE_NAMES} | {n: 0 for n in BACKGROUND_NAMES}
    objects = [n for n in names if n not in special]
    if options.category:
        missing = [c for c in options.category if c not in objects]
        if missing:
            raise NasloraError(
                f"{where}: no category {missing[0]!r}; the categories are: {', '.join(objects) or '(none)'}"
            )
        return ClassSpec(1), {**special, **{n: 1 if n in options.category else None for n in objects}}
    if options.num_classes == 1 or len(objects) <= 1:
        return ClassSpec(1), {**special, **{n: 1 for n in objects}}
    if options.num_classes is not None and options.num_classes != len(objects) + 1:
        raise NasloraError(
            f"--classes {options.num_classes} disagrees with {where}: background + {len(objects)} categories "
            f"({', '.join(objects)}) = {len(objects) + 1} classes"
        )
    spec = ClassSpec(len(objects) + 1, ["background", *objects])
    return spec, {**special, **{n: i + 1 for i, n in enumerate(objects)}}


def paint(shape: Tuple[int, int], layers) -> np.ndarray:
    """(value, bool mask) layers painted in order onto zeros: where objects overlap, the later one wins.

    A ``None`` value (a category left out by ``--category``) is not painted at all.
    """
    labels = np.zeros(shape, np.uint8)
    for value, mask in layers:
        if value is not None:
            labels[mask] = value
    return labels


def named_path(root: Path, base: Path, name: str) -> Tuple[Optional[Path], str]:
    """(the file, "") that an annotation names as ``name`` relative to ``base``, or (None, why not).

    The path is normalised by name before it is opened (``a/../b`` is ``b`` even where ``a`` is a
    link), so what is checked against the data folder ``root`` is what is read.
    """
    if os.path.isabs(name) or PureWindowsPath(name).anchor:  # "/x", "C:\\x", "\\\\server\\x"
        return (
            None,
            f"{name!r} is an absolute path; name the file relative to its folder, inside the data folder",
        )
    data_root = os.path.abspath(root)
    target = os.path.normpath(os.path.join(os.path.abspath(base), name))
    if os.path.commonpath([data_root, target]) != data_root:
        return None, f"{name!r} leads outside the data folder {root}; only files inside it are read"
    return Path(target), ""


def check_coordinates(points: np.ndarray, height: int, width: int, where: object) -> None:
    """Refuse (``ImageReadError``) (N, 2) x, y ``points`` that are not finite or lie more than one
    image width (height) outside the image (the module's rule)."""
    if not np.isfinite(points).all():
        raise ImageReadError(f"{where}: a coordinate is NaN or infinite; give finite pixel coordinates")
    x, y = points[:, 0], points[:, 1]
    outside = (x < -width) | (x > 2 * width) | (y < -height) | (y > 2 * height)
    if outside.any():
        px, py = points[int(np.argmax(outside))]
        raise ImageReadError(
            f"{where}: the point ({px:g}, {py:g}) lies more than one image width or height outside the "
            f"{width}x{height} image (x in [-{width}, {2 * width}], y in [-{height}, {2 * height}]); fix it"
        )


def json_kind(value: object) -> str:
    """A JSON value's kind in words, for messages ("a list", "an object", "null", "true"...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    kinds = {list: "a list", dict: "an object", str: "a string", int: "a whole number", float: "a number"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), type(value).__name__)


def is_number(value: object) -> bool:
    """Whether a JSON value is a number (``true``/``false`` are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
