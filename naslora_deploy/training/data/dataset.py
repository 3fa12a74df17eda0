"""The torch ``Dataset`` over checked pairs: SAM-preprocessed images and label maps."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch.utils.data import Dataset

from naslora_deploy.common.imaging import (
    IGNORE_INDEX,
    preprocess_image,
    preprocess_mask,
    read_image,
    resized_shape,
)
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data.augment import Augmentation
from naslora_deploy.training.data.folder import Pair, load_labels

__all__ = ["Augmentation", "SegmentationDataset", "load_labels"]  # re-exported for their callers


class SegmentationDataset(Dataset):
    """Items: ``image`` (3, S, S) float32, ``labels`` (S, S) int64 (255 = ignore/padding), ``index``,
    and ``size``: the resized image's (h, w), the valid top-left region before the bottom/right padding.

    ``augment`` (``augment.Augmentation``: pipeline, run seed, epoch) transforms each pair as
    read, before the resize; ``None`` or ``none`` leaves it as it is.
    """

    def __init__(
        self,
        pairs: List[Pair],
        classes: ClassSpec,
        image_size: int,
        normalization: str = "imagenet",
        augment: Optional[Augmentation] = None,
    ) -> None:
        self.pairs = list(pairs)
        self.classes = classes
        self.image_size = image_size
        self.normalization = normalization
        self.augment = augment

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image_path, mask_path = self.pairs[index]
        raw, raw_labels = read_image(image_path), load_labels(mask_path, self.classes)
        if self.augment is not None and not self.augment.identity:
            raw, raw_labels = self.augment.apply(raw, raw_labels, index)
        image = preprocess_image(raw, self.image_size, self.normalization)
        labels = preprocess_mask(raw_labels, self.image_size, IGNORE_INDEX)
        size = torch.tensor(resized_shape(*raw.shape[:2], self.image_size), dtype=torch.int64)
        return {
            "image": torch.from_numpy(image),
            "labels": torch.from_numpy(labels),
            "index": index,
            "size": size,
        }
