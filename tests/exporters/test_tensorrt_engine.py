"""The TensorRT path: real builds where TensorRT imports, clear failure elsewhere."""

import importlib.util
import json
import subprocess
import sys

import pytest

from naslora_deploy.exporters.specs import EngineSpec
from naslora_deploy.exporters.tensorrt_engine import engine_sidecar, profile_shapes, trtexec_command

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(
    not HAS_TENSORRT, reason="TensorRT is not installed here (no wheel for this machine)"
)
INPUTS = [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 256, 256]}]


def test_profile_and_trtexec_command(tmp_path):
    spec = EngineSpec(precision="fp16", opt_batch=2, max_batch=4, workspace_gb=1.5, timing_cache="cache.bin")
    assert profile_shapes(INPUTS, spec) == {"image": [[1, 3, 256, 256], [2, 3, 256, 256], [4, 3, 256, 256]]}
    command = trtexec_command(
        tmp_path / "image_encoder.onnx", tmp_path / "image_encoder.engine", INPUTS, spec
    )
    for part in (
        "--onnx=image_encoder.onnx",
        "--saveEngine=image_encoder.engine",
        "--minShapes=image:1x3x256x256",
        "--optShapes=image:2x3x256x256",
        "--maxShapes=image:4x3x256x256",
        "--fp16",
        "--memPoolSize=workspace:1536M",
        "--timingCacheFile=cache.bin",
        "LayerNormalization*:fp32",
    ):
        assert part in command
    with pytest.raises(ValueError, match="batch profile"):
        EngineSpec(min_batch=4, opt_batch=2)
    with pytest.raises(ValueError, match="unknown engine precision"):
        EngineSpec(precision="int4")


def test_sidecar_contents(tmp_path):
    from naslora_deploy.common.io import sha256_of
    from naslora_deploy.runtime.engines import check_engine_compatibility

    onnx_path = tmp_path / "image_encoder.onnx"
    onnx_path.write_bytes(b"graph bytes")
    gpu = {"name": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7"}
    sidecar = engine_sidecar(
        "10.3.0", gpu, EngineSpec(max_batch=2), INPUTS, onnx_path, tmp_path / "image_encoder.engine"
    )
    assert sidecar["tensorrt_version"] == "10.3.0" and sidecar["compute_capability"] == "8.7"
    assert sidecar["gpu_name"] == gpu["name"] and sidecar["precision"] == "fp16"
    assert sidecar["profile"]["image"][2] == [2, 3, 256, 256]
    assert sidecar["source_onnx_sha256"] == sha256_of(onnx_path)
    assert sidecar["trtexec"].startswith("trtexec --onnx=image_encoder.onnx")
    json.dumps(sidecar)  # serialisable as the JSON written beside the engine
    check_engine_compatibility(sidecar, "10.3.0", gpu)


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown where TensorRT is missing")
def test_trt_export_without_tensorrt_is_one_clear_line(binary_adapter, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "naslora_deploy",
            "export",
            str(binary_adapter),
            "--format",
            "trt",
            "--out",
            str(tmp_path / "art"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "TensorRT is not installed" in lines[0]
        and "trtexec" in lines[0]
        and "JetPack" in lines[0]
    )
    assert not (tmp_path / "art").exists()


@needs_tensorrt
@pytest.mark.tensorrt
def test_trt_engines_with_sidecars_and_parity(binary_adapter, tmp_path):
    from naslora_deploy.exporters.export import ExportSpec, export_artifacts
    from naslora_deploy.exporters.verify import verify_parity

    out, manifest = export_artifacts(
        binary_adapter,
        tmp_path / "art",
        ExportSpec(format="trt", precision="fp32", engine=EngineSpec(precision="fp32")),
    )
    sidecar = json.loads((out / "image_encoder.engine.json").read_text())
    assert sidecar["tensorrt_version"] and sidecar["compute_capability"] and sidecar["precision"] == "fp32"
    assert sidecar["source_onnx_sha256"] == manifest["files"]["image_encoder.onnx"]["sha256"]
    assert (out / "image_encoder.engine").read_bytes()[:4] != b"{"  # no JSON prepended to the engine
    import tensorrt

    from naslora_deploy.runtime.engines import check_engine, current_gpu
    from naslora_deploy.runtime.manifest import read_manifest

    # the export's engines pass the runtime's checks as build-engines' do (sidecar facts, listed, hashed)
    check_engine(out, read_manifest(out), "image_encoder", tensorrt.__version__, current_gpu())
    report = verify_parity(out)
    assert any(row.backend.startswith("tensorrt") for row in report.rows)
    assert report.passed
