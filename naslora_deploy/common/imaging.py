"""Reading images and masks, and SAM's preprocessing, in numpy and Pillow only.

No torch here: the training data pipeline and the torch-free runtime share these
functions, so what a deployed model sees is exactly what it was trained on.

The reader refuses what it cannot read truthfully, with one line naming the file
(``ImageReadError``), and converts what it can, saying how (a warning, once per kind):

* size: at most ``MAX_PIXELS`` pixels (Pillow's own default limit, ~89.5 megapixels;
  larger files, decompression bombs included, are refused before they are decoded) and
  an aspect ratio of at most ``MAX_ASPECT_RATIO``:1 (past it the short side vanishes
  when the long side is resized to the model's input);
* pixels: 8-bit as is; integer data above 255 scaled by the data's bit depth rounded up
  to 10, 12, 14 or 16 bits (12-bit data in a 16-bit PNG is divided by 4095, not 65535);
  floats in 0..1 times 255, non-negative floats above 1 by the same bit-depth rule
  (0..255 floats read as 8-bit), other floats stretched from their min..max; NaN and
  infinite values, negative or above-16-bit integers are refused;
* binary masks (``read_binary_mask``): 0 and one value k -> foreground = every non-zero
  pixel; a lossy (JPEG) mask, or grey levels spanning 0..255 (0..65535) -> foreground
  above half range; anything else (0/1/2 label maps) is refused, pointing to multi-class.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageFilter

from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.common.io import atomic_write

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
NORMALIZATIONS = ("imagenet", "minmax")  # SAM's mean/std; MedSAM's per-image min-max to [0, 1]
IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS: larger files are refused, not decoded
MAX_ASPECT_RATIO = 256  # long side / short side: at SAM's smallest input (256) the short side keeps a row
BIT_DEPTHS = (8, 10, 12, 14, 16)  # integer data is scaled by the smallest of these that holds its maximum
LOSSY_FORMATS = ("JPEG", "MPO")  # masks saved lossily: thresholded at half range
NUMERIC_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # read as numbers, not converted by Pillow
ImageSource = Union[str, Path]
TOO_LARGE = f"above the {MAX_PIXELS:,}-pixel limit (Pillow's, against decompression bombs); downscale it"


class ImageReadError(NasloraError):
    """An image or mask file cannot be read or makes no sense."""


_SAID: set = set()  # the conversion notes given so far (``note`` says each one once per process)


def note(message: str) -> None:
    """Say how an input was converted (a ``UserWarning``), once per distinct message and process."""
    if message not in _SAID:
        _SAID.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def check_dimensions(height: int, width: int, source: object) -> None:
    """Refuse an empty, too large (``MAX_PIXELS``) or too thin (``MAX_ASPECT_RATIO``) image."""
    if height <= 0 or width <= 0:
        raise ImageReadError(f"{source}: the image is {width}x{height} pixels, it has no pixels to segment")
    if height * width > MAX_PIXELS:
        raise ImageReadError(f"{source}: the image has {width}x{height} pixels, {TOO_LARGE}")
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise ImageReadError(
            f"{source}: {width}x{height} pixels is too thin to segment (aspect ratio above "
            f"{MAX_ASPECT_RATIO}:1, its short side would vanish at the model's input size); crop or pad it"
        )


def _bomb_message(path: ImageSource, exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return f"{path}: the image has {size}, {TOO_LARGE}"


def _open(path: ImageSource) -> Image.Image:
    """Open and decode an image file; every failure is an ``ImageReadError`` naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
        check_dimensions(image.size[1], image.size[0], path)
        image.load()
        return image
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(_bomb_message(path, exc)) from None
    except Exception as exc:  # Pillow raises many kinds on damaged or hostile files: all mean "unreadable"
        raise ImageReadError(
            f"{path}: cannot read image ({first_line(exc, 120)}); re-export it as PNG or JPEG"
        ) from None


def _full_scale(high: float) -> int:
    """The full-scale value of the smallest bit depth in ``BIT_DEPTHS`` that holds ``high``."""
    return next((1 << bits) - 1 for bits in BIT_DEPTHS if high <= (1 << bits) - 1)


def _int_to_uint8(array: np.ndarray, source: object) -> np.ndarray:
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
        raise ImageReadError(
            f"{source}: {array.dtype} pixel values {low}..{high} are outside 0..65535; give 8- or 16-bit data"
        )
    if high <= 255:
        return array.astype(np.uint8)
    top = _full_scale(high)
    if top != 65535:
        note(f"16-bit image data using {top.bit_length()} bits: read as such (divided by {top}, not 65535)")
    return (array.astype(np.float64) * (255.0 / top) + 0.5).astype(np.uint8)


def _float_to_uint8(array: np.ndarray, source: object) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ImageReadError(f"{source}: the image holds NaN or infinite values; give finite pixel values")
    values = array.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= 1:
        return (values * 255.0 + 0.5).astype(np.uint8)
    if low >= 0 and high <= 65535:
        top = _full_scale(np.ceil(high))
        note(f"float image data with values above 1: read as 0..{top} (not 0..1)")
        return (values * (255.0 / top) + 0.5).clip(0, 255).astype(np.uint8)
    note("float image data with negative or very large values: each image stretched from its min..max")
    return ((values - low) * (255.0 / max(high - low, 1e-12)) + 0.5).clip(0, 255).astype(np.uint8)


def _to_uint8(array: np.ndarray, source: object) -> np.ndarray:
    """Pixel values as uint8 by the module's rules (bool: 0/255; integers; floats)."""
    kind = array.dtype.kind
    if kind == "b":
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        return array
    if kind in "iu":
        return _int_to_uint8(array, source)
    if kind == "f":
        return _float_to_uint8(array, source)
    raise ImageReadError(
        f"{source}: pixels of type {array.dtype} are not an image; give uint8, uint16 or float values"
    )


def image_array(array: object, source: object = "the image array") -> np.ndarray:
    """Check and convert an array to (H, W, 3) uint8 RGB; ``ImageReadError`` naming ``source`` otherwise.

    Accepted: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped) of bool, integer
    (0..65535) or finite float values, sized within ``check_dimensions``'s limits.
    """
    if not isinstance(array, np.ndarray):
        raise ImageReadError(
            f"{source}: an image must be a path or a numpy array, got {type(array).__name__}"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageReadError(
            f"{source}: an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape "
            f"{array.shape}"
        )
    check_dimensions(array.shape[0], array.shape[1], source)
    array = _to_uint8(array, source)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def to_rgb_uint8(image: Union[Image.Image, np.ndarray], source: object = "the image") -> np.ndarray:
    """Any gray, RGB, RGBA, palette, 16-bit or float image (or array) as an (H, W, 3) uint8 array."""
    if isinstance(image, Image.Image):
        try:
            numeric = image.mode in NUMERIC_MODES
            image = np.asarray(image) if numeric else np.asarray(image.convert("RGB"))
        except Exception as exc:  # an exotic mode Pillow cannot convert
            raise ImageReadError(f"{source}: cannot convert its pixels ({first_line(exc, 120)})") from None
    return image_array(image, source)


def read_image(path: ImageSource) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (see the module's rules); ``ImageReadError`` otherwise."""
    return to_rgb_uint8(_open(path), path)


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
    return _read_mask(_open(path), path, palette)


def _read_mask(image: Image.Image, path: ImageSource, palette) -> np.ndarray:
    try:
        array = _mask_values(image, palette)
    except Exception as exc:  # an exotic mode Pillow cannot convert
        raise ImageReadError(f"{path}: cannot read the mask's values ({first_line(exc, 120)})") from None
    return mask_labels(array, path)


def read_binary_mask(path: ImageSource) -> np.ndarray:
    """Read a binary task's mask file as (H, W) uint8 0/1 (rules: ``binarize_mask``)."""
    image = _open(path)
    return binarize_mask(_read_mask(image, path, None), lossy=image.format in LOSSY_FORMATS, source=path)


def _listing(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown + (f", ... ({values.size} values)" if values.size > limit else "")


def binarize_mask(raw: np.ndarray, lossy: bool = False, source: object = "the mask") -> np.ndarray:
    """0/1 foreground from a binary mask's raw values.

    * 0 and one value k (0/1, 0/255, 0/100, 0/65535; or a single value): foreground = non-zero;
    * ``lossy`` (a JPEG mask), or grey levels reaching 255 (65535): foreground above half range;
    * anything else (0/1/2 label maps...): ``ImageReadError`` naming ``source`` and the values.
    """
    values = np.unique(raw)
    if values.size == 0 or values.size == 1 or (values.size == 2 and values[0] == 0):
        if values.size == 2 and int(values[1]) not in (1, 255, 65535):
            note(f"binary masks holding 0 and {int(values[1])}: foreground is every non-zero pixel")
        return (raw != 0).astype(np.uint8)
    top = 65535 if values[-1] > 255 else 255
    if lossy or values[-1] == top:
        return (raw > top // 2).astype(np.uint8)
    raise ImageReadError(
        f"{source}: a binary mask holds 0 and one foreground value, this one holds {_listing(values)}; "
        "for class indices (0 = background, 1, 2, ...) add a classes.json with the class names or pass "
        "--classes N"
    )


def resized_shape(height: int, width: int, size: int) -> Tuple[int, int]:
    """SAM's ResizeLongestSide target shape: longest side to ``size``, rounded."""
    scale = size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def check_resizable(height: int, width: int, size: int, source: object = "the image") -> Tuple[int, int]:
    """``resized_shape``, or an ``ImageReadError`` naming ``source`` when a side would shrink to nothing."""
    new_h, new_w = resized_shape(height, width, size) if min(height, width) > 0 else (0, 0)
    if new_h < 1 or new_w < 1:
        raise ImageReadError(
            f"{source}: {width}x{height} pixels cannot be resized to the model's {size}-pixel input (a side "
            "would have no pixels); crop or pad it to a less extreme shape"
        )
    return new_h, new_w


def preprocess_image(image: np.ndarray, size: int, normalization: str = "imagenet") -> np.ndarray:
    """(H, W, 3) uint8 -> (3, size, size) float32: resize the longest side, normalise, pad with zeros.

    ``normalization``: ``imagenet`` is SAM's (pixel mean / std); ``minmax`` is
    MedSAM's (the resized image's intensities stretched to [0, 1]).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose {', '.join(NORMALIZATIONS)}")
    height, width = image.shape[:2]
    new_h, new_w = check_resizable(height, width, size)
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
