"""A seeded synthetic segmentation data set, written as an ordinary folder data set.

Images are smooth coloured backgrounds with noise; objects are ellipses
("disc") and rectangles ("box") with their own colour and stripe texture.
Binary masks mark every object (0/255, named ``<stem>_mask.png`` as Kvasir
does); multi-class masks hold 0 = background, 1 = disc, 2 = box, with a
``classes.json`` beside them. Sizes vary and are not square, so resizing and
padding are exercised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

CLASS_NAMES = ("background", "disc", "box")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 120, size=3)
    slope = rng.uniform(-0.2, 0.2, size=(2, 3))
    image = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    return image + rng.normal(0, 12, size=(height, width, 3))


def _draw_object(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, kind: int) -> None:
    height, width = labels.shape
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    ry, rx = rng.uniform(0.08, 0.22) * height, rng.uniform(0.08, 0.22) * width
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == 1:
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    else:
        inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    colour = (
        rng.uniform(150, 250, size=3)
        if kind == 1
        else rng.uniform(120, 220, size=3) * np.array([1.0, 0.6, 0.4])
    )
    period = rng.uniform(4, 9)
    stripes = 20 * np.sin((yy + xx) / period)[..., None] if kind == 2 else 0
    image[inside] = (colour + stripes + rng.normal(0, 8, size=(height, width, 3)))[inside]
    labels[inside] = kind


def synthetic_sample(
    rng: np.random.Generator, size_range: Tuple[int, int] = (192, 320)
) -> Tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) uint8 label map (0, 1 = disc, 2 = box)."""
    height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    image = _background(rng, height, width)
    labels = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        _draw_object(rng, image, labels, kind=int(rng.integers(1, 3)))
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_synthetic_dataset(
    out, count: int = 48, multiclass: bool = False, seed: int = 0, with_test: bool = True
) -> Path:
    """Write ``count`` train pairs (+ count/4 val and test) under ``out``; returns ``out``.

    Layout: ``out/{train,val,test}/{images,masks}``; multi-class adds ``classes.json``.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    splits = {"train": count, "val": max(2, count // 4)}
    if with_test:
        splits["test"] = max(2, count // 4)
    for split, n in splits.items():
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, labels = synthetic_sample(rng)
            stem = f"{split}_{i:04d}"
            Image.fromarray(image).save(out / split / "images" / f"{stem}.png")
            if multiclass:
                Image.fromarray(labels).save(out / split / "masks" / f"{stem}.png")
            else:
                Image.fromarray(((labels > 0) * 255).astype(np.uint8)).save(
                    out / split / "masks" / f"{stem}_mask.png"
                )
    if multiclass:
        (out / "classes.json").write_text(json.dumps({"names": list(CLASS_NAMES)}, indent=2) + "\n")
    return out
