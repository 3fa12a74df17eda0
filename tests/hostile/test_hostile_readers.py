"""Hostile images, masks, classes.json files and arrays (issue 13, items 3, 7 and 11's ``segment()``).

Each row builds its bad input in a fresh folder and runs the real command line or a library call.
Rows whose right behaviour is to convert (float TIFFs, 12-bit PNGs, 0/k masks) expect exit 0 and
check the converted values afterwards.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from harness import Attack, check_attack, copy_into
from PIL import Image

from naslora_deploy.common.errors import NasloraError


# ----- building bad inputs ------------------------------------------------------------------------
def bomb(path: Path, side: int = 20000) -> Path:
    """A side x side 1-bit PNG: a few KB on disk, hundreds of megapixels decoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (side, side)).save(path)
    return path


def save(path: Path, array: np.ndarray, mode=None) -> Path:
    """Write ``array`` as an image file (the suffix picks the format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def photo_file(tmp: Path, ctx: dict, name: str = "good.png") -> Path:
    """The session's photo as a PNG under ``tmp/in``."""
    return save(tmp / "in" / name, ctx["photo"])


def data_with(tmp: Path, ctx: dict, stem: str, image: np.ndarray, mask: np.ndarray, split="train") -> Path:
    """A private copy of the binary data set with one more pair in ``split``."""
    data = copy_into(ctx["binary_data"], tmp, "data")
    save(data / split / "images" / f"{stem}.png", image)
    save(data / split / "masks" / f"{stem}_mask.png", mask)
    return data


def with_mask_values(tmp: Path, ctx: dict, values) -> Path:
    """The binary data set whose first training mask holds ``values`` (0/255 replaced)."""
    data = copy_into(ctx["binary_data"], tmp, "data")
    mask_path = sorted((data / "train" / "masks").iterdir())[0]
    mask = np.asarray(Image.open(mask_path))
    relabelled = np.where(mask > 0, values[1], values[0]).astype(np.uint8)
    if len(values) > 2:
        relabelled[: relabelled.shape[0] // 4] = np.where(mask[: mask.shape[0] // 4] > 0, values[2], 0)
    save(mask_path, relabelled)
    return data


def train(data: Path, tmp: Path, *extra: str):
    """``train`` arguments on ``data`` (vit_tiny); rows fail before the first step or run one."""
    run = str(tmp / "run")
    return ["train", "--data", str(data), "--model", "vit_tiny", "--out", run, "--no-progress", *extra]


@functools.lru_cache(maxsize=4)
def segmenter(artifacts: str):
    """The artifact directory opened once on onnxruntime (rows only read it)."""
    from naslora_deploy.runtime import Segmenter

    return Segmenter.open(artifacts, backend="onnxruntime")


def segment(array_of):
    """A ``call``: ``Segmenter.segment`` on the array (or path) ``array_of(tmp, ctx)`` builds."""
    return lambda tmp, ctx: segmenter(str(ctx["artifacts"])).segment(array_of(tmp, ctx))


def call(reader, file_of):
    """A ``call``: ``reader`` on the file ``file_of(tmp)`` writes."""
    return lambda tmp, ctx: reader(file_of(tmp))


def read_image(path):
    """``imaging.read_image``, imported late."""
    from naslora_deploy.common.imaging import read_image as reader

    return reader(path)


def read_mask(path):
    """``masks.read_mask``, imported late."""
    from naslora_deploy.common.masks import read_mask as reader

    return reader(path)


def classes_json(content: str):
    """``train`` on the multi-class data set with ``classes.json`` replaced by ``content``."""

    def build(tmp: Path, ctx: dict):
        data = copy_into(ctx["multiclass_data"], tmp, "data")
        (data / "classes.json").write_text(content)
        return train(data, tmp)

    return build


# ----- item 3: bombs and degenerate shapes --------------------------------------------------------
def predict_keeps_going(tmp: Path, ctx: dict):
    """predict over a damaged file, a bomb and a good photo: the photo's result is written, both
    bad files are reported; the report is raised for the harness to read."""
    from naslora_deploy.runtime.predict import predict_files

    damaged = tmp / "in" / "damaged.png"
    photo_file(tmp, ctx)
    damaged.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files = [damaged, bomb(tmp / "in" / "bomb.png"), tmp / "in" / "good.png"]
    done, errors = predict_files(segmenter(str(ctx["artifacts"])), files, tmp / "out")
    assert done == 1 and len(errors) == 2, errors
    assert "damaged.png" in errors[0] and "bomb.png" in errors[1]
    assert "good.png" in (tmp / "out" / "results.jsonl").read_text()
    raise NasloraError(errors[1])


def bomb_data(tmp: Path, ctx: dict, split: str = "test") -> Path:
    """The binary data set with a bomb (image and mask) in ``split``."""
    data = copy_into(ctx["binary_data"], tmp, "data")
    bomb(data / split / "images" / "bomb.png")
    bomb(data / split / "masks" / "bomb_mask.png")
    return data


def bomb_was_skipped_by_name(tmp: Path, ctx: dict) -> None:
    from naslora_deploy.training.data.folder import discover

    with pytest.warns(UserWarning, match="bomb.png: the image has"):
        splits = discover(tmp / "data", val_fraction=0.0, skip_bad=True)
    assert any("bomb.png" in line for line in splits.skipped)
    assert all(image.name != "bomb.png" for image, _ in splits.split("test"))


def eval_skip_bad(tmp: Path, ctx: dict):
    return ["eval", str(ctx["adapter"]), "--data", str(bomb_data(tmp, ctx)), "--skip-bad"]


def run_has_a_checkpoint(tmp: Path, ctx: dict) -> None:
    assert (tmp / "run" / "last").is_dir() or (tmp / "run" / "best").is_dir()


THIN = np.zeros((1, 2000), np.uint8)


# ----- item 7: labels and pixels that used to be misread ------------------------------------------
FLOAT_255 = np.linspace(0, 255, 64 * 48, dtype=np.float32).reshape(48, 64)
TWELVE_BIT = (np.linspace(0, 4095, 64 * 48).reshape(48, 64)).astype(np.uint16)


def predict_one(name: str, array: np.ndarray, mode=None):
    """``predict`` on one file holding ``array``."""

    def build(tmp: Path, ctx: dict):
        path = save(tmp / "in" / name, array, mode)
        return ["predict", str(ctx["artifacts"]), str(path), "--out", str(tmp / "out")]

    return build


def read_back(name: str, expected: np.ndarray):
    """``after``: the file reads back as ``expected`` (one channel of the RGB), not white or dark."""

    def check(tmp: Path, ctx: dict) -> None:
        out = read_image(tmp / "in" / name)[:, :, 0]
        np.testing.assert_array_equal(out, expected)
        assert (tmp / "out" / "results.jsonl").is_file()

    return check


def labels_match_the_0_255_original(tmp: Path, ctx: dict) -> None:
    from naslora_deploy.core.model.classes import ClassSpec
    from naslora_deploy.training.data.dataset import load_labels

    name = sorted((tmp / "data" / "train" / "masks").iterdir())[0].name
    ours = load_labels(tmp / "data" / "train" / "masks" / name, ClassSpec())
    original = load_labels(ctx["binary_data"] / "train" / "masks" / name, ClassSpec())
    assert ours.any() and np.array_equal(ours, original)


def eval_relabelled(values):
    def build(tmp: Path, ctx: dict):
        data = with_mask_values(tmp, ctx, values)
        return ["eval", str(ctx["adapter"]), "--data", str(data), "--split", "train"]

    return build


def nan_tiff(tmp: Path) -> Path:
    array = np.full((16, 16), 3.0, np.float32)
    array[4, 4] = np.nan
    return save(tmp / "nan.tif", array, "F")


def fractional_mask(tmp: Path) -> Path:
    return save(tmp / "mask.tif", np.array([[0.0, 0.5], [1.0, 0.25]], np.float32), "F")


# ----- item 11: arrays given to segment() ---------------------------------------------------------
def array(value: np.ndarray):
    return lambda tmp, ctx: value


NAN_PHOTO = np.full((32, 32, 3), np.nan, np.float32)


ATTACKS = [
    # item 3
    Attack("bomb-read-image", 3, "400,000,000 pixels", call=call(read_image, lambda t: bomb(t / "b.png"))),
    Attack(
        "bomb-90mp-pillow-only-warns",
        3,
        "89,478,485-pixel limit",
        call=call(read_mask, lambda t: bomb(t / "b.png", 9500)),
    ),
    Attack("bomb-segment-path", 3, "b.png: the image has", call=segment(lambda t, c: bomb(t / "b.png"))),
    Attack("bomb-predict-keeps-going", 3, "bomb.png: the image has", call=predict_keeps_going),
    Attack(
        "bomb-train-names-it",
        3,
        "bomb.png: the image has 400,000,000 pixels",
        argv=lambda t, c: train(bomb_data(t, c, "train"), t),
    ),
    Attack("bomb-eval-skip-bad", 3, "iou", argv=eval_skip_bad, exit_code=0, after=bomb_was_skipped_by_name),
    Attack(
        "bomb-train-skip-bad",
        3,
        "run directory",
        argv=lambda t, c: train(bomb_data(t, c, "train"), t, "--skip-bad", "--max-steps", "1"),
        exit_code=0,
        after=run_has_a_checkpoint,
    ),
    Attack(
        "thin-image-train-names-it",
        3,
        "thin.png: 2000x1 pixels is too thin",
        argv=lambda t, c: train(data_with(t, c, "thin", THIN, THIN), t),
    ),
    Attack(
        "thin-image-segment-path",
        3,
        "thin.png: 2000x1 pixels is too thin",
        call=segment(lambda t, c: save(t / "thin.png", THIN)),
    ),
    # item 7
    Attack(
        "binary-mask-0-1-2",
        7,
        "holds 0, 1, 2; for class indices",
        argv=lambda t, c: train(with_mask_values(t, c, (0, 1, 2)), t),
    ),
    Attack(
        "binary-mask-0-100",
        7,
        "iou",
        argv=eval_relabelled((0, 100)),
        exit_code=0,
        after=labels_match_the_0_255_original,
    ),
    Attack(
        "float-tiff-0-255",
        7,
        "wrote masks",
        argv=predict_one("f.tif", FLOAT_255, "F"),
        exit_code=0,
        after=read_back("f.tif", (FLOAT_255 + 0.5).astype(np.uint8)),
    ),
    Attack(
        "twelve-bit-png",
        7,
        "wrote masks",
        argv=predict_one("twelve.png", TWELVE_BIT),
        exit_code=0,
        after=read_back("twelve.png", (TWELVE_BIT * (255.0 / 4095) + 0.5).astype(np.uint8)),
    ),
    Attack("float-tiff-nan", 7, "nan.tif: the image holds NaN", call=call(read_image, nan_tiff)),
    Attack("mask-fractional", 7, "mask.tif: the mask holds fraction", call=call(read_mask, fractional_mask)),
    Attack(
        "classes-json-names-string",
        7,
        "\"names\" is the string 'background'",
        argv=classes_json('{"names": "background"}'),
    ),
    Attack(
        "classes-json-names-objects",
        7,
        '"names"[0] is an object',
        argv=classes_json(json.dumps({"names": [{"id": 0}, {"id": 1}, {"id": 2}]})),
    ),
    Attack(
        "classes-json-duplicate",
        7,
        "lists 'disc' twice",
        argv=classes_json(json.dumps({"names": ["bg", "disc", "disc"]})),
    ),
    # item 11: segment() on arrays
    Attack("segment-0x0-array", 11, "0x0 pixels", call=segment(array(np.zeros((0, 0), np.uint8)))),
    Attack("segment-nan-array", 11, "NaN or infinite", call=segment(array(NAN_PHOTO))),
    Attack("segment-inf-array", 11, "NaN or infinite", call=segment(array(np.full((9, 9), np.inf)))),
    Attack(
        "segment-int32-negative", 11, "outside 0..65535", call=segment(array(np.full((9, 9), -3, np.int32)))
    ),
    Attack("segment-4d-array", 11, "got shape (1, 9, 9, 3)", call=segment(array(np.zeros((1, 9, 9, 3))))),
    Attack("segment-two-channels", 11, "got shape (9, 9, 2)", call=segment(array(np.zeros((9, 9, 2))))),
    Attack("segment-complex-array", 11, "not an image", call=segment(array(np.zeros((9, 9), np.complex64)))),
    Attack("segment-thin-array", 11, "the image array: 2000x1", call=segment(array(THIN))),
    Attack("segment-a-list", 11, "must be a path or a numpy array", call=segment(array([[1, 2], [3, 4]]))),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack(attack, hostile_ctx, tmp_path, capsys):
    check_attack(attack, tmp_path, hostile_ctx, capsys)
