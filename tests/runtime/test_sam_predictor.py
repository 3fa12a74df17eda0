"""``runtime.SamPredictor`` runs the code written for segment-anything's ``SamPredictor``.

One session of calls (``set_image``, then points, a negative point, a box, box
and point, single and multimask output, logits, a refinement step that feeds
the previous low-res logits back as ``mask_input``, a BGR image) runs unchanged
on segment-anything's predictor over the PyTorch SAM and on ours over the
exported artifact of the same weights (vit_tiny, random weights, a real
photograph). Tolerances are those of fp32 onnxruntime against fp32 PyTorch on
the same maths: both round differently (measured ~1e-7 on these outputs), so
scores and logits must agree to 1e-3 (relative to the logits' scale) and masks
to IoU 0.99; a wrong prompt or mask embedding moves them by far more (checked).
"""

import json

import numpy as np
import pytest
import torch

from naslora_deploy import build_sam
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import sha256_of
from naslora_deploy.exporters.export import ExportSpec, export_artifacts
from naslora_deploy.exporters.onnx_export import io_signature, module_to_onnx
from naslora_deploy.exporters.wrappers import PromptDecoderGraph
from naslora_deploy.runtime import SamPredictor, Segmenter
from naslora_deploy.training.data.photos import load_photos

SCORE_TOLERANCE = 1e-3
LOGIT_TOLERANCE = 1e-3  # times max(1, |logits|)
MASK_IOU = 0.99


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(PyTorch SAM, its artifact directory with the prompt decoder)."""
    root = tmp_path_factory.mktemp("sam_predictor")
    torch.manual_seed(0)
    sam = build_sam("vit_tiny").eval()
    torch.save(sam.state_dict(), root / "sam.pth")
    out, _ = export_artifacts(root / "sam.pth", root / "art", ExportSpec(prompts=True), variant="vit_tiny")
    return sam, out


@pytest.fixture(scope="module")
def image():
    photos = load_photos(("astronaut.png",))
    if not photos:
        pytest.skip("scikit-image's astronaut.png is not installed")
    return photos[0]


def session(predictor, image: np.ndarray) -> dict:
    """The code under test: SamPredictor calls, written once, returning every answer by name."""
    height, width = image.shape[:2]
    centre = np.array([[0.5 * width, 0.45 * height]])
    box = np.array([0.25 * width, 0.2 * height, 0.7 * width, 0.8 * height])
    answers = {}
    predictor.set_image(image)
    answers["point"] = predictor.predict(point_coords=centre, point_labels=np.array([1]))
    answers["negative point"] = predictor.predict(
        point_coords=np.array([[0.5 * width, 0.45 * height], [0.1 * width, 0.1 * height]]),
        point_labels=np.array([1, 0]),
        multimask_output=False,
    )
    answers["box"] = predictor.predict(box=box, multimask_output=False)
    answers["box and point"] = predictor.predict(point_coords=centre, point_labels=np.array([1]), box=box)
    answers["logits"] = predictor.predict(point_coords=centre, point_labels=np.array([1]), return_logits=True)
    masks, scores, low_res = answers["point"]
    best = low_res[int(np.argmax(scores))][None, :, :]  # SamPredictor's refinement recipe
    answers["refined"] = predictor.predict(
        point_coords=np.array([[0.5 * width, 0.45 * height], [0.6 * width, 0.3 * height]]),
        point_labels=np.array([1, 1]),
        mask_input=best,
        multimask_output=False,
    )
    answers["box refined"] = predictor.predict(box=box, mask_input=best, multimask_output=False)
    answers["size"] = (predictor.original_size, predictor.input_size, predictor.is_image_set)
    predictor.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    answers["bgr point"] = predictor.predict(point_coords=centre, point_labels=np.array([1]))
    predictor.reset_image()
    answers["reset"] = predictor.is_image_set
    return answers


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def assert_agree(ours, theirs, name: str) -> None:
    """Same shapes and dtypes; scores, low-res logits and masks within the fp32 tolerances."""
    for mine, sams in zip(ours, theirs):
        assert mine.shape == sams.shape and mine.dtype == sams.dtype, name
    masks, scores, low_res = ours
    np.testing.assert_allclose(scores, theirs[1], atol=SCORE_TOLERANCE, err_msg=name)
    scale = max(1.0, float(np.abs(theirs[2]).max()))
    np.testing.assert_allclose(low_res, theirs[2], atol=LOGIT_TOLERANCE * scale, err_msg=name)
    if masks.dtype == bool:
        assert min(mask_iou(a, b) for a, b in zip(masks, theirs[0])) >= MASK_IOU, name
    else:
        np.testing.assert_allclose(masks, theirs[0], atol=LOGIT_TOLERANCE * scale, err_msg=name)


def test_the_same_code_gives_sam_predictors_answers(exported, image):
    from segment_anything import SamPredictor as SegmentAnythingPredictor

    sam, artifacts = exported
    theirs = session(SegmentAnythingPredictor(sam), image)
    ours = session(SamPredictor.open(artifacts, "onnxruntime", "cpu"), image)
    assert ours["size"] == theirs["size"] == ((512, 512), (256, 256), True)
    assert ours["reset"] is theirs["reset"] is False
    for name in ("point", "negative point", "box", "box and point", "logits", "refined", "box refined"):
        assert_agree(ours[name], theirs[name], name)
    assert_agree(ours["bgr point"], ours["point"], "BGR flipped back to RGB")
    assert_agree(ours["bgr point"], theirs["bgr point"], "bgr point")
    # the mask input is used: refining moves the logits by far more than the tolerance
    plain, refined = ours["box"][2], ours["box refined"][2]
    assert np.abs(refined - plain).max() > 100 * LOGIT_TOLERANCE * max(1.0, float(np.abs(plain).max()))


def test_the_image_embedding_is_sams(exported, image):
    from segment_anything import SamPredictor as SegmentAnythingPredictor

    sam, artifacts = exported
    reference = SegmentAnythingPredictor(sam)
    reference.set_image(image)
    ours = SamPredictor.open(artifacts, "onnxruntime", "cpu")
    ours.set_image(image)
    theirs = reference.get_image_embedding().numpy()
    embedding = ours.get_image_embedding()
    assert embedding.shape == theirs.shape and embedding.dtype == np.float32
    np.testing.assert_allclose(
        embedding, theirs, atol=LOGIT_TOLERANCE * max(1.0, float(np.abs(theirs).max()))
    )


def test_batched_refinement_equals_one_prompt_at_a_time(exported, image):
    """``Segmenter.predict`` with K prompts and K masks (``predict_torch``'s form) answers each as alone."""
    _, artifacts = exported
    seg = Segmenter.open(artifacts, "onnxruntime", "cpu")
    seg.set_image(image)
    boxes = np.array([[100, 90, 300, 400], [200, 50, 450, 300], [20, 300, 200, 500]], np.float32)
    first = seg.predict(boxes=boxes, multimask_output=False)
    masks_in = first.low_res_logits  # (K, 1, h, w)
    together = seg.predict(boxes=boxes, mask_input=masks_in, multimask_output=False)
    for k in range(len(boxes)):
        alone = seg.predict(boxes=boxes[k], mask_input=masks_in[k], multimask_output=False)
        np.testing.assert_allclose(together.low_res_logits[k], alone.low_res_logits, atol=1e-4)
    shared = seg.predict(boxes=boxes, mask_input=masks_in[:1], multimask_output=False)  # one for all
    np.testing.assert_allclose(shared.low_res_logits[0], together.low_res_logits[0], atol=1e-4)
    masks, scores, low_res = together  # the dataclass unpacks as SamPredictor's tuple
    assert (
        masks.shape == (3, 1, *image.shape[:2]) and scores.shape == (3, 1) and low_res.shape == (3, 1, 64, 64)
    )


@pytest.mark.parametrize(
    "kwargs, says",
    [
        (
            dict(mask_input=np.zeros((1, 32, 32))),
            r"mask_input has shape \(1, 32, 32\); expected \(1, 64, 64\)",
        ),
        (dict(mask_input=np.full((1, 64, 64), np.nan)), "nan or infinite"),
        (
            dict(mask_input=np.zeros((2, 1, 64, 64)), box=np.tile([10, 10, 200, 200], (3, 1))),
            "2 masks for 3 prompts",
        ),
    ],
)
def test_bad_mask_input_is_one_line(exported, image, kwargs, says):
    _, artifacts = exported
    seg = Segmenter.open(artifacts, "onnxruntime", "cpu")
    seg.set_image(image)
    kwargs = {"boxes": kwargs.pop("box", np.array([10, 10, 200, 200])), **kwargs}
    with pytest.raises(ValueError, match=says):
        seg.predict(**kwargs)


def test_image_format_is_checked(exported, image):
    predictor = SamPredictor.open(exported[1], "onnxruntime", "cpu")
    with pytest.raises(ValueError, match="image_format 'BRG' is unknown; give RGB or BGR"):
        predictor.set_image(image, image_format="BRG")


class PromptDecoderBeforeMaskInputs(PromptDecoderGraph):
    """The prompt decoder as naslora-deploy exported it before ``mask_input``: three inputs."""

    onnx_extra_inputs = None


def test_an_artifact_without_mask_inputs_still_opens(exported, image, tmp_path):
    """An older export: same answers without a mask; asked for one, one line saying to export again."""
    import shutil

    from naslora_deploy.common import contract as names

    sam, artifacts = exported
    old = shutil.copytree(artifacts, tmp_path / "old")
    graph = old / names.onnx_file(names.PROMPT_DECODER)
    embeddings = torch.zeros(1, 64, 16, 16)
    example = (embeddings, torch.zeros(2, 3, 2), torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, -1.0]]))
    module_to_onnx(
        PromptDecoderBeforeMaskInputs(sam),
        example,
        graph,
        names.PROMPT_INPUTS,
        names.PROMPT_OUTPUTS,
        dynamic_axes=names.PROMPT_AXES,
    )
    manifest = json.loads((old / names.MANIFEST_NAME).read_text())
    entry = manifest["files"][graph.name]
    entry.update(sha256=sha256_of(graph), bytes=graph.stat().st_size, **io_signature(graph))
    (old / names.MANIFEST_NAME).write_text(json.dumps(manifest))
    assert [i["name"] for i in entry["inputs"]] == list(names.PROMPT_INPUTS)

    new, before = (
        SamPredictor.open(artifacts, "onnxruntime", "cpu"),
        SamPredictor.open(old, "onnxruntime", "cpu"),
    )
    for predictor in (new, before):
        predictor.set_image(image)
    point = dict(point_coords=np.array([[250, 200]]), point_labels=np.array([1]))
    assert_agree(before.predict(**point), new.predict(**point), "old artifact, no mask")
    with pytest.raises(NasloraError) as error:
        before.predict(**point, mask_input=np.zeros((1, 64, 64), np.float32))
    assert str(error.value) == "this artifact's prompt decoder takes no mask_input; export it again"
