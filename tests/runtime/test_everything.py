"""Everything mode in numpy against segment-anything's automatic mask generator and its torch helpers:
one crop, crop layers, custom point grids; the account of the candidates and the progress lines."""

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

from naslora_deploy.runtime.crops import FILTERS, crop_boxes
from naslora_deploy.runtime.everything import (
    CandidateCounts,
    EverythingSpec,
    box_nms,
    box_xyxy_to_xywh,
    encode_coco_rle,
    generate_crop_masks,
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
        assert spec_field.name == "point_grids" or spec_field.metadata["cli"]["help"]  # grids: API only
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
        ("crop_n_layers", -1),
        ("crop_n_layers", 5),
        ("crop_nms_thresh", 1.5),
        ("crop_overlap_ratio", -0.1),
        ("crop_n_points_downscale_factor", 0),
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


def fake_decode(points, size_hw=IMAGE_HW):
    """Cones of varying size and steepness around each point, ragged by a texture (holes, islands)."""
    h, w = LOW_RES_HW
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    px = points[:, 0, None, None, None] * (w / size_hw[1])
    py = points[:, 1, None, None, None] * (h / size_hw[0])
    outputs = np.arange(3, dtype=np.float32)[None, :, None, None]
    radius = (4 + 5 * outputs) * (1 + 0.4 * np.sin(px * 0.3 + py * 0.2))
    steepness = 20 + 120 * _hash01(px, py, outputs)
    texture = 0.4 * np.cos(xs * 1.3) * np.cos(ys * 1.1)
    logits = steepness * (1 - np.hypot(xs - px, ys - py) / radius + texture)
    logits = np.where(_hash01(py, px, outputs) < 0.1, -500.0, logits)  # some all-background outputs
    iou = 0.8 + 0.2 * _hash01(px[:, :, 0, 0] + 1, py[:, :, 0, 0], outputs[:, :, 0, 0])
    return logits.astype(np.float32), np.broadcast_to(iou, (len(points), 3)).astype(np.float32)


def fake_upscale(low_res, size_hw=IMAGE_HW):
    """Nearest-neighbour (M, h, w) -> (M, H, W)."""
    rows = np.arange(size_hw[0]) * LOW_RES_HW[0] // size_hw[0]
    cols = np.arange(size_hw[1]) * LOW_RES_HW[1] // size_hw[1]
    return low_res[:, rows][:, :, cols]


def fake_embed_crop(crop):
    """``generate_crop_masks``'s ``embed_crop`` answered by the fakes at the crop's size."""
    size_hw = (crop[3] - crop[1], crop[2] - crop[0])
    return (lambda points: fake_decode(points, size_hw)), (lambda low_res: fake_upscale(low_res, size_hw))


class FakePredictor:
    """What SamAutomaticMaskGenerator asks of a SamPredictor, answered by ``fake_decode`` (per crop)."""

    def __init__(self, mask_threshold):
        self.model = SimpleNamespace(mask_threshold=mask_threshold)
        self.transform = SimpleNamespace(apply_coords=lambda points, size: points)
        self.device = "cpu"
        self.crops = []

    def set_image(self, image):
        self.crops.append(image.shape[:2])

    def reset_image(self):
        pass

    def predict_torch(self, point_coords, point_labels, multimask_output, return_logits):
        assert multimask_output and return_logits and bool((point_labels == 1).all())
        size_hw = self.crops[-1]
        low_res, iou = fake_decode(point_coords[:, 0].numpy().astype(np.float32), size_hw)
        masks = fake_upscale(low_res.reshape(-1, *LOW_RES_HW), size_hw).reshape(*low_res.shape[:2], *size_hw)
        return torch.from_numpy(masks), torch.from_numpy(iou), torch.from_numpy(low_res)


def sams_records(spec, image_hw=IMAGE_HW):
    stand_in = SimpleNamespace(image_encoder=SimpleNamespace(img_size=1024))
    settings = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "mask_threshold"}
    if spec.point_grids is not None:  # SAM takes grids instead of points_per_side
        settings.update(points_per_side=None, point_grids=spec.layer_grids())
    generator = SamAutomaticMaskGenerator(stand_in, **settings)
    generator.predictor = FakePredictor(spec.mask_threshold)
    return generator.generate(np.zeros((*image_hw, 3), np.uint8))


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


# ----- crop layers and point grids against SamAutomaticMaskGenerator -------------------------------
CROP_SPECS = {
    "one crop layer": EverythingSpec(points_per_side=8, points_per_batch=20, crop_n_layers=1),
    "two layers, fewer points, small regions": EverythingSpec(
        points_per_side=8,
        crop_n_layers=2,
        crop_n_points_downscale_factor=2,
        crop_overlap_ratio=0.2,
        crop_nms_thresh=0.5,
        min_mask_region_area=30,
        output_mode="coco_rle",
    ),
    "point grids": EverythingSpec(
        crop_n_layers=1,
        point_grids=(np.random.default_rng(5).uniform(0, 1, (30, 2)), amg.build_point_grid(3)),
    ),
}


@pytest.mark.parametrize("name", CROP_SPECS)
def test_crop_layers_and_point_grids_are_sams(name):
    spec = CROP_SPECS[name]
    ours = generate_crop_masks(fake_embed_crop, IMAGE_HW, spec)
    theirs = sams_records(spec)
    assert_same_records(ours, theirs)
    whole = [0, 0, IMAGE_HW[1], IMAGE_HW[0]]
    from_crops = [r for r in ours if r["crop_box"] != whole]
    assert len(from_crops) >= 3, "the crops should add masks of their own"
    for record in from_crops:  # mapped back into the image: inside the crop they came from
        x, y, w, h = record["crop_box"]
        mask = record["segmentation"]
        if isinstance(mask, dict):
            from pycocotools import mask as coco_mask

            mask = coco_mask.decode({**mask, "counts": mask["counts"].encode()}).astype(bool)
        assert mask.shape == IMAGE_HW and mask.any()
        assert (
            not mask[:y].any()
            and not mask[y + h :].any()
            and not mask[:, :x].any()
            and not mask[:, x + w :].any()
        )
        px, py = record["point_coords"][0]
        assert x <= px <= x + w and y <= py <= y + h


def test_crop_boxes_are_sams():
    for size_hw, layers, overlap in [((90, 120), 2, 512 / 1500), ((601, 333), 3, 0.1), ((50, 50), 1, 0.0)]:
        ours = crop_boxes(size_hw, layers, overlap)
        theirs = amg.generate_crop_boxes(size_hw, layers, overlap)
        assert [list(box) for box in ours[0]] == theirs[0] and ours[1] == theirs[1]


def test_crops_find_more_candidates_than_the_whole_image():
    whole, cropped = CandidateCounts(), CandidateCounts()
    spec = EverythingSpec(points_per_side=8, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0)
    found = generate_crop_masks(fake_embed_crop, IMAGE_HW, spec, counts=whole)
    more = generate_crop_masks(
        fake_embed_crop, IMAGE_HW, dataclasses.replace(spec, crop_n_layers=1), counts=cropped
    )
    assert (whole.crops, cropped.crops) == (1, 5)
    assert cropped.candidates == 5 * whole.candidates == 5 * 3 * 64
    assert len(more) > len(found)


@pytest.mark.parametrize(
    "grids, says",
    [
        ([np.zeros((4, 3))], r"point_grids\[0\] must be an \(N, 2\) array"),
        ([np.full((4, 2), 1.5)], r"point_grids\[0\] holds points outside \[0, 1\]"),
        ([np.zeros((0, 2))], r"must be an \(N, 2\) array of \(x, y\) points, N >= 1"),
        ([np.zeros((4, 2)), np.zeros((4, 2))], "point_grids holds 2 grid\\(s\\) for crop_n_layers 0"),
    ],
)
def test_bad_point_grids_are_one_line(grids, says):
    with pytest.raises(ValueError, match=says):
        EverythingSpec(point_grids=grids)


def test_point_grids_are_comparable_and_json_ready():
    import json

    grid = amg.build_point_grid(4)
    spec = EverythingSpec(point_grids=[grid])
    assert spec == EverythingSpec(point_grids=(grid,)) != EverythingSpec()
    np.testing.assert_array_equal(spec.layer_grids()[0], grid)
    assert json.loads(json.dumps(dataclasses.asdict(spec)))["point_grids"][0][5] == list(grid[5])


# ----- the account of the candidates, and progress ---------------------------------------------------
def test_counts_add_up_and_nothing_found_says_which_threshold():
    counts = CandidateCounts()
    spec = EverythingSpec(points_per_side=8, crop_n_layers=1, min_mask_region_area=20)
    records = generate_crop_masks(fake_embed_crop, IMAGE_HW, spec, counts=counts)
    removed = sum(getattr(counts, name) for name, _, _ in FILTERS)
    assert counts.kept == len(records) > 0 and counts.candidates == removed + counts.kept
    assert counts.points == 64 * 5 and counts.pred_iou_thresh > 0 and counts.crop_edge > 0
    assert counts.summary(spec).startswith(f"everything mode found {len(records)} masks: {counts.candidates}")

    strict = EverythingSpec(
        points_per_side=4, pred_iou_thresh=0.9, stability_score_thresh=1.0, stability_score_offset=50.0
    )
    with pytest.warns(UserWarning) as caught:
        assert generate_masks(fake_decode, fake_upscale, IMAGE_HW, strict) == []
    (line,) = [str(w.message) for w in caught]
    _, iou = fake_decode(image_point_grid(4, IMAGE_HW).astype(np.float32))
    above = int(np.count_nonzero(iou > np.float32(0.9)))
    assert line.startswith(
        f"everything mode found 0 masks: 48 candidates (16 points x 3 masks), "
        f"pred_iou_thresh 0.9 removed {48 - above}, stability_score_thresh 1.0 removed {above}"
    )
    assert line.endswith("; lower --pred-iou-thresh or --stability-score-thresh (0 keeps every mask)")
    assert "\n" not in line


def test_a_log_gets_one_line_per_crop(capsys):
    spec = EverythingSpec(points_per_side=4, crop_n_layers=1, pred_iou_thresh=0, stability_score_thresh=0)
    generate_crop_masks(fake_embed_crop, IMAGE_HW, spec, progress=None)  # stderr is no terminal here
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" [")[0] for line in lines] == [f"everything: crop {i}/5" for i in range(1, 6)]
    assert lines[0].startswith("everything: crop 1/5 [0, 0, 120, 90]: ") and lines[0].endswith(" s)")
    generate_crop_masks(fake_embed_crop, IMAGE_HW, spec, progress=False)
    assert capsys.readouterr().err == ""


def test_generate_masks_refuses_crop_layers():
    with pytest.raises(ValueError, match="crop layers need generate_crop_masks"):
        generate_masks(fake_decode, fake_upscale, IMAGE_HW, EverythingSpec(crop_n_layers=1))
