"""Reading masks: raw label values, palettes and colour codes, and the binary-mask rules.

Masks open through ``common.imaging``'s reader (the same size limits and one-line
``ImageReadError``s as images). Values are labels: NaN, fractional or negative ones are
refused. Binary masks (``read_binary_mask``): 0 and one value k -> foreground = every
non-zero pixel; a lossy (JPEG) mask, or grey levels spanning 0..255 (0..65535) ->
foreground above half range, with a warning (once) that counts the in-between pixels;
anything else (0/1/2 label maps) is refused, pointing to multi-class.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

from naslora_deploy.common.errors import first_line
from naslora_deploy.common.imaging import (
    IGNORE_INDEX,
    LOSSY_FORMATS,
    NUMERIC_MODES,
    ImageReadError,
    ImageSource,
    note,
    open_image,
)


def _mask_values(image: Image.Image, palette) -> np.ndarray:
    if palette is not None:
        rgb = np.asarray(image.convert("RGB")).astype(np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        out = np.full(codes.shape, IGNORE_INDEX, dtype=np.int64)
        for (r, g, b), index in palette.items():
            out[codes == ((r << 16) | (g << 8) | b)] = index
        return out
    if image.mode not in ("P", "PA", "1", "L") + NUMERIC_MODES:
        image = image.convert("L")
    array = np.asarray(image)
    return array[:, :, 0] if array.ndim == 3 else array


def mask_labels(array: np.ndarray, source: object) -> np.ndarray:
    """Raw mask values as int64; NaN, fractional or negative values are an ``ImageReadError``."""
    if array.dtype.kind not in "biuf":
        raise ImageReadError(f"{source}: mask values of type {array.dtype} are not labels")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageReadError(f"{source}: the mask holds NaN or infinite values; save whole-number labels")
        if (array != np.round(array)).any():
            raise ImageReadError(
                f"{source}: the mask holds fractional values; save whole-number labels (e.g. 8-bit PNG)"
            )
    labels = array.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ImageReadError(
            f"{source}: the mask holds negative values ({int(labels.min())}); labels are >= 0"
        )
    return labels


def read_mask(path: ImageSource, palette: Optional[Dict[Tuple[int, int, int], int]] = None) -> np.ndarray:
    """Read a mask file as an (H, W) int64 array of raw label values.

    Palette PNGs give their indices; colour-coded masks are mapped through
    ``palette`` (RGB -> class index; unknown colours become IGNORE_INDEX).
    """
    return _read_mask(open_image(path), path, palette)


def _read_mask(image: Image.Image, path: ImageSource, palette) -> np.ndarray:
    try:
        array = _mask_values(image, palette)
    except Exception as exc:  # an exotic mode Pillow cannot convert
        raise ImageReadError(f"{path}: cannot read the mask's values ({first_line(exc, 120)})") from None
    return mask_labels(array, path)


def read_binary_mask(path: ImageSource) -> np.ndarray:
    """Read a binary task's mask file as (H, W) uint8 0/1 (rules: ``binarize_mask``)."""
    image = open_image(path)
    return binarize_mask(_read_mask(image, path, None), lossy=image.format in LOSSY_FORMATS, source=path)


def _listing(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown + (f", ... ({values.size} values)" if values.size > limit else "")


def binarize_mask(raw: np.ndarray, lossy: bool = False, source: object = "the mask") -> np.ndarray:
    """0/1 foreground from a binary mask's raw values.

    * 0 and one value k (0/1, 0/255, 0/100, 0/65535; or a single value): foreground = non-zero;
    * ``lossy`` (a JPEG mask), or grey levels reaching 255 (65535): foreground above half range,
      said once per process with the first mask's count of in-between pixels (a 0/128/255
      trimap's 128 becomes foreground: the warning says so);
    * anything else (0/1/2 label maps...): ``ImageReadError`` naming ``source`` and the values.
    """
    values = np.unique(raw)
    if values.size == 0 or values.size == 1 or (values.size == 2 and values[0] == 0):
        if values.size == 2 and int(values[1]) not in (1, 255, 65535):
            note(f"binary masks holding 0 and {int(values[1])}: foreground is every non-zero pixel")
        return (raw != 0).astype(np.uint8)
    top = 65535 if values[-1] > 255 else 255
    if lossy or values[-1] == top:
        _note_thresholded(raw, values, top, lossy, source)
        return (raw > top // 2).astype(np.uint8)
    raise ImageReadError(
        f"{source}: a binary mask holds 0 and one foreground value, this one holds {_listing(values)}; "
        "for class indices (0 = background, 1, 2, ...) add a classes.json with the class names or pass "
        "--classes N"
    )


def _note_thresholded(raw: np.ndarray, values: np.ndarray, top: int, lossy: bool, source: object) -> None:
    """Say once per process that masks with values between 0 and ``top`` are cut at half range."""
    between = values[(values > 0) & (values < top)]
    count = int(np.isin(raw, between).sum())
    kind = "lossy (JPEG) binary masks" if lossy else f"binary masks with values between 0 and {top}"
    note(
        f"{kind}: foreground is every pixel above {top // 2}, the rest background (first: {source}, "
        f"{count:,} of {raw.size:,} pixels hold {_listing(between)}); save 0/{top} masks to choose yourself",
        key=f"thresholded-{lossy}",
    )
