"""Everything mode without torch: SAM's automatic mask generator, in numpy.

    records = generate_masks(decode, upscale, (height, width), EverythingSpec(points_per_side=32))
    records = generate_crop_masks(embed_crop, (height, width), EverythingSpec(crop_n_layers=1))

It follows ``segment_anything.SamAutomaticMaskGenerator`` step by step: a grid of
single positive points (or the caller's ``point_grids``) on the whole image and,
with ``crop_n_layers``, on overlapping crops of it (layer i: 2^i x 2^i crops,
each embedded on its own, ``crop_n_points_downscale_factor`` fewer points per
side per layer), decoded in batches with three mask outputs each; masks kept
when their predicted IoU is above ``pred_iou_thresh`` and their stability score
reaches ``stability_score_thresh``, and (in crops) when they do not touch a
crop edge inside the image; thresholded, boxed, de-duplicated by box NMS per
crop (scores: predicted IoU), mapped back into the image, and across crops
(smaller crops first, ``crop_nms_thresh``); then, with ``min_mask_region_area``,
small holes and islands removed and NMS run again (unchanged masks first, at
``max(box_nms_thresh, crop_nms_thresh)``). The records have SAM's keys and
values. Two changes that leave the result as is: masks are filtered by
predicted IoU before they are upscaled (SAM upscales all of them first), and the
kept masks wait for NMS bit-packed (SAM keeps RLEs). Small regions are found
with ``scipy.ndimage`` (8-connected, as SAM's cv2 call). Where SAM can differ:
with over 1000 boxes its ``batched_nms`` re-sorts the kept masks unstably, so
equal scores may come in another order (the same masks); we keep torchvision
``nms``'s order throughout. ``CandidateCounts`` says how many masks each filter
removed; a run that keeps none warns with them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, fields
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from naslora_deploy.common.limits import DECODED_BYTES, POINTS_PER_SIDE
from naslora_deploy.common.options import bound_error, check_bounds, flag_of, option
from naslora_deploy.common.progress import bar_drawn, log_line
from naslora_deploy.common.progress import progress as progress_bar
from naslora_deploy.runtime.crops import (
    CandidateCounts,
    CropBox,
    box_areas,
    checked_grids,
    crop_boxes,
    near_crop_edge,
    uncrop_bits,
)

OUTPUT_MODES = ("binary_mask", "coco_rle")
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
MASKS_PER_POINT = 3  # SAM's multimask output
MAX_CROP_LAYERS = 4  # layer i has 4^i crops: 4 layers embed the image 341 times
CROP_EDGE_PIXELS = 20.0  # SAM's is_box_near_crop_edge tolerance

Decode = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]
Upscale = Callable[[np.ndarray], np.ndarray]
EmbedCrop = Callable[[CropBox], Tuple[Decode, Upscale]]


@dataclass
class EverythingSpec:
    """How everything mode prompts, filters and returns masks (SAM's automatic mask generator defaults)."""

    points_per_side: int = field(
        default=32,
        metadata=option(
            f"everything mode: a grid of N x N prompt points (at most {POINTS_PER_SIDE.default}, "
            f"{POINTS_PER_SIDE.env})",
            low=1,
        ),
    )
    points_per_batch: int = field(
        default=64, metadata=option("prompt points per decoder call (more: faster, more memory)", low=1)
    )
    pred_iou_thresh: float = field(
        default=0.88, metadata=option("keep masks whose predicted IoU is above this (0: all)", low=0, high=1)
    )
    stability_score_thresh: float = field(
        default=0.95,
        metadata=option("keep masks whose stability score is at least this (0: all)", low=0, high=1),
    )
    stability_score_offset: float = field(
        default=1.0, metadata=option("logit offset the stability score thresholds at, up and down", low=0)
    )
    box_nms_thresh: float = field(
        default=0.7,
        metadata=option("box IoU above which the lower-scored duplicate mask goes", low=0, high=1),
    )
    min_mask_region_area: int = field(
        default=0, metadata=option("remove holes and islands smaller than this many pixels (0: off)", low=0)
    )
    mask_threshold: float = field(default=0.0, metadata=option("logit above which a pixel is in a mask"))
    output_mode: str = field(
        default="binary_mask",
        metadata=option("masks as (H, W) bool arrays or COCO RLE dicts", choices=OUTPUT_MODES),
    )
    crop_n_layers: int = field(
        default=0,
        metadata=option(
            "also prompt crops of the image: layer i cuts it into 2^i x 2^i overlapping crops, each embedded "
            f"on its own (finds smaller objects; 0: the whole image only; at most {MAX_CROP_LAYERS})",
            low=0,
            high=MAX_CROP_LAYERS,
        ),
    )
    crop_nms_thresh: float = field(
        default=0.7,
        metadata=option(
            "box IoU above which a mask found again in another crop goes (the smaller crop's stays)",
            low=0,
            high=1,
        ),
    )
    crop_overlap_ratio: float = field(
        default=512 / 1500,
        metadata=option(
            "how far neighbouring crops of the first crop layer overlap, as a fraction of the image's "
            "shorter side (deeper layers overlap less)",
            low=0,
            high=1,
            shown="512/1500, SAM's",
        ),
    )
    crop_n_points_downscale_factor: int = field(
        default=1,
        metadata=option("crop layer i prompts with points_per_side / FACTOR^i points per side", low=1),
    )
    # one (N, 2) grid of (x, y) in [0, 1] per crop layer, replacing the points_per_side grids (API only)
    point_grids: Optional[Tuple[Tuple[Tuple[float, float], ...], ...]] = None

    def __post_init__(self) -> None:
        for spec_field in fields(self):
            value = getattr(self, spec_field.name)
            if spec_field.type in (int, "int") and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{flag_of(spec_field)} must be a whole number, got {value!r}")
            if spec_field.type in (float, "float"):
                error = bound_error(flag_of(spec_field), value, None, None, False)
                if error:
                    raise ValueError(error)
        check_bounds(self)
        POINTS_PER_SIDE.check(self.points_per_side, "--points-per-side", "SAM's default is 32")
        if self.output_mode not in OUTPUT_MODES:
            raise ValueError(
                f"--output-mode {self.output_mode!r} is unknown; choose {', '.join(OUTPUT_MODES)}"
            )
        if self.point_grids is not None:
            self.point_grids = checked_grids(self.point_grids, self.crop_n_layers)

    def layer_grids(self) -> List[np.ndarray]:
        """One (N, 2) float64 grid of (x, y) in [0, 1] per crop layer: ``point_grids``, or SAM's grids of
        ``points_per_side // crop_n_points_downscale_factor**i`` points per side (at least 1)."""
        if self.point_grids is not None:
            return [np.asarray(grid, dtype=np.float64).reshape(-1, 2) for grid in self.point_grids]
        factor = self.crop_n_points_downscale_factor
        return [
            point_grid(max(1, int(self.points_per_side / factor**layer)))
            for layer in range(self.crop_n_layers + 1)
        ]


def point_grid(points_per_side: int) -> np.ndarray:
    """(N*N, 2) float64 (x, y) points in [0, 1]: cell centres of an N x N grid, row by row (SAM's grid)."""
    offset = 1.0 / (2 * points_per_side)
    along_side = np.linspace(offset, 1.0 - offset, points_per_side)
    xs, ys = np.meshgrid(along_side, along_side)
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)


def image_point_grid(points_per_side: int, image_size_hw: Tuple[int, int]) -> np.ndarray:
    """(N*N, 2) float64 (x, y) pixel coordinates of ``point_grid`` on an (H, W) = ``image_size_hw`` image."""
    height, width = image_size_hw
    return point_grid(points_per_side) * np.array([[width, height]])


def stability_scores(logits: np.ndarray, mask_threshold: float, offset: float) -> np.ndarray:
    """(M,) float32 IoU of each mask thresholded at ``mask_threshold + offset`` and ``- offset``.

    ``logits``: (M, H, W) float32. The higher threshold's mask lies inside the
    lower one's, so the IoU is a ratio of pixel counts; NaN where both are empty.
    """
    logits = np.asarray(logits)
    high = np.count_nonzero(logits > np.float32(mask_threshold + offset), axis=(-2, -1))
    low = np.count_nonzero(logits > np.float32(mask_threshold - offset), axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return high.astype(np.float32) / low.astype(np.float32)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(..., 4) int64 XYXY boxes (inclusive pixel indices) around (..., H, W) bool masks; empty: zeros."""
    masks = np.asarray(masks, dtype=bool)
    height, width = masks.shape[-2:]
    if height == 0 or width == 0:
        return np.zeros((*masks.shape[:-2], 4), dtype=np.int64)
    rows = masks.any(axis=-1)  # (..., H)
    cols = masks.any(axis=-2)  # (..., W)
    top = np.argmax(rows, axis=-1)
    bottom = height - 1 - np.argmax(rows[..., ::-1], axis=-1)
    left = np.argmax(cols, axis=-1)
    right = width - 1 - np.argmax(cols[..., ::-1], axis=-1)
    boxes = np.stack([left, top, right, bottom], axis=-1).astype(np.int64)
    boxes[~rows.any(axis=-1)] = 0
    return boxes


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """(K,) int64 indices of the boxes kept, highest score first (``torchvision.ops.nms``).

    ``boxes``: (N, 4) XYXY, compared in float32; ``scores``: (N,). A box is
    dropped when its IoU with a kept, higher-ranked box is above ``iou_thresh``.
    Equal scores rank by index (torchvision's stable sort); boxes of zero area never overlap.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores), kind="stable")
    x1, y1, x2, y2 = (boxes[order, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for rank in range(len(order)):
        if suppressed[rank]:
            continue
        kept.append(order[rank])
        rest = slice(rank + 1, None)
        width = np.maximum(np.float32(0), np.minimum(x2[rank], x2[rest]) - np.maximum(x1[rank], x1[rest]))
        height = np.maximum(np.float32(0), np.minimum(y2[rank], y2[rest]) - np.maximum(y1[rank], y1[rest]))
        overlap = width * height
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = overlap / (areas[rank] + areas[rest] - overlap)
        suppressed[rest] |= iou.astype(np.float64) > iou_thresh  # torchvision compares in double
    return np.asarray(kept, dtype=np.int64)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> Tuple[np.ndarray, bool]:
    """(H, W) bool mask without 8-connected holes (``mode="holes"``) or islands (``"islands"``) smaller than
    ``area_thresh`` pixels, and whether any were found (SAM's ``remove_small_regions``).

    Holes are the components of the mask's complement, the outer background
    included. When every island is small, the largest (the first in raster order) stays.
    """
    from scipy import ndimage  # only here: importing the runtime stays light

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    filling_holes = mode == "holes"
    regions, count = ndimage.label(mask ^ filling_holes, structure=EIGHT_CONNECTED)
    sizes = np.bincount(regions.reshape(-1), minlength=count + 1)[1:]
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    in_result = np.zeros(count + 1, dtype=bool)  # by label; label 0 is outside the working regions
    if filling_holes:
        in_result[0] = True
        in_result[1:] = small
    elif small.all():
        in_result[1 + int(np.argmax(sizes))] = True
    else:
        in_result[1:] = ~small
    return in_result[regions], True


def encode_coco_rle(mask: np.ndarray) -> Dict[str, object]:
    """COCO RLE of an (H, W) bool mask: ``{"size": [H, W], "counts": str}`` (pycocotools, column-major)."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(n) for n in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def box_xyxy_to_xywh(box: np.ndarray) -> List[int]:
    """[x, y, w, h] of one (4,) XYXY box, as SAM's records give it (w = x1 - x0)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def _decoded(decode: Decode, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(K*C, h, w) float32 low-res logits and (K*C,) float32 predicted IoUs for (K, 2) points, checked."""
    low_res, iou = decode(points.astype(np.float32))
    low_res, iou = np.asarray(low_res, dtype=np.float32), np.asarray(iou, dtype=np.float32)
    if low_res.ndim != 4 or low_res.shape[0] != len(points) or iou.shape != low_res.shape[:2]:
        raise ValueError(
            f"decode must return (K, C, h, w) logits and (K, C) IoUs for K={len(points)} points, "
            f"got {low_res.shape} and {iou.shape}"
        )
    return low_res.reshape(-1, *low_res.shape[2:]), iou.reshape(-1)


def _batch_candidates(
    decode: Decode, upscale: Upscale, points: np.ndarray, crop: CropBox, size_hw, spec, counts
) -> Dict:
    """The masks of one batch of (K, 2) points (in the crop's pixels) that pass the filters (predicted IoU,
    stability, crop edge): bits packed in the whole image, boxes and points in its pixels, scores."""
    crop_hw = (crop[3] - crop[1], crop[2] - crop[0])
    low_res, iou = _decoded(decode, points)
    counts.candidates += len(iou)
    point_of_mask = np.repeat(points, len(iou) // len(points), axis=0)
    keep = iou > np.float32(spec.pred_iou_thresh) if spec.pred_iou_thresh > 0 else np.ones(len(iou), bool)
    low_res, iou, point_of_mask = low_res[keep], iou[keep], point_of_mask[keep]
    counts.pred_iou_thresh += int(np.count_nonzero(~keep))
    logits = np.zeros((0, *crop_hw), np.float32)
    if len(iou):
        logits = np.asarray(upscale(low_res), dtype=np.float32)
    if logits.shape != (len(iou), *crop_hw):
        raise ValueError(f"upscale must return {(len(iou), *crop_hw)} logits, got {logits.shape}")
    stability = stability_scores(logits, spec.mask_threshold, spec.stability_score_offset)
    keep = np.ones(len(iou), bool)
    if spec.stability_score_thresh > 0:
        keep = stability >= np.float32(spec.stability_score_thresh)
    counts.stability_score_thresh += int(np.count_nonzero(~keep))
    masks = logits[keep] > np.float32(spec.mask_threshold)
    boxes = masks_to_boxes(masks)
    inside = ~near_crop_edge(boxes, crop, size_hw, CROP_EDGE_PIXELS)
    counts.crop_edge += int(np.count_nonzero(~inside))
    offset = np.array(crop[:2])
    return {
        "bits": uncrop_bits(masks[inside], crop, size_hw),
        "boxes": boxes[inside] + np.tile(offset, 2),
        "iou": iou[keep][inside],
        "stability": stability[keep][inside],
        "points": point_of_mask[keep][inside] + offset,
        "crops": np.tile(np.array(crop, np.int64), (int(np.count_nonzero(inside)), 1)),
    }


def _unpack(bits: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask from one packed row."""
    return np.unpackbits(bits, count=size_hw[0] * size_hw[1]).astype(bool).reshape(size_hw)


def _without_small_regions(candidates: Dict, size_hw, spec: EverythingSpec) -> Dict:
    """SAM's ``postprocess_small_regions``: clean every mask, then NMS preferring the masks left unchanged."""
    bits, boxes, unchanged = [], [], []
    for row in candidates["bits"]:
        mask, holes_found = remove_small_regions(_unpack(row, size_hw), spec.min_mask_region_area, "holes")
        mask, islands_found = remove_small_regions(mask, spec.min_mask_region_area, "islands")
        bits.append(np.packbits(mask.reshape(-1)))
        boxes.append(masks_to_boxes(mask))
        unchanged.append(float(not (holes_found or islands_found)))
    cleaned = dict(candidates, bits=np.stack(bits), boxes=np.stack(boxes))
    keep = box_nms(cleaned["boxes"], np.asarray(unchanged), max(spec.box_nms_thresh, spec.crop_nms_thresh))
    return {name: values[keep] for name, values in cleaned.items()}


def _records(candidates: Dict, size_hw, spec: EverythingSpec) -> List[Dict]:
    """One record per kept mask, with SAM's keys (see ``generate_masks``)."""
    records = []
    for i, row in enumerate(candidates["bits"]):
        mask = _unpack(row, size_hw)
        records.append(
            {
                "segmentation": encode_coco_rle(mask) if spec.output_mode == "coco_rle" else mask,
                "area": int(np.count_nonzero(mask)),
                "bbox": box_xyxy_to_xywh(candidates["boxes"][i]),
                "predicted_iou": float(candidates["iou"][i]),
                "point_coords": [[float(v) for v in candidates["points"][i]]],
                "stability_score": float(candidates["stability"][i]),
                "crop_box": box_xyxy_to_xywh(candidates["crops"][i]),
            }
        )
    return records


def _points_per_batch(spec: EverythingSpec, size_hw: Tuple[int, int], points: int, note: bool = True) -> int:
    """``points_per_batch``, lowered (with a note) so that one batch's upscaled logits, the peak of
    everything mode (3 float32 masks of H x W per point), stay within ``limits.DECODED_BYTES``.

    The masks are the same whatever the batch: each is filtered on its own before NMS.
    """
    per_point = MASKS_PER_POINT * size_hw[0] * size_hw[1] * 4
    fits = max(1, DECODED_BYTES.value // per_point)
    batch = min(spec.points_per_batch, points)
    if batch > fits and not note:
        return fits
    if batch > fits:
        warnings.warn(
            f"everything mode: {batch} points per batch would hold {batch * per_point / 2**30:.1f} GiB of "
            f"logits for a {size_hw[1]}x{size_hw[0]} image; using {fits} per batch "
            f"({DECODED_BYTES.env} sets the limit)",
            UserWarning,
            stacklevel=4,
        )
        batch = fits
    return batch


def _kept(candidates: Dict, keep: np.ndarray) -> Dict:
    return {name: values[keep] for name, values in candidates.items()}


def _crop_candidates(embed_crop: EmbedCrop, crop: CropBox, grid: np.ndarray, size_hw, spec, counts, bar):
    """One crop: embedded, its grid decoded batch by batch (the bar advanced), filtered, de-duplicated."""
    decode, upscale = embed_crop(crop)
    crop_hw = (crop[3] - crop[1], crop[2] - crop[0])
    points = grid * np.array([[crop_hw[1], crop_hw[0]]])
    counts.points += len(points)
    batch = _points_per_batch(spec, crop_hw, len(points))
    batches = []
    for start in range(0, len(points), batch):
        batches.append(
            _batch_candidates(decode, upscale, points[start : start + batch], crop, size_hw, spec, counts)
        )
        bar.update(1)
    candidates = {name: np.concatenate([part[name] for part in batches]) for name in batches[0]}
    keep = box_nms(candidates["boxes"], candidates["iou"], spec.box_nms_thresh)
    counts.box_nms_thresh += len(candidates["iou"]) - len(keep)
    return _kept(candidates, keep)


def generate_crop_masks(
    embed_crop: EmbedCrop,
    image_size_hw: Tuple[int, int],
    spec: Optional[EverythingSpec] = None,
    progress: Optional[bool] = False,
    counts: Optional[CandidateCounts] = None,
) -> List[Dict]:
    """Everything mode on one image of ``image_size_hw`` = (H, W), crop by crop: SAM's automatic mask records.

    ``embed_crop((x0, y0, x1, y1))`` embeds that crop of the image and returns
    ``(decode, upscale)`` for it: ``decode(points)``: (K, 2) float32 (x, y) pixels
    in the crop, one positive point per prompt -> ((K, C, h, w) float32 low-res
    mask logits, (K, C) float32 predicted IoUs), C = 3 multimask outputs;
    ``upscale(logits)``: (M, h, w) -> (M, h', w') float32 logits at the crop's size.
    Returns one dict per mask, best first, with SAM's keys: ``segmentation``
    ((H, W) bool, or a COCO RLE dict), ``area``, ``bbox`` (XYWH), ``predicted_iou``,
    ``point_coords`` ([[x, y]]), ``stability_score``, ``crop_box`` (XYWH); all in the
    image's pixels. ``progress``: a bar over the point batches (None: on a terminal
    only; a log gets one line per crop). ``counts``: filled with what each filter
    removed; when no mask is left, a warning names the thresholds that removed them.
    """
    spec = spec or EverythingSpec()
    counts = counts if counts is not None else CandidateCounts()
    if spec.output_mode == "coco_rle":  # fail before the decoder runs, as SAM does
        import pycocotools.mask  # noqa: F401
    size_hw = (int(image_size_hw[0]), int(image_size_hw[1]))
    boxes, layers = crop_boxes(size_hw, spec.crop_n_layers, spec.crop_overlap_ratio)
    grids = spec.layer_grids()
    counts.crops = len(boxes)
    batches = 0  # the bar's length: every crop's point batches
    for (x0, y0, x1, y1), layer in zip(boxes, layers):
        points = len(grids[layer])
        batches += -(-points // _points_per_batch(spec, (y1 - y0, x1 - x0), points, note=False))
    parts, started = [], time.perf_counter()
    with progress_bar(None, "everything", progress, total=batches) as bar:
        for number, (crop, layer) in enumerate(zip(boxes, layers), 1):
            parts.append(_crop_candidates(embed_crop, crop, grids[layer], size_hw, spec, counts, bar))
            if progress is not False and not bar_drawn(progress):
                log_line(
                    f"everything: crop {number}/{len(boxes)} {list(crop)}: {len(parts[-1]['iou'])} masks "
                    f"({time.perf_counter() - started:.1f} s)"
                )
    candidates = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    if len(boxes) > 1:  # the same object found in several crops: the smaller crop's mask stays
        keep = box_nms(
            candidates["boxes"], 1.0 / box_areas(candidates["crops"]).astype(np.float32), spec.crop_nms_thresh
        )
        counts.crop_nms_thresh += len(candidates["iou"]) - len(keep)
        candidates = _kept(candidates, keep)
    if spec.min_mask_region_area > 0 and len(candidates["iou"]):
        before = len(candidates["iou"])
        candidates = _without_small_regions(candidates, size_hw, spec)
        counts.min_mask_region_area += before - len(candidates["iou"])
    counts.kept = len(candidates["iou"])
    if counts.kept == 0:
        warnings.warn(counts.summary(spec), UserWarning, stacklevel=2)
    return _records(candidates, size_hw, spec)


def generate_masks(
    decode: Decode, upscale: Upscale, image_size_hw: Tuple[int, int], spec: Optional[EverythingSpec] = None
) -> List[Dict]:
    """``generate_crop_masks`` for a decoder of the whole image (no crop layers): ``decode(points)`` takes
    (K, 2) float32 (x, y) pixels of the image, ``upscale`` gives logits at its (H, W)."""
    spec = spec or EverythingSpec()
    if spec.crop_n_layers:
        raise ValueError("generate_masks decodes the whole image only; crop layers need generate_crop_masks")
    return generate_crop_masks(lambda crop: (decode, upscale), image_size_hw, spec)


__all__ = [
    "CandidateCounts",
    "EverythingSpec",
    "OUTPUT_MODES",
    "box_nms",
    "box_xyxy_to_xywh",
    "encode_coco_rle",
    "generate_crop_masks",
    "generate_masks",
    "image_point_grid",
    "masks_to_boxes",
    "point_grid",
    "remove_small_regions",
    "stability_scores",
]
