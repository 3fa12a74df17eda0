"""The manifest's one schema and the runtime's one path rule (torch-free)."""

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.runtime.manifest import (
    Manifest,
    artifact_file,
    check_image_input,
    member,
    read_manifest,
    validate_manifest,
)


@pytest.fixture
def manifest(binary_artifacts):
    return json.loads((binary_artifacts / "manifest.json").read_text())


def test_an_exported_manifest_passes_and_records_its_source(binary_artifacts, manifest):
    assert read_manifest(binary_artifacts).to_dict() == manifest
    assert len(manifest["source"]["sha256"]) == 64


@pytest.mark.parametrize(
    "name, message",
    [
        ("../manifest.json", "not a plain file name"),
        ("/etc/hostname", "not a plain file name"),
        ("sub/file.onnx", "not a plain file name"),
        ("", "not a plain file name"),
        ("missing.onnx", "is missing"),
    ],
)
def test_member_keeps_to_the_directory(binary_artifacts, name, message):
    with pytest.raises(NasloraError, match=message):
        member(binary_artifacts, name)


def test_links_and_unlisted_files_are_refused_even_without_hashing(binary_artifacts, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(binary_artifacts, art)
    (art / "extra.onnx").write_bytes(b"x")
    with pytest.raises(NasloraError, match="extra.onnx is not listed in manifest.json"):
        artifact_file(art, read_manifest(art), "extra.onnx")
    (art / "mask_decoder.onnx").rename(tmp_path / "outside.onnx")
    (art / "mask_decoder.onnx").symlink_to(tmp_path / "outside.onnx")
    with pytest.raises(NasloraError, match="mask_decoder.onnx is a symbolic link"):
        read_manifest(art, check_files=False)


def test_image_size_against_the_graph(manifest):
    manifest = Manifest.from_dict(manifest)
    check_image_input(manifest, "enc.onnx", ["batch", 3, 256, 256])
    check_image_input(manifest, "enc.onnx", ["batch", 3, "h", "w"])  # symbolic sizes cannot be compared
    with pytest.raises(NasloraError, match="says image_size 256, but enc.onnx takes 512 x 512 images"):
        check_image_input(manifest, "enc.onnx", [-1, 3, 512, 512])
    with pytest.raises(NasloraError, match="does not take"):
        check_image_input(manifest, "enc.onnx", [3, 256, 256])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(["files", "image_size", "head", "source", "classes", "prompt_point_slots"]),
    value=JSON,
)
def test_any_value_for_a_key_is_accepted_or_refused_in_one_line(manifest, tmp_path, key, value):
    """A manifest with one key set to random JSON: a valid dict back, or one ``NasloraError`` line."""
    data = dict(manifest, **{key: value})
    try:
        assert validate_manifest(data, tmp_path / "manifest.json") is data
    except NasloraError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64))
def test_random_bytes_as_a_manifest(tmp_path, data):
    (tmp_path / "manifest.json").write_bytes(data)
    with pytest.raises(NasloraError):
        read_manifest(tmp_path)
