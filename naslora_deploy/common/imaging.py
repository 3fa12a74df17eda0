"""Reading images and masks, and SAM's preprocessing, in numpy and Pillow only.

No torch here: the training data pipeline and the torch-free runtime share these
functions, so what a deployed model sees is exactly what it was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.common.io import atomic_write

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
NORMALIZATIONS = ("imagenet", "minmax")  # SAM's mean/std; MedSAM's per-image min-max to [0, 1]
IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ImageReadError(NasloraError):
    """An image or mask file cannot be read or makes no sense."""


def _open(path: Union[str, Path]) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(
            f"{path}: cannot read image ({first_line(exc, 120)}); re-export it as PNG or JPEG"
        ) from None


def to_rgb_uint8(image: Union[Image.Image, np.ndarray]) -> np.ndarray:
    """Any gray, RGB, RGBA, palette or 16-bit image as an (H, W, 3) uint8 array."""
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.dtype != np.uint8:
            array = _to_uint8(array)
        if array.ndim == 2:
            return np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim == 3 and array.shape[2] in (3, 4):
            return np.ascontiguousarray(array[:, :, :3])
        raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_rgb_uint8(np.asarray(image))
    return np.asarray(image.convert("RGB"))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale integer or float data to 0..255 (16-bit by its full range, floats by 0..1)."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    top = 65535 if array.max(initial=0) > 255 else 255
    return (array.astype(np.float64) * (255.0 / top) + 0.5).astype(np.uint8)


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB."""
    return to_rgb_uint8(_open(path))


def read_mask(
    path: Union[str, Path], palette: Optional[Dict[Tuple[int, int, int], int]] = None
) -> np.ndarray:
    """Read a mask file as an (H, W) integer array of raw label values.

    Palette PNGs give their indices; colour-coded masks are mapped through
    ``palette`` (RGB -> class index; unknown colours become IGNORE_INDEX).
    """
    image = _open(path)
    if palette is not None:
        rgb = np.asarray(image.convert("RGB")).astype(np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        out = np.full(codes.shape, IGNORE_INDEX, dtype=np.int64)
        for (r, g, b), index in palette.items():
            out[codes == ((r << 16) | (g << 8) | b)] = index
        return out
    if image.mode == "P":
        return np.asarray(image).astype(np.int64)
    if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA"):
        image = image.convert("L")
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[:, :, 0]
    return array.astype(np.int64)


def binarize_mask(raw: np.ndarray, bits: Optional[int] = None) -> np.ndarray:
    """0/1 from 0/1, 0/255, 0/65535 or lossy (JPEG) masks: foreground above half range."""
    top = int(raw.max(initial=0))
    if top <= 1:
        return (raw == 1).astype(np.uint8)
    full = (1 << bits) - 1 if bits else (65535 if top > 255 else 255)
    return (raw > full // 2).astype(np.uint8)


def resized_shape(height: int, width: int, size: int) -> Tuple[int, int]:
    """SAM's ResizeLongestSide target shape: longest side to ``size``, rounded."""
    scale = size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess_image(image: np.ndarray, size: int, normalization: str = "imagenet") -> np.ndarray:
    """(H, W, 3) uint8 -> (3, size, size) float32: resize the longest side, normalise, pad with zeros.

    ``normalization``: ``imagenet`` is SAM's (pixel mean / std); ``minmax`` is
    MedSAM's (the resized image's intensities stretched to [0, 1]).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose {', '.join(NORMALIZATIONS)}")
    height, width = image.shape[:2]
    new_h, new_w = resized_shape(height, width, size)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR), dtype=np.float32)
    if normalization == "imagenet":
        normalised = (resized - PIXEL_MEAN) / PIXEL_STD
    else:
        low = resized.min()
        normalised = (resized - low) / max(float(resized.max() - low), 1e-8)
    out = np.zeros((3, size, size), dtype=np.float32)
    out[:, :new_h, :new_w] = normalised.transpose(2, 0, 1)
    return out


def preprocess_mask(labels: np.ndarray, size: int, pad_value: int = IGNORE_INDEX) -> np.ndarray:
    """(H, W) labels -> (size, size) int64: nearest-neighbour resize, padding ignored."""
    height, width = labels.shape
    new_h, new_w = resized_shape(height, width, size)
    resized = Image.fromarray(labels.astype(np.int32), mode="I").resize((new_w, new_h), Image.NEAREST)
    out = np.full((size, size), pad_value, dtype=np.int64)
    out[:new_h, :new_w] = np.asarray(resized)
    return out


def postprocess_probabilities(prob: np.ndarray, original: Sequence[int], size: int) -> np.ndarray:
    """(..., size, size) maps -> (..., H, W): crop SAM's padding, resize to the original size."""
    height, width = original
    new_h, new_w = resized_shape(height, width, size)
    cropped = prob[..., :new_h, :new_w]
    flat = cropped.reshape(-1, new_h, new_w)
    out = np.stack(
        [
            np.asarray(
                Image.fromarray(m.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
            )
            for m in flat
        ]
    )
    return out.reshape(*prob.shape[:-2], height, width)


OVERLAY_COLOUR = (255, 64, 32)


def palette(count: int) -> np.ndarray:
    """Distinct RGB colours per class (class 0, background, is black)."""
    rng = np.random.default_rng(7)
    colours = rng.integers(64, 256, size=(max(count, 1), 3)).astype(np.uint8)
    colours[0] = 0
    return colours


def overlay(image: np.ndarray, mask: np.ndarray, class_map=None, alpha: float = 0.45) -> np.ndarray:
    """The photo with the mask filled (class colours for multi-class) and its outline drawn."""
    out = image.astype(np.float32)
    if class_map is not None:
        colours = palette(int(class_map.max()) + 1)[class_map].astype(np.float32)
    else:
        colours = np.broadcast_to(np.array(OVERLAY_COLOUR, np.float32), image.shape)
    out[mask] = (1 - alpha) * out[mask] + alpha * colours[mask]
    labels = class_map if class_map is not None else mask.astype(np.uint8)
    label_image = Image.fromarray(labels.astype(np.uint8))
    edges = np.asarray(label_image.filter(ImageFilter.MaxFilter(3))) != np.asarray(
        label_image.filter(ImageFilter.MinFilter(3))
    )
    out[edges] = colours[edges] if class_map is not None else OVERLAY_COLOUR
    return out.clip(0, 255).astype(np.uint8)


def save_png(path: Path, array: np.ndarray) -> Path:
    """Write a PNG atomically."""
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
