"""Mask reading: raw labels, palettes and colour codes, and the binary-mask rules."""

import warnings

import numpy as np
import pytest
from PIL import Image

from naslora_deploy.common.imaging import IGNORE_INDEX, ImageReadError
from naslora_deploy.common.masks import binarize_mask, read_mask


@pytest.mark.parametrize(
    "raw, lossy, expected",
    [
        (np.array([[0, 255], [255, 0]]), False, [[0, 1], [1, 0]]),
        (np.array([[0, 1], [1, 0]]), False, [[0, 1], [1, 0]]),
        (np.array([[0, 100], [100, 0]]), False, [[0, 1], [1, 0]]),  # 0/k: foreground = non-zero
        (np.array([[0, 65535], [40000, 3]]), False, [[0, 1], [1, 0]]),  # grey levels reaching 65535
        (np.array([[4, 250], [131, 120]]), True, [[0, 1], [1, 0]]),  # JPEG-noisy 0/255
        (np.array([[7, 7], [7, 7]]), False, [[1, 1], [1, 1]]),  # one value: all foreground
    ],
)
def test_binarize(raw, lossy, expected):
    np.testing.assert_array_equal(binarize_mask(raw, lossy=lossy), expected)


@pytest.mark.parametrize("values", [(0, 1, 2), (0, 100, 200), (3, 9)])
def test_label_maps_are_not_binary_masks(values):
    raw = np.array([values])
    with pytest.raises(ImageReadError, match=r"m.png: a binary mask .* holds " + ", ".join(map(str, values))):
        binarize_mask(raw, source="m.png")


def test_palette_and_colour_masks(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    palette_png = Image.fromarray(indices, mode="P")
    palette_png.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette_png.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), indices)
    colours = np.array([[[0, 0, 0], [255, 0, 0], [9, 9, 9]]], dtype=np.uint8)
    Image.fromarray(colours).save(tmp_path / "c.png")
    lookup = {(0, 0, 0): 0, (255, 0, 0): 1}
    np.testing.assert_array_equal(read_mask(tmp_path / "c.png", lookup), [[0, 1, IGNORE_INDEX]])


def test_masks_with_nan_or_fractions_are_refused(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5]], np.float32), mode="F").save(tmp_path / "frac.tif")
    with pytest.raises(ImageReadError, match="frac.tif: the mask holds fractional values"):
        read_mask(tmp_path / "frac.tif")


def test_grey_levels_between_0_and_255_are_thresholded_with_a_counted_note_once(monkeypatch):
    from naslora_deploy.common import imaging

    monkeypatch.setattr(imaging, "_SAID", set())
    trimap = np.array([[0, 128, 255], [255, 128, 128]])
    with pytest.warns(UserWarning, match=r"above 127, .*first: t.png, 3 of 6 pixels hold 128"):
        np.testing.assert_array_equal(binarize_mask(trimap, source="t.png"), [[0, 1, 1], [1, 1, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process, whichever mask comes next
        binarize_mask(np.array([[0, 200, 255]]), source="u.png")
