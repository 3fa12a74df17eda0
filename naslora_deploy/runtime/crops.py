"""Everything mode's crops and its account of the candidates, in numpy (segment-anything's ``amg`` helpers).

``crop_boxes`` cuts an image into SAM's crop layers; ``near_crop_edge`` finds
masks cut off by a crop's edge; ``uncrop_bits`` places a crop's masks back into
the whole image, bit-packed; ``checked_grids`` checks a caller's point grids;
``CandidateCounts`` counts what each filter removed and, when nothing is left,
says which threshold to lower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import List, Tuple

import numpy as np

from naslora_deploy.common.limits import POINTS_PER_SIDE

CropBox = Tuple[int, int, int, int]  # x0, y0, x1, y1 in the image's pixels (x1, y1 exclusive)


def crop_boxes(
    size_hw: Tuple[int, int], n_layers: int, overlap_ratio: float
) -> Tuple[List[CropBox], List[int]]:
    """SAM's ``generate_crop_boxes``: the whole image (layer 0), then layer i's 2^i x 2^i crops overlapping
    by ``overlap_ratio`` of the shorter side (scaled down per layer), columns first; and each box's layer."""
    height, width = size_hw
    boxes, layers = [(0, 0, width, height)], [0]
    short_side = min(height, width)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + width) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + height) / per_side))
        starts_x = [int((crop_w - overlap) * i) for i in range(per_side)]
        starts_y = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(starts_x, starts_y):
            boxes.append((x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)))
            layers.append(layer)
    return boxes, layers


def near_crop_edge(boxes: np.ndarray, crop_box: CropBox, size_hw: Tuple[int, int], atol: float) -> np.ndarray:
    """(N,) bool: which (N, 4) XYXY boxes (in the crop's pixels) lie within ``atol`` of an edge of the crop
    that is not an edge of the image (SAM's ``is_box_near_crop_edge``: such masks are cut off)."""
    x0, y0 = crop_box[:2]
    crop = np.asarray(crop_box, np.float32)
    image = np.array([0, 0, size_hw[1], size_hw[0]], np.float32)
    placed = (np.asarray(boxes).reshape(-1, 4) + np.array([x0, y0, x0, y0])).astype(np.float32)
    at_crop = np.abs(placed - crop) <= np.float32(atol)
    at_image = np.abs(placed - image) <= np.float32(atol)
    return (at_crop & ~at_image).any(axis=1)


def uncrop_bits(masks: np.ndarray, crop_box: CropBox, size_hw: Tuple[int, int]) -> np.ndarray:
    """(N, h, w) bool masks of a crop -> (N, ceil(H * W / 8)) uint8 bit-packed masks of the whole image."""
    height, width = size_hw
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, width, height):
        return np.packbits(masks.reshape(len(masks), height * width), axis=1)
    bits = np.zeros((len(masks), (height * width + 7) // 8), np.uint8)
    placed = np.zeros((height, width), bool)  # one image-sized mask at a time: memory stays that of a crop
    for index, mask in enumerate(masks):
        placed[y0:y1, x0:x1] = mask
        bits[index] = np.packbits(placed.reshape(-1))
    return bits


def checked_grids(grids, crop_n_layers: int) -> Tuple[Tuple[Tuple[float, float], ...], ...]:
    """``point_grids`` as tuples (comparable, JSON-ready), or one ``ValueError`` line."""
    if isinstance(grids, np.ndarray) and grids.ndim == 2:
        grids = [grids]  # one grid given bare
    checked = []
    for layer, grid in enumerate(grids):
        try:
            points = np.asarray(grid, dtype=np.float64)
        except (TypeError, ValueError):
            points = np.zeros((0, 3))
        if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
            raise ValueError(f"point_grids[{layer}] must be an (N, 2) array of (x, y) points, N >= 1")
        if not (np.isfinite(points).all() and (points >= 0).all() and (points <= 1).all()):
            raise ValueError(
                f"point_grids[{layer}] holds points outside [0, 1] (x and y are image fractions)"
            )
        checked.append(tuple((float(x), float(y)) for x, y in points))
    if len(checked) != crop_n_layers + 1:
        raise ValueError(
            f"point_grids holds {len(checked)} grid(s) for crop_n_layers {crop_n_layers}: give one grid per "
            f"crop layer ({crop_n_layers + 1})"
        )
    if sum(len(grid) for grid in checked) > POINTS_PER_SIDE.value**2:
        raise ValueError(
            f"point_grids hold more than {POINTS_PER_SIDE.value**2} points ({POINTS_PER_SIDE.env})"
        )
    return tuple(checked)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """(N,) areas of (N, 4) XYXY boxes."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


# The filters in their order: (counter name, what the spec calls its setting, how a line names it)
FILTERS = (
    ("pred_iou_thresh", "pred_iou_thresh", "pred_iou_thresh {}"),
    ("stability_score_thresh", "stability_score_thresh", "stability_score_thresh {}"),
    ("crop_edge", None, "cut by a crop edge"),
    ("box_nms_thresh", "box_nms_thresh", "duplicates (box_nms_thresh {})"),
    ("crop_nms_thresh", "crop_nms_thresh", "duplicates across crops (crop_nms_thresh {})"),
    ("min_mask_region_area", "min_mask_region_area", "duplicates after small-region removal"),
)
LOWERABLE = ("pred_iou_thresh", "stability_score_thresh")  # the thresholds that can remove every mask


@dataclass
class CandidateCounts:
    """Everything mode's account of one image: points prompted, masks decoded (3 per point), how many each
    filter removed, in its order, and how many were kept."""

    crops: int = 0
    points: int = 0
    candidates: int = 0
    pred_iou_thresh: int = 0
    stability_score_thresh: int = 0
    crop_edge: int = 0
    box_nms_thresh: int = 0
    crop_nms_thresh: int = 0
    min_mask_region_area: int = 0
    kept: int = 0

    def summary(self, spec) -> str:
        """One line: the masks kept, the candidates, what each filter removed, and (none kept) which
        thresholds to lower."""
        crops = f" in {self.crops} crops" if self.crops > 1 else ""
        parts = [
            f"{label.format(getattr(spec, setting)) if setting else label} removed {getattr(self, name)}"
            for name, setting, label in FILTERS
            if getattr(self, name)
        ]
        line = (
            f"everything mode found {self.kept} masks: {self.candidates} candidates ({self.points} points x "
            f"3 masks{crops})" + (", " + ", ".join(parts) if parts else "")
        )
        lower = [f"--{name.replace('_', '-')}" for name in LOWERABLE if getattr(self, name)]
        if self.kept == 0 and lower:
            line += f"; lower {' or '.join(lower)} (0 keeps every mask)"
        return line
