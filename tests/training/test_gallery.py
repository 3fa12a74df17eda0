"""``eval --gallery DIR``: per-image metrics that average to eval's figures, overlays of the worst and
best images with the ground truth and the prompt drawn, and the project's output rules
(real vit_tiny adapters on the synthetic data sets)."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from naslora_deploy.cli import main
from naslora_deploy.common.plots import BOX_COLOUR, TRUTH_COLOUR
from naslora_deploy.training.gallery import GALLERY_MARKER


def tree(folder):
    """Every file below ``folder`` with its size and modification time."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            found[path] = (os.path.getsize(path), os.path.getmtime(path))
    return found


def has_colour(picture, colour) -> int:
    """Pixels of exactly ``colour``."""
    return int((np.asarray(picture)[:, :, :3] == np.array(colour)).all(-1).sum())


def run_eval(adapter, data, gallery, *extra):
    return main(["eval", str(adapter), "--data", str(data), "--gallery", str(gallery), *extra])


@pytest.fixture(scope="module")
def box_gallery(binary_adapter, binary_data, tmp_path_factory):
    """A box-prompted gallery of the 8 training images, 3 worst and 3 best, with eval's JSON."""
    root = tmp_path_factory.mktemp("gallery")
    before = tree(root), tree(binary_data), tree(binary_adapter)
    args = ["--split", "train", "--prompt", "box", "--gallery-count", "3", "--json", str(root / "m.json")]
    assert run_eval(binary_adapter, binary_data, root / "g", *args) == 0
    return root, before


def test_per_image_metrics_average_to_evals_figures(box_gallery):
    root, _ = box_gallery
    result = json.loads((root / "m.json").read_text())
    rows = list(csv.DictReader((root / "g" / "per_image.csv").open()))
    records = [json.loads(line) for line in (root / "g" / "per_image.jsonl").read_text().splitlines()]
    assert len(rows) == len(records) == result["images"] == 8
    assert [int(r["index"]) for r in rows] == list(range(8)) and rows[0]["file"].endswith("train_0000.png")
    for name in ("iou", "dice", "ber"):
        assert np.mean([float(r[name]) for r in rows]) == pytest.approx(result["metrics"][name], abs=1e-12)
        assert [float(r[name]) for r in rows] == [r[name] for r in records]
    for record in records:
        assert 0.0 < record["truth_share"] < 1.0 and 0.0 <= record["prediction_share"] <= 1.0
        assert record["dice"] == pytest.approx(2 * record["iou"] / (1 + record["iou"]))
    assert result["gallery"] == str((root / "g").resolve())


def test_the_worst_and_best_overlays_show_truth_and_prompt(box_gallery):
    root, _ = box_gallery
    records = [json.loads(line) for line in (root / "g" / "per_image.jsonl").read_text().splitlines()]
    drawn = {name: r for r in records for name in r.get("overlays", [])}
    worst = [drawn[f"worst/0{k}_train_{r['index']:04d}.png"] for k, r in enumerate(_ranked(records), 1)]
    best = [drawn[n] for n in sorted(n for n in drawn if n.startswith("best/"))]
    assert len(worst) == len(best) == 3
    assert [r["iou"] for r in worst] == sorted(r["iou"] for r in records)[:3]
    assert max(r["iou"] for r in worst) <= min(r["iou"] for r in best)
    assert [r["iou"] for r in best] == sorted((r["iou"] for r in records), reverse=True)[:3]
    for name in drawn:
        picture = Image.open(root / "g" / name).convert("RGB")
        assert picture.size == Image.open(drawn[name]["file"]).size  # the image's own size
        assert has_colour(picture, TRUTH_COLOUR) > 20 and has_colour(picture, BOX_COLOUR) > 20
    sheet = Image.open(root / "g" / "gallery.png")
    assert sheet.format == "PNG" and sheet.size[0] > 3 * 180 and sheet.size[1] > 2 * 180


def _ranked(records):
    return sorted(records, key=lambda r: (r["iou"], r["index"]))[:3]


def test_files_are_written_only_under_the_gallery(box_gallery, binary_data, binary_adapter):
    root, (outputs, data, adapter) = box_gallery
    assert tree(binary_data) == data and tree(binary_adapter) == adapter
    new = set(tree(root)) - set(outputs)
    assert new - {str(root / "m.json")}
    assert all(path.startswith(str(root / "g") + os.sep) for path in new - {str(root / "m.json")})
    assert sorted(os.listdir(root / "g")) == sorted(
        [GALLERY_MARKER, "best", "gallery.png", "per_image.csv", "per_image.jsonl", "worst"]
    )


def test_without_a_box_prompt_no_box_is_drawn(binary_adapter, binary_data, tmp_path):
    args = ["--prompt", "none", "--gallery-count", "1"]
    assert run_eval(binary_adapter, binary_data, tmp_path / "g", *args) == 0
    for row in ("worst", "best"):
        (picture,) = (tmp_path / "g" / row).iterdir()
        assert has_colour(Image.open(picture).convert("RGB"), BOX_COLOUR) == 0
        assert has_colour(Image.open(picture).convert("RGB"), TRUTH_COLOUR) > 20


def test_the_gallery_folder_follows_the_output_rules(binary_adapter, binary_data, tmp_path, capsys):
    gallery = tmp_path / "g"
    assert run_eval(binary_adapter, binary_data, gallery, "--gallery-count", "1") == 0
    first = tree(gallery)
    assert run_eval(binary_adapter, binary_data, gallery) == 2  # an earlier gallery: only with --overwrite
    assert "already holds a eval gallery; pass --overwrite" in capsys.readouterr().err
    assert tree(gallery) == first
    assert run_eval(binary_adapter, binary_data, gallery, "--overwrite", "--gallery-count", "2") == 0
    assert len(list((gallery / "worst").iterdir())) == 2
    (gallery / "notes.txt").write_text("mine")  # a user's file: never replaced, not even with --overwrite
    assert run_eval(binary_adapter, binary_data, gallery, "--overwrite") == 2
    assert "holds files that no eval --gallery wrote (notes.txt)" in capsys.readouterr().err
    assert (gallery / "notes.txt").read_text() == "mine"
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "a.png").write_bytes(b"x")
    assert run_eval(binary_adapter, binary_data, stranger, "--overwrite") == 2
    assert run_eval(binary_adapter, binary_data, binary_data / "gallery") == 2  # inside the data: refused
    err = capsys.readouterr().err
    assert "lies inside the data folder" in err and "Traceback" not in err
    assert not (binary_data / "gallery").exists() and os.listdir(stranger) == ["a.png"]


def test_a_multiclass_gallery_ranks_by_the_images_own_miou(multiclass_adapter, multiclass_data, tmp_path):
    out = tmp_path / "m.json"
    args = ["--split", "train", "--gallery-count", "2", "--json", str(out)]
    assert run_eval(multiclass_adapter, multiclass_data, tmp_path / "g", *args) == 0
    records = [json.loads(line) for line in (tmp_path / "g" / "per_image.jsonl").read_text().splitlines()]
    assert len(records) == json.loads(out.read_text())["images"]
    assert all({"miou", "accuracy", "mber"} <= set(r) for r in records)
    worst = next(r for r in records if "worst/01" in " ".join(r.get("overlays", [])))
    assert worst["miou"] == min(r["miou"] for r in records)
    picture = Image.open(tmp_path / "g" / worst["overlays"][0]).convert("RGB")
    assert has_colour(picture, TRUTH_COLOUR) > 20


def test_only_the_worst_and_best_predictions_are_kept(tmp_path, monkeypatch):
    """Many images, count 1, pruning at every image: the right pictures are still drawn."""
    from naslora_deploy.core.model.classes import ClassSpec
    from naslora_deploy.training import gallery as gallery_module
    from naslora_deploy.training.gallery import EvaluatedImage, Gallery
    from naslora_deploy.training.metrics import BinaryMetrics

    monkeypatch.setattr(gallery_module, "PRUNE_EVERY", 0)
    rng = np.random.default_rng(0)
    truth = np.zeros((32, 40), bool)
    truth[8:24, 10:30] = True
    collected, metrics = Gallery(ClassSpec(), count=1), BinaryMetrics()
    for index in range(12):
        image, mask = tmp_path / f"i{index}.png", tmp_path / f"m{index}.png"
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(image)
        Image.fromarray(truth.astype(np.uint8) * 255).save(mask)
        probability = np.roll(truth, index, axis=1).astype(np.float32)  # worse with every shift
        metrics.update(probability, truth.astype(np.uint8))
        collected.add(EvaluatedImage(index, (image, mask), truth.astype(np.uint8), probability), metrics)
        assert len(collected.kept) <= 2
    assert sorted(collected.kept) == [0, 11]
    folder = collected.write(tmp_path / "g")
    assert os.listdir(folder / "worst") == ["01_i11.png"] and os.listdir(folder / "best") == ["01_i0.png"]
    best = np.asarray(Image.open(folder / "best" / "01_i0.png").convert("RGB"))
    assert has_colour(best, TRUTH_COLOUR) > 20 and has_colour(best, BOX_COLOUR) == 0  # not box-prompted
