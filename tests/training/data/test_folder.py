"""Folder data sets: pairing, splits, classes, and bad files caught before training."""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.training.data.folder import discover
from naslora_deploy.training.data.masks import mask_key


def _write(folder, stem, mask_stem=None, size=(24, 32), mask_value=255, suffix=".png"):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(folder / "images" / f"{stem}{suffix}")
    mask = np.zeros(size, np.uint8)
    mask[4:10, 4:10] = mask_value
    Image.fromarray(mask).save(folder / "masks" / f"{mask_stem or stem}.png")


def test_mask_suffixes():
    assert mask_key("ISIC_0000000_segmentation") == "ISIC_0000000"
    assert mask_key("cju0qkwl35piu0993l0dewei2_mask") == "cju0qkwl35piu0993l0dewei2"
    assert mask_key("plain") == "plain"


def test_flat_folder_is_split_with_a_seed(tmp_path):
    for i in range(10):
        _write(tmp_path, f"img{i}", mask_stem=f"img{i}_segmentation", suffix=".jpg" if i % 2 else ".png")
    first = discover(tmp_path, val_fraction=0.2, seed=3)
    second = discover(tmp_path, val_fraction=0.2, seed=3)
    other = discover(tmp_path, val_fraction=0.2, seed=4)
    assert len(first.split("train")) == 8 and len(first.split("val")) == 2
    assert first.splits == second.splits
    assert first.split("val") != other.split("val")
    assert first.classes.binary


def test_split_subfolders_and_classes_json(multiclass_data):
    splits = discover(multiclass_data)
    assert set(splits.splits) == {"train", "val", "test"}
    assert splits.classes.names == ["background", "disc", "box"]


def test_image_without_mask_fails_before_training_or_is_skipped(tmp_path):
    _write(tmp_path, "a")
    _write(tmp_path, "b")
    (tmp_path / "masks" / "b.png").unlink()
    with pytest.raises(NasloraError, match=r"b.png: no mask for this image .*--skip-bad"):
        discover(tmp_path)
    with pytest.warns(UserWarning, match="no mask"):
        splits = discover(tmp_path, skip_bad=True, val_fraction=0.0)
    assert [p[0].name for p in splits.split("train")] == ["a.png"]
    assert len(splits.skipped) == 1


def test_corrupt_image_is_named(tmp_path):
    _write(tmp_path, "good")
    _write(tmp_path, "bad")
    (tmp_path / "images" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(NasloraError, match=r"bad.png: cannot read image"):
        discover(tmp_path)
    with pytest.warns(UserWarning):
        assert len(discover(tmp_path, skip_bad=True, val_fraction=0.0).split("train")) == 1


def test_label_out_of_range_and_size_mismatch(tmp_path):
    _write(tmp_path, "x", mask_value=7)
    with pytest.raises(NasloraError, match="label 7 is out of range for 3 classes"):
        discover(tmp_path, num_classes=3)
    assert discover(tmp_path, num_classes=8).classes.num_classes == 8
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "masks" / "x.png")
    with pytest.raises(NasloraError, match="mask is 5x5 but its image is 32x24"):
        discover(tmp_path)


def test_colour_coded_masks_with_palette(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "t.png")
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[:4] = [255, 0, 0]
    Image.fromarray(colour).save(tmp_path / "masks" / "t.png")
    (tmp_path / "classes.json").write_text(
        json.dumps({"names": ["bg", "glass"], "palette": [[0, 0, 0], [255, 0, 0]]})
    )
    splits = discover(tmp_path, val_fraction=0.0)
    assert splits.classes.num_classes == 2 and splits.classes.palette == [(0, 0, 0), (255, 0, 0)]
    from naslora_deploy.training.data.dataset import load_labels

    labels = load_labels(tmp_path / "masks" / "t.png", splits.classes)
    assert (labels[:4] == 1).all() and (labels[4:] == 0).all()


def test_missing_folders(tmp_path):
    with pytest.raises(NasloraError, match="not found"):
        discover(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(NasloraError, match="masks not found"):
        discover(tmp_path)
    shutil.rmtree(tmp_path / "images")


@pytest.mark.parametrize(
    "content, phrase",
    [
        ('{"names": "background"}', "\"names\" is the string 'background', not a list"),
        ('{"names": [{"id": 0}, "glass"]}', '"names"[0] is an object, not a class name'),
        ('{"names": ["bg", "bg"]}', "lists 'bg' twice"),
        ('{"names": []}', "lists 0 classes"),
        ('["bg", "glass"]', "the top level is a list"),
        ('{"classes": ["bg"]}', '"names" is missing'),
        ('{"names": ["bg", "glass"], "palette": [[0, 0, 0]]}', '"palette" must be a list of 2'),
        ('{"names": ["bg", "glass"], "palette": [[0, 0, 0], [300, 0, 0]]}', '"palette"[1] is [300, 0, 0]'),
        ("{not json", "cannot read the classes.json as JSON"),
    ],
)
def test_bad_classes_json_is_one_line(tmp_path, content, phrase):
    _write(tmp_path, "x")
    (tmp_path / "classes.json").write_text(content)
    with pytest.raises(NasloraError, match=re.escape(phrase)) as caught:
        discover(tmp_path)
    assert "classes.json: " in str(caught.value) and "\n" not in str(caught.value)


def test_binary_label_maps_are_refused_or_skipped_by_name(tmp_path):
    _write(tmp_path, "good")
    _write(tmp_path, "three", mask_value=2)
    mask = np.asarray(Image.open(tmp_path / "masks" / "three.png")).copy()
    mask[0, 0] = 1
    Image.fromarray(mask).save(tmp_path / "masks" / "three.png")
    with pytest.raises(NasloraError, match=r"three.png: a binary mask .* holds 0, 1, 2; .*--classes N"):
        discover(tmp_path)
    with pytest.warns(UserWarning, match="three.png"):
        splits = discover(tmp_path, skip_bad=True, val_fraction=0.0)
    assert [p[0].name for p in splits.split("train")] == ["good.png"]


def test_zero_and_k_masks_mark_every_non_zero_pixel(tmp_path):
    from naslora_deploy.training.data.dataset import load_labels

    _write(tmp_path, "k", mask_value=100)
    splits = discover(tmp_path, val_fraction=0.0)
    labels = load_labels(tmp_path / "masks" / "k.png", splits.classes)
    assert labels.sum() == 36 and set(np.unique(labels)) == {0, 1}


def test_decompression_bomb_is_skipped_by_name(tmp_path):
    _write(tmp_path, "good")
    _write(tmp_path, "bomb")
    Image.new("1", (20000, 20000)).save(tmp_path / "images" / "bomb.png")
    with pytest.raises(NasloraError, match=r"bomb.png: the image has 400,000,000 pixels.*--skip-bad"):
        discover(tmp_path)
    with pytest.warns(UserWarning, match="bomb.png"):
        splits = discover(tmp_path, skip_bad=True, val_fraction=0.0)
    assert len(splits.split("train")) == 1 and "bomb.png" in splits.skipped[0]
