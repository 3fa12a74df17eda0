"""Box prompts from ground-truth masks, as MedSAM trains and evaluates: one box per connected component.

Training jitters each box coordinate by up to ``jitter`` pixels, seeded by
(seed, epoch, image index), so a resumed run draws the same boxes; evaluation
uses the exact boxes. Boxes are x0, y0, x1, y1 in the frame of the mask given.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage

MAX_BOXES = 4  # largest components first: bounds the decoder passes per image


def component_boxes(foreground: np.ndarray, max_boxes: int = MAX_BOXES) -> Tuple[np.ndarray, np.ndarray]:
    """(K, 4) float32 boxes and (K, H, W) bool masks of the largest connected components of ``foreground``."""
    labelled, count = ndimage.label(foreground)
    if count == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0, *foreground.shape), bool)
    sizes = ndimage.sum_labels(np.ones_like(labelled), labelled, index=np.arange(1, count + 1))
    keep = (np.argsort(-sizes, kind="stable")[:max_boxes] + 1).tolist()
    slices = ndimage.find_objects(labelled)
    boxes = [[s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1] for s in (slices[k - 1] for k in keep)]
    return np.asarray(boxes, np.float32), np.stack([labelled == k for k in keep])


def jitter_boxes(boxes: np.ndarray, jitter: int, size: Tuple[int, int], seed: List[int]) -> np.ndarray:
    """Move every coordinate by a seeded uniform integer in [-jitter, jitter], kept inside the image."""
    if jitter <= 0 or len(boxes) == 0:
        return boxes
    shift = np.random.default_rng(seed).integers(-jitter, jitter + 1, size=boxes.shape)
    moved = boxes + shift
    height, width = size
    moved[:, 0::2] = moved[:, 0::2].clip(0, width - 1)
    moved[:, 1::2] = moved[:, 1::2].clip(0, height - 1)
    x0, x1 = np.minimum(moved[:, 0], moved[:, 2]), np.maximum(moved[:, 0], moved[:, 2])
    y0, y1 = np.minimum(moved[:, 1], moved[:, 3]), np.maximum(moved[:, 1], moved[:, 3])
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


def scale_boxes(boxes: np.ndarray, original: Tuple[int, int], resized: Tuple[int, int]) -> np.ndarray:
    """Boxes in an original image's pixels -> the model-input frame (longest side resized, no offset)."""
    height, width = original
    new_h, new_w = resized
    return (boxes * np.array([new_w / width, new_h / height] * 2, np.float32)).astype(np.float32)


def training_prompts(
    labels: np.ndarray, jitter: int, seed: Optional[List[int]]
) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes (jittered when ``seed`` is given) and component masks of one (S, S) label map (1 = object)."""
    boxes, masks = component_boxes(labels == 1)
    if seed is not None:
        boxes = jitter_boxes(boxes, jitter, labels.shape, seed)
    return boxes, masks
