"""Reading images, and SAM's preprocessing, in numpy and Pillow only (masks: ``common.masks``).

No torch here: the training data pipeline and the torch-free runtime share these
functions, so what a deployed model sees is exactly what it was trained on.

The reader refuses what it cannot read truthfully, with one line naming the file
(``ImageReadError``), and converts what it can, saying how (a warning, once per kind):

* files and sizes (``filechecks``, before anything is decoded): regular files only (a FIFO
  would block the reader forever); at most ``limits.IMAGE_PIXELS`` pixels (default Pillow's
  own limit, ~89.5 megapixels; ``NASLORA_MAX_PIXELS`` changes it; decompression bombs are
  refused); an aspect ratio of at most 256:1 (past it the short side vanishes at the model's
  input size); at most ``limits.DECODED_BYTES`` bytes of height x width x bands x bytes per
  value (a multi-band float TIFF within the pixel limit can still be gigabytes);
* pixels: 8-bit as is; integer data above 255 scaled by the data's bit depth rounded up
  to 10, 12, 14 or 16 bits (12-bit data in a 16-bit PNG is divided by 4095, not 65535);
  floats in 0..1 times 255, non-negative floats above 1 by the same bit-depth rule
  (0..255 floats read as 8-bit), other floats stretched from their min..max; NaN and
  infinite values, negative or above-16-bit integers are refused;
* masks: ``common.masks`` reads them with the same opener and limits.
* TIFF images are read with tifffile (16-bit, float and multi-band kept as numbers; at
  most ``MAX_BANDS`` bands); an image of more than 4 bands gives its first three as R, G, B.
* an ``InputMapping`` (a run's ``--bands`` / ``--stretch``, recorded in its adapter config
  and its artifact manifest) picks 1 or 3 bands (1-based) and stretches each channel from
  the image's own low..high percentiles to 0..255 (NaN -> 0): computed per image, so the
  runtime needs no statistics of the training set and applies exactly what training did.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageFilter

from naslora_deploy.common.errors import first_line
from naslora_deploy.common.filechecks import (  # re-exported: readers and tests import them from here
    ImageReadError,
    check_decoded,
    check_dimensions,
    check_regular,
    too_large,
)
from naslora_deploy.common.io import atomic_write
from naslora_deploy.common.limits import IMAGE_PIXELS
from naslora_deploy.common.plots import (
    OVERLAY_COLOUR,
    TRUTH_COLOUR,
    draw_prompts,
    label_outline,
    line_width,
    palette,
)

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
NORMALIZATIONS = ("imagenet", "minmax")  # SAM's mean/std; MedSAM's per-image min-max to [0, 1]
IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
BIT_DEPTHS = (8, 10, 12, 14, 16)  # integer data is scaled by the smallest of these that holds its maximum
LOSSY_FORMATS = ("JPEG", "MPO")  # masks saved lossily: thresholded at half range
NUMERIC_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # read as numbers, not converted by Pillow
ImageSource = Union[str, Path]


_SAID: set = set()  # the conversion notes given so far (``note`` says each one once per process)


def note(message: str, key: Optional[str] = None) -> None:
    """Say how an input was converted (a ``UserWarning``), once per process for each ``key`` (default:
    the message itself; a key lets a message that names its first example be said once)."""
    if (key or message) not in _SAID:
        _SAID.add(key or message)
        warnings.warn(message, UserWarning, stacklevel=3)


def _bomb_message(path: ImageSource, exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return f"{path}: the image has {size}, {too_large()}"


def _decoded_bytes(image: Image.Image) -> int:
    mode = image.mode
    per_band = 4 if mode in ("I", "F") or mode.startswith("I;32") else 2 if mode.startswith("I;16") else 1
    return image.size[0] * image.size[1] * len(image.getbands()) * per_band


def open_image(path: ImageSource) -> Image.Image:
    """Open and decode an image file; every failure is an ``ImageReadError`` naming the file."""
    check_regular(path)
    Image.MAX_IMAGE_PIXELS = IMAGE_PIXELS.value  # Pillow's own guard follows ours (NASLORA_MAX_PIXELS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
        check_dimensions(image.size[1], image.size[0], path)
        check_decoded(_decoded_bytes(image), path, "downscale it")
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


def image_array(array: object, source: object = "the image array", mapping=None) -> np.ndarray:
    """Check and convert an array to (H, W, 3) uint8 RGB; ``ImageReadError`` naming ``source`` otherwise.

    Accepted: (H, W), (H, W, 1), (H, W, 3), (H, W, 4) (alpha dropped) or (H, W, C) bands (the
    first three kept) of bool, integer (0..65535) or finite float values, sized within
    ``check_dimensions``'s limits. ``mapping`` (an ``InputMapping``) replaces those rules with
    its bands and stretch; a ``MappedImage`` (already mapped) is passed through unchanged.
    """
    if not isinstance(array, np.ndarray):
        raise ImageReadError(
            f"{source}: an image must be a path or a numpy array, got {type(array).__name__}"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] in (0, 2)):
        raise ImageReadError(
            f"{source}: an image array must be (H, W), (H, W, 1), (H, W, 3), (H, W, 4) or (H, W, bands), "
            f"got shape {array.shape}"
        )
    check_dimensions(array.shape[0], array.shape[1], source)
    if mapping is not None and not mapping.identity:
        if isinstance(array, MappedImage) and array.dtype == np.uint8 and array.shape[2:] == (3,):
            return np.asarray(array)
        return mapping.apply(array, source)
    if array.ndim == 3 and array.shape[2] > 4:
        note(f"images of {array.shape[2]} bands: the first three are read as R, G, B (choose with --bands)")
        array = array[:, :, :3]
    array = _to_uint8(array, source)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def to_rgb_uint8(
    image: Union[Image.Image, np.ndarray], source: object = "the image", mapping=None
) -> np.ndarray:
    """Any gray, RGB, RGBA, palette, 16-bit or float image (or array) as an (H, W, 3) uint8 array."""
    if isinstance(image, Image.Image):
        try:
            numeric = image.mode in NUMERIC_MODES
            image = np.asarray(image) if numeric else np.asarray(image.convert("RGB"))
        except Exception as exc:  # an exotic mode Pillow cannot convert
            raise ImageReadError(f"{source}: cannot convert its pixels ({first_line(exc, 120)})") from None
    return image_array(image, source, mapping)


class ImageItem:
    """An image that is not a file of its own (a slice of an ``.npz`` volume, a file read through a
    run's input mapping): ``read_image`` returns its ``read()``."""

    def read(self) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB."""
        raise NotImplementedError


def read_image(path: Union[ImageSource, ImageItem], mapping=None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (see the module's rules); ``ImageReadError`` otherwise.

    ``mapping``: an ``InputMapping`` (bands, percentile stretch) applied to the file's numbers.
    """
    if isinstance(path, ImageItem):
        return path.read()
    if Path(path).suffix.lower() in TIFF_SUFFIXES:
        pixels = read_tiff(path)
        if pixels is not None:
            return image_array(pixels, path, mapping)
    return to_rgb_uint8(open_image(path), path, mapping)


# ----- TIFF files and a run's input mapping (bands, percentile stretch) -----------------------------
TIFF_SUFFIXES = (".tif", ".tiff")
MAX_BANDS = 64  # a multi-band TIFF's bands (Sentinel-2 has 13); more is a stack, not an image


def _tiff_axes(shape: Sequence[int], axes: str, path: ImageSource) -> Tuple[int, ...]:
    """The transpose that makes a TIFF series (Y, X) or (Y, X, bands), after checking its size."""
    kept = [i for i, (size, axis) in enumerate(zip(shape, axes)) if size > 1 or axis in "YX"]
    if "Y" not in axes or "X" not in axes:
        raise ImageReadError(f"{path}: the TIFF holds no 2-D image (axes {axes}); save one image per file")
    others = [i for i in kept if axes[i] not in "YX"]
    if len(others) > 1:
        raise ImageReadError(
            f"{path}: the TIFF holds a stack of images (axes {axes}, shape {tuple(shape)}); save one "
            "image (bands allowed) per file"
        )
    check_dimensions(shape[axes.index("Y")], shape[axes.index("X")], path)
    if others and shape[others[0]] > MAX_BANDS:
        raise ImageReadError(
            f"{path}: the TIFF has {shape[others[0]]} bands (axis {axes[others[0]]}); at most {MAX_BANDS} "
            "are read, save one image per file"
        )
    return (axes.index("Y"), axes.index("X"), *others)


def read_tiff(path: ImageSource) -> Optional[np.ndarray]:
    """A TIFF's first image as (H, W) or (H, W, bands) numbers via tifffile (None without tifffile).

    Size, band count and decoded bytes are checked from the header before any pixel is decoded.
    """
    try:
        import tifffile
    except ImportError:  # Pillow then reads what it can
        return None
    check_regular(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            order = _tiff_axes(series.shape, series.axes, path)
            declared = math.prod(int(n) for n in series.shape) * np.dtype(series.dtype).itemsize
            check_decoded(declared, path, "crop it or save fewer bands")
            array = series.asarray()
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except Exception as exc:  # tifffile raises many kinds on damaged files: all mean "unreadable"
        raise ImageReadError(f"{path}: cannot read the TIFF ({first_line(exc, 120)}); re-save it") from None
    keep = tuple(i for i in range(array.ndim) if i in order)
    array = array.reshape([array.shape[i] for i in keep] if len(keep) < array.ndim else array.shape)
    positions = {axis: n for n, axis in enumerate(keep)}
    return np.ascontiguousarray(np.transpose(array, [positions[i] for i in order]))


class MappedImage(np.ndarray):
    """(H, W, 3) uint8 pixels that went through an ``InputMapping``; ``image_array`` passes them (and
    crops of them, e.g. tiles) unchanged, so an image is never mapped twice."""


def _stretch(values: np.ndarray, low: float, high: float, source: object) -> np.ndarray:
    """Each channel of (H, W, C) numbers from its ``low``..``high`` percentile to 0..255 (NaN -> 0)."""
    if values.dtype.kind not in "biuf":
        raise ImageReadError(f"{source}: pixels of type {values.dtype} are not an image")
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        note("non-finite pixel values under --stretch: read as 0 (no data)")
    out = np.zeros(values.shape, np.uint8)
    for c in range(values.shape[2]):
        channel, valid = values[:, :, c], finite[:, :, c]
        if not valid.any():
            continue
        lo, hi = np.percentile(channel[valid], [low, high])
        if hi > lo:  # a constant channel stays 0
            scaled = np.where(valid, (channel - lo) * (255.0 / (hi - lo)), 0.0)
            out[:, :, c] = (scaled.clip(0, 255) + 0.5).astype(np.uint8)
    return out


@dataclass(frozen=True)
class InputMapping:
    """How a run turns its images' numbers into the model's RGB: ``bands`` (1-based: 1 or 3 of them;
    None: as ``image_array`` reads it) and ``stretch`` ((low, high) percentiles of each channel of each
    image -> 0..255; None: the bit-depth rules). Recorded as ``input_mapping`` (``to_dict``)."""

    bands: Optional[Tuple[int, ...]] = None
    stretch: Optional[Tuple[float, float]] = None

    def __post_init__(self) -> None:
        if self.bands is not None:
            bands = tuple(self.bands)
            if len(bands) not in (1, 3) or not all(type(b) is int and b >= 1 for b in bands):
                raise ValueError(f"--bands takes 1 or 3 band numbers, counted from 1 (e.g. 3,2,1): {bands!r}")
            object.__setattr__(self, "bands", bands)
        if self.stretch is not None:
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.stretch)
            low, high = self.stretch if numbers and len(self.stretch) == 2 else (-1.0, -1.0)
            if not 0 <= low < high <= 100:
                raise ValueError(
                    f"--stretch takes two percentiles LOW,HIGH with 0 <= LOW < HIGH <= 100 (e.g. 2,98), got "
                    f"{self.stretch!r}"
                )
            object.__setattr__(self, "stretch", (float(low), float(high)))

    @property
    def identity(self) -> bool:
        """Whether the mapping changes nothing (the module's plain reading rules)."""
        return self.bands is None and self.stretch is None

    def apply(self, array: np.ndarray, source: object) -> np.ndarray:
        """(H, W[, C]) numbers -> (H, W, 3) uint8 ``MappedImage``: pick the bands, then stretch."""
        planes = array[:, :, None] if array.ndim == 2 else array
        if self.bands is not None:
            if max(self.bands) > planes.shape[2]:
                raise ImageReadError(
                    f"{source}: the image has {planes.shape[2]} band(s), the input mapping takes bands "
                    f"{','.join(map(str, self.bands))}; give images with those bands"
                )
            planes = planes[:, :, [b - 1 for b in self.bands]]
        if self.stretch is None:
            rgb = image_array(planes[:, :, :3] if planes.shape[2] > 4 else planes, source)
        else:
            rgb = _stretch(planes[:, :, :3] if planes.shape[2] != 1 else planes, *self.stretch, source)
            rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
        return np.ascontiguousarray(rgb).view(MappedImage)

    def to_dict(self) -> Optional[dict]:
        """JSON form for adapter configs and manifests; None for the identity."""
        if self.identity:
            return None
        stretch = None if self.stretch is None else {"percentiles": list(self.stretch), "per": "image"}
        return {"bands": None if self.bands is None else list(self.bands), "stretch": stretch}

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "InputMapping":
        """Parse ``to_dict`` output (None: the identity); ``ValueError`` on anything else."""
        if data is None:
            return cls()
        stretch = data.get("stretch") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not (stretch is None or isinstance(stretch, dict)):
            raise ValueError(f"an input mapping is {{'bands': [...], 'stretch': {{...}}}}, not {data!r:.80}")
        try:
            return cls.of(data.get("bands"), None if stretch is None else stretch.get("percentiles") or ())
        except TypeError as exc:
            raise ValueError(
                f"an input mapping's bands and percentiles are lists of numbers ({exc})"
            ) from None

    @classmethod
    def of(cls, bands=None, stretch=None) -> "InputMapping":
        """From a run's ``--bands`` / ``--stretch`` values (lists or None)."""
        return cls(None if bands is None else tuple(bands), None if stretch is None else tuple(stretch))


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


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    class_map=None,
    alpha: float = 0.45,
    *,
    points=None,
    point_labels=None,
    boxes=None,
    truth=None,
) -> np.ndarray:
    """The photo with the mask filled (class colours for multi-class) and its outline drawn.

    Optional: ``truth``, the ground truth ((H, W) bool, or class indices), drawn as an outline
    (``plots.TRUTH_COLOUR``, cyan); the prompt: ``boxes`` ((4,) or (K, 4) x0, y0, x1, y1 pixels)
    as yellow rectangles, ``points`` ((N, 2) x, y pixels) with ``point_labels`` ((N,), 1 object,
    0 background; default all 1) as green / red discs (``plots.draw_prompts``).
    """
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
    if truth is not None:
        truth = np.asarray(truth)
        if truth.shape != image.shape[:2]:
            raise ValueError(f"overlay: the ground truth is {truth.shape} but the image is {image.shape[:2]}")
        out[label_outline(truth, line_width(image.shape))] = TRUTH_COLOUR
    return draw_prompts(out.clip(0, 255).astype(np.uint8), points, point_labels, boxes)


def save_png(path: Path, array: np.ndarray) -> Path:
    """Write a PNG atomically."""
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
