"""MedSAM-style ``.npz`` files (arrays ``imgs`` and ``gts``) as (image, label map) pairs.

Layout: ``*.npz`` in the root, or in ``train/ val/ test/`` (the splits; without them
``--val-fraction`` and ``--seed`` split by file, so a volume's slices never straddle
train and val). Each file holds ``imgs`` (H, W), (H, W, 3) or (H, W, bands) with ``gts``
(H, W) labels: one image; or ``imgs`` (D, H, W[, C]) with ``gts`` (D, H, W): D slices, of
which the empty ones (no label, or none of ``--category``) are dropped, as MedSAM's own
preprocessing does (a CT volume is mostly empty slices); a 2-D ``gts`` of zeros is kept
as an all-background image. Pixels follow ``imaging`` (``--stretch`` for CT numbers).

Classes as for mask folders: a ``classes.json`` or ``--classes N`` make ``gts`` class
indices; otherwise binary, foreground = every non-zero label (a warning when there are
several), or only the label values given by ``--category`` (e.g. ``--category 1,3``).

Checked from each array's ``.npy`` header before it is loaded (one line naming the file;
``--skip-bad`` skips it): the file is a regular file and a zip of ``.npy`` arrays; ``imgs``
and ``gts`` hold numbers (no Python objects); each decodes to at most
``limits.DECODED_BYTES`` (``NASLORA_MAX_DECODED_BYTES``; shape x item size); the height
and width of ``gts`` are within ``check_dimensions``'s limits (``NASLORA_MAX_PIXELS``).
"""

from __future__ import annotations

import functools
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.common.filechecks import check_decoded, check_dimensions, check_regular
from naslora_deploy.common.imaging import (
    ImageItem,
    ImageReadError,
    InputMapping,
    image_array,
    note,
)
from naslora_deploy.common.masks import mask_labels
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data.masks import resolve_classes
from naslora_deploy.training.data.sources import (
    LabelItem,
    SourceOptions,
    grouped_splits,
    split_folders,
)

ARRAYS = ("imgs", "gts")
HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _member(archive: zipfile.ZipFile, path: Path, key: str) -> str:
    """The zip member that ``np.load`` reads as ``key`` (``key.npy``, else ``key``)."""
    names = archive.namelist()
    member = next((m for m in (f"{key}.npy", key) if m in names), None)
    if member is None:
        held = ", ".join(n.removesuffix(".npy") for n in names) or "none"
        raise ImageReadError(
            f"{path}: no array {key!r} (it holds {held}); a MedSAM npz holds 'imgs' and 'gts'"
        )
    return member


def declared_shape(archive: zipfile.ZipFile, path: Path, key: str) -> tuple:
    """The shape of array ``key`` read from its ``.npy`` header, after checking its dtype and its
    decoded size (``limits.DECODED_BYTES``): nothing of the array itself is read."""
    with archive.open(_member(archive, path, key)) as handle:
        version = np.lib.format.read_magic(handle)
        reader = HEADER_READERS.get(version)
        if reader is None:
            raise ImageReadError(f"{path}: {key!r} is in .npy format {version}; re-save it with numpy.savez")
        shape, _, dtype = reader(handle)
    if dtype.hasobject:
        raise ImageReadError(f"{path}: {key!r} holds Python objects, not numbers; save numeric arrays")
    check_decoded(
        math.prod(shape) * dtype.itemsize, f"{path} [{key!r} {shape} {dtype}]", "split it into files"
    )
    return shape


def check_header(path: Path) -> None:
    """Refuse (``ImageReadError``) a file that is not a regular file, or whose ``imgs`` / ``gts`` headers
    declare objects or more than the limits, before any array is loaded."""
    check_regular(path, ".npz file")
    with zipfile.ZipFile(path) as archive:
        shapes = [declared_shape(archive, path, key) for key in ARRAYS]
    gts = shapes[1]
    if len(gts) in (2, 3):
        check_dimensions(gts[-2], gts[-1], f"{path} ['gts' {gts}]")


@functools.lru_cache(maxsize=4)
def arrays(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """``imgs`` and ``gts`` of one file (the last few files are kept: slices come one at a time)."""
    try:
        check_header(path)
        with np.load(path, allow_pickle=False) as data:
            return data["imgs"], data["gts"]
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except Exception as exc:  # zipfile and numpy raise many kinds on damaged files: all mean "unreadable"
        raise ImageReadError(f"{path}: cannot read it as .npz ({first_line(exc, 120)})") from None


def _where(path: Path, index: Optional[int]) -> str:
    return str(path) if index is None else f"{path} [slice {index}]"


@dataclass(frozen=True)
class NpzImage(ImageItem):
    """``imgs`` (or one slice of it) of an ``.npz`` file."""

    path: Path
    index: Optional[int]
    mapping: InputMapping

    def read(self) -> np.ndarray:
        """The image as (H, W, 3) uint8 (``imaging.image_array`` with the run's mapping)."""
        imgs = arrays(self.path)[0]
        return image_array(imgs if self.index is None else imgs[self.index], str(self), self.mapping)

    def __str__(self) -> str:
        return _where(self.path, self.index)


@dataclass(frozen=True)
class NpzLabels(LabelItem):
    """``gts`` (or one slice of it); ``values``: the ``--category`` labels that are foreground."""

    path: Path
    index: Optional[int]
    values: Optional[Tuple[int, ...]] = None

    def read_labels(self, classes: ClassSpec) -> np.ndarray:
        """Class indices (multi-class) or 0/1 foreground (binary; see the module's rules)."""
        gts = arrays(self.path)[1]
        raw = mask_labels(gts if self.index is None else gts[self.index], str(self))
        if not classes.binary:
            return raw
        if self.values is not None:
            return np.isin(raw, self.values).astype(np.uint8)
        if np.unique(raw).size > 2:
            note(
                "npz label maps with several labels: foreground = every non-zero label (--classes N or a "
                "classes.json trains them as classes, --category picks some)"
            )
        return (raw != 0).astype(np.uint8)

    def __str__(self) -> str:
        return _where(self.path, self.index)


def _files(folder: Path):
    return sorted(folder.glob("*.npz"))


def detect(root: Path) -> bool:
    """Whether ``root`` (or its ``train/``) holds ``.npz`` files."""
    return bool(_files(root / "train" if (root / "train").is_dir() else root))


def _category_values(category) -> Optional[Tuple[int, ...]]:
    if not category:
        return None
    try:
        return tuple(int(c) for c in category)
    except ValueError:
        raise NasloraError(
            f"--category {','.join(category)}: npz labels are numbers; give label values, e.g. --category 1,3"
        ) from None


def _file_pairs(path: Path, options: SourceOptions, values) -> list:
    """The (image, labels) pairs of one file; a file that makes no sense is ``options.bad``."""
    try:
        imgs, gts = arrays(path)
    except ImageReadError as exc:
        options.bad(str(exc))
        return []
    volume = gts.ndim == 3
    if gts.ndim not in (2, 3) or imgs.ndim - gts.ndim not in (0, 1) or imgs.shape[: gts.ndim] != gts.shape:
        options.bad(
            f"{path}: 'imgs' {imgs.shape} and 'gts' {gts.shape} do not match; give imgs (H, W[, 3]) with gts "
            "(H, W), or imgs (D, H, W[, 3]) with gts (D, H, W)"
        )
        return []
    if not volume:
        return [(NpzImage(path, None, options.mapping), NpzLabels(path, None, values))]
    flat = gts.reshape(gts.shape[0], -1)
    kept = np.flatnonzero(np.isin(flat, values).any(1) if values else (flat != 0).any(1))
    if len(kept) < gts.shape[0]:
        note(
            f"npz volumes: slices without labels are dropped (e.g. {gts.shape[0] - len(kept)} of {path.name})"
        )
    if not len(kept):
        options.bad(f"{path}: every slice of 'gts' is empty")
    return [(NpzImage(path, int(i), options.mapping), NpzLabels(path, int(i), values)) for i in kept]


def load(root: Path, options: SourceOptions) -> Tuple[ClassSpec, Dict[str, list]]:
    """The pairs of every split and the classes (see the module's rules)."""
    values = _category_values(options.category)
    classes = ClassSpec(1) if values else resolve_classes(root, options.num_classes)
    folders = split_folders(root) or {"all": root}
    groups = {
        split: [_file_pairs(p, options, values) for p in _files(folder)] for split, folder in folders.items()
    }
    return classes, grouped_splits(groups, options)
