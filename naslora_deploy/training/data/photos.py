"""A seeded segmentation data set made of real photographs: one texture inside a random shape on another.

The photographs and textures are the ones scikit-image's wheel ships as files
(``skimage/data``): nothing is downloaded. Each sample crops a background from
one photograph and fills a random smooth blob with a crop of another, so the
object is told apart by texture and shape, not by a flat colour. Written as an
ordinary folder data set (``{train,val,test}/{images,masks}``, masks ``*_mask.png``).

``multiclass=True`` writes a three-class version instead (``CLASS_NAMES``, with a
``classes.json``): a blob filled with one of the regular textures
(``BLOB_TEXTURES``) and a rectangle filled with one of ``BOX_PHOTOS``, on a
background from the remaining photographs; the rectangle is drawn last and
may cover part of the blob. Masks hold the class index (0, 1, 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from naslora_deploy.common.lazy import lazy_import

PHOTOS = (
    "brick.png",
    "grass.png",
    "gravel.png",
    "coffee.png",
    "chelsea.png",
    "astronaut.png",
    "rocket.jpg",
    "retina.jpg",
    "ihc.png",
    "coins.png",
    "camera.png",
    "moon.png",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
)
CLASS_NAMES = ("background", "blob", "box")
BLOB_TEXTURES = ("brick.png", "grass.png", "gravel.png")
BOX_PHOTOS = ("coins.png", "camera.png", "moon.png", "ihc.png")


def photo_folder() -> Path:
    """scikit-image's bundled sample images."""
    skimage = lazy_import("skimage", "pip:scikit-image", "the photograph data set")
    return Path(skimage.__file__).parent / "data"


def load_photos(names: Sequence[str] = PHOTOS) -> List[np.ndarray]:
    """Every bundled photograph in ``names`` (default: all of ``PHOTOS``) as (H, W, 3) uint8."""
    folder = photo_folder()
    return [
        np.asarray(Image.open(folder / name).convert("RGB")) for name in names if (folder / name).is_file()
    ]


def _crop(rng: np.random.Generator, photo: np.ndarray, height: int, width: int) -> np.ndarray:
    scale = rng.uniform(0.5, 1.0) * min(photo.shape[0] / height, photo.shape[1] / width)
    crop_h, crop_w = max(8, int(height * scale)), max(8, int(width * scale))
    top = int(rng.integers(0, photo.shape[0] - crop_h + 1))
    left = int(rng.integers(0, photo.shape[1] - crop_w + 1))
    patch = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
    return np.asarray(patch.resize((width, height), Image.BILINEAR))


def blob(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random smooth star-shaped region: an ellipse whose radius wobbles with a few harmonics."""
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.15, 0.32) * height, rng.uniform(0.15, 0.32) * width
    yy, xx = np.mgrid[0:height, 0:width]
    dy, dx = (yy - cy) / ry, (xx - cx) / rx
    angle = np.arctan2(dy, dx)
    radius = 1.0 + sum(
        rng.uniform(0, 0.12) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)
    )
    return np.hypot(dy, dx) <= radius


def photo_sample(
    rng: np.random.Generator, photos: List[np.ndarray], size_range: Tuple[int, int] = (192, 320)
) -> Tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) 0/1 mask."""
    height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    back, front = rng.choice(len(photos), size=2, replace=False)
    image = _crop(rng, photos[back], height, width)
    inside = blob(rng, height, width)
    image = np.where(inside[..., None], _crop(rng, photos[front], height, width), image)
    return image.astype(np.uint8), inside.astype(np.uint8)


def multiclass_photo_sample(
    rng: np.random.Generator,
    groups: Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray]],
    size_range: Tuple[int, int] = (192, 320),
) -> Tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) uint8 label map: 0 background, 1 blob, 2 box.

    ``groups``: the photographs of the background, the blob's textures and the box's.
    """
    height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    background, textures, boxes = groups
    image = _crop(rng, background[int(rng.integers(len(background)))], height, width)
    labels = np.zeros((height, width), np.uint8)
    inside = blob(rng, height, width)
    image = np.where(
        inside[..., None], _crop(rng, textures[int(rng.integers(len(textures)))], height, width), image
    )
    labels[inside] = 1
    box_h, box_w = int(rng.uniform(0.2, 0.4) * height), int(rng.uniform(0.2, 0.4) * width)
    top, left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
    fill = _crop(rng, boxes[int(rng.integers(len(boxes)))], box_h, box_w)
    image[top : top + box_h, left : left + box_w] = fill
    labels[top : top + box_h, left : left + box_w] = 2
    return image.astype(np.uint8), labels


def write_photo_dataset(
    out,
    count: int = 24,
    seed: int = 0,
    val: Optional[int] = None,
    test: Optional[int] = None,
    multiclass: bool = False,
) -> Path:
    """Write ``count`` train, ``val`` and ``test`` pairs (default: count/3, at least 2) under ``out``.

    ``multiclass``: the three-class version (background, blob, box) with a ``classes.json``.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    if multiclass:
        special = set(BLOB_TEXTURES) | set(BOX_PHOTOS)
        groups = tuple(
            load_photos(names)
            for names in ([n for n in PHOTOS if n not in special], BLOB_TEXTURES, BOX_PHOTOS)
        )
        if not all(groups):
            raise FileNotFoundError(f"scikit-image's sample photographs are missing from {photo_folder()}")
    else:
        photos = load_photos()
    default = max(2, count // 3)
    splits = {
        "train": count,
        "val": default if val is None else val,
        "test": default if test is None else test,
    }
    for split, n in splits.items():
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"{split}_{i:04d}"
            if multiclass:
                image, labels = multiclass_photo_sample(rng, groups)
                mask = labels
            else:
                image, labels = photo_sample(rng, photos)
                mask = labels * 255
            Image.fromarray(image).save(out / split / "images" / f"{stem}.png")
            Image.fromarray(mask).save(out / split / "masks" / f"{stem}_mask.png")
    if multiclass:
        (out / "classes.json").write_text(json.dumps({"names": list(CLASS_NAMES)}, indent=2) + "\n")
    return out
