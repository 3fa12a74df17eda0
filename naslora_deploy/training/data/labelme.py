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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.common.imaging import IMAGE_SUFFIXES, ImageReadError, note
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data.sources import (
    BACKGROUND_NAMES,
    IGNORE_NAMES,
    Lookup,
    PaintedLabels,
    SourceOptions,
    choose_classes,
    grouped_splits,
    split_folders,
)

AREA_SHAPES = ("polygon", "rectangle", "circle")


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
    except (TypeError, ValueError) as exc:
        raise ImageReadError(f"{source}: cannot draw a shape ({first_line(exc, 120)})") from None
    return np.asarray(canvas, dtype=bool)


def _read(path: Path) -> Optional[dict]:
    """A LabelMe JSON, or None for a JSON file of another kind."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NasloraError(f"{path}: cannot read it as JSON ({first_line(exc, 120)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        return None
    return data


def _jsons(folder: Path) -> List[Path]:
    return sorted(p for p in folder.glob("*.json") if p.name != "classes.json")


def detect(root: Path) -> bool:
    """Whether ``root`` (or its ``train/``) holds LabelMe JSON files."""
    folder = root / "train" if (root / "train").is_dir() else root
    return any(_read(p) is not None for p in _jsons(folder)[:5])


def _image_of(json_path: Path, data: dict) -> Optional[Path]:
    named = data.get("imagePath")
    candidates = [json_path.parent / str(named)] if named else []
    candidates += [
        json_path.with_suffix(s) for s in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)
    ]
    return next((c for c in candidates if c.is_file() and c.suffix.lower() in IMAGE_SUFFIXES), None)


def _annotated(folder: Path, options: SourceOptions) -> List[Tuple[Path, Path, dict]]:
    """(image, JSON, parsed JSON) of a folder; images without a JSON are ``options.bad``."""
    found, used = [], set()
    for path in _jsons(folder):
        data = _read(path)
        if data is None:
            note(f"{path}: not a LabelMe file (no 'shapes'); ignored")
            continue
        image = _image_of(path, data)
        if image is None:
            options.bad(f"{path}: its image ({data.get('imagePath')}) is not beside it")
            continue
        found.append((image, path, data))
        used.add(image.resolve())
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if image.resolve() not in used:
            options.bad(f"{image}: no LabelMe JSON for this image in {folder}")
    return found


def _item(image: Path, json_path: Path, data: dict, lookup: Lookup) -> Tuple[Path, ShapeLabels]:
    height, width = data.get("imageHeight"), data.get("imageWidth")
    if not (isinstance(height, int) and isinstance(width, int)):
        with Image.open(image) as opened:
            width, height = opened.size
    shapes = []
    for shape in data["shapes"]:
        kind = shape.get("shape_type") or "polygon"
        if kind not in AREA_SHAPES:
            note(f"LabelMe {kind} shapes have no area (or are not supported): skipped")
            continue
        shapes.append((lookup[str(shape.get("label"))], kind, shape.get("points") or []))
    return image, ShapeLabels(str(json_path), height, width, shapes)


def _names(root: Path, found: List[Tuple[Path, Path, dict]]) -> Tuple[List[str], object, str]:
    labels = sorted({str(s.get("label")) for _, _, d in found for s in d["shapes"] if isinstance(s, dict)})
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
    found = {split: _annotated(folder, options) for split, folder in folders.items()}
    names, where, first_name = _names(root, [f for items in found.values() for f in items])
    for items in found.values():
        for _, path, data in items:
            if not all(isinstance(s, dict) for s in data["shapes"]):
                raise NasloraError(f"{path}: 'shapes' must be a list of objects")
    classes, lookup = choose_classes(names, options, where)
    lookup.setdefault(first_name, 0)
    if (root / "classes.json").is_file() and not options.category and options.num_classes != 1:
        classes = ClassSpec.from_classes_json(root / "classes.json")
        lookup = {**lookup, **{n: i for i, n in enumerate(classes.names)}}
    splits = {s: [_item(*f, lookup) for f in items] for s, items in found.items()}
    return classes, grouped_splits({s: [[pair] for pair in pairs] for s, pairs in splits.items()}, options)
