"""Tiled segmentation: windows, blending weights, a 2000 x 1500 image against a plain blend, the CLI."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from naslora_deploy.cli import main
from naslora_deploy.runtime import Segmenter
from naslora_deploy.runtime.segmenter import sigmoid
from naslora_deploy.runtime.tiling import axis_spans, segment_tiled, tile_windows, window_weights


@st.composite
def tilings(draw, max_side=5000, max_gaps=30):
    """(height, width, tile, overlap), with at most ``max_gaps + 1`` windows along each side."""
    tile = draw(st.integers(1, 700))
    overlap = draw(st.integers(0, tile - 1))
    longest = min(max_side, tile + max_gaps * (tile - overlap))
    return draw(st.integers(1, longest)), draw(st.integers(1, longest)), tile, overlap


def grid(windows):
    """The row and column spans of a row-major window grid."""
    rows = sorted({(y0, y1) for y0, _, y1, _ in windows})
    cols = sorted({(x0, x1) for _, x0, _, x1 in windows})
    return rows, cols


@settings(max_examples=300, deadline=None)
@given(tilings())
def test_windows_cover_the_image_with_the_fewest_evenly_spread_tiles(case):
    height, width, tile, overlap = case
    windows = tile_windows(height, width, tile, overlap)
    rows, cols = grid(windows)
    assert windows == [(y0, x0, y1, x1) for y0, y1 in rows for x0, x1 in cols]  # row by row, no duplicate
    for spans, length in ((rows, height), (cols, width)):
        assert spans[0][0] == 0 and spans[-1][1] == length  # flush with both edges
        assert all(end - start == min(tile, length) for start, end in spans)
        starts = [start for start, _ in spans]
        gaps = np.diff(starts)
        assert (gaps >= 1).all() and (gaps <= tile - overlap).all()  # covered, sharing >= overlap
        assert gaps.size == 0 or gaps.max() - gaps.min() <= 1  # evenly spread
        fewest = 1 if length <= tile else 1 + int(np.ceil((length - tile) / (tile - overlap)))
        assert len(spans) == fewest


def test_an_image_smaller_than_a_tile_is_one_window():
    assert tile_windows(100, 50, 256, 32) == [(0, 0, 100, 50)]
    assert tile_windows(256, 300, 256, 0) == [(0, 0, 256, 256), (0, 44, 256, 300)]
    assert axis_spans(1, 1, 0) == [(0, 1)]


@pytest.mark.parametrize(
    "tile, overlap, says",
    [
        (256, 256, "overlap 256 must be smaller than tile 256"),
        (256, 300, "overlap 300 must be smaller than tile 256"),
        (0, 0, "tile must be >= 1, got 0"),
        (256, -1, "overlap must be >= 0, got -1"),
        (256.0, 0, "tile must be a whole number of pixels, got 256.0"),
        (True, 0, "tile must be a whole number of pixels"),
    ],
)
def test_bad_tiles_are_one_line(tile, overlap, says):
    with pytest.raises(ValueError, match=says) as caught:
        tile_windows(1000, 1000, tile, overlap)
    assert "\n" not in str(caught.value)


@settings(max_examples=120, deadline=None)
@given(tilings(max_side=900, max_gaps=6))
def test_weights_are_positive_and_sum_to_one_where_two_windows_meet(case):
    height, width, tile, overlap = case
    windows = tile_windows(height, width, tile, overlap)
    weights = window_weights(height, width, tile, overlap)
    total, count = np.zeros((height, width)), np.zeros((height, width), int)
    for (y0, x0, y1, x1), weight in zip(windows, weights):
        assert weight.shape == (y1 - y0, x1 - x0) and weight.dtype == np.float32
        assert (weight > 0).all() and (weight <= 1).all()
        total[y0:y1, x0:x1] += weight
        count[y0:y1, x0:x1] += 1
    rows, cols = grid(windows)
    per_row = np.zeros(height, int)
    per_col = np.zeros(width, int)
    for spans, per in ((rows, per_row), (cols, per_col)):
        for start, end in spans:
            per[start:end] += 1
    two = (per_row[:, None] <= 2) & (per_col[None, :] <= 2)
    np.testing.assert_allclose(total[two], 1.0, atol=1e-6)  # a partition of unity
    assert (total > 0).all()
    for (y0, x0, y1, x1), weight in zip(windows, weights):  # alone on a pixel: weight exactly 1
        assert (weight[count[y0:y1, x0:x1] == 1] == 1).all()


@pytest.fixture(scope="module")
def scene():
    """A 2000 x 1500 RGB scene: scikit-image's immunohistochemistry photograph, resized up (many times the
    256-pixel model input; the blend is checked in full, so the suite's memory bounds the size)."""
    from skimage import data

    return np.asarray(Image.fromarray(data.immunohistochemistry()).resize((2000, 1500), Image.BILINEAR))


def tent(spans, i):
    """Window ``i``'s weights along one axis, pixel by pixel: 1, ramping across each shared stretch."""
    start, end = spans[i]
    weight = np.ones(end - start)
    for p in range(start, end):
        if i > 0 and p < spans[i - 1][1]:
            weight[p - start] = min(weight[p - start], (p - start + 1) / (spans[i - 1][1] - start + 1))
        if i + 1 < len(spans) and p >= spans[i + 1][0]:
            weight[p - start] = min(weight[p - start], (end - p) / (end - spans[i + 1][0] + 1))
    return weight


@pytest.mark.parametrize("which", ["binary", "multiclass"])
def test_a_large_image_tiled_equals_its_tiles_blended_by_hand(which, scene, request):
    segmenter = Segmenter.open(request.getfixturevalue(f"{which}_artifacts"), "onnxruntime", "cpu")
    tile, overlap = 384, 48
    result = segment_tiled(segmenter, scene, tile, overlap, batch=4)
    windows = tile_windows(1500, 2000, tile, overlap)
    rows, cols = grid(windows)
    assert len(windows) == 30 and result.size == (1500, 2000) and result.probability.shape == (1500, 2000)
    assert set(result.timings) == {"read", "tiles", "blend", "post"}
    blended, weights, count, own = None, np.zeros((1500, 2000)), np.zeros((1500, 2000), int), []
    for y0, x0, y1, x1 in windows:  # one at a time, accumulated in full
        dense = segmenter.dense_maps([scene[y0:y1, x0:x1]])[0]
        if blended is None:
            blended = np.zeros((*dense.shape[:-2], 1500, 2000), np.float32)
        weight = np.outer(tent(rows, rows.index((y0, y1))), tent(cols, cols.index((x0, x1))))
        blended[..., y0:y1, x0:x1] += dense * weight.astype(np.float32)
        weights[y0:y1, x0:x1] += weight
        count[y0:y1, x0:x1] += 1
        own.append(sigmoid(dense) if dense.ndim == 2 else dense.max(0))
    blended /= weights.astype(np.float32)
    expected = sigmoid(blended) if which == "binary" else blended.max(0)
    np.testing.assert_allclose(result.probability, expected, atol=1e-5, rtol=0)
    for (y0, x0, y1, x1), alone in zip(windows, own):  # where no other window reaches: the tile's own result
        interior = count[y0:y1, x0:x1] == 1
        assert interior.mean() > 0.3
        np.testing.assert_allclose(result.probability[y0:y1, x0:x1][interior], alone[interior], atol=1e-5)
    if which == "binary":
        sure = np.abs(expected - 0.5) > 1e-5
        assert (result.mask[sure] == (expected > 0.5)[sure]).all() and result.class_map is None
        return
    top2 = np.sort(blended, axis=0)[-2:]
    sure = top2[1] - top2[0] > 1e-5
    assert (result.class_map[sure] == blended.argmax(0)[sure]).all()
    assert (result.mask == (result.class_map != 0)).all()
    assert list(result.class_areas.values()) == np.bincount(result.class_map.ravel(), minlength=3).tolist()


def test_an_image_within_one_tile_is_segmented_as_a_whole(binary_artifacts, photo):
    segmenter = Segmenter.open(binary_artifacts, "onnxruntime", "cpu")
    result = segment_tiled(segmenter, photo, 1024, 64)
    assert np.array_equal(result.probability, sigmoid(segmenter.dense_maps([photo])[0]))


def test_predict_tiled_writes_one_stitched_mask(binary_artifacts, scene, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(scene[:1100, :1500]).save(folder / "scene.png")
    code = main(
        ["predict", str(binary_artifacts), str(folder), "--out", str(tmp_path / "out"), "--tile", "512"]
        + ["--overlap", "100", "--no-progress"]
    )
    assert code == 0
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert (record["tile"], record["overlap"], record["windows"]) == (512, 100, 12)
    assert (record["width"], record["height"]) == (1500, 1100)
    mask = np.asarray(Image.open(tmp_path / "out" / record["mask"]))
    segmenter = Segmenter.open(binary_artifacts, "onnxruntime", "cpu")
    expected = segment_tiled(segmenter, scene[:1100, :1500], 512, 100).mask
    assert mask.shape == (1100, 1500) and np.array_equal(mask, expected.astype(np.uint8) * 255)
    assert (
        main(["predict", str(binary_artifacts), str(folder), "--out", str(tmp_path / "o2"), "--tile", "800"])
        == 0
    )
    record = json.loads((tmp_path / "o2" / "results.jsonl").read_text())
    assert (record["tile"], record["overlap"]) == (800, 100)  # overlap defaults to tile / 8


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--tile", "512", "--overlap", "512"], "--overlap 512 must be smaller than --tile 512"),
        (["--tile", "512", "--box", "1,2,30,40"], "prompts refer to the whole image, not to a window"),
        (["--tile", "512", "--points", "5,5"], "--tile cannot be combined with --points/--box"),
        (["--overlap", "64"], "--overlap needs --tile"),
        (["--tile", "16"], "Invalid value for '--tile': must be >= 32, got 16"),
        (["--tile", "512", "--overlap", "-3"], "Invalid value for '--overlap': must be >= 0, got -3"),
    ],
)
def test_predict_refuses_bad_tiling_in_one_line(flags, says, binary_artifacts, photo, tmp_path, capsys):
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert (
        main(
            ["predict", str(binary_artifacts), str(tmp_path / "photo.png"), "--out", str(tmp_path / "o")]
            + flags
        )
        == 2
    )
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and not (tmp_path / "o").exists()
