"""The demo's summary picture: methods x test photographs, each cell the method's mask with the ground
truth outlined and the prompt box drawn (small arrays; the demo itself runs in tests/test_cli.py); and
the embeddings its frozen-encoder rows share."""

import copy

import numpy as np
import torch

from naslora_deploy.common.plots import BOX_COLOUR, TRUTH_COLOUR
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.variants import build_sam
from naslora_deploy.training import demo
from naslora_deploy.training.demo import _drawn, summary_grid

CELL = 144  # summary_grid's cell: pictures of this size are placed unscaled


def small_test_set(count=3):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (CELL, CELL, 3), dtype=np.uint8) for _ in range(count)]
    y, x = np.mgrid[:CELL, :CELL]
    masks = [(y - 60 - 10 * i) ** 2 + (x - 70) ** 2 < 40**2 for i in range(count)]  # discs: not their box
    return demo.TestSet(images, masks)


def rows_for(test):
    methods = {
        "perfect": list(test.masks),
        "nothing": [np.zeros_like(m) for m in test.masks],
        "shifted": [np.roll(m, 15, axis=1) for m in test.masks],
    }
    return [{"model": name, "predictions": p, "per_image_iou": test.ious(p)} for name, p in methods.items()]


def find(grid, picture):
    """(y, x) of ``picture`` placed unscaled in ``grid``, or None."""
    height, width = picture.shape[:2]
    ys, xs = np.nonzero((grid[: 1 - height or None, : 1 - width or None] == picture[0, 0]).all(-1))
    for y, x in zip(ys, xs):
        if np.array_equal(grid[y : y + height, x : x + width], picture):
            return int(y), int(x)
    return None


def test_the_grid_has_a_row_per_method_and_a_column_per_test_image():
    test = small_test_set()
    rows = rows_for(test)
    grid = summary_grid(rows, test)
    assert grid.dtype == np.uint8 and grid.shape[2] == 3
    places = {}
    for r, row in enumerate(rows):
        for i in range(len(test.images)):
            cell = _drawn(test, row["predictions"][i], i)
            assert (cell == TRUTH_COLOUR).all(-1).sum() > 50  # the ground truth is outlined
            assert (cell == BOX_COLOUR).all(-1).sum() > 50  # the prompt box is drawn
            places[r, i] = find(grid, cell)
    assert None not in places.values()
    for r in range(len(rows)):  # one row per method, top to bottom; one column per image, left to right
        assert len({places[r, i][0] for i in range(3)}) == 1
        assert [places[r, i][1] for i in range(3)] == sorted(places[r, i][1] for i in range(3))
    assert places[0, 0][0] < places[1, 0][0] < places[2, 0][0]
    assert places[0, 1][1] == places[2, 1][1]
    # the cells differ by method: the perfect mask's cell is not the empty one's
    assert not np.array_equal(
        _drawn(test, rows[0]["predictions"][0], 0), _drawn(test, rows[1]["predictions"][0], 0)
    )


def test_the_grid_shows_at_most_limit_test_images():
    test = small_test_set(3)
    rows = rows_for(test)
    full, cut = summary_grid(rows, test), summary_grid(rows, test, limit=2)
    assert cut.shape[0] == full.shape[0]  # the same rows
    assert find(cut, _drawn(test, rows[0]["predictions"][1], 1)) is not None
    assert find(cut, _drawn(test, rows[0]["predictions"][2], 2)) is None


def test_the_summary_links_the_grid_and_keeps_predictions_out_of_its_json(tmp_path):
    test = small_test_set(2)
    rows = rows_for(test)
    rows[0]["model"], rows[0]["model_object"] = "a trained row", object()  # overlays: trained and zero-shot
    rows[1]["model"] = "zero-shot (box)"
    for row in rows:
        row.update({"iou": float(np.mean(row["per_image_iou"])), "dice": 0.5, "train s": 0.0})
    pictures = demo._overlays(tmp_path, rows, test)
    assert [p is not None for p in pictures] == [True, True, False]
    assert pictures[0] == tmp_path / "overlays" / "0.png" and pictures[0].is_file()
    assert (tmp_path / demo.GRID_NAME).is_file() and demo.GRID_NAME in demo.DEMO_NAMES
    summary = demo._write_summary(tmp_path, "header", rows, pictures, 1.0)
    text = summary.read_text()
    assert f"]({demo.GRID_NAME})" in text and text.count("![](overlays/") == 2
    written = (tmp_path / "summary.json").read_text()
    assert "predictions" not in written and "model_object" not in written


def _perturbed(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def test_shared_embeddings_serve_only_an_identical_encoder_and_change_no_prediction():
    torch.manual_seed(0)
    base = SegmentationModel(build_sam("vit_tiny")).eval()
    twin = copy.deepcopy(base)  # a decoder-only run: the same frozen encoder, its own decoder
    _perturbed(twin.sam.mask_decoder, 1)
    other = copy.deepcopy(base)  # an adapted or merged encoder
    _perturbed(other.sam.image_encoder.blocks[0], 2)
    shared = demo.SharedEmbeddings(base.sam.image_encoder)
    assert shared.serves(base) and shared.serves(twin) and not shared.serves(other)
    calls = []
    base.sam.image_encoder.patch_embed.register_forward_hook(lambda *_: calls.append(1))  # its first stage
    test = small_test_set(2)
    for model, prompt in ((twin, "none"), (twin, "box"), (other, "none")):
        direct = test.predict(model, prompt)
        through = test.predict(model, prompt, shared)
        assert all(np.array_equal(a, b) for a, b in zip(direct, through)) and model.encoder_cache is None
    assert len(calls) == 2  # one encoder pass per test image, for every prediction the twin made through it


def test_the_baseline_rows_follow_the_prompt():
    torch.manual_seed(0)
    zero_shot = SegmentationModel(build_sam("vit_tiny")).eval()
    test = small_test_set(2)
    shared = demo.SharedEmbeddings(zero_shot.sam.image_encoder)
    by_prompt = {prompt: demo._baseline_rows(test, prompt, zero_shot, shared) for prompt in ("none", "box")}
    names = {prompt: [row["model"] for row in rows] for prompt, rows in by_prompt.items()}
    assert names["box"] == [
        "all background",
        "all foreground",
        "box filled in (the prompt alone)",
        "zero-shot (box)",
    ]
    assert names["none"][:3] == ["all background", "all foreground", "zero-shot (no prompt)"]
    assert names["none"][3] == "zero-shot (box, for reference)"
    filled = by_prompt["box"][2]
    assert 0.0 < filled["iou"] < 1.0 and filled["prompt"] == "box"  # measured: discs are not their boxes
    assert [row["prompt"] for row in by_prompt["none"]] == [
        None,
        None,
        "none",
        "box",
    ]  # which pictures get a box
