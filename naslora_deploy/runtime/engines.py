"""TensorRT engine sidecars: what an engine was built with, checked before loading.

No torch here. An engine only runs under the TensorRT version and on the GPU
(compute capability) it was built for; the JSON sidecar beside every
``.engine`` records both, so a mismatch is reported in words instead of a
deserialisation failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, Optional, Tuple

from naslora_deploy.common import contract as names
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import read_json
from naslora_deploy.common.lazy import lazy_import
from naslora_deploy.runtime.manifest import Manifest, artifact_file, is_listed, rebuild_hint

INSTALL_HELP = (
    "TensorRT is not installed: on an x86 server `pip install tensorrt` (NVIDIA's wheel, matching your "
    "CUDA), on a Jetson it comes with JetPack; or export with --format onnx and build the engines on the "
    'target with naslora-deploy build-engines (or trtexec: the command for each file is under "trtexec" '
    "in the artifact's manifest.json)"
)
# the build facts ``runtime.engine_build.register_engine`` records beside an engine's sha256
BUILD_FACTS = ("precision", "tensorrt_version", "gpu_name", "compute_capability")


def sidecar_path(engine: Path) -> Path:
    """Where an engine's sidecar lives: ``<name>.engine.json``."""
    return Path(str(engine) + ".json")


def current_gpu() -> Dict[str, Optional[str]]:
    """Name and compute capability of GPU 0, without torch (cuda-python, else nvidia-smi)."""
    try:
        from cuda.bindings import runtime as cudart

        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = (
                props.name.decode(errors="replace").rstrip("\x00")
                if isinstance(props.name, bytes)
                else str(props.name)
            )
            return {"name": name, "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:  # cuda-python absent or no driver: try the next way
        pass
    try:
        out = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            .stdout.strip()
            .splitlines()[0]
        )
        name, capability = (part.strip() for part in out.split(","))
        return {"name": name, "compute_capability": capability}
    except Exception:
        return {"name": None, "compute_capability": None}


def check_engine_compatibility(
    sidecar: dict, trt_version: str, gpu: Dict[str, Optional[str]], engine: str = "engine"
) -> None:
    """Raise a clear ``NasloraError`` if the engine was built for another TensorRT or GPU; the
    message names the command that rebuilds it (``build-engines``, in the engine's folder)."""
    again = rebuild_hint(Path(engine).parent if engine != "engine" else "ARTIFACT_DIR")
    built_trt = sidecar.get("tensorrt_version")
    if built_trt and built_trt != trt_version:
        raise NasloraError(
            f"{engine} was built with TensorRT {built_trt} but this machine has TensorRT {trt_version}; "
            + again
        )
    built_cc = sidecar.get("compute_capability")
    here_cc = gpu.get("compute_capability")
    if built_cc and here_cc and built_cc != here_cc:
        raise NasloraError(
            f"{engine} was built on {sidecar.get('gpu_name')} (compute capability {built_cc}) but this GPU "
            f"is {gpu.get('name')} ({here_cc}); TensorRT engines do not move between GPU generations: {again}"
        )


def check_engine(
    directory, manifest: Manifest, graph: str, trt_version: str, gpu: Dict[str, Optional[str]]
) -> Tuple[Path, Path]:
    """The checked (engine, sidecar) paths of ``graph``'s engine, or one line naming build-engines.

    The engine and its sidecar must be registered in the manifest (``register_engine`` does it;
    a file put there by hand is refused); the build facts registered beside the engine's sha256,
    and the sidecar's, must match this TensorRT and GPU. ``read_manifest`` already compared every
    registered file with its sha256 (a changed engine is refused there, naming the same command).
    """
    directory = Path(directory)
    engine_name = names.engine_file(graph)
    for name in (engine_name, engine_name + ".json"):
        if not is_listed(manifest, name):
            raise NasloraError(
                f"{directory / name} is not registered in {names.MANIFEST_NAME} (built by hand or copied "
                f"in?), so the runtime cannot trust it; {rebuild_hint(directory)}"
            )
    engine = artifact_file(directory, manifest, engine_name)
    sidecar = artifact_file(directory, manifest, engine_name + ".json")
    recorded = read_sidecar(engine, sidecar)
    registered = {k: v for k, v in manifest.files[engine_name].items() if k in BUILD_FACTS}
    for key, value in registered.items():
        if recorded.get(key) not in (None, value):
            raise NasloraError(
                f"{sidecar} says {key} {recorded.get(key)!r} but {names.MANIFEST_NAME} registered {value!r} "
                f"for {engine_name}; {rebuild_hint(directory)}"
            )
    check_engine_compatibility({**recorded, **registered}, trt_version, gpu, str(engine))
    return engine, sidecar


def read_sidecar(engine: Path, path: Optional[Path] = None) -> dict:
    """Read an engine's sidecar (default: beside it); a missing, unreadable or non-object one is an error."""
    path = Path(path) if path is not None else sidecar_path(Path(engine))
    if not os.path.lexists(path):
        raise NasloraError(
            f"{path} not found: every engine needs the sidecar written beside it by the export"
        )
    try:  # read_json: size limit, deep nesting, FIFOs and bad bytes as one line
        data = read_json(path, "engine sidecar")
    except NasloraError as exc:
        raise NasloraError(f"{exc}; the sidecar is damaged: build the engine again") from None
    if not isinstance(data, dict):
        raise NasloraError(f"{path} is damaged (a JSON {type(data).__name__}, not an object)")
    return data


def import_tensorrt():
    """The ``tensorrt`` module, or one line on how to get it (JetPack, NVIDIA's wheel, or trtexec)."""
    return lazy_import("tensorrt", message=INSTALL_HELP)


def load_checked_engine(directory, manifest: Manifest, graph: str) -> bytes:
    """``graph``'s engine bytes, once ``check_engine`` accepted it for this TensorRT and GPU."""
    trt = import_tensorrt()
    engine, _ = check_engine(directory, manifest, graph, trt.__version__, current_gpu())
    return _read_engine(engine)


def _read_engine(engine: Path) -> bytes:
    try:
        return engine.read_bytes()
    except OSError as exc:
        raise NasloraError(f"cannot read {engine} ({exc.strerror}); {rebuild_hint(engine.parent)}") from None
