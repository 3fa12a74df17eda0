"""Calibration images: what a dense merge fits its folds on and every merge is measured on.

``merge`` takes a (N, 3, S, S) tensor, a callable returning batches, or any
re-iterable of batches; ``calibration_batches`` turns each into one re-callable,
checked batch iterator. ``calibration_images`` reads them from an image folder.

Held-out rule (``split_positions``): where a merge fits anything on the
calibration images (a least-squares fold, a recovery), the images at even
positions of the stream (0th, 2nd, 4th, ...) fit and those at odd positions
(1st, 3rd, ...) measure, so the reported fidelity is never in sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import numpy as np
import torch

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import IMAGE_SUFFIXES, preprocess_image, read_image

Calibration = Union[torch.Tensor, Callable[[], Iterable[torch.Tensor]], Iterable[torch.Tensor]]


def calibration_images(folder, count: int, image_size: int, normalization: str = "imagenet") -> torch.Tensor:
    """Up to ``count`` images from ``folder`` (or its images/, train/images/), preprocessed as inputs."""
    folder = Path(folder)
    for candidate in (folder / "train" / "images", folder / "images", folder):
        if candidate.is_dir():
            files = sorted(p for p in candidate.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                break
    else:
        raise NasloraError(f"calibration folder {folder} not found")
    if not files:
        raise NasloraError(f"no images in {folder} (png, jpg, jpeg, bmp, tif) for calibration")
    step = max(1, len(files) // count)
    chosen = files[::step][:count]
    return torch.from_numpy(
        np.stack([preprocess_image(read_image(p), image_size, normalization) for p in chosen])
    )


def calibration_batches(
    calibration: Calibration, image_size: int, dtype: Optional[torch.dtype] = None, device=None
) -> Callable[[], Iterator[torch.Tensor]]:
    """Normalise the accepted calibration forms into a re-callable batch iterator that checks shapes.

    Each (N, 3, S, S) batch is moved to ``device`` and cast to ``dtype`` (the
    model's), so a float64 model gets float64 images.
    """
    if isinstance(calibration, torch.Tensor):
        tensor = calibration

        def source() -> Iterable[torch.Tensor]:
            return tensor.split(4)
    elif callable(calibration):
        source = calibration
    else:
        materialised = list(calibration)

        def source() -> Iterable[torch.Tensor]:
            return materialised

    def batches() -> Iterator[torch.Tensor]:
        count = 0
        for batch in source():
            if (
                not isinstance(batch, torch.Tensor)
                or batch.ndim != 4
                or tuple(batch.shape[1:]) != (3, image_size, image_size)
            ):
                shape = list(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
                raise ValueError(
                    f"calibration batches must be (N, 3, {image_size}, {image_size}) preprocessed images, "
                    f"got {shape}"
                )
            count += 1
            yield batch.to(device=device, dtype=dtype or batch.dtype)
        if count == 0:
            raise ValueError("calibration gave no images")

    return batches


def split_positions(
    batches: Callable[[], Iterable[torch.Tensor]], parity: int
) -> Callable[[], Iterator[torch.Tensor]]:
    """The images of ``batches`` at even (``parity`` 0) or odd (1) positions of the whole stream.

    Positions count images, not batches, across all batches of one pass; each
    yielded batch is the (possibly empty, then skipped) matching part of one input batch.
    """

    def chosen() -> Iterator[torch.Tensor]:
        position = 0
        for batch in batches():
            keep = [i for i in range(batch.shape[0]) if (position + i) % 2 == parity]
            position += batch.shape[0]
            if keep:
                yield batch[keep]

    return chosen


def count_images(batches: Callable[[], Iterable[torch.Tensor]]) -> int:
    """How many images one pass of ``batches`` gives."""
    return sum(batch.shape[0] for batch in batches())
