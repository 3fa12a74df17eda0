"""Everything mode in numpy against segment-anything's automatic mask generator and its torch helpers."""

import dataclasses
import inspect
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from segment_anything.utils import amg
from torchvision.ops import batched_nms, nms

from naslora_deploy.runtime.everything import (
    EverythingSpec,
    box_nms,
    box_xyxy_to_xywh,
    encode_coco_rle,
    generate_masks,
    image_point_grid,
    masks_to_boxes,
    point_grid,
    remove_small_regions,
    stability_scores,
)

pytest.importorskip("cv2")  # amg.remove_small_regions, the reference, uses it

IMAGE_HW = (90, 120)
LOW_RES_HW = (45, 60)


def _blob_masks(rng, count, size_hw, smoothing=3, fill=0.5):
    """(count, H, W) bool masks of smooth random blobs: islands, holes, border contact."""
    noise = rng.standard_normal((count, *size_hw))
    smooth = ndimage.uniform_filter(noise, size=(1, smoothing, smoothing))
    return smooth > np.quantile(smooth, 1 - fill)


# ----- the pure functions, one by one --------------------------------------------------------------
@pytest.mark.parametrize("per_side", [1, 2, 7, 32])
def test_point_grid_is_sams(per_side):
    assert np.array_equal(point_grid(per_side), amg.build_point_grid(per_side))
    sam_scaled = amg.build_point_grid(per_side) * np.array(IMAGE_HW)[None, ::-1]
    assert np.array_equal(image_point_grid(per_side, IMAGE_HW), sam_scaled)


@pytest.mark.parametrize("threshold, offset", [(0.0, 1.0), (0.5, 0.25), (-1.0, 0.0)])
def test_stability_scores_are_sams(threshold, offset):
    logits = (np.random.default_rng(0).standard_normal((8, 17, 23)) * 3).astype(np.float32)
    logits[0] = -10.0  # both thresholds empty: NaN
    logits[1] = 10.0
    logits[2, :, :5] = threshold + offset  # exactly at the upper cut: not above it
    ours = stability_scores(logits, threshold, offset)
    theirs = amg.calculate_stability_score(torch.from_numpy(logits), threshold, offset).numpy()
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_masks_to_boxes_are_sams():
    masks = _blob_masks(np.random.default_rng(1), 2 * 6, (9, 11), smoothing=1, fill=0.05).reshape(2, 6, 9, 11)
    masks[0, 0] = False  # empty
    masks[0, 1] = True  # full: touches every border
    masks[0, 2] = False
    masks[0, 2, 8, 10] = True  # one pixel in the last corner
    masks[0, 3] = False
    masks[0, 3, 0, 0] = True
    masks[1, 0] = False
    masks[1, 0, :, 4] = True  # one column
    theirs = amg.batched_mask_to_box(torch.from_numpy(masks)).numpy()
    assert np.array_equal(masks_to_boxes(masks), theirs)
    assert np.array_equal(masks_to_boxes(masks[0, 2]), amg.batched_mask_to_box(torch.from_numpy(masks[0, 2])))
    assert np.array_equal(masks_to_boxes(masks[0, 0]), [0, 0, 0, 0])
    assert masks_to_boxes(np.zeros((0, 9, 11), bool)).shape == (0, 4)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("iou_thresh", [0.0, 0.1, 0.3, 0.5, 0.7, 1.0])
def test_box_nms_is_torchvisions(seed, iou_thresh):
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 40, (300, 2))
    boxes = np.concatenate([corners, corners + rng.integers(0, 25, (300, 2))], axis=1)  # some zero-area
    boxes[50:60] = boxes[40:50]  # exact duplicates
    boxes[60:65] = 0  # empty masks' boxes
    ties = rng.integers(0, 4, 300) / 4
    for scores in (ties.astype(np.float32), rng.random(300).astype(np.float32)):
        torch_boxes, torch_scores = torch.from_numpy(boxes).float(), torch.from_numpy(scores)
        ours = box_nms(boxes, scores, iou_thresh)
        assert np.array_equal(ours, nms(torch_boxes, torch_scores, iou_thresh).numpy())
        batched = batched_nms(torch_boxes, torch_scores, torch.zeros(300), iou_thresh)
        assert np.array_equal(ours, batched.numpy())  # SAM's call, under its 1000-box reordering


def test_box_nms_of_nothing():
    kept = box_nms(np.zeros((0, 4)), np.zeros(0, np.float32), 0.7)
    assert kept.dtype == np.int64 and kept.shape == (0,)


def _region_cases():
    rng = np.random.default_rng(2)
    blobs = list(_blob_masks(rng, 6, (40, 50), smoothing=5, fill=0.45))
    blobs += list(_blob_masks(rng, 2, (40, 50), smoothing=1, fill=0.5))  # speckle: many tiny regions
    diagonal = np.zeros((12, 12), bool)
    diagonal[np.arange(12), np.arange(12)] = True  # one 8-connected island, twelve 4-connected ones
    diagonal[5, 0] = True
    twins = np.zeros((10, 10), bool)
    twins[1:3, 1:3] = twins[6:8, 6:8] = True  # two equal islands: which one stays when both are small
    checker = (np.indices((9, 9)).sum(0) % 2).astype(bool)
    return blobs + [diagonal, twins, checker, np.zeros((7, 8), bool), np.ones((7, 8), bool)]


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("area_thresh", [1, 3, 5, 20, 150, 10_000])
def test_remove_small_regions_is_sams(mode, area_thresh):
    for mask in _region_cases():
        ours, ours_changed = remove_small_regions(mask, area_thresh, mode)
        theirs, theirs_changed = amg.remove_small_regions(mask, area_thresh, mode)
        assert ours.dtype == bool and np.array_equal(ours, theirs)
        assert ours_changed == theirs_changed


def test_remove_small_regions_names_its_modes():
    with pytest.raises(ValueError, match="holes"):
        remove_small_regions(np.zeros((3, 3), bool), 5, "both")


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
def test_coco_rle_is_sams_and_decodes_back():
    from pycocotools import mask as coco_mask

    masks = list(_blob_masks(np.random.default_rng(3), 4, (13, 17)))
    corner = np.zeros((13, 17), bool)
    corner[0, 0] = True  # runs start with a foreground pixel
    masks += [corner, np.zeros((13, 17), bool), np.ones((13, 17), bool)]
    for mask in masks:
        ours = encode_coco_rle(mask)
        theirs = amg.coco_encode_rle(amg.mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0])
        assert ours == theirs and isinstance(ours["counts"], str)
        assert np.array_equal(coco_mask.decode(ours).astype(bool), mask)
        assert coco_mask.area(ours) == mask.sum()


def test_box_xyxy_to_xywh():
    assert box_xyxy_to_xywh(np.array([3, 4, 10, 4])) == [3, 4, 7, 0]


# ----- the spec ------------------------------------------------------------------------------------
def test_spec_defaults_are_sams():
    sam_defaults = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    for spec_field in dataclasses.fields(EverythingSpec):
        assert spec_field.metadata["cli"]["help"]
        expected = Sam.mask_threshold if spec_field.name == "mask_threshold" else None
        expected = sam_defaults[spec_field.name].default if expected is None else expected
        assert getattr(EverythingSpec(), spec_field.name) == expected, spec_field.name


@pytest.mark.parametrize(
    "name, value",
    [
        ("points_per_side", 0),
        ("points_per_side", 1.5),
        ("points_per_side", True),
        ("points_per_batch", 0),
        ("pred_iou_thresh", -0.1),
        ("pred_iou_thresh", 1.5),
        ("pred_iou_thresh", float("nan")),
        ("stability_score_thresh", 2.0),
        ("stability_score_offset", -1.0),
        ("box_nms_thresh", 1.1),
        ("min_mask_region_area", -1),
        ("min_mask_region_area", 2.5),
        ("mask_threshold", float("inf")),
        ("mask_threshold", "0"),
        ("output_mode", "uncompressed_rle"),
    ],
)
def test_spec_refuses_bad_values_in_one_line(name, value):
    with pytest.raises(ValueError) as error:
        EverythingSpec(**{name: value})
    message = str(error.value)
    assert "--" + name.replace("_", "-") in message and "\n" not in message


# ----- generate_masks against SamAutomaticMaskGenerator, driven by one fake decoder ---------------
def _hash01(*values):
    """Deterministic numbers in [0, 1) from arrays of equal shape."""
    mixed = sum(np.sin(v * k) for v, k in zip(values, (12.9898, 78.233, 37.719)))
    return np.modf(np.abs(mixed) * 43758.5453)[0]


def fake_decode(points):
    """Cones of varying size and steepness around each point, ragged by a texture (holes, islands)."""
    h, w = LOW_RES_HW
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    px = points[:, 0, None, None, None] * (w / IMAGE_HW[1])
    py = points[:, 1, None, None, None] * (h / IMAGE_HW[0])
    outputs = np.arange(3, dtype=np.float32)[None, :, None, None]
    radius = (4 + 5 * outputs) * (1 + 0.4 * np.sin(px * 0.3 + py * 0.2))
    steepness = 20 + 120 * _hash01(px, py, outputs)
    texture = 0.4 * np.cos(xs * 1.3) * np.cos(ys * 1.1)
    logits = steepness * (1 - np.hypot(xs - px, ys - py) / radius + texture)
    logits = np.where(_hash01(py, px, outputs) < 0.1, -500.0, logits)  # some all-background outputs
    iou = 0.8 + 0.2 * _hash01(px[:, :, 0, 0] + 1, py[:, :, 0, 0], outputs[:, :, 0, 0])
    return logits.astype(np.float32), np.broadcast_to(iou, (len(points), 3)).astype(np.float32)


def fake_upscale(low_res):
    """Nearest-neighbour (M, h, w) -> (M, H, W)."""
    rows = np.arange(IMAGE_HW[0]) * LOW_RES_HW[0] // IMAGE_HW[0]
    cols = np.arange(IMAGE_HW[1]) * LOW_RES_HW[1] // IMAGE_HW[1]
    return low_res[:, rows][:, :, cols]


class FakePredictor:
    """What SamAutomaticMaskGenerator asks of a SamPredictor, answered by ``fake_decode``."""

    def __init__(self, mask_threshold):
        self.model = SimpleNamespace(mask_threshold=mask_threshold)
        self.transform = SimpleNamespace(apply_coords=lambda points, size: points)
        self.device = "cpu"

    def set_image(self, image):
        assert image.shape[:2] == IMAGE_HW

    def reset_image(self):
        pass

    def predict_torch(self, point_coords, point_labels, multimask_output, return_logits):
        assert multimask_output and return_logits and bool((point_labels == 1).all())
        low_res, iou = fake_decode(point_coords[:, 0].numpy().astype(np.float32))
        masks = fake_upscale(low_res.reshape(-1, *LOW_RES_HW)).reshape(*low_res.shape[:2], *IMAGE_HW)
        return torch.from_numpy(masks), torch.from_numpy(iou), torch.from_numpy(low_res)


def sams_records(spec):
    stand_in = SimpleNamespace(image_encoder=SimpleNamespace(img_size=1024))
    settings = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "mask_threshold"}
    generator = SamAutomaticMaskGenerator(stand_in, **settings)
    generator.predictor = FakePredictor(spec.mask_threshold)
    return generator.generate(np.zeros((*IMAGE_HW, 3), np.uint8))


def assert_same_records(ours, theirs):
    assert len(ours) == len(theirs)
    for mine, sams in zip(ours, theirs):
        assert mine.keys() == sams.keys()
        if isinstance(sams["segmentation"], dict):
            assert mine["segmentation"] == sams["segmentation"]
        else:
            assert mine["segmentation"].dtype == bool
            assert np.array_equal(mine["segmentation"], sams["segmentation"])
        for key in ("area", "bbox", "point_coords", "crop_box", "predicted_iou"):
            assert mine[key] == sams[key], key
        stability = (mine["stability_score"], sams["stability_score"])
        assert stability[0] == stability[1] or all(math.isnan(s) for s in stability)


SPECS = {
    "defaults": EverythingSpec(points_per_side=8, points_per_batch=10),
    "small regions, rle": EverythingSpec(
        points_per_side=9,
        points_per_batch=64,
        min_mask_region_area=40,
        box_nms_thresh=0.5,  # SAM's second NMS takes max(this, its crop_nms_thresh 0.7)
        output_mode="coco_rle",
    ),
    "no filters": EverythingSpec(
        points_per_side=6,
        points_per_batch=7,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        stability_score_offset=0.5,
        mask_threshold=2.0,
        min_mask_region_area=10,
    ),
    "nothing passes": EverythingSpec(points_per_side=4, pred_iou_thresh=1.0),
}


@pytest.mark.parametrize("name", SPECS)
def test_generate_masks_is_sams(name):
    spec = SPECS[name]
    ours = generate_masks(fake_decode, fake_upscale, IMAGE_HW, spec)
    assert_same_records(ours, sams_records(spec))
    if name != "nothing passes":
        assert len(ours) >= 5  # the fake decoder leaves NMS something to do


def test_small_region_removal_changes_masks():
    spec = SPECS["small regions, rle"]
    cleaned = generate_masks(fake_decode, fake_upscale, IMAGE_HW, spec)
    raw_spec = dataclasses.replace(spec, min_mask_region_area=0)
    raw = generate_masks(fake_decode, fake_upscale, IMAGE_HW, raw_spec)
    assert [r["segmentation"] for r in cleaned] != [r["segmentation"] for r in raw]


def test_only_masks_above_the_iou_threshold_are_upscaled():
    spec = EverythingSpec(points_per_side=8, points_per_batch=16)
    upscaled = []

    def counting_upscale(low_res):
        upscaled.append(len(low_res))
        return fake_upscale(low_res)

    generate_masks(fake_decode, counting_upscale, IMAGE_HW, spec)
    _, iou = fake_decode(image_point_grid(8, IMAGE_HW).astype(np.float32))
    assert sum(upscaled) == np.count_nonzero(iou > np.float32(spec.pred_iou_thresh)) < iou.size


def test_decode_of_the_wrong_shape_is_refused():
    def flat_decode(points):
        logits, iou = fake_decode(points)
        return logits[:, 0], iou[:, 0]

    with pytest.raises(ValueError, match=r"\(K, C, h, w\)"):
        generate_masks(flat_decode, fake_upscale, IMAGE_HW, EverythingSpec(points_per_side=2))
