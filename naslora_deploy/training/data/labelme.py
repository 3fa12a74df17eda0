"""LabelMe JSON beside the images (``x.jpg`` + ``x.json``) as (image, label map) pairs.

Layout: the JSON files (each with ``shapes``) and their images in the root, or in
``train/ val/ test/`` (the splits; without them ``--val-fraction`` and ``--seed`` split).
A JSON finds its image by its ``imagePath`` (relative to the JSON), else by its stem.

Shapes: ``polygon`` (3 or more points), ``rectangle`` (two corners) and ``circle``
(centre and a point on the edge) are painted in file order, the later shape winning where
they overlap (LabelMe draws them so); lines and points (no area) and ``mask`` shapes are
skipped with a warning. ``shapes: []`` is an all-background image.

Classes: a ``classes.json`` at the root names them (``names[0]`` is the background; a
label it lacks is refused); otherwise the sorted set of labels found in every JSON,
after a background class 0. One label, ``--classes 1`` or ``--category NAME`` train the
binary head. LabelMe's ``__ignore__`` label is painted 255 (left out of the loss) and
``_background_`` 0. An image without a JSON is refused like an image without a mask
(``--skip-bad`` skips it); other files, and JSON files that are not LabelMe's, are ignored.

Checked per file before anything is drawn (one line naming the file; ``--skip-bad`` skips
it): ``shapes`` is a list of objects, each with a string ``label`` (a list or a number is
refused, never turned into a class of its own), a string ``shape_type`` and ``points`` that
are [x, y] pairs of finite numbers within one image width/height of the image
(``sources.check_coordinates``); ``imagePath`` is relative to the JSON and stays inside the
data folder (``sources.named_path``); the declared ``imageHeight`` x ``imageWidth`` (or the
image's own size when they are not given) is within ``check_dimensions``'s limits
(``NASLORA_MAX_PIXELS``). JSON files and images must be regular files (a FIFO is refused,
never opened).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.common.filechecks import check_dimensions, check_regular
from naslora_deploy.common.imaging import IMAGE_SUFFIXES, ImageReadError, note, read_image
from naslora_deploy.common.io import read_json
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data.sources import (
    BACKGROUND_NAMES,
    IGNORE_NAMES,
    Lookup,
    PaintedLabels,
    SourceOptions,
    check_coordinates,
    choose_classes,
    grouped_splits,
    is_number,
    json_kind,
    named_path,
    split_folders,
)

AREA_SHAPES = ("polygon", "rectangle", "circle")
Found = Tuple[Path, Path, dict, Tuple[int, int]]  # image, JSON, parsed JSON, (height, width)


@dataclass
class ShapeLabels(PaintedLabels):
    """One image's LabelMe shapes: ``layers`` are (painted value, shape type, points)."""

    def region(self, layer: tuple, shape: Tuple[int, int]) -> np.ndarray:
        """One shape (polygon, rectangle, circle) drawn as a region."""
        _, kind, points = layer
        return _draw(kind, points, shape, self.source)

    def __str__(self) -> str:
        return self.source


def _draw(kind: str, points: list, shape: Tuple[int, int], source: str) -> np.ndarray:
    """One shape rasterised as an (H, W) bool mask."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    try:
        xy = [(float(x), float(y)) for x, y in points]
        if kind == "polygon" and len(xy) >= 3:
            draw.polygon(xy, fill=1, outline=1)
        elif kind == "rectangle" and len(xy) == 2:
            (x0, y0), (x1, y1) = xy
            draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill=1)
        elif kind == "circle" and len(xy) == 2:
            (cx, cy), (px, py) = xy
            r = float(np.hypot(px - cx, py - cy))
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
        else:
            raise ValueError(f"a {kind} with {len(xy)} points")
    except (TypeError, ValueError, OverflowError) as exc:
        raise ImageReadError(f"{source}: cannot draw a shape ({first_line(exc, 120)})") from None
    return np.asarray(canvas, dtype=bool)


def _read(path: Path) -> Optional[dict]:
    """A LabelMe JSON, or None for a JSON file of another kind (or a FIFO, a device...: never opened)."""
    try:
        check_regular(path, "LabelMe JSON")
    except ImageReadError:
        return None
    data = read_json(path, "LabelMe JSON")
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        return None
    return data


def _jsons(folder: Path) -> List[Path]:
    return sorted(p for p in folder.glob("*.json") if p.name != "classes.json")


def detect(root: Path) -> bool:
    """Whether ``root`` (or its ``train/``) holds LabelMe JSON files."""
    folder = root / "train" if (root / "train").is_dir() else root
    return any(_read(p) is not None for p in _jsons(folder)[:5])


def _shape_problem(index: int, shape: object) -> str:
    """Why ``shapes[index]`` cannot be used, or ""."""
    if not isinstance(shape, dict):
        return f"shapes[{index}] is {json_kind(shape)}, not an object"
    label, kind, points = shape.get("label"), shape.get("shape_type"), shape.get("points")
    if not isinstance(label, str):
        shown, kind_of = json.dumps(label)[:40], json_kind(label)
        return f"shapes[{index}] has the label {shown} ({kind_of}), not a string; give one label as text"
    if kind is not None and not isinstance(kind, str):
        return f"shapes[{index}] has the shape_type {json_kind(kind)}, not a string"
    if points is not None and not (
        isinstance(points, list)
        and all(isinstance(p, list) and len(p) == 2 and all(is_number(v) for v in p) for p in points)
    ):
        return f"shapes[{index}]'s points are not a list of [x, y] pairs of numbers"
    return ""


def _size(image: Path, data: dict) -> Tuple[int, int]:
    """The declared imageHeight x imageWidth, or the image's own when not given; checked."""
    height, width = data.get("imageHeight"), data.get("imageWidth")
    if height is None or width is None:
        height, width = read_image(image).shape[:2]
    elif not (type(height) is int and type(width) is int):
        raise ImageReadError(
            f"imageHeight and imageWidth are whole numbers, not {json_kind(height)} and {json_kind(width)}"
        )
    check_dimensions(height, width, "its declared imageHeight x imageWidth")
    return height, width


def _checked(root: Path, path: Path, data: dict) -> Tuple[Optional[Path], Tuple[int, int], str]:
    """(the image, its size, "") of one LabelMe file, or (None, (0, 0), why it cannot be used)."""
    for index, shape in enumerate(data["shapes"]):
        problem = _shape_problem(index, shape)
        if problem:
            return None, (0, 0), problem
    named = data.get("imagePath")
    if named is not None and not isinstance(named, str):
        return None, (0, 0), f"imagePath is {json_kind(named)}, not a file name"
    image, problem = named_path(root, path.parent, named) if named else (None, "")
    if problem:
        return None, (0, 0), f"imagePath {problem}"
    candidates = [image] if image else []
    candidates += [path.with_suffix(s) for s in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)]
    image = next((c for c in candidates if c.exists() and c.suffix.lower() in IMAGE_SUFFIXES), None)
    if image is None:
        return None, (0, 0), f"its image ({named}) is not beside it"
    try:
        check_regular(image)
        height, width = _size(image, data)
        for index, shape in enumerate(data["shapes"]):
            if shape.get("points"):
                check_coordinates(np.asarray(shape["points"], np.float64), height, width, f"shapes[{index}]")
    except ImageReadError as exc:
        return None, (0, 0), str(exc)
    return image, (height, width), ""


def _annotated(root: Path, folder: Path, options: SourceOptions) -> List[Found]:
    """(image, JSON, parsed JSON, size) of a folder; unusable files and images without a JSON are
    ``options.bad``."""
    found, used = [], set()
    for path in _jsons(folder):
        try:
            check_regular(path, "LabelMe JSON")
            data = _read(path)
        except NasloraError as exc:
            options.bad(str(exc))
            continue
        if data is None:
            note(f"{path}: not a LabelMe file (no 'shapes'); ignored")
            continue
        image, size, problem = _checked(root, path, data)
        if problem:
            options.bad(f"{path}: {problem}")
            continue
        found.append((image, path, data, size))
        used.add(image.resolve())
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if image.resolve() not in used:
            options.bad(f"{image}: no LabelMe JSON for this image in {folder}")
    return found


def _item(image: Path, json_path: Path, data: dict, size: Tuple[int, int], lookup: Lookup):
    shapes = []
    for shape in data["shapes"]:
        kind = shape.get("shape_type") or "polygon"
        if kind not in AREA_SHAPES:
            note(f"LabelMe {kind} shapes have no area (or are not supported): skipped")
            continue
        shapes.append((lookup[shape["label"]], kind, shape.get("points") or []))
    return image, ShapeLabels(str(json_path), *size, shapes)


def _names(root: Path, found: List[Found]) -> Tuple[List[str], object, str]:
    labels = sorted({s["label"] for _, _, d, _ in found for s in d["shapes"]})
    if not (root / "classes.json").is_file():
        return labels, f"the labels of {root}", "_background_"
    names = ClassSpec.from_classes_json(root / "classes.json").names
    special = IGNORE_NAMES + BACKGROUND_NAMES
    unknown = [label for label in labels if label not in names and label not in special]
    if unknown:
        raise NasloraError(
            f"{root / 'classes.json'}: it lacks the label {unknown[0]!r}; the names are: {', '.join(names)}"
        )
    return names[1:], root / "classes.json", names[0]


def load(root: Path, options: SourceOptions) -> Tuple[ClassSpec, Dict[str, list]]:
    """The pairs of every split and the classes (see the module's rules)."""
    folders = split_folders(root) or {"all": root}
    found = {split: _annotated(root, folder, options) for split, folder in folders.items()}
    names, where, first_name = _names(root, [f for items in found.values() for f in items])
    classes, lookup = choose_classes(names, options, where)
    lookup.setdefault(first_name, 0)
    if (root / "classes.json").is_file() and not options.category and options.num_classes != 1:
        classes = ClassSpec.from_classes_json(root / "classes.json")
        lookup = {**lookup, **{n: i for i, n in enumerate(classes.names)}}
    splits = {s: [_item(*f, lookup) for f in items] for s, items in found.items()}
    return classes, grouped_splits({s: [[pair] for pair in pairs] for s, pairs in splits.items()}, options)
