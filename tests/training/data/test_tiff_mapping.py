"""TIFF through tifffile, the input mapping (bands, per-image percentile stretch) and its manifest entry."""

import numpy as np
import pytest
import tifffile
from fixtures_formats import multiband

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import ImageReadError, InputMapping, image_array, read_image
from naslora_deploy.runtime.manifest import validate_manifest


def test_multiband_tiff_planar_and_interleaved_read_the_same(tmp_path, monkeypatch):
    from naslora_deploy.common import imaging

    monkeypatch.setattr(imaging, "_SAID", set())  # notes are said once per process: say this one again
    bands = multiband(0)
    tifffile.imwrite(tmp_path / "planar.tif", bands, photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(tmp_path / "pages.tif", bands)
    chunky = np.moveaxis(bands, 0, -1)
    tifffile.imwrite(tmp_path / "chunky.tif", chunky, planarconfig="contig", photometric="minisblack")
    with pytest.warns(UserWarning):
        first = read_image(tmp_path / "planar.tif")
    assert first.shape == (32, 40, 3) and first.dtype == np.uint8
    mapping = InputMapping.of([4, 3, 2], [2, 98])
    mapped = [read_image(tmp_path / n, mapping) for n in ("planar.tif", "pages.tif", "chunky.tif")]
    assert all(np.array_equal(mapped[0], m) for m in mapped[1:])


def test_stretch_is_per_channel_percentiles_of_the_image(tmp_path):
    bands = multiband(1)
    tifffile.imwrite(tmp_path / "m.tif", bands)
    out = read_image(tmp_path / "m.tif", InputMapping.of([5, 1, 3], [2, 98]))
    for channel, band in enumerate((5, 1, 3)):
        values = bands[band - 1].astype(np.float64)
        lo, hi = np.percentile(values, [2, 98])
        expected = (((values - lo) * 255 / (hi - lo)).clip(0, 255) + 0.5).astype(np.uint8)
        assert np.array_equal(out[:, :, channel], expected)


def test_float_tiff_nan_is_no_data_under_stretch_and_one_band_is_grey(tmp_path):
    image = np.linspace(-5, 5, 32 * 40, dtype=np.float32).reshape(32, 40)
    image[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", image)
    with pytest.raises(ImageReadError, match="f.tif: the image holds NaN"):
        read_image(tmp_path / "f.tif")
    out = read_image(tmp_path / "f.tif", InputMapping.of([1], [0, 100]))
    assert out[0, 0].tolist() == [0, 0, 0] and out[-1, -1].tolist() == [255, 255, 255]


def test_bad_tiffs_and_bands_are_one_line(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ImageReadError, match="stack.tif: the TIFF holds a stack of images"):
        read_image(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "many.tif", np.zeros((80, 8, 8), np.uint8))
    with pytest.raises(ImageReadError, match="many.tif: the TIFF has 80 bands"):
        read_image(tmp_path / "many.tif")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageReadError, match="junk.tif: cannot read the TIFF"):
        read_image(tmp_path / "junk.tif")
    with pytest.raises(ImageReadError, match=r"x: the image has 3 band\(s\), the input mapping takes"):
        image_array(np.zeros((8, 8, 3), np.uint16), "x", InputMapping.of([4, 3, 2]))


def test_mapping_round_trips_and_the_manifest_refuses_a_damaged_one(tmp_path):
    mapping = InputMapping.of([3, 2, 1], [2, 98])
    assert InputMapping.from_dict(mapping.to_dict()) == mapping and InputMapping().to_dict() is None
    manifest = {
        "format": "naslora-deploy-artifacts/1",
        "variant": "vit_tiny",
        "image_size": 256,
        "head": "binary",
        "files": {"image_encoder.onnx": {"sha256": "0" * 64}, "mask_decoder.onnx": {"sha256": "0" * 64}},
        "precision": "fp32",
        "onnx_precision": "fp32",
        "merge": {},
        "export": {},
        "source": {"kind": "adapter", "path": "run"},
        "input_mapping": {"bands": [0, 1, 2], "stretch": None},
    }
    from naslora_deploy.common.contract import MANIFEST_FORMAT

    manifest["format"] = MANIFEST_FORMAT
    with pytest.raises(NasloraError, match="'input_mapping' is .*expected null or"):
        validate_manifest(manifest, tmp_path / "manifest.json")
    manifest["input_mapping"] = mapping.to_dict()
    assert validate_manifest(manifest, tmp_path / "manifest.json")
