"""Small real-format data sets written file by file: COCO JSON, LabelMe JSON, MedSAM npz, multi-band TIFF."""

import json

import numpy as np
import tifffile
from PIL import Image
from pycocotools import mask as mask_utils

H, W = 32, 40


def photo(seed: int) -> np.ndarray:
    """A small RGB photo-like image."""
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def rle(mask: np.ndarray, compressed: bool) -> dict:
    """COCO RLE of a bool mask: compressed (string counts) or uncompressed (list counts, as for crowds)."""
    if compressed:
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [H, W], "counts": encoded["counts"].decode("ascii")}
    flat, counts, value, run = mask.T.reshape(-1), [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": [int(c) for c in counts]}


def box(y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def coco_json(images, annotations, categories=(("cat", 1), ("dog", 2))) -> dict:
    """A COCO instances document."""
    return {
        "images": [{"id": i, "file_name": name, "height": H, "width": W} for i, name in enumerate(images)],
        "annotations": [dict(a, id=k + 1) for k, a in enumerate(annotations)],
        "categories": [{"id": cid, "name": name, "supercategory": "animal"} for name, cid in categories],
    }


def coco_annotations() -> list:
    """Image 0: a cat polygon, a dog compressed RLE over it (later wins); image 1: a crowd RLE of dogs
    with a cat polygon on top; image 2: nothing (all background)."""
    return [
        {"image_id": 0, "category_id": 1, "iscrowd": 0, "segmentation": [[4, 4, 20, 4, 20, 20, 4, 20]]},
        {"image_id": 0, "category_id": 2, "iscrowd": 0, "segmentation": rle(box(10, 16, 10, 30), True)},
        {"image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
        {"image_id": 1, "category_id": 2, "iscrowd": 1, "segmentation": rle(box(0, 20, 0, 20), False)},
    ]


def write_coco(root, layout="annotations", count=3):
    """COCO's layout (annotations/instances_train.json + train/), Roboflow's or one root JSON."""
    names = [f"im{i}.jpg" for i in range(count)]
    document = coco_json(names, coco_annotations())
    if layout == "annotations":
        folder, target = root / "train", root / "annotations" / "instances_train.json"
    elif layout == "roboflow":
        folder = root / "train"
        target = folder / "_annotations.coco.json"
    else:
        folder, target = root / "images", root / "annotations.json"
    folder.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(photo(i)).save(folder / name, quality=95)
    target.write_text(json.dumps(document))
    return root


def labelme_shape(label, kind, points):
    return {"label": label, "shape_type": kind, "points": points, "flags": {}}


def write_labelme(root, shapes_per_image=None):
    """x.png + x.json per image: polygons, rectangles, circles; the last image has no shapes."""
    shapes_per_image = shapes_per_image or [
        [labelme_shape("cat", "polygon", [[4, 4], [20, 4], [20, 20], [4, 20]])],
        [
            labelme_shape("dog", "rectangle", [[30, 20], [10, 5]]),
            labelme_shape("cat", "circle", [[20, 12], [24, 12]]),
        ],
        [],
    ]
    root.mkdir(parents=True, exist_ok=True)
    for i, shapes in enumerate(shapes_per_image):
        Image.fromarray(photo(i)).save(root / f"x{i}.png")
        document = {
            "version": "5.4.1",
            "flags": {},
            "shapes": shapes,
            "imagePath": f"x{i}.png",
            "imageData": None,
            "imageHeight": H,
            "imageWidth": W,
        }
        (root / f"x{i}.json").write_text(json.dumps(document))
    return root


def write_npz(root):
    """A 2-D file (imgs (H, W, 3), gts (H, W)) and a volume (imgs, gts (4, H, W)), slices 0 and 3 empty."""
    root.mkdir(parents=True, exist_ok=True)
    gts = np.zeros((H, W), np.uint8)
    gts[5:15, 5:25] = 1
    np.savez_compressed(root / "case2d.npz", imgs=photo(1), gts=gts)
    volume = np.random.default_rng(2).integers(0, 255, (4, H, W), dtype=np.uint8)
    labels = np.zeros((4, H, W), np.uint8)
    labels[1, 4:12, 4:12] = 1
    labels[2, 8:20, 8:30] = 2
    np.savez_compressed(root / "case3d.npz", imgs=volume, gts=labels)
    return root


def multiband(seed: int, bands: int = 5) -> np.ndarray:
    """(bands, H, W) uint16 reflectance-like values (a few thousand, far below 65535)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(200, 3000, (bands, H, W)) + 400 * np.arange(bands)[:, None, None]).astype(np.uint16)


def write_tiff_folder(root, count=3):
    """images/*.tif (5-band uint16, planar) + masks/*.png."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        tifffile.imwrite(root / "images" / f"t{i}.tif", multiband(i), photometric="minisblack")
        Image.fromarray((box(4, 20, 6, 30) * 255).astype(np.uint8)).save(root / "masks" / f"t{i}.png")
    return root
