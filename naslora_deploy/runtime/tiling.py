"""Tiled segmentation of images larger than the model's input (remote sensing, pathology).

    result = segment_tiled(segmenter, "scene.tif", tile=1024, overlap=128)

Resizing a 4000 x 3000 scene to a 1024-pixel model input loses its detail. Here the
image is cut into ``tile`` x ``tile`` windows that share at least ``overlap`` pixels with
their neighbours (``tile_windows``; the first and last window of a row or column are
flush with the image's edges, the ones between evenly spread). Each window goes
through ``Segmenter.dense_maps`` at its own size (binary: foreground logits;
multi-class: class probabilities) and the maps are blended into one full-size map,
accumulated in place.

Blending: each window's weight is the outer product of two 1-D linear ramps (a tent,
"feathering"). Along an axis it is 1 except where the window overlaps a neighbour;
across an overlap of L pixels it falls as (L - i) / (L + 1) while the neighbour's
rises as (i + 1) / (L + 1). Why: a window's prediction is least reliable at its inner
edges, where objects are cut and context is missing, so its say fades out towards
them; the two ramps of an overlap sum to exactly 1 (no seam, no bright or dark band);
no weight is ever 0, so every pixel is covered; at the image's own border there is
no ramp (no other window could speak for those pixels); and where only one window
covers a pixel its weight is exactly 1, so there the blended map *is* that window's
map, bit for bit. The blended map is divided by the summed weights, which differ
from 1 (past float32 rounding) only where three windows meet along an axis.
"""

from __future__ import annotations

import numbers
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.limits import DECODED_BYTES, TILE_WINDOWS
from naslora_deploy.common.options import bound_error
from naslora_deploy.runtime.results import ImageInput, Segmentation

Span = Tuple[int, int]  # [start, end) along one axis
Window = Tuple[int, int, int, int]  # (y0, x0, y1, x1): rows y0..y1-1, columns x0..x1-1
BAND = 256  # rows per step of the multi-class argmax (bounds its int64 temporary)


def check_tiling(tile, overlap, flags: Tuple[str, str] = ("tile", "overlap")) -> None:
    """One ``ValueError`` line unless ``tile`` >= 1 and 0 <= ``overlap`` < ``tile`` are whole numbers.

    ``flags``: how the two values are named in the message (the CLI passes its options).
    """
    for flag, value, low in ((flags[0], tile, 1), (flags[1], overlap, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{flag} must be a whole number of pixels, got {value!r}")
        error = bound_error(flag, int(value), low, None, False)
        if error:
            raise ValueError(error)
    if overlap >= tile:
        raise ValueError(
            f"{flags[1]} {overlap} must be smaller than {flags[0]} {tile}: neighbouring windows "
            "share the overlap, so the next window would not move on"
        )


def axis_window_count(length: int, tile: int, overlap: int) -> int:
    """How many windows ``axis_spans`` lays along an axis of ``length`` (counted, nothing built)."""
    return 1 if length <= tile else 1 + -(-(length - tile) // (tile - overlap))  # ceil


def check_window_count(height: int, width: int, tile: int, overlap: int, source: object = "the image") -> int:
    """The number of windows for a ``height`` x ``width`` image, refused above ``limits.TILE_WINDOWS``
    before any window is built (``--tile 32 --overlap 31`` on a large image asks for millions)."""
    check_tiling(tile, overlap)
    count = axis_window_count(height, tile, overlap) * axis_window_count(width, tile, overlap)
    todo = f"a tile of {tile} with overlap {overlap} moves {tile - overlap} px per window: give a larger tile"
    TILE_WINDOWS.check(count, f"{source} ({width}x{height}, --tile {tile} --overlap {overlap})", todo)
    return count


def axis_spans(length: int, tile: int, overlap: int) -> List[Span]:
    """[start, end) windows of ``tile`` pixels along an axis of ``length``, the fewest sharing >= ``overlap``.

    The first starts at 0, the last ends at ``length`` (flush with the edge) and the
    starts between are spread evenly (at most ``tile - overlap`` apart), so the spare
    overlap is shared by all neighbours instead of making the last window a near
    copy of the one before. An axis no longer than ``tile`` gives one window, ``(0, length)``.
    """
    check_tiling(tile, overlap)
    if length <= tile:
        return [(0, length)]
    gaps = axis_window_count(length, tile, overlap) - 1
    starts = [(i * (length - tile) + gaps // 2) // gaps for i in range(gaps + 1)]  # rounded, exact
    return [(start, start + tile) for start in starts]


def tile_windows(height: int, width: int, tile: int, overlap: int) -> List[Window]:
    """(y0, x0, y1, x1) windows covering a ``height`` x ``width`` image, row by row.

    Each is ``tile`` x ``tile`` pixels (or the image's size along a shorter side);
    neighbours share at least ``overlap`` pixels; the last row and column are flush
    with the image's edges. An image no larger than a tile gives one window.
    """
    if height < 1 or width < 1:
        raise ValueError(f"a {width}x{height} image has no pixels to tile")
    check_window_count(height, width, tile, overlap)
    rows, cols = axis_spans(height, tile, overlap), axis_spans(width, tile, overlap)
    return [(y0, x0, y1, x1) for y0, y1 in rows for x0, x1 in cols]


def axis_weights(spans: Sequence[Span]) -> List[np.ndarray]:
    """For each span along one axis, its (end - start,) float32 blending weights (module docstring).

    1 where no neighbour overlaps; across an overlap of L pixels with a neighbour a
    linear ramp from 1 / (L + 1) at the edge to L / (L + 1); always > 0.
    """
    weights = []
    for i, (start, end) in enumerate(spans):
        weight = np.ones(end - start, np.float64)
        position = np.arange(start, end)
        if i > 0 and spans[i - 1][1] > start:  # rising across the overlap with the previous span
            shared = spans[i - 1][1] - start
            weight = np.minimum(weight, (position - start + 1) / (shared + 1))
        if i + 1 < len(spans) and spans[i + 1][0] < end:  # falling across the overlap with the next
            shared = end - spans[i + 1][0]
            weight = np.minimum(weight, (end - position) / (shared + 1))
        weights.append(weight.astype(np.float32))
    return weights


def window_weights(height: int, width: int, tile: int, overlap: int) -> List[np.ndarray]:
    """One (y1 - y0, x1 - x0) float32 weight per window of ``tile_windows``, in its order."""
    wy = axis_weights(axis_spans(height, tile, overlap))
    wx = axis_weights(axis_spans(width, tile, overlap))
    return [np.outer(row, col) for row in wy for col in wx]


def _coverage(spans: Sequence[Span], weights: Sequence[np.ndarray], length: int) -> np.ndarray:
    """(length,) float32: the summed weights of every span along one axis."""
    total = np.zeros(length, np.float32)
    for (start, end), weight in zip(spans, weights):
        total[start:end] += weight
    return total


def segment_tiled(segmenter, image: ImageInput, tile: int, overlap: int, batch: int = 4) -> Segmentation:
    """Segment ``image`` (a path or an (H, W[, C]) array) window by window; one ``Segmentation``.

    ``batch`` windows go through ``segmenter.dense_maps`` at a time. Binary: the
    blended (H, W) logits give probability = sigmoid, mask = probability > 0.5.
    Multi-class: the blended (K, H, W) probabilities give class_map = argmax (uint8),
    mask = class_map != 0, probability = the winning class's, class_areas per name.
    Timings (ms): read, tiles (``dense_maps``), blend, post.
    """
    start = time.perf_counter()
    check_tiling(tile, overlap)
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"batch must be a whole number >= 1, got {batch!r}")
    array = segmenter.read(image)  # the run's input mapping, once for the whole image
    height, width = array.shape[:2]
    source = image if isinstance(image, (str, Path)) else "the image"
    check_window_count(height, width, tile, overlap, source)
    rows, cols = axis_spans(height, tile, overlap), axis_spans(width, tile, overlap)
    wy, wx = axis_weights(rows), axis_weights(cols)
    cells = [(r, c) for r in range(len(rows)) for c in range(len(cols))]
    timings = {"read": time.perf_counter() - start, "tiles": 0.0, "blend": 0.0}
    total = None  # (H, W) or (K, H, W) float32, allocated at the first map's shape
    for first in range(0, len(cells), batch):
        chunk = cells[first : first + batch]
        t_tiles = time.perf_counter()
        crops = [array[slice(*rows[r]), slice(*cols[c])] for r, c in chunk]
        maps = segmenter.dense_maps(crops)
        t_blend = time.perf_counter()
        for (r, c), dense in zip(chunk, maps):
            if total is None:
                total = _blend_buffer(dense.shape[:-2], height, width, source)
            dense *= np.outer(wy[r], wx[c])  # in place; broadcasts over K
            total[..., slice(*rows[r]), slice(*cols[c])] += dense
        timings["tiles"] += t_blend - t_tiles
        timings["blend"] += time.perf_counter() - t_blend
    t_post = time.perf_counter()
    total /= _coverage(rows, wy, height)[:, None]  # two in-place divisions: no (H, W) temporary
    total /= _coverage(cols, wx, width)
    result = _finish(segmenter, total, (height, width))
    timings["post"] = time.perf_counter() - t_post
    result.timings = {k: 1000.0 * v for k, v in timings.items()}
    return result


def _blend_buffer(classes: Tuple[int, ...], height: int, width: int, source: object) -> np.ndarray:
    """The zeroed float32 (H, W) or (K, H, W) sum of the blended windows, its size checked first."""
    size = int(np.prod(classes, dtype=np.int64)) * height * width * 4
    DECODED_BYTES.check(size, f"{source}: the blended map of {width}x{height}", "tile a smaller image")
    return np.zeros((*classes, height, width), np.float32)


def _finish(segmenter, total: np.ndarray, size: Tuple[int, int]) -> Segmentation:
    """The blended map as a ``Segmentation``: (H, W) logits (binary) or (K, H, W) probabilities."""
    if total.ndim == 2:  # sigmoid in place, the same operations as segmenter.sigmoid
        np.multiply(total, 0.5, out=total)
        np.tanh(total, out=total)
        total += 1.0
        total *= 0.5
        return Segmentation(size, total > 0.5, total)
    count = total.shape[0]
    if count > 256:
        raise NasloraError(f"{count} classes do not fit the uint8 class map (at most 256)")
    class_map = np.empty(size, np.uint8)
    probability = np.empty(size, np.float32)
    for y in range(0, size[0], BAND):
        band = total[:, y : y + BAND]
        class_map[y : y + BAND] = band.argmax(0)
        band.max(0, out=probability[y : y + BAND])
    names = (getattr(segmenter, "classes", None) or {}).get("names") or [str(k) for k in range(count)]
    pixels = np.bincount(class_map.ravel(), minlength=count)
    areas = {name: int(pixels[k]) for k, name in enumerate(names)}
    return Segmentation(size, class_map != 0, probability, class_map, areas)
