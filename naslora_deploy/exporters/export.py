"""``naslora-deploy export``: a trained adapter or a SAM checkpoint -> artifact directory.

The directory holds ``image_encoder.onnx``, ``mask_decoder.onnx``, optionally
``prompt_decoder.onnx`` and TensorRT engines, and ``manifest.json`` describing
all of it (sha256 of every file included). It is filled in a temporary
directory and swapped in whole: a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from naslora_deploy import __version__
from naslora_deploy.errors import NasloraError
from naslora_deploy.exporters.onnx_export import TWO_GB, io_signature, module_to_onnx, onnx_to_fp16
from naslora_deploy.exporters.tensorrt_engine import EngineSpec, onnx_to_engine, require_tensorrt, trtexec_command
from naslora_deploy.exporters.wrappers import ImageEncoderGraph, MaskDecoderGraph, PromptDecoderGraph
from naslora_deploy.io import atomic_write_text, sha256_of, write_directory
from naslora_deploy.runtime.manifest import FORMAT, MANIFEST_NAME



@dataclass
class ExportSpec:
    """What to export and how; saved in the manifest."""

    format: str = "onnx"
    merge: str = "dense"
    precision: str = "fp32"
    opset: int = 17
    prompts: bool = False
    point_slots: int = 4
    calibration: Optional[str] = None
    calibration_images: int = 16
    external_threshold: int = TWO_GB
    engine: EngineSpec = field(default_factory=EngineSpec)

    def __post_init__(self) -> None:
        if self.format not in ("onnx", "trt"):
            raise ValueError(f"unknown format {self.format!r}; choose onnx or trt")
        if self.merge not in ("dense", "fused"):
            raise ValueError(f"unknown merge mode {self.merge!r}; choose dense or fused")
        if self.precision not in ("fp32", "fp16", "bf16") or (self.format == "onnx" and self.precision == "bf16"):
            raise ValueError(f"precision {self.precision!r}: ONNX files are fp32 or fp16; engines fp32, fp16 or bf16")
        if self.point_slots < 1:
            raise ValueError("--point-slots must be >= 1")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class ExportSource:
    """The PyTorch model an export starts from, and where it came from."""

    model: object  # a SegmentationModel holding the merged (or plain) SAM
    variant: str
    description: dict
    merge_report: Optional[dict]


def load_source(source, spec: ExportSpec, variant: Optional[str] = None, base=None, allow_base_mismatch=False) -> ExportSource:
    """An adapter run/checkpoint directory (merged here) or a plain SAM checkpoint file."""
    from naslora_deploy.heads import SegmentationModel
    from naslora_deploy.merge import merge

    source = Path(source)
    if source.is_dir():
        from naslora_deploy.checkpoint import load_adapter

        trained = load_adapter(source, base, allow_base_mismatch)
        calibration = None
        if spec.calibration:
            from naslora_deploy.merged_files import calibration_images

            calibration = calibration_images(spec.calibration, spec.calibration_images, trained.spec.image_size)
        merged_sam, report = merge(trained.sam, spec.merge, calibration=calibration)
        model = trained.with_sam(merged_sam)
        description = {"kind": "adapter", "path": str(source.resolve()), "base": str(base) if base else None,
                       "spec": trained.spec.to_dict()}
        return ExportSource(model.eval(), trained.spec.variant, description, report.to_dict())
    if not source.is_file():
        raise NasloraError(f"export source {source} not found; pass an adapter directory or a SAM checkpoint file")
    if variant is None:
        raise NasloraError(f"{source} is a checkpoint file: name its variant with --model (vit_b, vit_l, vit_h, vit_tiny)")
    from naslora_deploy.variants import build_sam

    model = SegmentationModel(build_sam(variant, source)).eval()
    description = {"kind": "sam_checkpoint", "path": str(source.resolve()), "variant": variant}
    return ExportSource(model, variant, description, None)


def export_graphs(model, spec: ExportSpec, directory: Path) -> Dict[str, Path]:
    """Write the ONNX files of ``model`` into ``directory``; returns name -> path."""
    size = model.image_size
    image = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        embeddings = model.sam.image_encoder(image)
    files = {}
    common = dict(opset=spec.opset, external_threshold=spec.external_threshold)
    files["image_encoder"] = module_to_onnx(
        ImageEncoderGraph(model.sam.image_encoder), (image,), directory / "image_encoder.onnx",
        ["image"], ["image_embeddings"], **common,
    )
    outputs = ["low_res_logits", "mask_logits"] + (["class_logits"] if model.class_head is not None else [])
    files["mask_decoder"] = module_to_onnx(
        MaskDecoderGraph(model), (embeddings,), directory / "mask_decoder.onnx", ["image_embeddings"], outputs, **common
    )
    if spec.prompts:
        slots = spec.point_slots + 2  # the last two slots take a box (labels 2, 3) or padding (-1)
        coords = torch.zeros(1, slots, 2)
        labels = torch.full((1, slots), -1.0)
        files["prompt_decoder"] = module_to_onnx(
            PromptDecoderGraph(model.sam), (embeddings, coords, labels), directory / "prompt_decoder.onnx",
            ["image_embeddings", "point_coords", "point_labels"], ["mask_logits", "low_res_logits", "iou_predictions"],
            **common,
        )
    if spec.format == "onnx" and spec.precision == "fp16":
        for name, path in files.items():
            files[name] = onnx_to_fp16(path, path, spec.external_threshold)
    return files


def _describe(path: Path) -> dict:
    entry = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    data = path.parent / (path.name + ".data")
    if path.suffix == ".onnx":
        entry.update(io_signature(path))
        if data.is_file():
            entry["external_data"] = {"file": data.name, "sha256": sha256_of(data), "bytes": data.stat().st_size}
    return entry


def export_artifacts(source, out, spec: ExportSpec, variant=None, base=None, allow_base_mismatch=False) -> Tuple[Path, dict]:
    """Export ``source`` into the artifact directory ``out``; returns (out, manifest)."""
    if spec.format == "trt":
        require_tensorrt()  # fail before any work, with install help
    loaded = load_source(source, spec, variant, base, allow_base_mismatch)
    model = loaded.model
    manifest: dict = {}

    def write(tmp: Path) -> None:
        files = export_graphs(model, spec, tmp)
        engines = {}
        if spec.format == "trt":
            for name, onnx_path in files.items():
                inputs = io_signature(onnx_path)["inputs"]
                engines[name] = onnx_to_engine(onnx_path, tmp / f"{name}.engine", spec.engine, inputs)
        manifest.update(_manifest(loaded, spec, files, engines))
        atomic_write_text(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")

    write_directory(Path(out), write)
    return Path(out), manifest


def _manifest(loaded: ExportSource, spec: ExportSpec, files: Dict[str, Path], engines: Dict[str, Path]) -> dict:
    import onnx

    model = loaded.model
    described = {path.name: _describe(path) for path in files.values()}
    for path in engines.values():
        described[path.name] = _describe(path)
        described[path.name + ".json"] = _describe(Path(str(path) + ".json"))
    classes = {"num_classes": model.num_classes}
    spec_dict = loaded.description.get("spec")
    if spec_dict:
        classes = spec_dict["classes"]
    return {
        "format": FORMAT,
        "naslora_deploy_version": __version__,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "variant": loaded.variant,
        "image_size": model.image_size,
        "head": "multiclass" if model.class_head is not None else "binary",
        "classes": classes,
        "num_queries": model.class_head.queries.num_embeddings if model.class_head is not None else 0,
        "merge": {"mode": spec.merge if loaded.merge_report else "none (plain SAM checkpoint)",
                  "report": loaded.merge_report},
        "precision": spec.precision,
        "onnx_precision": spec.precision if spec.format == "onnx" else "fp32",
        "opset": spec.opset,
        "prompt_point_slots": spec.point_slots + 2 if spec.prompts else None,
        "export": spec.to_dict(),
        "source": loaded.description,
        "files": described,
        "trtexec": {  # how to build each engine on the target (a Jetson) from the ONNX files
            name: trtexec_command(path, path.with_suffix(".engine"), io_signature(path)["inputs"], spec.engine)
            for name, path in files.items()
        },
    }
