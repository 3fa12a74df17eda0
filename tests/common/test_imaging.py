"""Image and mask reading, and SAM preprocessing, in numpy + Pillow."""

import numpy as np
import pytest
from PIL import Image

from naslora_deploy.common.imaging import (
    IGNORE_INDEX,
    ImageReadError,
    binarize_mask,
    postprocess_probabilities,
    preprocess_image,
    preprocess_mask,
    read_image,
    read_mask,
    resized_shape,
)


def test_image_modes_are_converted(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cases = {
        "gray.png": Image.fromarray(rgb[:, :, 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((20, 30), 128, np.uint8)])),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "sixteen.png": Image.fromarray((rgb[:, :, 0].astype(np.uint16) * 257)),
        "photo.jpg": Image.fromarray(rgb),
        "scan.tif": Image.fromarray(rgb),
        "old.bmp": Image.fromarray(rgb),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        out = read_image(tmp_path / name)
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8, name
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    sixteen = read_image(tmp_path / "sixteen.png")
    np.testing.assert_array_equal(sixteen[:, :, 0], rgb[:, :, 0])  # 16-bit scaled back to 8-bit


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match="broken.png: cannot read image"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "absent.png")


@pytest.mark.parametrize(
    "raw, expected",
    [
        (np.array([[0, 255], [255, 0]]), [[0, 1], [1, 0]]),
        (np.array([[0, 1], [1, 0]]), [[0, 1], [1, 0]]),
        (np.array([[0, 65535], [40000, 3]]), [[0, 1], [1, 0]]),
        (np.array([[4, 250], [131, 120]]), [[0, 1], [1, 0]]),  # JPEG-noisy 0/255
    ],
)
def test_binarize(raw, expected):
    np.testing.assert_array_equal(binarize_mask(raw), expected)


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


def test_preprocessing_follows_sam():
    from segment_anything.utils.transforms import ResizeLongestSide

    assert resized_shape(480, 640, 1024) == ResizeLongestSide(1024).get_preprocess_shape(480, 640, 1024)
    assert resized_shape(333, 197, 256) == ResizeLongestSide(256).get_preprocess_shape(333, 197, 256)
    image = np.full((100, 50, 3), 200, np.uint8)
    out = preprocess_image(image, 64)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    assert np.allclose(out[:, :, 32:], 0.0)  # right padding
    assert np.allclose(out[0, :, :32], (200 - 123.675) / 58.395, atol=1e-5)
    labels = preprocess_mask(np.ones((100, 50), np.int64), 64)
    assert (labels[:, :32] == 1).all() and (labels[:, 32:] == IGNORE_INDEX).all()


def test_postprocess_inverts_the_padding():
    prob = np.zeros((64, 64), np.float32)
    prob[:, :32] = 1.0
    out = postprocess_probabilities(prob, (100, 50), 64)
    assert out.shape == (100, 50) and out.min() > 0.99
