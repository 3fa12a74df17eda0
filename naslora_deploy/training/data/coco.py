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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.common.imaging import IMAGE_SUFFIXES, ImageReadError, note
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data.sources import (
    Lookup,
    PaintedLabels,
    SourceOptions,
    choose_classes,
    grouped_splits,
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


def _decode(segmentation, shape: Tuple[int, int], where: str) -> np.ndarray:
    """A COCO segmentation (polygons, RLE or compressed RLE) as an (H, W) bool mask."""
    from pycocotools import mask as mask_utils

    height, width = shape
    try:
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
            if not polygons:
                raise ValueError("no polygon of 3 or more points")
            rle = mask_utils.merge(
                mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
            )
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            if list(segmentation.get("size") or []) != [height, width]:
                raise ValueError(
                    f"RLE size {segmentation.get('size')} is not the image's [{height}, {width}]"
                )
            counts = segmentation["counts"]
            rle = (
                mask_utils.frPyObjects(segmentation, height, width)
                if isinstance(counts, list)
                else {
                    "size": [height, width],
                    "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
                }
            )
        else:
            raise ValueError("a segmentation is a list of polygons or an RLE {size, counts}")
        return mask_utils.decode(rle).astype(bool)
    except Exception as exc:  # pycocotools raises many kinds on malformed input
        raise ImageReadError(f"{where}: cannot read its segmentation ({first_line(exc, 120)})") from None


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NasloraError(f"{path}: cannot read it as JSON ({first_line(exc, 120)})") from None
    lists = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise NasloraError(
            f"{path}: not a COCO instances file (it needs lists 'images', 'annotations', 'categories')"
        )
    if not data["annotations"]:
        raise NasloraError(f"{path}: the annotation list is empty; there is nothing to learn from it")
    return data


def categories(data: dict) -> List[Tuple[int, str]]:
    """(id, name) of the categories in file order, Roboflow's unused data-set supercategory dropped."""
    listed = [(c.get("id"), str(c.get("name"))) for c in data["categories"] if isinstance(c, dict)]
    used = {a.get("category_id") for a in data["annotations"] if isinstance(a, dict)}
    parents = {c.get("supercategory") for c in data["categories"] if isinstance(c, dict)}
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
    if any((f / ROBOFLOW_JSON).is_file() for f in folders.values()):
        return {s: (f / ROBOFLOW_JSON, [f]) for s, f in folders.items() if (f / ROBOFLOW_JSON).is_file()}
    single = next((root / n for n in ROOT_JSONS if (root / n).is_file()), None)
    return {"all": (single, [root / "images", root])} if single else None


def detect(root: Path) -> bool:
    """Whether ``root`` holds one of the COCO layouts."""
    return _layouts(root) is not None


def _find_image(dirs: List[Path], file_name: str) -> Optional[Path]:
    for folder in dirs:
        for candidate in (folder / file_name, folder / Path(file_name).name):
            if candidate.is_file():
                return candidate
    return None


def _pairs(json_path: Path, data: dict, dirs: List[Path], lookup: Lookup, options: SourceOptions) -> list:
    names = dict(categories(data))
    layers: Dict[object, list] = {}
    boxes_only = 0
    for ann in sorted(data["annotations"], key=lambda a: not (isinstance(a, dict) and a.get("iscrowd"))):
        if not isinstance(ann, dict) or not ann.get("segmentation"):
            boxes_only += 1
            continue
        name = names.get(ann.get("category_id"))
        if name not in lookup:
            raise NasloraError(
                f"{json_path}: annotation {ann.get('id')} has category {ann.get('category_id')} ({name}), "
                f"not one of the training categories ({', '.join(lookup)})"
            )
        layers.setdefault(ann.get("image_id"), []).append((lookup[name], ann["segmentation"], ann.get("id")))
    if boxes_only == len(data["annotations"]):
        raise NasloraError(f"{json_path}: the annotations hold boxes only; export them with segmentations")
    if boxes_only:
        note(f"{json_path}: {boxes_only} annotation(s) without a segmentation (boxes only) skipped")
    pairs = []
    for image in data["images"]:
        file_name = str(image.get("file_name", "")) if isinstance(image, dict) else ""
        where = f"{json_path}: image {file_name or repr(image)[:60]}"
        path = _find_image(dirs, file_name) if file_name else None
        if path is None or path.suffix.lower() not in IMAGE_SUFFIXES:
            options.bad(
                f"{where}: "
                + ("not found in " + ", ".join(map(str, dirs)) if path is None else "not an image file")
            )
            continue
        size = (image.get("height"), image.get("width"))
        if not all(isinstance(v, int) and v > 0 for v in size):
            options.bad(f"{where}: its height and width are missing")
            continue
        source = f"{json_path} [{file_name}]"
        pairs.append((path, CocoLabels(source, *size, layers.get(image.get("id"), []))))
    return pairs


def load(root: Path, options: SourceOptions) -> Tuple[ClassSpec, Dict[str, list]]:
    """The pairs of every split and the classes (see the module's rules)."""
    layouts = _layouts(root)
    loaded = {split: _load_json(json_path) for split, (json_path, _) in layouts.items()}
    first = "train" if "train" in loaded else "all"
    classes, lookup = choose_classes([n for _, n in categories(loaded[first])], options, layouts[first][0])
    splits = {s: _pairs(layouts[s][0], loaded[s], layouts[s][1], lookup, options) for s in loaded}
    return classes, grouped_splits({s: [[pair] for pair in pairs] for s, pairs in splits.items()}, options)
