"""Drawing on pictures, in numpy and Pillow only: outlines, prompts, captions and grids of pictures.

``imaging.overlay`` draws a mask with these; the eval gallery and the demo's summary lay their
overlays out with ``picture_grid``. No torch and no matplotlib here (the runtime draws overlays).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OVERLAY_COLOUR = (255, 64, 32)  # the predicted mask
TRUTH_COLOUR = (0, 230, 255)  # the ground truth's outline (cyan: apart from the mask's orange-red)
BOX_COLOUR = (255, 214, 0)  # box prompts
POINT_COLOURS = {1: (0, 200, 0), 0: (230, 0, 0)}  # positive (object) and negative (background) points
BACKGROUND = (40, 40, 40)  # around pictures in a grid
TEXT_COLOUR = (235, 235, 235)


def palette(count: int) -> np.ndarray:
    """Distinct RGB colours per class (class 0, background, is black)."""
    rng = np.random.default_rng(7)
    colours = rng.integers(64, 256, size=(max(count, 1), 3)).astype(np.uint8)
    colours[0] = 0
    return colours


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The inner boundary of a boolean mask, ``width`` pixels wide: the mask XOR its erosion (3x3,
    ``width`` times; outside the image counts as background, so a mask touching the border is
    outlined along it)."""
    mask = np.asarray(mask, dtype=bool)
    inner = mask
    for _ in range(max(int(width), 1)):
        padded = np.pad(inner, 1, constant_values=False)
        eroded = np.ones_like(inner)
        for dy in range(3):
            for dx in range(3):
                eroded &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
        inner = eroded
    return mask ^ inner


def label_outline(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary pixels of every non-zero region of a label map (bool, or class indices)."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return outline(labels, width)
    edges = np.zeros(labels.shape, bool)
    for value in np.unique(labels):
        if value != 0:
            edges |= outline(labels == value, width)
    return edges


def line_width(shape: Sequence[int]) -> int:
    """Outline and box width for an image of ``shape``: a pixel per 256 of its short side, at least 1."""
    return max(1, round(min(shape[:2]) / 256))


def prompt_arrays(points=None, point_labels=None, boxes=None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (N, 2), their labels (N,) (default 1) and boxes (K, 4) as arrays; ``ValueError`` on
    shapes that are none of these."""
    xy = np.zeros((0, 2)) if points is None else np.asarray(points, dtype=np.float64)
    if xy.size and xy.shape[-1] != 2:
        raise ValueError(f"overlay points are (N, 2) x, y pixels, got shape {xy.shape}")
    xy = xy.reshape(-1, 2)
    labels = np.ones(len(xy), int) if point_labels is None else np.asarray(point_labels).reshape(-1)
    if len(labels) != len(xy):
        raise ValueError(f"overlay: {len(xy)} point(s) but {len(labels)} point label(s)")
    framed = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64)
    if framed.size and framed.shape[-1] != 4:
        raise ValueError(f"overlay boxes are (4,) or (K, 4) x0, y0, x1, y1 pixels, got shape {framed.shape}")
    return xy, labels.astype(int), framed.reshape(-1, 4)


def draw_prompts(picture: np.ndarray, points=None, point_labels=None, boxes=None) -> np.ndarray:
    """``picture`` ((H, W, 3) uint8) with box prompts as yellow rectangles and points as discs with a
    white rim (green: object, label 1; red: background, label 0); a new array (the same one
    when there is nothing to draw)."""
    xy, labels, framed = prompt_arrays(points, point_labels, boxes)
    if not len(xy) and not len(framed):
        return picture
    canvas = Image.fromarray(picture)
    draw = ImageDraw.Draw(canvas)
    width = line_width(picture.shape) + 1
    for x0, y0, x1, y1 in framed:
        draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=BOX_COLOUR, width=width)
    radius = max(3, round(min(picture.shape[:2]) / 90))
    for (x, y), label in zip(xy, labels):
        colour = POINT_COLOURS[1 if label > 0 else 0]
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(255, 255, 255))
    return np.asarray(canvas)


def font(size: int = 13) -> ImageFont.ImageFont:
    """Pillow's own font at ``size`` pixels (its fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def thumbnail(picture: np.ndarray, size: int) -> np.ndarray:
    """``picture`` scaled (up or down) to fit a ``size`` x ``size`` square, centred on ``BACKGROUND``."""
    height, width = picture.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = np.asarray(Image.fromarray(picture).resize((new_w, new_h), Image.BILINEAR))
    square = np.empty((size, size, 3), np.uint8)
    square[:] = BACKGROUND
    top, left = 0, (size - new_w) // 2  # at the top: a caption follows the picture
    square[top : top + new_h, left : left + new_w] = resized[:, :, :3]
    return square


def picture_grid(
    cells: Sequence[Sequence[Optional[np.ndarray]]],
    row_labels: Sequence[str],
    column_labels: Optional[Sequence[str]] = None,
    captions: Optional[Sequence[Sequence[str]]] = None,
    cell: int = 192,
    title: str = "",
) -> np.ndarray:
    """One picture of ``cells`` (rows of (H, W, 3) uint8 pictures, None for an empty cell), each
    fitted to a ``cell``-pixel square, with a label left of each row, above each column
    (``column_labels``), under each cell (``captions``) and above all (``title``)."""
    rows, columns = len(cells), max((len(row) for row in cells), default=0)
    if rows != len(row_labels) or rows == 0 or columns == 0:
        raise ValueError(f"picture_grid: {rows} row(s) of pictures and {len(row_labels)} row label(s)")
    text = font(max(11, cell // 15))
    line = round(text.size * 1.5) if hasattr(text, "size") else 16
    label_width = max(_text_width(text, label) for label in row_labels) + 12
    top = (line if title else 0) + (line if column_labels else 0)
    step_y = cell + (line if captions else 0) + 6
    width = max(label_width + columns * (cell + 6), _text_width(text, title) + 12 if title else 0)
    canvas = Image.new("RGB", (width, top + rows * step_y), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 2), title, fill=TEXT_COLOUR, font=text)
    for c, label in enumerate(column_labels or []):
        draw.text((label_width + c * (cell + 6), top - line + 2), label, fill=TEXT_COLOUR, font=text)
    for r, row in enumerate(cells):
        y = top + r * step_y
        draw.text((6, y + cell // 2 - line // 2), row_labels[r], fill=TEXT_COLOUR, font=text)
        for c, picture in enumerate(row):
            x = label_width + c * (cell + 6)
            if picture is not None:
                canvas.paste(Image.fromarray(thumbnail(picture, cell)), (x, y))
            if captions and c < len(captions[r]) and captions[r][c]:
                draw.text((x, y + cell + 1), captions[r][c], fill=TEXT_COLOUR, font=text)
    return np.asarray(canvas)


def _text_width(text_font, text: str) -> int:
    """Pixels ``text`` takes in ``text_font``."""
    left, _, right, _ = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=text_font)
    return int(right - left)


def long_labels(labels: List[str], limit: int = 28) -> List[str]:
    """``labels`` cut to ``limit`` characters (with an ellipsis), for rows and captions."""
    return [label if len(label) <= limit else label[: limit - 1] + "…" for label in labels]
