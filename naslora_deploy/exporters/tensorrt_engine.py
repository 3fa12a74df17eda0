"""ONNX -> TensorRT engine with the TensorRT Python API, plus a JSON sidecar.

``tensorrt`` is imported only here, inside the functions that need it, so the
package imports on machines without it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import atomic_write, atomic_write_text, sha256_of
from naslora_deploy.exporters.specs import EngineSpec
from naslora_deploy.runtime.engines import current_gpu, import_tensorrt, sidecar_path

# ONNX node names TensorRT keeps as layer names: LayerNorm (and LayerNorm2d's pieces) and softmax.
FP32_LAYER_NAMES = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Softmax")


def _shape_text(shape: List) -> str:
    return "x".join(str(d) for d in shape)


def _profile_dim(dim, index: int, spec: EngineSpec) -> int:
    """One axis at profile point ``index`` (0 min, 1 opt, 2 max): named axes are dynamic."""
    if not isinstance(dim, str):
        return int(dim)
    if dim == "points":  # points per prompt: 1 up to the exported slots, tuned for one point + padding
        return (1, min(2, spec.max_points), spec.max_points)[index]
    return (spec.min_batch, spec.opt_batch, spec.max_batch)[index]  # images, prompts: the batch range


def profile_shapes(inputs: List[dict], spec: EngineSpec) -> Dict[str, List[List[int]]]:
    """min / opt / max shape per input: batch axes from ``spec``'s batch range, points to ``max_points``."""
    return {
        value["name"]: [[_profile_dim(d, index, spec) for d in value["shape"]] for index in range(3)]
        for value in inputs
    }


def trtexec_command(onnx_path: Path, engine_path: Path, inputs: List[dict], spec: EngineSpec) -> str:
    """The equivalent ``trtexec`` command (for building on a Jetson)."""
    shapes = profile_shapes(inputs, spec)
    parts = ["trtexec", f"--onnx={onnx_path.name}", f"--saveEngine={engine_path.name}"]
    for flag, index in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
        parts.append(flag + "=" + ",".join(f"{name}:{_shape_text(s[index])}" for name, s in shapes.items()))
    if spec.precision != "fp32":
        parts += [
            *precision_flags(spec.precision),
            "--layerPrecisions=" + ",".join(f"*{op}*:fp32" for op in FP32_LAYER_NAMES),
            "--precisionConstraints=obey",
        ]
    if spec.workspace_gb:
        parts.append(f"--memPoolSize=workspace:{int(spec.workspace_gb * 1024)}M")
    if spec.timing_cache:
        parts.append(f"--timingCacheFile={spec.timing_cache}")
    return " ".join(shlex.quote(p) for p in parts)


def precision_flags(precision: str) -> List[str]:
    """trtexec's precision flags: INT8 (explicit, from the graph's Q/DQ scales) with FP16 for the rest."""
    return ["--int8", "--fp16"] if precision == "int8" else [f"--{precision}"]


def _keep_fp32(network, trt) -> int:
    """Pin normalisation, softmax and reductions to fp32 (fp16 LayerNorm overflows in SAM)."""
    pinned = 0
    kinds = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in kinds:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def onnx_to_engine(onnx_path: Path, engine_path: Path, spec: EngineSpec, inputs: List[dict]) -> Path:
    """Build a serialized engine from ``onnx_path``; writes it and its sidecar atomically."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = (
        0
        if int(trt.__version__.split(".")[0]) >= 10
        else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    )
    network = builder.create_network(explicit)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise NasloraError(f"TensorRT cannot parse {onnx_path}: {errors[:300]}")
    config = builder.create_builder_config()
    if spec.workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_gb * (1 << 30)))
    if spec.precision != "fp32":
        for flag in precision_flags(spec.precision):  # int8: no calibrator, the scales are the graph's Q/DQ
            config.set_flag(getattr(trt.BuilderFlag, flag[2:].upper()))  # --int8 -> BuilderFlag.INT8
        _keep_fp32(network, trt)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(inputs, spec).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_path = Path(spec.timing_cache) if spec.timing_cache else None
    cache = config.create_timing_cache(
        cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    )
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise NasloraError(
            f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)"
        )
    engine_bytes = bytes(serialized)
    atomic_write(engine_path, lambda tmp: tmp.write_bytes(engine_bytes))
    if cache_path:
        atomic_write(cache_path, lambda tmp: tmp.write_bytes(bytes(config.get_timing_cache().serialize())))
    sidecar = engine_sidecar(trt.__version__, current_gpu(), spec, inputs, onnx_path, engine_path)
    atomic_write_text(sidecar_path(engine_path), json.dumps(sidecar, indent=2) + "\n")
    return engine_path


def engine_sidecar(
    trt_version: str,
    gpu: Dict[str, Optional[str]],
    spec: EngineSpec,
    inputs: List[dict],
    onnx_path: Path,
    engine_path: Path,
) -> dict:
    """What an engine was built with and from: written beside it, never into it."""
    return {
        "tensorrt_version": trt_version,
        "gpu_name": gpu["name"],
        "compute_capability": gpu["compute_capability"],
        "precision": spec.precision,
        "profile": profile_shapes(inputs, spec),
        "inputs": inputs,
        "source_onnx": onnx_path.name,
        "source_onnx_sha256": sha256_of(onnx_path),
        "engine_spec": asdict(spec),
        "trtexec": trtexec_command(onnx_path, engine_path, inputs, spec),
    }
