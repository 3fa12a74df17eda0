"""Property-based hostile input: random bytes and small arrays never escape as anything but NasloraError.

The image and mask readers, the manifest reader and ``Segmenter.segment`` either give a valid
result (right shape and dtype, finite) or raise ``NasloraError`` (one line).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import image_array, read_image
from naslora_deploy.common.masks import read_mask
from naslora_deploy.runtime.manifest import Manifest, read_manifest


def examples(count: int) -> settings:
    """``count`` examples, no deadline, no example database; fixtures are reused across examples (they
    are read-only or give each example a fresh folder)."""
    return settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_])
SHAPES = st.one_of(
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=6),
    hnp.array_shapes(min_dims=3, max_dims=3, min_side=0, max_side=6),
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
)
PNG_HEAD = b"\x89PNG\r\n\x1a\n"
FILE_BYTES = st.one_of(st.binary(max_size=512), st.binary(max_size=512).map(lambda b: PNG_HEAD + b))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def arrays(draw):
    """Small arrays of any shape and dtype, NaN and infinities included for floats."""
    dtype = draw(DTYPES)
    elements = None
    if np.issubdtype(dtype, np.floating):
        elements = st.floats(allow_nan=True, allow_infinity=True, width=32 if dtype == np.float32 else 64)
    return draw(hnp.arrays(dtype, draw(SHAPES), elements=elements))


def valid_image(out: np.ndarray, source: np.ndarray) -> None:
    """An (H, W, 3) uint8 array of the source's height and width."""
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[:2] == source.shape[:2]


@examples(60)
@given(data=FILE_BYTES)
def test_random_bytes_as_an_image_or_mask_file(tmp_path, data):
    path = tmp_path / "random.png"
    path.write_bytes(data)
    for reader in (read_image, read_mask):
        try:
            out = reader(path)
        except NasloraError as exc:
            assert "\n" not in str(exc).strip() and "random.png" in str(exc)
            continue
        assert out.ndim in (2, 3) and np.isfinite(out).all()


@examples(200)
@given(array=arrays())
def test_random_arrays_as_images(array):
    try:
        out = image_array(array)
    except NasloraError as exc:
        assert "\n" not in str(exc).strip()
        return
    valid_image(out, array)


@examples(40)
@given(array=arrays())
def test_random_arrays_written_as_files(tmp_path, array):
    """What Pillow can save of a random array reads back as a valid image or a NasloraError."""
    from PIL import Image

    path = tmp_path / "array.tif"
    try:
        Image.fromarray(array).save(path)
    except Exception:  # noqa: BLE001 - Pillow cannot write every dtype/shape; nothing to read then
        return
    for reader in (read_image, read_mask):
        try:
            out = reader(path)
        except NasloraError:
            continue
        assert out.shape[:2] == Image.open(path).size[::-1]


@pytest.fixture(scope="module")
def manifest_template(binary_artifacts):
    """The exported artifact's manifest, parsed (random variations are written beside a copy)."""
    return json.loads((binary_artifacts / "manifest.json").read_text())


def manifest_dir(tmp_path, binary_artifacts):
    """A fresh private copy of the artifact directory."""
    target = tmp_path / "art"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(binary_artifacts, target)
    return target


def manifest_outcome(directory) -> None:
    """read_manifest gives a Manifest or raises NasloraError (one line)."""
    try:
        manifest = read_manifest(directory)
    except NasloraError as exc:
        assert "\n" not in str(exc).strip()
        return
    assert isinstance(manifest, Manifest)


@examples(40)
@given(data=st.binary(max_size=256))
def test_random_bytes_as_manifest(tmp_path, binary_artifacts, data):
    directory = manifest_dir(tmp_path, binary_artifacts)
    (directory / "manifest.json").write_bytes(data)
    manifest_outcome(directory)


@examples(60)
@given(value=JSON_VALUES, key=st.sampled_from(["", "files", "head", "image_size", "classes", "format"]))
def test_random_json_in_manifest(tmp_path, binary_artifacts, manifest_template, value, key):
    """The whole manifest, or one of its fields, replaced by a random JSON value."""
    directory = manifest_dir(tmp_path, binary_artifacts)
    manifest = value if key == "" else {**manifest_template, key: value}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    manifest_outcome(directory)


@pytest.fixture(scope="module")
def seg(binary_artifacts):
    """The binary artifact on onnxruntime, opened once."""
    from naslora_deploy.runtime import Segmenter

    return Segmenter.open(binary_artifacts, backend="onnxruntime")


@examples(30)
@given(array=arrays())
def test_segment_random_arrays(seg, array):
    try:
        result = seg.segment(array)
    except NasloraError as exc:
        assert "\n" not in str(exc).strip()
        event("refused")
        return
    event("segmented")
    height, width = array.shape[:2]
    assert result.size == (height, width)
    assert result.mask.shape == (height, width) and result.mask.dtype == np.bool_
    assert result.probability.shape == (height, width) and result.probability.dtype == np.float32
    assert np.isfinite(result.probability).all()
