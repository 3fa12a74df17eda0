"""A seeded segmentation data set made of real photographs: one texture inside a random shape on another.

The photographs and textures are the ones scikit-image's wheel ships as files
(``skimage/data``): nothing is downloaded. Each sample crops a background from
one photograph and fills a random smooth blob with a crop of another, so the
object is told apart by texture and shape, not by a flat colour. Written as an
ordinary folder data set (``{train,val,test}/{images,masks}``, masks ``*_mask.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

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


def photo_folder() -> Path:
    """scikit-image's bundled sample images."""
    skimage = lazy_import("skimage", "pip:scikit-image", "the photograph data set")
    return Path(skimage.__file__).parent / "data"


def load_photos() -> List[np.ndarray]:
    """Every bundled photograph in ``PHOTOS`` as (H, W, 3) uint8."""
    folder = photo_folder()
    return [
        np.asarray(Image.open(folder / name).convert("RGB")) for name in PHOTOS if (folder / name).is_file()
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


def write_photo_dataset(
    out, count: int = 24, seed: int = 0, val: Optional[int] = None, test: Optional[int] = None
) -> Path:
    """Write ``count`` train, ``val`` and ``test`` pairs (default: count/3, at least 2) under ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
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
            image, mask = photo_sample(rng, photos)
            stem = f"{split}_{i:04d}"
            Image.fromarray(image).save(out / split / "images" / f"{stem}.png")
            Image.fromarray(mask * 255).save(out / split / "masks" / f"{stem}_mask.png")
    return out
