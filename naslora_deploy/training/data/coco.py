"""COCO instances JSON (polygons, RLE, crowd RLE) as (image, label map) pairs, via pycocotools.

Layouts (the first that matches):

* COCO's own: ``annotations/instances_<split>*.json`` (e.g. ``instances_train2017.json``) with
  the images in ``<name>/``, ``<split>/``, ``images/<name>/``, ``images/<split>/`` or ``images/``,
  where ``<name>`` is what follows ``instances_`` (``train2017``);
* Roboflow's: ``{train,valid,val,test}/_annotations.coco.json`` with the images beside it;
* one JSON at the root, ``annotations.json`` or ``_annotations.coco.json``, with the images in
  ``images/`` or beside it: split with ``--val-fraction`` and ``--seed``.

Classes (``sources.choose_classes``): the train JSON's categories in its order, background
0; one category, ``--classes 1`` or ``--category NAME`` train the binary head. A category
that is only the supercategory of the others and that no annotation uses (Roboflow's
data-set name) is dropped. Painting: crowd regions first (they are pixels of their
category), then the other annotations in file order; where objects overlap the later
one wins. An image without annotations is all background. Annotations without a
segmentation (boxes only) are skipped with a warning; a JSON with no annotations, or
only boxes, is refused.

Checked before anything is read or allocated (one line naming the file and the entry):
every entry of the three lists is an object, ids (``id``, ``image_id``, ``category_id``)
are whole numbers or strings, names are strings; an image's ``file_name`` is relative to
its image folder and stays inside it (no absolute path, no ``..`` out of it; a link in the
folder is followed), and names a regular file; its declared height and width are within
``check_dimensions``'s limits (``NASLORA_MAX_PIXELS``); polygon coordinates are finite and
within one image width/height of the image (``sources.check_coordinates``), and the memory
pycocotools' rasteriser would take for them is within ``NASLORA_MAX_DECODED_BYTES``; an
RLE's run lengths cover its image exactly once.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.common.filechecks import check_decoded, check_dimensions, check_regular, file_kind
from naslora_deploy.common.imaging import IMAGE_SUFFIXES, ImageReadError, note
from naslora_deploy.common.io import read_json
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data.sources import (
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

ROBOFLOW_JSON = "_annotations.coco.json"
ROOT_JSONS = ("annotations.json", ROBOFLOW_JSON)
SPLIT_WORDS = (("train", "train"), ("val", "val"), ("valid", "val"), ("test", "test"))


@dataclass
class CocoLabels(PaintedLabels):
    """One image's annotations: ``layers`` are (painted value, segmentation, annotation id)."""

    def region(self, layer: tuple, shape: Tuple[int, int]) -> np.ndarray:
        """One annotation's segmentation (polygons or RLE) as a region."""
        _, segmentation, annotation = layer
        return _decode(segmentation, shape, f"{self.source}, annotation {annotation}")

    def __str__(self) -> str:
        return self.source


# ----- segmentations: checked against the image's size before pycocotools allocates anything ----------
POLYGON_STEP_BYTES = 16  # pycocotools' polygon rasteriser: 4 int arrays of one entry per boundary step
POLYGON_SCALE = 5  # ... and it walks the boundary at 5 steps per pixel


def _polygons(segmentation: list, shape: Tuple[int, int], where: str) -> list:
    """A segmentation's polygons as flat float lists, each checked (``sources.check_coordinates``),
    their rasterisation's memory checked against ``limits.DECODED_BYTES``."""
    height, width = shape
    polygons, steps = [], 0
    for polygon in segmentation:
        if not isinstance(polygon, list) or not all(is_number(v) for v in polygon):
            odd = next((v for v in polygon if not is_number(v))) if isinstance(polygon, list) else polygon
            held = "holds" if isinstance(polygon, list) else "is"
            raise ValueError(
                f"a polygon is a flat list of numbers x1, y1, x2, y2, ..., this one {held} {json_kind(odd)}"
            )
        values = np.asarray(polygon, np.float64)
        if values.size < 6:
            continue  # fewer than 3 points: no area (COCO's own files hold a few such polygons)
        if values.size % 2:
            raise ValueError(f"a polygon of {values.size} numbers: x, y pairs need an even count")
        points = values.reshape(-1, 2)
        check_coordinates(points, height, width, where)
        scaled = np.rint(points * POLYGON_SCALE)
        steps += int(np.abs(scaled - np.roll(scaled, -1, axis=0)).max(axis=1).sum()) + len(points)
        polygons.append(points.reshape(-1).tolist())
    if not polygons:
        raise ValueError("no polygon of 3 or more points")
    check_decoded(steps * POLYGON_STEP_BYTES, where, "simplify its polygons")
    return polygons


def string_counts(text: str) -> List[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, with checks)."""
    counts: List[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("the compressed RLE string is cut short")
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"{text[position]!r} is not a character of a compressed RLE string")
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        counts.append(value + counts[-2] if len(counts) > 2 else value)
    return counts


def _rle(segmentation: dict, shape: Tuple[int, int]):
    """An RLE segmentation in pycocotools' form, after its run lengths are checked to cover the image."""
    from pycocotools import mask as mask_utils

    height, width = shape
    size = segmentation.get("size")
    if not isinstance(size, list) or size != [height, width]:
        raise ValueError(f"RLE size {size} is not the image's [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, list) and all(type(c) is int for c in counts):
        runs = counts
    elif isinstance(counts, str):
        runs = string_counts(counts)
    else:
        raise ValueError("RLE counts are a list of whole numbers or a compressed string")
    if any(run < 0 for run in runs):
        raise ValueError("a run length of its RLE is negative")
    if sum(runs) != height * width:
        raise ValueError(
            f"its RLE's run lengths add up to {sum(runs):,}, not the image's {height * width:,} pixels"
        )
    if isinstance(counts, list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return {"size": [height, width], "counts": counts.encode("ascii")}


def _decode(segmentation, shape: Tuple[int, int], where: str) -> np.ndarray:
    """A COCO segmentation (polygons, RLE or compressed RLE) as an (H, W) bool mask."""
    from pycocotools import mask as mask_utils

    height, width = shape
    try:
        if isinstance(segmentation, list):
            polygons = _polygons(segmentation, shape, where)
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            rle = _rle(segmentation, shape)
        else:
            raise ValueError("a segmentation is a list of polygons or an RLE {size, counts}")
        return mask_utils.decode(rle).astype(bool)
    except ImageReadError:
        raise
    except Exception as exc:  # pycocotools raises many kinds on malformed input
        raise ImageReadError(f"{where}: cannot read its segmentation ({first_line(exc, 120)})") from None


# ----- the JSON: every entry's type checked before any of it is used ----------------------------------
IDS = {"images": ("id",), "annotations": ("image_id", "category_id"), "categories": ("id",)}
TEXTS = {"images": ("file_name",), "categories": ("name", "supercategory")}  # when given: text
WHAT = "COCO annotation file"


def _entry_problem(kind: str, entry: object) -> str:
    """Why one entry of ``images``, ``annotations`` or ``categories`` cannot be used, or ""."""
    if not isinstance(entry, dict):
        return f"is {json_kind(entry)}, not an object"
    optional_id = ("id",) if kind == "annotations" and "id" in entry else ()
    for key in IDS[kind] + optional_id:
        value = entry.get(key)
        if not (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))):
            shown = json.dumps(value)[:40]
            return f"has {key} {shown} ({json_kind(value)}); COCO ids are whole numbers (or strings)"
    for key in TEXTS.get(kind, ()):
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            return f"has {key} {json.dumps(value)[:40]} ({json_kind(value)}), not a string"
    if kind == "categories" and not isinstance(entry.get("name"), str):
        return "has no name"
    return ""


def _load_json(path: Path) -> dict:
    check_regular(path, WHAT)
    data = read_json(path, WHAT)
    lists = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise NasloraError(
            f"{path}: not a COCO instances file (it needs lists 'images', 'annotations', 'categories')"
        )
    for kind in lists:
        for index, entry in enumerate(data[kind]):
            problem = _entry_problem(kind, entry)
            if problem:
                raise NasloraError(f"{path}: {kind}[{index}] {problem}; fix that entry of the {WHAT}")
    if not data["annotations"]:
        raise NasloraError(f"{path}: the annotation list is empty; there is nothing to learn from it")
    return data


def categories(data: dict) -> List[Tuple[object, str]]:
    """(id, name) of the categories in file order, Roboflow's unused data-set supercategory dropped."""
    listed = [(c["id"], c["name"]) for c in data["categories"]]
    used = {a["category_id"] for a in data["annotations"]}
    parents = {c.get("supercategory") for c in data["categories"]}
    return [(i, n) for i, n in listed if i in used or n not in parents]


def _layouts(root: Path) -> Optional[Dict[str, Tuple[Path, List[Path]]]]:
    """split -> (JSON, image folders to look in), or None when no COCO layout matches."""
    found: Dict[str, Tuple[Path, List[Path]]] = {}
    for path in sorted((root / "annotations").glob("instances_*.json")):
        name = path.stem[len("instances_") :]
        split = next((s for word, s in SPLIT_WORDS if name.startswith(word)), None)
        if split and split not in found:
            dirs = [
                root / name,
                root / "images" / name,
                root / split,
                root / "images" / split,
                root / "images",
            ]
            found[split] = (path, list(dict.fromkeys(dirs)))
    if found:
        return found
    folders = split_folders(root) if any((root / w).is_dir() for w, _ in SPLIT_WORDS) else {}
    # exists(), not is_file(): a FIFO or device in a JSON's place is found, then refused by _load_json
    if any((f / ROBOFLOW_JSON).exists() for f in folders.values()):
        return {s: (f / ROBOFLOW_JSON, [f]) for s, f in folders.items() if (f / ROBOFLOW_JSON).exists()}
    single = next((root / n for n in ROOT_JSONS if (root / n).exists()), None)
    return {"all": (single, [root / "images", root])} if single else None


def detect(root: Path) -> bool:
    """Whether ``root`` holds one of the COCO layouts."""
    return _layouts(root) is not None


def _find_image(dirs: List[Path], file_name: str) -> Tuple[Optional[Path], str]:
    """(the image a ``file_name`` names, "") or (None, why not): a name relative to an image folder that
    stays inside it (``sources.named_path``), tried as given and then by its last part in each folder."""
    odd = ""
    for folder in dirs:
        for name in (file_name, Path(file_name).name):
            candidate, problem = named_path(folder, folder, name)
            if problem:
                return None, problem.replace("the data folder", "the image folder")
            try:
                mode = candidate.stat().st_mode
            except (OSError, ValueError):  # ValueError: a NUL in the name
                odd = odd or (f"{candidate} is a broken link" if candidate.is_symlink() else "")
                continue
            if stat.S_ISREG(mode):
                return candidate, ""
            if not stat.S_ISDIR(mode):
                odd = odd or f"{candidate} is {file_kind(mode)}, not a regular file"
    return None, odd or "not found in " + ", ".join(map(str, dirs))


def _image_pair(json_path: Path, image: dict, dirs: List[Path], layers: list, options: SourceOptions):
    """(image path, labels) of one ``images`` entry, or None after ``options.bad``."""
    file_name = image.get("file_name") or ""
    where = f"{json_path}: image {file_name}" if file_name else f"{json_path}: image id {image['id']!r}"
    path, problem = _find_image(dirs, file_name) if file_name else (None, "has no file_name")
    if path is not None and path.suffix.lower() not in IMAGE_SUFFIXES:
        problem = "not an image file"
    size = (image.get("height"), image.get("width"))
    if not problem and not all(type(v) is int and v > 0 for v in size):
        problem = f"its height and width must be positive whole numbers, not {size[0]!r} and {size[1]!r}"
    if problem:
        options.bad(f"{where}: {problem}")
        return None
    try:
        check_dimensions(*size, f"{where} (its declared size)")
    except ImageReadError as exc:
        options.bad(str(exc))
        return None
    return path, CocoLabels(f"{json_path} [{file_name}]", *size, layers)


def _pairs(json_path: Path, data: dict, dirs: List[Path], lookup: Lookup, options: SourceOptions) -> list:
    names = dict(categories(data))
    layers: Dict[object, list] = {}
    boxes_only = 0
    for ann in sorted(data["annotations"], key=lambda a: not a.get("iscrowd")):
        if not ann.get("segmentation"):
            boxes_only += 1
            continue
        name = names.get(ann["category_id"])
        if name not in lookup:
            raise NasloraError(
                f"{json_path}: annotation {ann.get('id')} has category {ann['category_id']} ({name}), "
                f"not one of the training categories ({', '.join(lookup)})"
            )
        layers.setdefault(ann["image_id"], []).append((lookup[name], ann["segmentation"], ann.get("id")))
    if boxes_only == len(data["annotations"]):
        raise NasloraError(f"{json_path}: the annotations hold boxes only; export them with segmentations")
    if boxes_only:
        note(f"{json_path}: {boxes_only} annotation(s) without a segmentation (boxes only) skipped")
    pairs = [
        _image_pair(json_path, image, dirs, layers.get(image["id"], []), options) for image in data["images"]
    ]
    return [pair for pair in pairs if pair is not None]


def load(root: Path, options: SourceOptions) -> Tuple[ClassSpec, Dict[str, list]]:
    """The pairs of every split and the classes (see the module's rules)."""
    layouts = _layouts(root)
    loaded = {split: _load_json(json_path) for split, (json_path, _) in layouts.items()}
    first = "train" if "train" in loaded else "all"
    classes, lookup = choose_classes([n for _, n in categories(loaded[first])], options, layouts[first][0])
    splits = {s: _pairs(layouts[s][0], loaded[s], layouts[s][1], lookup, options) for s in loaded}
    return classes, grouped_splits({s: [[pair] for pair in pairs] for s, pairs in splits.items()}, options)
