"""``predict --everything``: every object of an image as an instance-label PNG and COCO RLEs."""

import json

import numpy as np
import pytest
from PIL import Image

from naslora_deploy.cli import main
from naslora_deploy.runtime import Segmenter
from naslora_deploy.runtime.everything import EverythingSpec

# vit_tiny has random weights: its IoU head never reaches SAM's 0.88, so keep every mask
LOOSE = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]


def test_predict_everything_writes_labels_and_rles(binary_artifacts, photo, tmp_path):
    from pycocotools import mask as coco_mask

    Image.fromarray(photo).save(tmp_path / "photo.png")
    argv = ["predict", str(binary_artifacts), str(tmp_path / "photo.png"), "--out", str(tmp_path / "out")]
    assert main(argv + ["--everything", "--box-nms-thresh", "1.0", "--no-progress"] + LOOSE) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    spec = EverythingSpec(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0)
    expected = Segmenter.open(binary_artifacts, "onnxruntime", "cpu").generate(photo, spec)
    assert record["count"] == len(expected) == len(record["masks"]) > 1
    assert record["everything"]["points_per_side"] == 4 and record["timings_ms"]["generate"] > 0
    labels = np.asarray(Image.open(tmp_path / "out" / record["masks_png"]))
    assert labels.shape == photo.shape[:2]
    for index, (ours, theirs) in enumerate(zip(record["masks"], expected)):
        decoded = coco_mask.decode({**ours["rle"], "counts": ours["rle"]["counts"].encode()}).astype(bool)
        assert np.array_equal(decoded, theirs["segmentation"])
        assert ours["area"] == theirs["area"] and ours["bbox"] == theirs["bbox"]
        on_top = labels == index + 1  # the better mask wins where masks overlap
        assert np.array_equal(on_top, theirs["segmentation"] & ~np.isin(labels, np.arange(1, index + 1)))


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--everything", "--tile", "512"], "--everything finds every object of the whole image by itself"),
        (["--everything", "--box", "1,2,30,40"], "drop --points/--box/--tile"),
        (["--points-per-side", "8"], "--points-per-side sets everything mode: add --everything"),
        (["--everything", "--pred-iou-thresh", "1.5"], "Invalid value for '--pred-iou-thresh'"),
        (["--everything", "--points-per-side", "0"], "Invalid value for '--points-per-side'"),
    ],
)
def test_predict_everything_refuses_bad_options_in_one_line(
    flags, says, binary_artifacts, photo, tmp_path, capsys
):
    Image.fromarray(photo).save(tmp_path / "photo.png")
    argv = ["predict", str(binary_artifacts), str(tmp_path / "photo.png"), "--out", str(tmp_path / "o")]
    assert main(argv + flags) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_everything_needs_the_prompt_decoder(multiclass_artifacts, photo):
    from naslora_deploy.common.errors import NasloraError

    with pytest.raises(NasloraError, match="has no prompt decoder; export it with --prompts"):
        Segmenter.open(multiclass_artifacts, "onnxruntime", "cpu").generate(photo)


def test_predict_everything_with_crop_layers(binary_artifacts, photo, tmp_path):
    """``--crop-n-layers 1``: the image and its four crops prompted (five times the candidates), the same
    records as the API's. (vit_tiny's random weights give near-full masks, which every crop cuts at its
    edge: the mapping back into the image is proven against SAM in test_everything.)"""
    Image.fromarray(photo).save(tmp_path / "photo.png")
    argv = ["predict", str(binary_artifacts), str(tmp_path / "photo.png"), "--out", str(tmp_path / "out")]
    crops = ["--crop-n-layers", "1", "--crop-nms-thresh", "1.0", "--box-nms-thresh", "1.0"]
    assert main(argv + ["--everything", "--no-progress"] + LOOSE + crops) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    spec = EverythingSpec(
        points_per_side=4,
        pred_iou_thresh=0,
        stability_score_thresh=0,
        box_nms_thresh=1.0,
        crop_n_layers=1,
        crop_nms_thresh=1.0,
    )
    expected = Segmenter.open(binary_artifacts, "onnxruntime", "cpu").generate(photo, spec)
    assert record["everything"]["crop_n_layers"] == 1 and record["count"] == len(expected) > 0
    counts = record["candidates"]
    assert counts["crops"] == 5 and counts["points"] == 5 * 16 and counts["candidates"] == 5 * 16 * 3
    assert counts["crop_edge"] > 0 and counts["kept"] + counts["crop_edge"] == counts["candidates"]
    for ours, theirs in zip(record["masks"], expected):
        assert ours["crop_box"] == theirs["crop_box"] and ours["bbox"] == theirs["bbox"]


def test_everything_that_finds_nothing_says_which_threshold(binary_artifacts, photo, tmp_path):
    """vit_tiny's random weights never reach SAM's default thresholds: one line says so and names the
    options to lower; the record counts what each filter removed; a log gets a line per image and crop."""
    import subprocess
    import sys

    Image.fromarray(photo).save(tmp_path / "photo.png")
    argv = ["predict", str(binary_artifacts), str(tmp_path / "photo.png"), "--out", str(tmp_path / "out")]
    command = [sys.executable, "-m", "naslora_deploy", *argv, "--everything", "--points-per-side", "4"]
    result = subprocess.run(command, capture_output=True, text=True)  # stderr is a log, not a terminal
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "everything mode found" in line]
    assert line.startswith(f"warning: {tmp_path / 'photo.png'}: everything mode found 0 masks: 48 candidates")
    assert "pred_iou_thresh 0.88 removed" in line and "; lower --pred-iou-thresh" in line
    assert "predict 1/1 " in result.stderr and "everything: crop 1/1 " in result.stderr
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    counts = record["candidates"]
    assert record["count"] == counts["kept"] == 0 and counts["candidates"] == 48
    assert counts["pred_iou_thresh"] + counts["stability_score_thresh"] == 48
