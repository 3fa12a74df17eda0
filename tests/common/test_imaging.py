"""Image and mask reading, and SAM preprocessing, in numpy + Pillow."""

import os
import re

import numpy as np
import pytest
from PIL import Image

from naslora_deploy.common.imaging import (
    IGNORE_INDEX,
    ImageReadError,
    overlay,
    postprocess_probabilities,
    preprocess_image,
    preprocess_mask,
    read_image,
    resized_shape,
)
from naslora_deploy.common.masks import binarize_mask, read_mask
from naslora_deploy.common.plots import (
    BOX_COLOUR,
    OVERLAY_COLOUR,
    POINT_COLOURS,
    TRUTH_COLOUR,
    line_width,
    outline,
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


@pytest.fixture
def fresh_notes(monkeypatch):
    """Forget the conversion notes already given, so this test sees its own."""
    from naslora_deploy.common import imaging

    monkeypatch.setattr(imaging, "_SAID", set())


def test_float_tiff_in_0_255_is_read_as_8_bit(tmp_path, fresh_notes):
    values = np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    with pytest.warns(UserWarning, match="float image data with values above 1: read as 0..255"):
        out = read_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(out[:, :, 0], np.round(values).astype(np.uint8))
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(unit, mode="F").save(tmp_path / "u.tif")
    assert read_image(tmp_path / "u.tif")[:, :, 0].max() == 255  # 0..1 floats: times 255, silently


def test_12_bit_data_in_a_16_bit_png_uses_its_bit_depth(tmp_path, fresh_notes):
    data = (np.arange(64).reshape(8, 8) * 65).astype(np.uint16)  # 0..4095
    Image.fromarray(data).save(tmp_path / "twelve.png")
    with pytest.warns(UserWarning, match="using 12 bits"):
        out = read_image(tmp_path / "twelve.png")[:, :, 0]
    np.testing.assert_array_equal(out, (data * (255.0 / 4095) + 0.5).astype(np.uint8))


def test_decompression_bomb_and_degenerate_shapes_name_the_file(tmp_path):
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # ~50 KB on disk, 400 megapixels
    with pytest.raises(ImageReadError, match=r"bomb.png: the image has 400,000,000 pixels, above"):
        read_image(tmp_path / "bomb.png")
    Image.new("1", (10000, 9000)).save(tmp_path / "big.png")  # Pillow would only warn
    with pytest.raises(ImageReadError, match=r"big.png: .*89,478,485-pixel limit"):
        read_mask(tmp_path / "big.png")
    Image.fromarray(np.zeros((1, 2000), np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(ImageReadError, match=r"thin.png: 2000x1 pixels is too thin"):
        read_image(tmp_path / "thin.png")


def test_the_pixel_and_decoded_bytes_limits_follow_their_environment_variables(tmp_path, monkeypatch):
    from naslora_deploy.common.imaging import open_image

    Image.new("1", (9500, 9500)).save(tmp_path / "big.png")  # 90.25 megapixels: above the default
    Image.fromarray(np.zeros((20, 30), np.float32), mode="F").save(tmp_path / "small.tif")
    monkeypatch.setenv("NASLORA_MAX_PIXELS", "100")
    with pytest.raises(
        ImageReadError, match=r"small.tif: the image has 30x20 pixels, .*NASLORA_MAX_PIXELS=N"
    ):
        read_image(tmp_path / "small.tif")
    monkeypatch.setenv("NASLORA_MAX_PIXELS", "100_000_000")  # Pillow's own guard follows it
    assert open_image(tmp_path / "big.png").size == (9500, 9500)
    monkeypatch.delenv("NASLORA_MAX_PIXELS")
    monkeypatch.setenv("NASLORA_MAX_DECODED_BYTES", "2000")  # 20 x 30 float32: 2,400 bytes
    with pytest.raises(
        ImageReadError, match=r"small.tif: 2,400 bytes decoded .* NASLORA_MAX_DECODED_BYTES=N"
    ):
        read_image(tmp_path / "small.tif")


def test_fifos_and_devices_are_refused_before_they_are_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.tif").symlink_to("/dev/zero")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ImageReadError, match="pipe.png: a FIFO, not a regular file"):
        read_image(tmp_path / "pipe.png")  # opening it would wait for a writer forever
    with pytest.raises(ImageReadError, match="zero.tif: a device, not a regular file"):
        read_image(tmp_path / "zero.tif")
    with pytest.raises(ImageReadError, match="gone.png: file not found"):
        read_mask(tmp_path / "gone.png")


@pytest.mark.parametrize(
    "array, phrase",
    [
        (np.zeros((0, 0), np.uint8), "no pixels"),
        (np.full((4, 4), np.nan, np.float32), "NaN or infinite"),
        (np.full((4, 4, 3), -1, np.int32), "outside 0..65535"),
        (np.zeros((4, 4, 2), np.uint8), "got shape (4, 4, 2)"),
        (np.zeros((2, 3, 4, 3), np.uint8), "got shape"),
        (np.zeros((4, 4), np.complex64), "not an image"),
    ],
)
def test_bad_arrays_are_one_line(array, phrase):
    from naslora_deploy.common.imaging import image_array

    with pytest.raises(ImageReadError, match=re.escape(phrase)):
        image_array(array)


def test_conversion_notes_are_said_once(fresh_notes):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            binarize_mask(np.array([[0, 100]]))
    assert len(caught) == 1 and "0 and 100" in str(caught[0].message)


# ----- overlays: the mask, the ground truth's outline and the prompt -------------------------------
def _scene(height=120, width=160):
    image = np.full((height, width, 3), 90, np.uint8)
    mask = np.zeros((height, width), bool)
    mask[30:80, 40:100] = True
    truth = np.zeros((height, width), bool)
    truth[40:90, 50:110] = True
    return image, mask, truth


def _pixels(picture, colour):
    return (picture == np.array(colour)).all(-1)


def test_overlay_without_the_new_arguments_is_unchanged():
    image, mask, _ = _scene()
    plain = overlay(image, mask)
    assert np.array_equal(plain, overlay(image, mask, None, 0.45, points=None, boxes=None, truth=None))
    assert not _pixels(plain, TRUTH_COLOUR).any() and not _pixels(plain, BOX_COLOUR).any()
    assert _pixels(plain, OVERLAY_COLOUR).any() and (plain[0, 0] == 90).all()


def test_the_ground_truth_is_outlined_by_mask_xor_its_erosion():
    image, mask, truth = _scene()
    drawn = overlay(image, mask, truth=truth)
    ring = truth & ~np.pad(truth, 1)[2:, 1:-1] | truth & ~np.pad(truth, 1)[:-2, 1:-1]
    ring |= truth & ~np.pad(truth, 1)[1:-1, 2:] | truth & ~np.pad(truth, 1)[1:-1, :-2]
    assert np.array_equal(_pixels(drawn, TRUTH_COLOUR), ring)  # a rectangle: its 4-neighbour edge
    assert ring.sum() == 2 * (50 + 60) - 4
    assert np.array_equal(outline(truth), ring)
    big = np.zeros((1024, 1024), bool)
    big[100:400, 100:400] = True
    width = line_width(big.shape)
    assert width == 4 and outline(big, width).sum() == 300 * 300 - (300 - 2 * width) ** 2  # 4 at 1024
    edge = np.zeros((20, 20), bool)
    edge[:5, :5] = True  # touching the border: outlined along it
    assert outline(edge)[0, 2] and outline(edge)[2, 0] and not outline(edge)[2, 2]


def test_a_class_map_truth_outlines_every_class():
    image, _, truth = _scene()
    labels = truth.astype(np.uint8)
    labels[5:20, 5:20] = 2
    drawn = overlay(image, np.zeros(truth.shape, bool), truth=labels)
    assert np.array_equal(_pixels(drawn, TRUTH_COLOUR), outline(truth) | outline(labels == 2))


def test_the_prompt_is_drawn_boxes_and_points_by_label():
    image, mask, truth = _scene()
    drawn = overlay(
        image, mask, truth=truth, boxes=[45, 35, 115, 95], points=[[20, 20], [140, 100]], point_labels=[1, 0]
    )
    box = _pixels(drawn, BOX_COLOUR)
    ys, xs = np.nonzero(box)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (45, 35, 115, 95)
    assert not box[50:80, 60:100].any()  # an outline, not a filled box
    assert _pixels(drawn, POINT_COLOURS[1])[15:26, 15:26].sum() > 10
    assert _pixels(drawn, POINT_COLOURS[0])[95:106, 135:146].sum() > 10
    assert not _pixels(drawn, POINT_COLOURS[0])[:60].any() and not _pixels(drawn, POINT_COLOURS[1])[60:].any()
    several = overlay(image, mask, boxes=np.array([[0, 0, 10, 10], [100, 60, 150, 110]]), points=[[5, 5]])
    assert _pixels(several, BOX_COLOUR)[60:].any() and _pixels(several, POINT_COLOURS[1]).any()  # default: 1


@pytest.mark.parametrize(
    "arguments, phrase",
    [
        ({"points": [[1, 2, 3]]}, "(N, 2)"),
        ({"points": [[1, 2]], "point_labels": [1, 0]}, "1 point(s) but 2 point label(s)"),
        ({"boxes": [1, 2, 3]}, "x0, y0, x1, y1"),
        ({"truth": np.zeros((5, 5), bool)}, "the ground truth is (5, 5)"),
    ],
)
def test_bad_prompts_or_truth_are_one_line(arguments, phrase):
    image, mask, _ = _scene()
    with pytest.raises(ValueError) as raised:
        overlay(image, mask, **arguments)
    assert phrase in str(raised.value) and "\n" not in str(raised.value)
