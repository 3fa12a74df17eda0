"""build-engines: engines registered in the manifest the way the command does it, refused when
tampered, unregistered or built by another TensorRT; the real build where TensorRT imports."""

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.exporters.specs import EngineSpec
from naslora_deploy.runtime.engine_build import EngineBuild, engine_sidecar, register_engine
from naslora_deploy.runtime.engines import check_engine
from naslora_deploy.runtime.manifest import read_manifest

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
GPU = {"name": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7"}
TRT = "10.3.0"


@pytest.fixture()
def artifact(binary_artifacts, tmp_path):
    """A private copy of the vit_tiny artifact (prompt decoder included)."""
    return shutil.copytree(binary_artifacts, tmp_path / "art")


def register_stand_in(directory, graph="image_encoder", trt_version=TRT, gpu=GPU, content=b"stand-in engine"):
    """Register arbitrary engine bytes exactly as build-engines registers a built engine."""
    manifest = read_manifest(directory)
    onnx_path = directory / f"{graph}.onnx"
    inputs = manifest.files[onnx_path.name]["inputs"]
    spec = EngineSpec(precision="fp16", max_batch=2)
    build = EngineBuild(
        "fp16", trt_version, gpu["name"], gpu["compute_capability"], 1.5, "2026-01-01T00:00:00+00:00"
    )
    sidecar = engine_sidecar(trt_version, gpu, spec, inputs, onnx_path, directory / f"{graph}.engine")
    return register_engine(directory, graph, content, build, sidecar)


def test_a_registered_engine_is_accepted_on_the_same_tensorrt_and_gpu(artifact):
    before = json.loads((artifact / "manifest.json").read_text())
    data = register_stand_in(artifact)
    entry = data["files"]["image_encoder.engine"]
    assert entry["tensorrt_version"] == TRT and entry["compute_capability"] == "8.7"
    assert entry["gpu_name"] == GPU["name"] and entry["precision"] == "fp16" and entry["built_at"]
    assert entry["bytes"] == len(b"stand-in engine")
    assert json.loads((artifact / "manifest.json").read_text()) == data  # what was returned was written
    for name, old in before["files"].items():  # the ONNX entries untouched
        assert data["files"][name] == old
    manifest = read_manifest(artifact)  # every hash, the engine's included
    engine, sidecar = check_engine(artifact, manifest, "image_encoder", TRT, GPU)
    assert engine.read_bytes() == b"stand-in engine"
    assert (
        json.loads(sidecar.read_text())["source_onnx_sha256"]
        == before["files"]["image_encoder.onnx"]["sha256"]
    )


def test_a_tampered_engine_is_refused_naming_build_engines(artifact):
    register_stand_in(artifact)
    (artifact / "image_encoder.engine").write_bytes(b"stand-in engine, changed")
    with pytest.raises(NasloraError) as raised:
        read_manifest(artifact)
    message = str(raised.value)
    assert "image_encoder.engine does not match its sha256" in message
    assert f"naslora-deploy build-engines {artifact} --overwrite" in message and "\n" not in message


def test_an_unregistered_engine_is_refused_naming_build_engines(artifact):
    register_stand_in(artifact)
    (artifact / "prompt_decoder.engine").write_bytes(b"built by hand with trtexec")
    (artifact / "prompt_decoder.engine.json").write_text(json.dumps({"tensorrt_version": TRT}))
    manifest = read_manifest(artifact)  # an unlisted file is not the manifest's business...
    with pytest.raises(NasloraError) as raised:  # ...but the engine check refuses it
        check_engine(artifact, manifest, "prompt_decoder", TRT, GPU)
    message = str(raised.value)
    assert "prompt_decoder.engine is not registered in manifest.json" in message
    assert f"naslora-deploy build-engines {artifact} --overwrite" in message and "\n" not in message


def test_an_engine_from_another_tensorrt_or_gpu_is_refused_naming_build_engines(artifact):
    register_stand_in(artifact, trt_version="8.6.2")
    manifest = read_manifest(artifact)
    with pytest.raises(
        NasloraError, match="built with TensorRT 8.6.2 but this machine has TensorRT 10.3.0"
    ) as raised:
        check_engine(artifact, manifest, "image_encoder", TRT, GPU)
    assert f"build-engines {artifact} --overwrite" in str(raised.value)
    with pytest.raises(NasloraError, match=r"compute capability 8.7\) but this GPU is NVIDIA H100") as raised:
        check_engine(
            artifact, manifest, "image_encoder", "8.6.2", {"name": "NVIDIA H100", "compute_capability": "9.0"}
        )
    assert f"build-engines {artifact} --overwrite" in str(raised.value)


def test_a_sidecar_that_disagrees_with_the_registration_is_refused(artifact):
    manifest = read_manifest(artifact)
    onnx_path = artifact / "image_encoder.onnx"
    inputs = manifest.files[onnx_path.name]["inputs"]
    sidecar = engine_sidecar("9.0.0", GPU, EngineSpec(), inputs, onnx_path, artifact / "image_encoder.engine")
    build = EngineBuild("fp16", TRT, GPU["name"], "8.7", 1.0, "2026-01-01T00:00:00+00:00")
    register_engine(artifact, "image_encoder", b"x", build, sidecar)
    with pytest.raises(
        NasloraError, match="says tensorrt_version '9.0.0' but manifest.json registered '10.3.0'"
    ):
        check_engine(artifact, read_manifest(artifact), "image_encoder", TRT, GPU)


def test_registering_again_needs_overwrite_and_replaces_the_entry(artifact):
    register_stand_in(artifact)
    with pytest.raises(NasloraError, match="image_encoder.engine exists; to replace it, rebuild"):
        register_stand_in(artifact, content=b"second")
    manifest_path = artifact / "manifest.json"
    before = manifest_path.read_bytes()
    assert before == manifest_path.read_bytes()  # the refusal left the manifest as it was
    manifest = read_manifest(artifact)
    onnx_path = artifact / "image_encoder.onnx"
    spec = EngineSpec(precision="fp32")
    sidecar = engine_sidecar(TRT, GPU, spec, manifest.files[onnx_path.name]["inputs"], onnx_path, onnx_path)
    build = EngineBuild("fp32", TRT, GPU["name"], "8.7", 2.0, "2026-01-02T00:00:00+00:00")
    data = register_engine(artifact, "image_encoder", b"second", build, sidecar, overwrite=True)
    assert data["files"]["image_encoder.engine"]["precision"] == "fp32" and data["precision"] == "fp32"
    check_engine(artifact, read_manifest(artifact), "image_encoder", TRT, GPU)


def test_auto_warns_when_it_falls_back_from_tensorrt(artifact, photo):
    from naslora_deploy.runtime import Segmenter

    register_stand_in(artifact)
    with pytest.warns(UserWarning, match="backend auto fell back to onnxruntime.*tensorrt: ") as caught:
        segmenter = Segmenter.open(artifact)
    assert segmenter.backend_name.startswith("onnxruntime")
    assert len(str(caught[0].message).splitlines()) == 1
    assert segmenter.segment(photo).mask.shape == photo.shape[:2]


def _cli(*argv):
    return subprocess.run(
        [sys.executable, "-m", "naslora_deploy", *map(str, argv)], capture_output=True, text=True
    )


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown where TensorRT is missing")
def test_build_engines_without_tensorrt_is_one_line_on_how_to_get_it(artifact):
    before = sorted(p.name for p in artifact.iterdir())
    result = _cli("build-engines", artifact)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "TensorRT is not installed" in lines[0] and "JetPack" in lines[0], lines
    assert sorted(p.name for p in artifact.iterdir()) == before  # nothing written


def test_build_engines_refuses_int8_without_calibration(artifact):
    result = _cli("build-engines", artifact, "--precision", "int8")
    assert result.returncode == 2
    assert "carry no int8 calibration" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_build_engines_refuses_a_folder_that_is_not_an_artifact(tmp_path):
    result = _cli("build-engines", tmp_path)
    assert result.returncode == 2 and "manifest.json not found" in result.stderr


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed here (no wheel for this machine)")
def test_build_engines_builds_registers_and_runs(artifact, photo, tmp_path):
    from naslora_deploy.runtime import Segmenter

    report = tmp_path / "engines.json"
    result = _cli("build-engines", artifact, "--max-batch", "2", "--json", report)
    assert result.returncode == 0, result.stderr
    rows = json.loads(report.read_text())["engines"]
    assert {row["graph"] for row in rows} == {"image_encoder", "mask_decoder", "prompt_decoder"}
    for row in rows:
        assert row["precision"] == "fp16" and row["compute_capability"] and row["max_abs_diff"]
        assert all(np.isfinite(v) for v in row["max_abs_diff"].values())
    manifest = read_manifest(artifact)
    assert manifest.files["image_encoder.engine"]["tensorrt_version"] == rows[0]["tensorrt_version"]
    segmenter = Segmenter.open(artifact, backend="tensorrt")
    reference = Segmenter.open(artifact, backend="onnxruntime", device="cpu")
    got, expected = segmenter.segment(photo).mask, reference.segment(photo).mask
    assert got.shape == expected.shape and (got == expected).mean() > 0.95
    again = _cli("build-engines", artifact)
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.skipif(HAS_TENSORRT, reason="the fallback happens where TensorRT is missing")
def test_predict_says_in_one_line_why_auto_fell_back(artifact, photo, tmp_path):
    from PIL import Image

    register_stand_in(artifact)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    result = _cli("predict", artifact, tmp_path / "photo.png", "--out", tmp_path / "pred")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "fell back" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: backend auto fell back to onnxruntime")
    assert "TensorRT is not installed" in warned[0]


def test_the_engine_profile_comes_from_the_export_with_the_options_on_top(artifact):
    from naslora_deploy.cli.device import engine_spec_for

    manifest = read_manifest(artifact)
    recorded = manifest.export["engine"]
    spec = engine_spec_for(manifest)
    assert spec.precision == "fp16" and spec.max_batch == recorded["max_batch"]  # an fp32 export: fp16
    assert spec.max_points == recorded["max_points"]  # the prompt decoder's exported point slots
    small = engine_spec_for(manifest, max_batch=1, workspace_gb=0.5, precision="fp32")
    assert (small.min_batch, small.opt_batch, small.max_batch) == (1, 1, 1)
    assert small.workspace_gb == 0.5 and small.precision == "fp32"
    int8 = manifest.to_dict() | {"onnx_precision": "int8"}
    from naslora_deploy.runtime.manifest import Manifest

    assert engine_spec_for(Manifest.from_dict(int8)).precision == "int8"  # its calibrated Q/DQ scales


def test_asking_for_cuda_where_onnxruntime_has_none_warns(binary_artifacts):
    import onnxruntime

    from naslora_deploy.runtime import Segmenter

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has CUDA: nothing falls back")
    with pytest.warns(
        UserWarning, match="device cuda was asked for, but onnxruntime \\(CPU\\) runs on the CPU"
    ):
        assert not Segmenter.open(binary_artifacts, device="cuda").backend.on_gpu
