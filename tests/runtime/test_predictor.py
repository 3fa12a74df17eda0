"""The predictor (``set_image`` once, ``predict`` many times) against segment-anything's own SamPredictor.

Same weights on both sides: a plain SAM checkpoint (vit_tiny with random
weights, and the real LiteMedSAM weights) exported with the prompt decoder;
SamPredictor runs the PyTorch model. Real photographs from scikit-image.
"""

import numpy as np
import pytest
import torch

from naslora_deploy import build_sam
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.exporters.export import ExportSpec, export_artifacts
from naslora_deploy.runtime import Segmenter
from naslora_deploy.training.data.photos import load_photos

PHOTOS = ("astronaut.png", "coffee.png")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


@pytest.fixture(scope="module", params=["vit_tiny", "litemedsam"])
def family(request, tmp_path_factory):
    """(variant, PyTorch SAM, Segmenter on its exported artifacts)."""
    variant = request.param
    root = tmp_path_factory.mktemp(variant)
    torch.manual_seed(0)
    sam = build_sam(variant) if variant == "litemedsam" else build_sam(variant)
    path = root / "sam.pth"
    torch.save(sam.state_dict(), path)
    out, _ = export_artifacts(path, root / "art", ExportSpec(prompts=True), variant=variant)
    return variant, sam.eval(), Segmenter.open(out, backend="onnxruntime")


def sam_predictor(sam, image: np.ndarray):
    """SamPredictor with the image set; MedSAM's min-max normalisation given as pixel mean / std."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    if getattr(sam, "normalization", "imagenet") == "minmax":
        resized = predictor.transform.apply_image(image).astype(np.float32)
        low, high = float(resized.min()), float(resized.max())
        sam.pixel_mean = torch.full((3, 1, 1), low)
        sam.pixel_std = torch.full((3, 1, 1), max(high - low, 1e-8))
    with torch.no_grad():
        predictor.set_image(image)
    return predictor


def theirs(predictor, points=None, labels=None, boxes=None, multimask=True):
    """SamPredictor's answer: ``predict`` for one prompt, ``predict_torch`` for a batch."""
    with torch.no_grad():
        batched = (boxes is not None and np.ndim(boxes) == 2) or (points is not None and np.ndim(points) == 3)
        if not batched:
            masks, scores, low = predictor.predict(points, labels, boxes, multimask_output=multimask)
            return masks, scores, low
        size = predictor.original_size
        coords = None if points is None else torch.as_tensor(predictor.transform.apply_coords(points, size))
        tboxes = None if boxes is None else torch.as_tensor(predictor.transform.apply_boxes(boxes, size))
        masks, scores, low = predictor.predict_torch(
            coords.float() if coords is not None else None,
            torch.as_tensor(labels).float() if labels is not None else None,
            tboxes.float() if tboxes is not None else None,
            multimask_output=multimask,
        )
        return masks.numpy(), scores.numpy(), low.numpy()


def prompt_cases(image: np.ndarray):
    height, width = image.shape[:2]
    cx, cy = width / 2, height / 2
    box = np.array([0.25 * width, 0.2 * height, 0.7 * width, 0.8 * height], np.float32)
    return {
        "one point, multimask": dict(points=np.array([[cx, cy]]), labels=np.array([1])),
        "two points, single": dict(
            points=np.array([[cx, cy], [0.1 * width, 0.1 * height]]), labels=np.array([1, 0]), multimask=False
        ),
        "box": dict(boxes=box, multimask=False),
        "box and point": dict(points=np.array([[cx, cy]]), labels=np.array([1]), boxes=box),
        "three boxes": dict(boxes=np.stack([box, box * 0.8, box * 0.5 + 10]), multimask=False),
        "four point prompts": dict(
            points=np.array([[[cx, cy]], [[cx / 2, cy]], [[cx, cy / 2]], [[1.5 * cx, 1.5 * cy]]]),
            labels=np.ones((4, 1)),
        ),
    }


def test_predict_matches_sam_predictor_on_photographs(family):
    variant, sam, seg = family
    worst = 1.0
    for image in load_photos(PHOTOS):
        reference = sam_predictor(sam, image)
        seg.set_image(image)
        for name, case in prompt_cases(image).items():
            multimask = case.pop("multimask", True)
            ours = seg.predict(**case, multimask_output=multimask)
            masks, scores, low = theirs(reference, **case, multimask=multimask)
            assert ours.masks.shape == masks.shape and ours.masks.dtype == bool, name
            assert ours.scores.shape == scores.shape and ours.low_res_logits.shape == low.shape, name
            np.testing.assert_allclose(ours.scores, scores, atol=2e-3, err_msg=f"{variant} {name}")
            scale = max(1.0, float(np.abs(low).max()))
            np.testing.assert_allclose(
                ours.low_res_logits, low, atol=2e-3 * scale, err_msg=f"{variant} {name}"
            )
            ious = [
                mask_iou(a, b)
                for a, b in zip(
                    ours.masks.reshape(-1, *masks.shape[-2:]), masks.reshape(-1, *masks.shape[-2:])
                )
            ]
            assert min(ious) >= 0.99, f"{variant} {name}: mask IoU {min(ious):.4f}"
            worst = min(worst, *ious)
    print(f"{variant}: worst mask IoU against SamPredictor {worst:.5f}")


def test_one_embedding_serves_many_prompts(family):
    """``predict`` after ``set_image`` never runs the encoder again; the one-shot ``segment`` equals it."""
    _, _, seg = family
    image = load_photos(("astronaut.png",))[0]
    seg.set_image(image)
    calls = []
    encode = seg.backend.encode
    seg.backend.encode = lambda batch: calls.append(1) or encode(batch)
    try:
        first = seg.predict(boxes=np.array([50, 60, 300, 400]), multimask_output=False)
        again = seg.predict(points=np.array([[200, 200]]), labels=np.array([1]))
        assert calls == [] and first.masks.shape == (1, *image.shape[:2]) and again.masks.shape[0] == 3
        one_shot = seg.segment(image, box=(50, 60, 300, 400))
        assert calls == [1]
    finally:
        seg.backend.encode = encode
    assert mask_iou(one_shot.mask, first.masks[0]) == 1.0 and one_shot.score == pytest.approx(first.scores[0])


def test_predict_refuses_bad_prompts_in_one_line(family):
    _, _, seg = family
    seg.reset_image()
    with pytest.raises(NasloraError, match=r"call set_image\(image\) before predict"):
        seg.predict(boxes=np.array([0, 0, 10, 10]))
    seg.set_image(load_photos(("coffee.png",))[0])
    bad = [
        (dict(), "give points"),
        (dict(points=np.array([[1.0, np.nan]])), "nan or infinite"),
        (dict(points=np.array([1.0, 2.0])), r"expected \(N, 2\) or \(N, N, 2\)"),
        (dict(points=np.array([[1, 2]]), labels=np.array([2])), "labels are 1"),
        (dict(points=np.array([[1, 2]]), labels=np.array([1, 1])), "one each"),
        (dict(boxes=np.array([10, 10, 5, 5])), "x0 <= x1"),
        (
            dict(points=np.zeros((2, 1, 2)), labels=np.ones((2, 1)), boxes=np.zeros((3, 4))),
            "2 point sets but 3 boxes",
        ),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            seg.predict(**kwargs)


# vit_tiny's random weights give near-full masks that NMS would merge into one: compare all of them
EVERYTHING = {
    "vit_tiny": dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0),
    # LiteMedSAM was distilled on box prompts: from single points its masks are small (max logit ~0.2,
    # stability 0), so SAM's default thresholds keep none on either side; NMS stays at its default
    "litemedsam": dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0),
}


def test_everything_mode_matches_sam_automatic_mask_generator(family):
    """Every non-empty reference mask has a match (IoU >= 0.9) among ours; the issue asks for 90 %."""
    from segment_anything import SamAutomaticMaskGenerator

    variant, sam, seg = family
    image = load_photos(("astronaut.png",))[0]
    options = EVERYTHING[variant]
    sam_predictor(sam, image)  # MedSAM's normalisation as pixel mean / std
    with torch.no_grad():
        reference = SamAutomaticMaskGenerator(sam, **options).generate(image)
    ours = seg.generate(image, **options)
    assert len(ours) == len(reference)
    wanted = [r for r in reference if r["area"] > 0]
    assert len(wanted) >= 15, f"{variant}: too few masks ({len(wanted)}) to compare"
    best = [max(mask_iou(r["segmentation"], o["segmentation"]) for o in ours) for r in wanted]
    matched = np.mean(np.array(best) >= 0.9)
    assert matched >= 0.9, f"{variant}: {matched:.1%} of SAM's masks matched"
    print(f"{variant}: {len(wanted)} masks, {matched:.1%} matched, worst IoU {min(best):.4f}")
    rle = seg.generate(image, **{**options, "points_per_side": 1}, output_mode="coco_rle")
    assert set(rle[0]["segmentation"]) == {"size", "counts"}
