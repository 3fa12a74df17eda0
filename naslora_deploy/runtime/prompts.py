"""Prompts in, masks out: SamPredictor's prompt layout and post-processing, in numpy.

``prompt_batch`` lays K prompts out as SAM's prompt encoder does (points, then
a box's two corners, or one padding point when there is no box) in the padded
model-input frame; ``MaskUpscaler`` is SAM's ``postprocess_masks`` (bilinear
to the model input, crop the padding, bilinear to the original size, both with
``align_corners=False`` and no antialiasing, as ``F.interpolate`` does);
``mask_batch`` / ``mask_feeds`` take an earlier prediction's low-res logits to
the prompt decoder's ``mask_input`` (refinement, as SamPredictor's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import resized_shape

PAD_LABEL = -1.0
# the prompt decoder's optional inputs (segment-anything's SamOnnxModel's): an earlier prediction's low-res
# logits (B, 1, 4h, 4w) and whether to use them (B, 1); B = 1 (shared by the K prompts) or K. Artifacts
# exported before them have neither, and the runtime asks them for none.
MASK_INPUT = "mask_input"
HAS_MASK_INPUT = "has_mask_input"
MASK_INPUT_AXES = {MASK_INPUT: {0: "masks"}, HAS_MASK_INPUT: {0: "masks"}}
NO_MASK_INPUT = "this artifact's prompt decoder takes no mask_input; export it again"


@dataclass
class Prediction:
    """The predictor's answer, at the image's original size (SamPredictor's ``predict`` outputs).

    ``masks`` (C, H, W) bool for one prompt, (K, C, H, W) for K prompts (float32
    logits with ``return_logits``); ``scores`` (C,) / (K, C) predicted IoU;
    ``low_res_logits`` (C, h, w) / (K, C, h, w). C is 3 with ``multimask_output``, else 1.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    timings: Dict[str, float] = field(default_factory=dict)  # milliseconds

    def __iter__(self) -> Iterator[np.ndarray]:
        """``masks, scores, low_res_logits = prediction``, as SamPredictor's ``predict`` returns them."""
        return iter((self.masks, self.scores, self.low_res_logits))


def _finite_array(value, name: str, shapes: Tuple[Tuple[Optional[int], ...], ...]) -> np.ndarray:
    """``value`` as float32 with one of ``shapes`` (None: any length), finite; else one ``ValueError``."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {value!r}") from None
    fits = any(
        array.ndim == len(shape) and all(d is None or d == n for d, n in zip(shape, array.shape))
        for shape in shapes
    )
    if not fits:
        wanted = " or ".join("(" + ", ".join("N" if d is None else str(d) for d in s) + ")" for s in shapes)
        raise ValueError(f"{name} has shape {array.shape}; expected {wanted}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds nan or infinite values")
    return array


def _as_prompts(points, labels, boxes):
    """Validated (K, N, 2) points, (K, N) labels, (K, 4) boxes or None, and whether the input was batched."""
    if points is None and boxes is None:
        raise ValueError("give points (with labels) or boxes to predict from")
    batched = False
    if points is not None:
        points = _finite_array(points, "points", ((None, 2), (None, None, 2)))
        batched = points.ndim == 3
        points = points if batched else points[None]
        if labels is None:
            labels = np.ones(points.shape[:2], np.float32)
        labels = _finite_array(labels, "labels", ((None,), (None, None)))
        labels = labels if labels.ndim == 2 else labels[None]
        if labels.shape[1] != points.shape[1] or labels.shape[0] not in (1, points.shape[0]):
            raise ValueError(f"labels have shape {labels.shape[-2:]}, points {points.shape[-3:-1]}: one each")
        if not np.isin(labels, (0.0, 1.0)).all():
            raise ValueError("labels are 1 (object) or 0 (background)")
        labels = np.broadcast_to(labels, points.shape[:2])
    if boxes is not None:
        boxes = _finite_array(boxes, "boxes", ((4,), (None, 4)))
        batched = batched or boxes.ndim == 2
        boxes = boxes if boxes.ndim == 2 else boxes[None]
        if not ((boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3])).all():
            raise ValueError("boxes must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1")
    return points, labels, boxes, batched


def check_prompts_inside(points, boxes, original: Tuple[int, int]) -> None:
    """Refuse prompts that cannot be meant for this image, in one ``ValueError`` line.

    Rules: every point lies in the image (0 <= x <= W, 0 <= y <= H); every box
    overlaps the image and reaches at most one image size past its edges (a
    detector's box may overhang a little; one that starts a whole image away is a
    mistake, e.g. coordinates of another image or swapped x and y). Boxes are
    not clipped: SAM takes them as they are.
    """
    height, width = original
    if points is not None:
        flat = points.reshape(-1, 2)
        outside = (flat[:, 0] < 0) | (flat[:, 0] > width) | (flat[:, 1] < 0) | (flat[:, 1] > height)
        if outside.any():
            x, y = (float(v) for v in flat[np.argmax(outside)])
            raise ValueError(
                f"{int(outside.sum())} point(s) lie outside the {width}x{height} image, e.g. ({x:g}, {y:g}); "
                f"give points with 0 <= x <= {width} and 0 <= y <= {height}"
            )
    if boxes is not None:
        x0, y0, x1, y1 = boxes.T
        apart = (x0 >= width) | (y0 >= height) | (x1 <= 0) | (y1 <= 0)
        far = (x0 < -width) | (y0 < -height) | (x1 > 2 * width) | (y1 > 2 * height)
        wrong = apart | far
        if wrong.any():
            box = ", ".join(f"{float(v):g}" for v in boxes[np.argmax(wrong)])
            raise ValueError(
                f"{int(wrong.sum())} box(es) do not fit the {width}x{height} image, e.g. ({box}): a box must "
                f"overlap the image and reach at most one image size past its edges"
            )


def prompt_batch(
    points, labels, boxes, original: Tuple[int, int], image_size: int
) -> Tuple[np.ndarray, np.ndarray, bool]:
    """Prompts in the original image's pixels -> the prompt decoder's inputs.

    ``points`` (N, 2) or (K, N, 2) x, y; ``labels`` (N,) or (K, N), 1 object /
    0 background (default all 1); ``boxes`` (4,) or (K, 4) x0, y0, x1, y1. A
    single point set or box is shared by the K prompts of the other. Returns
    ``coords`` (K, T, 2) float32 in the model-input frame, ``labels`` (K, T)
    float32 (T = N + 2 with boxes, N + 1 padding point without) and whether the
    input was batched (the outputs keep a K axis then, as ``predict_torch``'s).
    """
    points, labels, boxes, batched = _as_prompts(points, labels, boxes)
    counts = {len(a) for a in (points, boxes) if a is not None and len(a) != 1}
    if len(counts) > 1:
        raise ValueError(f"{len(points)} point sets but {len(boxes)} boxes; give as many of each, or one")
    prompts = counts.pop() if counts else 1
    check_prompts_inside(points, boxes, original)
    height, width = original
    new_h, new_w = resized_shape(height, width, image_size)
    scale = np.array([new_w / width, new_h / height], np.float32)
    parts_xy, parts_label = [], []
    if points is not None:
        parts_xy.append(np.broadcast_to(points * scale, (prompts, *points.shape[1:])))
        parts_label.append(np.broadcast_to(labels, (prompts, labels.shape[1])))
    if boxes is not None:
        corners = (boxes.reshape(-1, 2, 2) * scale).astype(np.float32)
        parts_xy.append(np.broadcast_to(corners, (prompts, 2, 2)))
        parts_label.append(np.broadcast_to(np.array([2.0, 3.0], np.float32), (prompts, 2)))
    else:  # SAM's prompt encoder pads point-only prompts with one "not a point"
        parts_xy.append(np.zeros((prompts, 1, 2), np.float32))
        parts_label.append(np.full((prompts, 1), PAD_LABEL, np.float32))
    coords = np.ascontiguousarray(np.concatenate(parts_xy, axis=1), dtype=np.float32)
    return coords, np.ascontiguousarray(np.concatenate(parts_label, axis=1), dtype=np.float32), batched


def mask_batch(mask_input, prompts: int, batched: bool, size: int) -> Optional[np.ndarray]:
    """``predict``'s ``mask_input`` as (B, 1, size, size) float32 for K = ``prompts`` prompts (B = 1 or K),
    None for None; else one ``ValueError`` line. One prompt takes (1, size, size), SamPredictor's form, or
    (size, size); K prompts take (1 or K, 1, size, size), ``predict_torch``'s."""
    if mask_input is None:
        return None
    if batched:
        mask = _finite_array(mask_input, "mask_input", ((None, 1, size, size),))
        if len(mask) not in (1, prompts):
            raise ValueError(f"mask_input holds {len(mask)} masks for {prompts} prompts; give 1 or {prompts}")
        return np.ascontiguousarray(mask)
    mask = _finite_array(mask_input, "mask_input", ((1, size, size), (size, size)))
    return np.ascontiguousarray(mask.reshape(1, 1, size, size))


def mask_feeds(input_shapes: Dict[str, Sequence], mask_input: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
    """The prompt decoder's mask feeds, for a graph whose inputs have ``input_shapes`` (name -> shape).

    ``mask_input`` (B, 1, h, w) float32 goes in with ``has_mask_input`` 1; None
    feeds one zero mask with ``has_mask_input`` 0 (SAM's "no mask" embedding: the
    outputs are those of a graph without mask inputs). A graph exported without
    them gets no feeds, and a ``mask_input`` for it is one ``NasloraError`` line.
    """
    if MASK_INPUT not in input_shapes:
        if mask_input is not None:
            raise NasloraError(NO_MASK_INPUT)
        return {}
    if mask_input is None:
        height, width = (int(d) for d in input_shapes[MASK_INPUT][-2:])
        return {
            MASK_INPUT: np.zeros((1, 1, height, width), np.float32),
            HAS_MASK_INPUT: np.zeros((1, 1), np.float32),
        }
    mask = np.ascontiguousarray(mask_input, dtype=np.float32)
    return {MASK_INPUT: mask, HAS_MASK_INPUT: np.ones((len(mask), 1), np.float32)}


def _axis_weights(out_size: int, in_size: int, count: int):
    """The first ``count`` outputs of a bilinear resize ``in_size`` -> ``out_size`` along one axis
    (``align_corners=False``): lower and upper source indices and the upper one's weight."""
    scale = in_size / out_size
    source = np.maximum((np.arange(count, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, (source - low).astype(np.float32)


def _resize_axis(x: np.ndarray, axis: int, out_size: int, count: int) -> np.ndarray:
    low, high, weight = _axis_weights(out_size, x.shape[axis], count)
    shape = [1] * x.ndim
    shape[axis] = count
    weight = weight.reshape(shape)
    return np.take(x, low, axis=axis) * (1.0 - weight) + np.take(x, high, axis=axis) * weight


class MaskUpscaler:
    """Low-res logits (..., h, w) -> logits at the original (H, W): SAM's ``postprocess_masks``.

    Upsample to the square model input S, keep the unpadded (new_h, new_w)
    corner, resize to (H, W); only the kept rows and columns of the first step are computed.
    """

    def __init__(self, image_size: int, original: Tuple[int, int]) -> None:
        self.image_size = image_size
        self.original = tuple(int(v) for v in original)
        self.resized = resized_shape(*self.original, image_size)

    def __call__(self, low_res: np.ndarray) -> np.ndarray:
        size, (new_h, new_w), (height, width) = self.image_size, self.resized, self.original
        x = np.asarray(low_res, np.float32)
        x = _resize_axis(x, x.ndim - 2, size, new_h)
        x = _resize_axis(x, x.ndim - 1, size, new_w)
        x = _resize_axis(x, x.ndim - 2, height, height)
        return _resize_axis(x, x.ndim - 1, width, width).astype(np.float32)


# ----- prompts given as text (the command line's --points / --box) --------------------------------
def _numbers(flag: str, text: str, counts: Tuple[int, ...], form: str) -> List[float]:
    """Comma-separated finite numbers, as many as one of ``counts``, or one clear ``ValueError``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{flag} {text!r}: give {form} as finite numbers")
    return values


def parse_points(text: Optional[str]) -> Optional[List[Tuple[float, ...]]]:
    """``--points 'x,y[,label];...'`` as point tuples (None for no text), or one ``ValueError`` line."""
    if not text:
        return None
    points = [tuple(_numbers("--points", item, (2, 3), "x,y or x,y,label")) for item in text.split(";")]
    if any(len(p) == 3 and p[2] not in (0.0, 1.0) for p in points):
        raise ValueError(f"--points {text!r}: a label is 1 (object) or 0 (background)")
    return points


def parse_box(text: Optional[str]) -> Optional[List[float]]:
    """``--box x0,y0,x1,y1`` as four numbers (None for no text), or one ``ValueError`` line."""
    if not text:
        return None
    x0, y0, x1, y1 = _numbers("--box", text, (4,), "x0,y0,x1,y1")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"--box {text!r}: x1 must exceed x0 and y1 must exceed y0")
    return [x0, y0, x1, y1]
