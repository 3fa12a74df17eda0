"""Issue 27, the data readers: declared sizes (1), paths out of bounds (6), hostile structure (7) and
silent changes to data (8) in COCO, LabelMe, npz, mask folders and TIFF images.

Rows run ``train`` in-process on a tiny data set of the bad kind; inputs that would allocate what
they declare if a check regressed run in a subprocess under an address-space cap
(``harness.run_guarded``), FIFOs under an alarm, so a regression fails the test, not the machine.
Every test checks that the data folder (and any file outside it that an entry names) is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from harness import Attack, check_attack, check_guarded, copy_into, run_guarded
from PIL import Image

H, W = 32, 40
SQUARE = [4, 4, 20, 4, 20, 20, 4, 20]  # a COCO polygon inside every image
SNAPSHOTS: dict = {}  # tmp folder -> snapshot of the inputs a row built there


# ----- inputs unchanged -----------------------------------------------------------------------------
def snapshot(*roots: Path) -> dict:
    """Every entry under ``roots``: regular files by content and mtime, others by kind (a FIFO is never
    opened), links by target."""
    state = {}
    for root in roots:
        paths = [root] if not root.is_dir() or root.is_symlink() else [root, *sorted(root.rglob("*"))]
        for path in paths:
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                state[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mtime_ns)
            elif stat.S_ISLNK(info.st_mode):
                state[str(path)] = ("link", os.readlink(path))
            else:
                state[str(path)] = (stat.S_IFMT(info.st_mode), None)
    return state


def remember(tmp: Path, *roots: Path) -> None:
    """Record the inputs of the row running in ``tmp`` (``unchanged`` compares them afterwards)."""
    SNAPSHOTS[tmp] = (roots, snapshot(*roots))


def unchanged(tmp: Path, ctx: dict) -> None:
    """``after``: every input the row recorded is as it was."""
    roots, before = SNAPSHOTS.pop(tmp)
    assert snapshot(*roots) == before, "an input file changed"


# ----- tiny data sets -------------------------------------------------------------------------------
def photo(ctx: dict, index: int) -> np.ndarray:
    """A (H, W, 3) crop of the session's photo (a different one per index)."""
    return np.ascontiguousarray(ctx["photo"][index * 8 : index * 8 + H, index * 8 : index * 8 + W])


def coco_document(count: int = 3) -> dict:
    """A COCO instances document: ``count`` images with one square polygon each, one category."""
    return {
        "images": [{"id": i, "file_name": f"im{i}.png", "height": H, "width": W} for i in range(count)],
        "annotations": [
            {"id": i + 1, "image_id": i, "category_id": 1, "iscrowd": 0, "segmentation": [list(SQUARE)]}
            for i in range(count)
        ],
        "categories": [{"id": 1, "name": "thing", "supercategory": "all"}],
    }


def coco_data(tmp: Path, ctx: dict, edit=None, text: str = "") -> Path:
    """``annotations.json`` + ``images/``; ``edit(document)`` damages the document, ``text`` replaces it."""
    root = tmp / "coco"
    (root / "images").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(photo(ctx, i)).save(root / "images" / f"im{i}.png")
    document = coco_document()
    if edit is not None:
        edit(document)
    (root / "annotations.json").write_text(text or json.dumps(document))
    return root


def labelme_document(index: int) -> dict:
    """A LabelMe file with one polygon labelled 'cat'."""
    points = [[4, 4], [20, 4], [20, 20], [4, 20]]
    return {
        "version": "5.4.1",
        "shapes": [{"label": "cat", "shape_type": "polygon", "points": points, "flags": {}}],
        "imagePath": f"x{index}.png",
        "imageData": None,
        "imageHeight": H,
        "imageWidth": W,
    }


def labelme_data(tmp: Path, ctx: dict, edit=None, text: str = "") -> Path:
    """x{0,1,2}.png + x{0,1,2}.json; ``edit(document)`` damages x0.json, ``text`` replaces it."""
    root = tmp / "labelme"
    root.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(photo(ctx, i)).save(root / f"x{i}.png")
        document = labelme_document(i)
        if i == 0 and edit is not None:
            edit(document)
        (root / f"x{i}.json").write_text(text if i == 0 and text else json.dumps(document))
    return root


def npz_data(tmp: Path, ctx: dict, write_bad=None) -> Path:
    """Two good MedSAM npz files and ``write_bad(path)``'s ``bad.npz``."""
    root = tmp / "npz"
    root.mkdir(parents=True)
    gts = np.zeros((H, W), np.uint8)
    gts[4:20, 4:20] = 1
    for i in range(2):
        np.savez_compressed(root / f"good{i}.npz", imgs=photo(ctx, i), gts=gts)
    if write_bad is not None:
        write_bad(root / "bad.npz")
    return root


def train(data: Path, tmp: Path, *extra: str) -> list:
    """``train`` arguments on ``data`` (vit_tiny); every row fails while the data are checked."""
    return [
        "train",
        "--data",
        str(data),
        "--model",
        "vit_tiny",
        "--out",
        str(tmp / "run"),
        "--no-progress",
        *extra,
    ]


def train_on(build, *outside):
    """An ``argv`` row: build the data set with ``build(tmp, ctx)``, remember it (and the files named
    by ``outside(tmp)``), then ``train`` on it."""

    def argv(tmp: Path, ctx: dict) -> list:
        data = build(tmp, ctx)
        remember(tmp, data, *(name(tmp) for name in outside))
        return train(data, tmp)

    return argv


# ----- class 6: paths out of bounds -----------------------------------------------------------------
def outside_photo(tmp: Path) -> Path:
    """A real image outside the data folder (what a hostile entry points at)."""
    path = tmp / "private" / "secret.png"
    if not path.exists():
        path.parent.mkdir(parents=True)
        Image.fromarray(np.full((H, W, 3), 7, np.uint8)).save(path)
    return path


def coco_names(name: str):
    """COCO data whose first image's file_name is ``name`` (``{tmp}`` filled in)."""

    def build(tmp: Path, ctx: dict) -> Path:
        outside_photo(tmp)
        return coco_data(tmp, ctx, lambda d: d["images"][0].update(file_name=name.format(tmp=tmp)))

    return build


def labelme_names(name: str):
    """LabelMe data whose x0.json's imagePath is ``name`` (``{tmp}`` filled in)."""

    def build(tmp: Path, ctx: dict) -> Path:
        outside_photo(tmp)
        return labelme_data(tmp, ctx, lambda d: d.update(imagePath=name.format(tmp=tmp)))

    return build


# ----- class 7: hostile structure -------------------------------------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000


def coco_edit(change):
    return lambda tmp, ctx: coco_data(tmp, ctx, change)


def labelme_edit(change):
    return lambda tmp, ctx: labelme_data(tmp, ctx, change)


def first_shape(**fields):
    return lambda d: d["shapes"][0].update(fields)


def write_npy_as_npz(path: Path) -> None:
    np.save(path.with_suffix(".npy"), np.zeros((H, W), np.uint8))
    path.with_suffix(".npy").rename(path)


def write_object_npz(path: Path) -> None:
    """An npz whose ``imgs`` is an object array (loading it would unpickle)."""
    gts = np.zeros((H, W), np.uint8)
    np.savez(path, imgs=np.array([{"a": 1}, None], dtype=object), gts=gts)


ATTACKS = [
    # class 6: COCO file_name, LabelMe imagePath
    Attack(
        "coco-file-name-dotdot",
        6,
        "'../../private/secret.png' leads outside the image folder",
        argv=train_on(coco_names("../../private/secret.png"), outside_photo),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "coco-file-name-absolute",
        6,
        "is an absolute path",
        argv=train_on(coco_names("{tmp}/private/secret.png"), outside_photo),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "labelme-image-path-dotdot",
        6,
        "imagePath '../private/secret.png' leads outside the data folder",
        argv=train_on(labelme_names("../private/secret.png"), outside_photo),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "labelme-image-path-absolute",
        6,
        "x0.json: imagePath",
        argv=train_on(labelme_names("{tmp}/private/secret.png"), outside_photo),
        after=unchanged,
        issue=27,
    ),
    # class 7: nesting, ids, entries and points of the wrong type
    Attack(
        "coco-deeply-nested",
        7,
        "annotations.json: the COCO annotation file is nested too deeply",
        argv=train_on(lambda t, c: coco_data(t, c, text='{"images": ' + DEEP + "}")),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "labelme-deeply-nested",
        7,
        "x0.json: the LabelMe JSON is nested too deeply",
        argv=train_on(lambda t, c: labelme_data(t, c, text='{"shapes": ' + DEEP + "}")),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "coco-image-id-list",
        7,
        "images[0] has id [0] (a list); COCO ids are whole numbers",
        argv=train_on(coco_edit(lambda d: d["images"][0].update(id=[0]))),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "coco-category-id-object",
        7,
        'categories[0] has id {"id": 1} (an object)',
        argv=train_on(coco_edit(lambda d: d["categories"][0].update(id={"id": 1}))),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "coco-annotation-id-list",
        7,
        "annotations[1] has id [2] (a list)",
        argv=train_on(coco_edit(lambda d: d["annotations"][1].update(id=[2]))),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "coco-image-entry-string",
        7,
        "images[2] is a string, not an object",
        argv=train_on(coco_edit(lambda d: d["images"].__setitem__(2, "im2.png"))),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "coco-polygon-of-strings",
        7,
        "this one holds a string",
        argv=train_on(coco_edit(lambda d: d["annotations"][0].update(segmentation=[["4"] * 8]))),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "labelme-points-not-numbers",
        7,
        "shapes[0]'s points are not a list of [x, y] pairs of numbers",
        argv=train_on(labelme_edit(first_shape(points=[["4", 4], [20, 4], [20, 20]]))),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "npz-plain-npy-named-npz",
        7,
        "bad.npz: cannot read it as .npz",
        argv=train_on(lambda t, c: npz_data(t, c, write_npy_as_npz)),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "npz-object-array",
        7,
        "'imgs' holds Python objects, not numbers",
        argv=train_on(lambda t, c: npz_data(t, c, write_object_npz)),
        after=unchanged,
        issue=27,
    ),
    # class 8: labels that would have become classes of their own
    Attack(
        "labelme-label-list",
        8,
        'shapes[0] has the label ["cat", "dog"] (a list), not a string',
        argv=train_on(labelme_edit(first_shape(label=["cat", "dog"]))),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "labelme-label-missing",
        8,
        "shapes[0] has the label null (null), not a string",
        argv=train_on(labelme_edit(first_shape(label=None))),
        after=unchanged,
        issue=27,
    ),
    # class 1, in-process where a regression cannot allocate much: an RLE past its image
    Attack(
        "coco-rle-runs-past-the-image",
        1,
        f"run lengths add up to {H * W + 5:,}, not the image's {H * W:,} pixels",
        argv=train_on(
            coco_edit(
                lambda d: d["annotations"][0].update(segmentation={"size": [H, W], "counts": [H * W - 5, 10]})
            )
        ),
        after=unchanged,
        issue=27,
    ),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack(attack, hostile_ctx, tmp_path, capsys):
    check_attack(attack, tmp_path, hostile_ctx, capsys)


# ----- class 1: declared sizes, in a subprocess under an address-space cap --------------------------
def guarded_train(data: Path, tmp: Path, phrase: str, env: dict = None) -> None:
    """``train`` on ``data`` under the cap: exit 2, ``phrase`` in one error line, inputs unchanged."""
    before = snapshot(data)
    result = run_guarded(train(data, tmp), env={**os.environ, **(env or {})})
    check_guarded(result, phrase)
    assert snapshot(data) == before


def test_coco_nan_polygon_is_refused_before_pycocotools_allocates(hostile_ctx, tmp_path):
    nan = [4, 4, float("nan"), 4, 20, 20, 4, 20]
    data = coco_data(tmp_path, hostile_ctx, lambda d: d["annotations"][1].update(segmentation=[nan]))
    guarded_train(data, tmp_path, "annotation 2: a coordinate is NaN or infinite")


def test_coco_declared_60000_pixels_is_refused_before_the_label_map(hostile_ctx, tmp_path):
    data = coco_data(tmp_path, hostile_ctx, lambda d: d["images"][0].update(height=60000, width=60000))
    guarded_train(data, tmp_path, "image im0.png (its declared size): the image has 60000x60000 pixels")


def test_labelme_declared_60000_pixels_is_refused_before_drawing(hostile_ctx, tmp_path):
    data = labelme_data(tmp_path, hostile_ctx, lambda d: d.update(imageHeight=60000, imageWidth=60000))
    guarded_train(data, tmp_path, "x0.json: its declared imageHeight x imageWidth: the image has 60000x60000")


def npz_declaring(shape: tuple, dtype: str = "<f8"):
    """A writer of a few-hundred-byte npz whose ``imgs`` header declares ``shape``."""

    def write(path: Path) -> None:
        header = {"descr": dtype, "fortran_order": False, "shape": shape}
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, header)
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("imgs.npy", buffer.getvalue() + bytes(64))  # the header, then 64 bytes
            gts = io.BytesIO()
            np.save(gts, np.zeros((H, W), np.uint8))
            archive.writestr("gts.npy", gts.getvalue())

    return write


def test_npz_header_declaring_10_gb_is_refused_unread(hostile_ctx, tmp_path):
    data = npz_data(tmp_path, hostile_ctx, npz_declaring((36_000, 36_000)))  # 10.4 GB of float64
    guarded_train(data, tmp_path, "10,368,000,000 bytes decoded for one image, mask or array")


def huge_band_tiff(path: Path, bands: int = 16, side: int = 9000) -> Path:
    """A 1.5 KB float32 TIFF whose header declares ``bands`` x ``side`` x ``side`` (5.2 GB decoded,
    81 megapixels: inside the pixel limit)."""
    import tifffile

    tifffile.imwrite(
        path, np.zeros((bands, 4, 4), np.float32), photometric="minisblack", planarconfig="separate"
    )
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(side)
        tif.pages[0].tags["ImageLength"].overwrite(side)
    return path


def test_multiband_tiff_declaring_5_gb_within_the_pixel_limit_is_refused(hostile_ctx, tmp_path):
    data = copy_into(hostile_ctx["binary_data"], tmp_path, "data")
    huge_band_tiff(data / "train" / "images" / "bands.tif")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(
        data / "train" / "masks" / "bands_mask.png"
    )  # never read
    guarded_train(data, tmp_path, "bands.tif: 5,184,000,000 bytes decoded")


def test_small_tiff_above_a_lowered_decoded_bytes_limit_names_the_variable(hostile_ctx, tmp_path):
    import tifffile

    data = copy_into(hostile_ctx["binary_data"], tmp_path, "data")
    tifffile.imwrite(data / "train" / "images" / "six.tif", np.zeros((64, 64, 6), np.float32))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(data / "train" / "masks" / "six_mask.png")
    env = {"NASLORA_MAX_DECODED_BYTES": "65536"}
    guarded_train(
        data, tmp_path, "98,304 bytes decoded for one image, mask or array, above the limit of 65,536", env
    )


# ----- class 8: FIFOs and devices are named, never opened; grey masks are said ----------------------
@contextlib.contextmanager
def alarm(seconds: int = 120):
    """Fail (instead of hanging) if the block has not finished after ``seconds`` (a FIFO opened)."""

    def expire(signum, frame):
        raise TimeoutError("blocked: a FIFO was opened")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def train_in_process(argv: list, capsys) -> tuple:
    from naslora_deploy.cli import main

    capsys.readouterr()
    with alarm():
        code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.err


def test_fifo_image_in_a_mask_folder_is_named_never_opened(hostile_ctx, tmp_path, capsys):
    data = copy_into(hostile_ctx["binary_data"], tmp_path, "data")
    os.mkfifo(data / "train" / "images" / "pipe.png")
    before = snapshot(data)
    code, err = train_in_process(train(data, tmp_path), capsys)
    assert code == 2 and "pipe.png: a FIFO, not a regular file" in err, err
    assert snapshot(data) == before


def test_link_to_a_device_is_named_and_skipped_with_a_count(hostile_ctx, tmp_path, capsys):
    from naslora_deploy.training.data.folder import discover

    data = copy_into(hostile_ctx["binary_data"], tmp_path, "data")
    (data / "train" / "masks" / "zero_mask.png").symlink_to("/dev/zero")
    before = snapshot(data)
    code, err = train_in_process(train(data, tmp_path), capsys)
    assert code == 2 and "zero_mask.png: a device, not a regular file" in err, err
    with alarm(), pytest.warns(UserWarning, match=r"1 file\(s\) or entries skipped under --skip-bad"):
        splits = discover(data, skip_bad=True, check=False)
    assert any("zero_mask.png: a device" in line for line in splits.skipped)
    assert snapshot(data) == before


def test_fifo_labelme_json_is_named_never_read(hostile_ctx, tmp_path, capsys):
    data = labelme_data(tmp_path, hostile_ctx)
    os.mkfifo(data / "x3.json")
    before = snapshot(data)
    code, err = train_in_process(train(data, tmp_path), capsys)
    assert code == 2 and "x3.json: a FIFO, not a regular file" in err, err
    assert snapshot(data) == before


def test_coco_image_and_npz_file_that_are_fifos_are_named_never_opened(hostile_ctx, tmp_path, capsys):
    coco = coco_data(tmp_path, hostile_ctx)
    (coco / "images" / "im1.png").unlink()
    os.mkfifo(coco / "images" / "im1.png")
    npz = npz_data(tmp_path, hostile_ctx, os.mkfifo)
    before = snapshot(coco, npz)
    code, err = train_in_process(train(coco, tmp_path), capsys)
    assert code == 2 and "image im1.png: " in err and "im1.png is a FIFO, not a regular file" in err, err
    code, err = train_in_process(train(npz, tmp_path), capsys)
    assert code == 2 and "bad.npz: a FIFO, not a regular file" in err, err
    assert snapshot(coco, npz) == before


def test_grey_mask_0_128_255_is_binarised_with_a_counted_warning(hostile_ctx, tmp_path, capsys, monkeypatch):
    from naslora_deploy.common import imaging

    monkeypatch.setattr(imaging, "_SAID", set())  # said once per process: say it again here
    data = copy_into(hostile_ctx["binary_data"], tmp_path, "data")
    mask_path = sorted((data / "train" / "masks").iterdir())[0]
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[: mask.shape[0] // 2][mask[: mask.shape[0] // 2] > 0] = 128
    Image.fromarray(mask).save(mask_path)
    grey = int((mask == 128).sum())
    before = snapshot(data)
    argv = ["eval", str(hostile_ctx["adapter"]), "--data", str(data), "--split", "train"]
    rule = "values between 0 and 255: foreground is every pixel above 127"
    pattern = rf"{rule}.*{grey:,} of {mask.size:,} pixels hold 128"
    with pytest.warns(UserWarning, match=pattern):
        code, _ = train_in_process(argv, capsys)
    assert code == 0
    assert snapshot(data) == before


CLASS_TESTS = {
    "test_coco_nan_polygon_is_refused_before_pycocotools_allocates": 1,
    "test_coco_declared_60000_pixels_is_refused_before_the_label_map": 1,
    "test_labelme_declared_60000_pixels_is_refused_before_drawing": 1,
    "test_npz_header_declaring_10_gb_is_refused_unread": 1,
    "test_multiband_tiff_declaring_5_gb_within_the_pixel_limit_is_refused": 1,
    "test_small_tiff_above_a_lowered_decoded_bytes_limit_names_the_variable": 1,
    "test_fifo_image_in_a_mask_folder_is_named_never_opened": 8,
    "test_link_to_a_device_is_named_and_skipped_with_a_count": 8,
    "test_fifo_labelme_json_is_named_never_read": 8,
    "test_coco_image_and_npz_file_that_are_fifos_are_named_never_opened": 8,
    "test_grey_mask_0_128_255_is_binarised_with_a_counted_warning": 8,
}


# ----- the rules themselves (pure functions: nothing is allocated) ----------------------------------
@pytest.mark.parametrize(
    "points, phrase",
    [
        ([[4, 4], [np.inf, 4]], "NaN or infinite"),
        ([[4, 4], [1e9, 4]], "the point (1e+09, 4) lies more than one image width"),
        ([[-41, 4]], "x in [-40, 80]"),
    ],
)
def test_coordinates_beyond_one_image_of_margin_are_refused(points, phrase):
    from naslora_deploy.common.imaging import ImageReadError
    from naslora_deploy.training.data.sources import check_coordinates

    with pytest.raises(ImageReadError, match=re.escape(phrase)):
        check_coordinates(np.asarray(points, np.float64), H, W, "where")
    check_coordinates(np.asarray([[-40, -32], [80, 64]], np.float64), H, W, "edge")  # the margin itself: kept
