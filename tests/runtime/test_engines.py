"""Engine sidecars: a mismatched TensorRT or GPU is reported in words."""

import json

import pytest

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.runtime.engines import check_engine_compatibility, read_sidecar

SIDECAR = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}


def test_same_version_and_gpu_pass():
    check_engine_compatibility(SIDECAR, "10.3.0", {"name": "Orin", "compute_capability": "8.7"})


def test_other_tensorrt_version():
    with pytest.raises(
        NasloraError, match="built with TensorRT 10.3.0 but this machine has TensorRT 10.8.0; rebuild"
    ):
        check_engine_compatibility(
            SIDECAR, "10.8.0", {"name": "Orin", "compute_capability": "8.7"}, "enc.engine"
        )


def test_other_gpu():
    with pytest.raises(
        NasloraError, match=r"built on Orin \(compute capability 8.7\) but this GPU is NVIDIA H100 \(9.0\)"
    ):
        check_engine_compatibility(SIDECAR, "10.3.0", {"name": "NVIDIA H100", "compute_capability": "9.0"})


def test_missing_or_damaged_sidecar(tmp_path):
    engine = tmp_path / "a.engine"
    engine.write_bytes(b"\x00")
    with pytest.raises(NasloraError, match="a.engine.json not found"):
        read_sidecar(engine)
    (tmp_path / "a.engine.json").write_text("{")
    with pytest.raises(NasloraError, match="damaged"):
        read_sidecar(engine)
    (tmp_path / "a.engine.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(NasloraError, match="nested too deeply.*damaged"):
        read_sidecar(engine)
    (tmp_path / "a.engine.json").write_text(json.dumps(SIDECAR))
    assert read_sidecar(engine)["gpu_name"] == "Orin"


def test_a_mismatch_names_the_command_that_rebuilds_it_in_the_engines_folder(tmp_path):
    engine = tmp_path / "art" / "image_encoder.engine"
    with pytest.raises(NasloraError) as raised:
        check_engine_compatibility(
            SIDECAR, "10.8.0", {"name": "Orin", "compute_capability": "8.7"}, str(engine)
        )
    assert str(raised.value).endswith(f"naslora-deploy build-engines {tmp_path / 'art'} --overwrite")
