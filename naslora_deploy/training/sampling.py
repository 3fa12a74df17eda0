"""What each epoch sees: the sample order and the horizontal flips, pure functions of (seed, epoch, index).

Being pure functions, they need no saved state: a resumed run repeats an
uninterrupted one exactly.
"""

from __future__ import annotations

import random
from typing import List


def epoch_order(count: int, seed: int, epoch: int) -> List[int]:
    """The shuffled sample order of one epoch, a pure function of (seed, epoch)."""
    order = list(range(count))
    random.Random(f"order-{seed}-{epoch}").shuffle(order)
    return order


def flips(batch: dict, seed: int, epoch: int) -> List[bool]:
    """Which samples of ``batch`` are flipped, decided by (seed, epoch, index)."""
    return [random.Random(f"flip-{seed}-{epoch}-{index}").random() < 0.5 for index in batch["index"].tolist()]


def flip_batch(batch: dict, seed: int, epoch: int) -> dict:
    """Random horizontal flip of each sample, in place, decided by (seed, epoch, index).

    Only the valid region (the resized image, ``batch["size"]`` = (h, w) per sample)
    is mirrored: SAM pads at the bottom and right, and a flipped image keeps its
    padding there, as every image at test time has it.
    """
    if "size" not in batch:
        raise ValueError("flip_batch needs each sample's valid (h, w) as batch['size'] (SegmentationDataset)")
    for i, (flip, (height, width)) in enumerate(zip(flips(batch, seed, epoch), batch["size"].tolist())):
        if flip:
            batch["image"][i, :, :height, :width] = batch["image"][i, :, :height, :width].flip(-1)
            batch["labels"][i, :height, :width] = batch["labels"][i, :height, :width].flip(-1)
    return batch
