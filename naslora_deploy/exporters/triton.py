"""Artifact directory -> Triton Inference Server model repository.

Three models: ``naslora_image_encoder`` and ``naslora_mask_decoder`` (the ONNX
files on the onnxruntime backend, or the engines on the tensorrt backend) and
``naslora_segment``, an ensemble that chains them: image in, masks out.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import atomic_write_text, write_directory
from naslora_deploy.runtime.manifest import read_manifest

ENCODER, DECODER, ENSEMBLE = "naslora_image_encoder", "naslora_mask_decoder", "naslora_segment"
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def _tensors(kind: str, values: List[dict]) -> str:
    blocks = []
    for value in values:
        dims = ", ".join(str(d) for d in value["shape"][1:])  # the batch axis is Triton's max_batch_size
        blocks.append(
            f'  {{\n    name: "{value["name"]}"\n    data_type: {TRITON_TYPES[value["dtype"]]}\n    dims: [ '
            f"{dims} ]\n  }}"
        )
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]\n"


QUEUE_DELAY_US = 100  # how long Triton may hold a request to fill a larger batch


def dynamic_batching(max_batch: int, queue_delay_us: int = QUEUE_DELAY_US) -> str:
    """The ``dynamic_batching`` block: requests are merged up to ``max_batch``, preferring powers of two.

    Empty for ``max_batch`` 1, where there is nothing to merge. (Ensembles take no such
    block: their steps batch on their own.)
    """
    if max_batch <= 1:
        return ""
    preferred = sorted({size for size in (2, 4, 8, 16, 32, 64) if size < max_batch} | {max_batch})
    sizes = ", ".join(str(size) for size in preferred)
    return (
        f"dynamic_batching {{\n  preferred_batch_size: [ {sizes} ]\n"
        f"  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
    )


def model_config(name: str, entry: dict, backend: str, max_batch: int) -> str:
    """``config.pbtxt`` of one ONNX / TensorRT model, with dynamic batching up to ``max_batch``."""
    platform = "tensorrt_plan" if backend == "tensorrt" else "onnxruntime_onnx"
    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
        + _tensors("input", entry["inputs"])
        + _tensors("output", entry["outputs"])
        + dynamic_batching(max_batch)
        + "instance_group [ { kind: KIND_AUTO count: 1 } ]\n"
    )


def ensemble_config(encoder: dict, decoder: dict, max_batch: int) -> str:
    """``config.pbtxt`` of the ensemble: image -> encoder -> decoder -> masks."""
    maps = lambda names: ",\n".join(f'      {{ key: "{n}" value: "{n}" }}' for n in names)  # noqa: E731
    enc_in = [v["name"] for v in encoder["inputs"]]
    enc_out = [v["name"] for v in encoder["outputs"]]
    dec_in = [v["name"] for v in decoder["inputs"]]
    dec_out = [v["name"] for v in decoder["outputs"]]
    steps = (
        f'    {{\n      model_name: "{ENCODER}"\n      model_version: -1\n      input_map '
        f"[\n{maps(enc_in)}\n      ]\n"
        f"      output_map [\n{maps(enc_out)}\n      ]\n    }},\n"
        f'    {{\n      model_name: "{DECODER}"\n      model_version: -1\n      input_map '
        f"[\n{maps(dec_in)}\n      ]\n"
        f"      output_map [\n{maps(dec_out)}\n      ]\n    }}"
    )
    return (
        f'name: "{ENSEMBLE}"\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
        + _tensors("input", encoder["inputs"])
        + _tensors("output", decoder["outputs"])
        + f"ensemble_scheduling {{\n  step [\n{steps}\n  ]\n}}\n"
    )


def artifacts_to_triton(artifact_dir, repository, backend: str = "onnxruntime", max_batch: int = 8) -> Path:
    """Write a Triton model repository from an exported artifact directory."""
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    if backend not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"unknown Triton backend {backend!r}; choose onnxruntime or tensorrt")
    files = manifest.files
    encoder, decoder = files["image_encoder.onnx"], files["mask_decoder.onnx"]

    def write(tmp: Path) -> None:
        for name, stem, entry in ((ENCODER, "image_encoder", encoder), (DECODER, "mask_decoder", decoder)):
            version = tmp / name / "1"
            version.mkdir(parents=True)
            if backend == "tensorrt":
                engine = artifact_dir / f"{stem}.engine"
                if not engine.is_file():
                    raise NasloraError(
                        f"{engine} not found; export with --format trt for Triton's tensorrt backend"
                    )
                shutil.copy2(engine, version / "model.plan")
            else:
                shutil.copy2(artifact_dir / f"{stem}.onnx", version / "model.onnx")
                external = entry.get("external_data")
                if external:
                    shutil.copy2(artifact_dir / external["file"], version / external["file"])
            atomic_write_text(tmp / name / "config.pbtxt", model_config(name, entry, backend, max_batch))
        (tmp / ENSEMBLE / "1").mkdir(parents=True)
        atomic_write_text(tmp / ENSEMBLE / "config.pbtxt", ensemble_config(encoder, decoder, max_batch))

    return write_directory(Path(repository), write)
