"""ONNX -> TensorRT engine during ``export --format trt``, plus a JSON sidecar.

The build itself (polygraphy, fp32-pinned normalisation, the batch profile) is
``runtime.engine_build``'s, shared with ``naslora-deploy build-engines`` on the device;
this module writes the engine and its sidecar into the export's folder, whose
manifest the export writes. ``tensorrt`` is imported only inside the functions that
need it, so the package imports on machines without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

from naslora_deploy.common.io import atomic_write, atomic_write_text
from naslora_deploy.exporters.specs import EngineSpec
from naslora_deploy.runtime.engine_build import (
    FP32_LAYER_NAMES,
    engine_sidecar,
    precision_flags,
    profile_shapes,
    serialize_engine,
    trtexec_command,
)
from naslora_deploy.runtime.engines import current_gpu, import_tensorrt, sidecar_path

__all__ = [
    "FP32_LAYER_NAMES",
    "engine_sidecar",
    "onnx_to_engine",
    "precision_flags",
    "profile_shapes",
    "trtexec_command",
]


def onnx_to_engine(onnx_path: Path, engine_path: Path, spec: EngineSpec, inputs: List[dict]) -> Path:
    """Build a serialized engine from ``onnx_path``; writes it and its sidecar atomically."""
    trt = import_tensorrt()
    engine_bytes = serialize_engine(onnx_path, spec, inputs)
    atomic_write(engine_path, lambda tmp: tmp.write_bytes(engine_bytes))
    sidecar = engine_sidecar(trt.__version__, current_gpu(), spec, inputs, onnx_path, engine_path)
    atomic_write_text(sidecar_path(engine_path), json.dumps(sidecar, indent=2) + "\n")
    return engine_path
