"""``--augment``: named albumentations pipelines applied to each training pair, seeded per sample.

The trainer's horizontal flip (the paper's, ``training.sampling.flip_batch``) is always on and
is the one horizontal flip; these pipelines add to it:

- ``none``: nothing (the identity; albumentations is not even imported).
- ``light``: a vertical flip and a 90-degree rotation; with the trainer's horizontal flip,
  each of the eight flips/rotations of the square is equally likely.
- ``medium``: ``light`` + a small affine move (scale 0.9-1.1, shift up to 6 %, rotation up to
  15 degrees) + brightness/contrast (up to 20 %).

The transforms run on the image as read (before SAM's resize and padding) and on its label
map with nearest-neighbour interpolation; pixels an affine move brings in are black in the
image and ``IGNORE_INDEX`` in the labels, so no loss is taken there. Box prompts are drawn
later from the augmented labels, so they follow the object.

Seeding: each sample's transform is a pure function of (run seed, epoch, sample index):
the pipeline's albumentations ``Compose`` is re-seeded (``Compose.set_random_seed``) with a
seed derived from those three numbers before every sample. A resumed run therefore
continues the same stream, and data-loader workers change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import numpy as np

from naslora_deploy.common.imaging import IGNORE_INDEX

AUGMENTS = ("none", "light", "medium")


def _light(A) -> List:
    return [A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]


def _medium(A) -> List:
    import cv2

    return _light(A) + [
        A.Affine(
            scale=(0.9, 1.1),
            translate_percent=(-0.0625, 0.0625),
            rotate=(-15, 15),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE_INDEX,
            p=0.5,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ]


PIPELINES: Dict[str, Callable] = {"light": _light, "medium": _medium}  # name -> transforms(albumentations)


def check_augment(name: str) -> None:
    """Raise ``ValueError`` (one line) unless ``name`` is a known pipeline."""
    if name not in AUGMENTS:
        raise ValueError(f"--augment must be one of {', '.join(AUGMENTS)}, got {name!r}")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The albumentations seed of one sample: a pure function of (run seed, epoch, sample index)."""
    return int(np.random.SeedSequence([seed, epoch, index, 0xA06]).generate_state(1)[0])


def build_pipeline(name: str):
    """The albumentations ``Compose`` of pipeline ``name`` (``None`` for ``none``); imports it lazily."""
    check_augment(name)
    if name == "none":
        return None
    try:
        import albumentations as A
    except ImportError:
        raise ImportError(f"--augment {name} needs albumentations: pip install albumentations") from None
    return A.Compose(PIPELINES[name](A), seed=0)


@dataclass
class Augmentation:
    """Pipeline ``name`` for one epoch of a run seeded ``seed``; ``apply`` transforms one pair."""

    name: str = "none"
    seed: int = 0
    epoch: int = 0
    _compose: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_augment(self.name)

    @property
    def identity(self) -> bool:
        """True for ``none``: ``apply`` returns its inputs unchanged."""
        return self.name == "none"

    def apply(self, image: np.ndarray, labels: np.ndarray, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) labels of sample ``index`` -> the transformed pair.

        The labels come back as uint8 (class indices and ``IGNORE_INDEX``); a 90-degree
        rotation swaps H and W.
        """
        if self.identity:
            return image, labels
        if labels.shape != image.shape[:2]:
            raise ValueError(f"mask {labels.shape} and image {image.shape[:2]} differ in size")
        if self._compose is None:
            self._compose = build_pipeline(self.name)
        self._compose.set_random_seed(sample_seed(self.seed, self.epoch, index))
        out = self._compose(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(labels, np.uint8))
        return out["image"], out["mask"]
