"""``naslora-deploy export``: a trained adapter or a SAM checkpoint -> artifact directory.

The directory holds ``image_encoder.onnx``, ``mask_decoder.onnx``, optionally
``prompt_decoder.onnx`` and TensorRT engines, and ``manifest.json`` describing
all of it (sha256 of every file included). It is filled in a temporary
directory and swapped in whole: a failed export leaves nothing half-written.
Where it may go is ``common.outputs``' policy: a new or empty folder, or an
earlier artifact directory with ``force`` (``--overwrite``; never a user's folder or
file). ``--out`` is locked for the export (``io.output_lock``): a second export into
it is refused while the first runs. A full disk names the space the artifacts need
(about the model's weights in fp32, what the ONNX files hold before any conversion).
``export`` also writes a Triton model repository (``format="triton"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from naslora_deploy import __version__
from naslora_deploy.common import contract as names
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import atomic_write_text, output_lock, sha256_of, write_directory
from naslora_deploy.common.outputs import prepare_artifact_dir, prepare_triton_dir
from naslora_deploy.common.progress import phase, steps
from naslora_deploy.core.merging.calibration import calibration_images
from naslora_deploy.core.merging.files import load_merged, merged_description
from naslora_deploy.core.merging.run import merge_run, read_calibration
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.variants import VARIANTS, build_sam
from naslora_deploy.core.runs.checkpoint import RunSpec, check_finite, load_adapter, source_sha256
from naslora_deploy.exporters.onnx_export import io_signature, module_to_onnx, onnx_to_fp16
from naslora_deploy.exporters.peft import peft_manifest, run_to_peft
from naslora_deploy.exporters.quantize import onnx_to_int8
from naslora_deploy.exporters.specs import ExportSpec
from naslora_deploy.exporters.tensorrt_engine import onnx_to_engine, trtexec_command
from naslora_deploy.exporters.triton import artifacts_to_triton
from naslora_deploy.exporters.wrappers import (
    ImageEncoderGraph,
    MaskDecoderGraph,
    PromptDecoderGraph,
    batch_dynamic,
)
from naslora_deploy.runtime.engines import import_tensorrt
from naslora_deploy.runtime.manifest import Manifest


@dataclass
class ExportSource:
    """The PyTorch model an export starts from, and where it came from."""

    model: object  # a SegmentationModel holding the merged (or plain) SAM
    variant: str
    description: dict
    merge_report: Optional[dict]
    calibration: Optional[torch.Tensor] = None  # the merge's calibration images, read once (int8 reuses them)


def load_source(
    source,
    spec: ExportSpec,
    variant: Optional[str] = None,
    base=None,
    allow_base_mismatch=False,
    progress: Optional[bool] = False,
    measure: bool = True,
) -> ExportSource:
    """An adapter run/checkpoint directory (merged here by ``merge_run``), a checkpoint ``merge`` wrote
    (with its report) or a plain SAM checkpoint file. ``measure=False``: the merge's fidelity is not
    measured (no report; ``rebuild_source``)."""
    source = Path(source)
    if source.is_dir():
        sha256 = source_sha256(source)  # before loading: what the artifacts were made from
        with phase(f"export: load run {source}", progress):
            trained = load_adapter(source, base, allow_base_mismatch)  # refuses non-finite weights
        calibration = read_calibration(spec.merge, trained, progress)  # once: the merge and int8 share it
        model, report = merge_run(
            trained, spec.merge, calibration=calibration, progress=progress, measure=measure
        )
        description = {
            "kind": "adapter",
            "path": str(source.resolve()),
            "base": str(base) if base else None,
            "spec": trained.spec.to_dict(),
            "sha256": sha256,
        }
        report = report.to_dict() if report is not None else None
        return ExportSource(model, trained.spec.variant, description, report, calibration)
    if not source.is_file():
        raise NasloraError(
            f"export source {source} not found; pass an adapter directory or a SAM checkpoint file"
        )
    merged_file = merged_description(source)
    if merged_file is not None:  # written by ``merge``: reused with its report, not merged again
        with phase(f"export: load merged checkpoint {source} (merged once, by merge)", progress):
            model, merged_file = load_merged(source)
        description = {
            "kind": "merged_checkpoint",
            "path": str(source.resolve()),
            "spec": merged_file.get("spec"),
            "sha256": source_sha256(source),
        }
        return ExportSource(model, merged_file["variant"], description, merged_file["merge"])
    if variant is None:
        raise NasloraError(
            f"{source} is a checkpoint file: name its variant with --model ({', '.join(VARIANTS)})"
        )
    with phase(f"export: load {variant} checkpoint {source}", progress):
        sha256 = source_sha256(source)
        model = SegmentationModel(build_sam(variant, source)).eval()
        check_finite(model.sam.state_dict(), f"checkpoint {source}")
    description = {
        "kind": "sam_checkpoint",
        "path": str(source.resolve()),
        "variant": variant,
        "sha256": sha256,
    }
    return ExportSource(model, variant, description, None)


def export_graphs(
    model, spec: ExportSpec, directory: Path, progress: Optional[bool] = False, calibration=None
) -> Dict[str, Path]:
    """Write the ONNX files of ``model`` into ``directory``; returns name -> path. ``calibration``: the
    merge's images where it read them (int8 calibrates on those), else read from ``spec.merge``."""
    size = model.image_size
    image = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        embeddings = model.sam.image_encoder(image)
    files = {}
    common = dict(opset=spec.opset, external_threshold=spec.external_threshold)
    graphs = {
        names.IMAGE_ENCODER: (
            ImageEncoderGraph(model.sam.image_encoder),
            (image,),
            names.ENCODER_INPUTS,
            names.ENCODER_OUTPUTS,
        ),
        names.MASK_DECODER: (
            MaskDecoderGraph(model),
            (embeddings,),
            names.DECODER_INPUTS,
            names.decoder_outputs(model.class_head is not None),
        ),
    }
    if spec.prompts:  # traced with 2 prompts of 3 points on one embedding; all three axes stay dynamic
        prompts = (embeddings, torch.zeros(2, 3, 2), torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, -1.0]]))
        graphs[names.PROMPT_DECODER] = (
            PromptDecoderGraph(model.sam),
            prompts,
            names.PROMPT_INPUTS,
            names.PROMPT_OUTPUTS,
        )
    models = steps(list(graphs.items()), "export: ONNX model", progress, label=lambda item: item[0])
    for name, (module, example, inputs, outputs) in models:
        axes = names.PROMPT_AXES if name == names.PROMPT_DECODER else None
        with batch_dynamic(model.sam.image_encoder):
            path = module_to_onnx(
                module,
                example,
                directory / names.onnx_file(name),
                inputs,
                outputs,
                dynamic_axes=axes,
                **common,
            )
        if spec.onnx_precision == "fp16":
            path = onnx_to_fp16(path, path, spec.external_threshold)
        files[name] = path
    if spec.onnx_precision == "int8":  # the encoder is the cost; the decoders stay fp32 (RESULTS.md)
        merge, images = spec.merge, calibration
        if images is None:
            images = calibration_images(
                merge.calibration, merge.calibration_images, size, model.normalization
            )
        encoder = files[names.IMAGE_ENCODER]
        feeds = ({names.IMAGE: image[None]} for image in images.numpy())  # one image a run: bounded memory
        with phase(f"export: int8 quantization of {names.IMAGE_ENCODER} ({len(images)} images)", progress):
            onnx_to_int8(encoder, encoder, feeds, external_threshold=spec.external_threshold)
    return files


def _describe(path: Path) -> dict:
    entry = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    data = path.parent / (path.name + ".data")
    if path.suffix == ".onnx":
        entry.update(io_signature(path))
        if data.is_file():
            entry["external_data"] = {
                "file": data.name,
                "sha256": sha256_of(data),
                "bytes": data.stat().st_size,
            }
    return entry


def export_artifacts(
    source,
    out,
    spec: ExportSpec,
    variant=None,
    base=None,
    allow_base_mismatch=False,
    progress: Optional[bool] = False,
    force: bool = False,
) -> Tuple[Path, Manifest]:
    """Export ``source`` into the artifact directory ``out``; returns (out, manifest).

    ``out`` must be new, empty or (with ``force``) an earlier artifact directory
    (``common.outputs``); it is checked before any work. ``format="triton"`` writes
    the ONNX artifacts here; ``export`` adds the repository.
    """
    with output_lock(out, "export --out"):
        folder = prepare_artifact_dir(out, replace=force)  # links resolved: a link's target is written
        if spec.format == "trt":
            import_tensorrt()  # fail before any work, with install help
        loaded = load_source(source, spec, variant, base, allow_base_mismatch, progress)
        manifest = _write_artifacts(folder, loaded, spec, progress)
    return Path(out), manifest


def weights_bytes(model) -> int:
    """Bytes of ``model``'s weights as fp32: about what its ONNX files hold (a full disk's estimate)."""
    return sum(4 * tensor.numel() for tensor in model.state_dict().values() if tensor.is_floating_point())


def _write_artifacts(folder: Path, loaded: ExportSource, spec: ExportSpec, progress) -> Manifest:
    """The ONNX files, engines and manifest of ``loaded`` in a temporary folder swapped in for ``folder``."""
    model = loaded.model
    written: Dict[str, Manifest] = {}

    def write(tmp: Path) -> None:
        files = export_graphs(model, spec, tmp, progress, loaded.calibration)
        engines = {}
        if spec.format == "trt":
            built = steps(
                list(files.items()), "export: TensorRT engine", progress, label=lambda item: item[0]
            )
            for name, onnx_path in built:
                inputs = io_signature(onnx_path)["inputs"]
                engines[name] = onnx_to_engine(onnx_path, tmp / names.engine_file(name), spec.engine, inputs)
        with phase("export: manifest (sha256 of every file)", progress):
            written["manifest"] = _manifest(loaded, spec, files, engines)
        text = json.dumps(written["manifest"].to_dict(), indent=2)
        atomic_write_text(tmp / names.MANIFEST_NAME, text + "\n")

    write_directory(folder, write, expected_bytes=weights_bytes(model))
    return written["manifest"]


def export(source, out, spec: ExportSpec, force: bool = False, **load) -> Tuple[Path, dict, Optional[Path]]:
    """``naslora-deploy export``: artifacts in ``out``, or for ``triton`` artifacts in
    ``out/artifacts`` and a model repository in ``out/model_repository``.

    ``force``: replace an earlier export in ``out`` (never anything else). ``load``: how the
    source is loaded (``export_artifacts``' ``variant``, ``base``, ``allow_base_mismatch``,
    ``progress``). Returns (artifact directory, manifest, Triton repository or None).
    """
    with output_lock(out, "export --out"):  # held across the steps that write there
        if spec.format == "peft":
            return _export_peft(
                source, out, spec, load.get("base"), load.get("allow_base_mismatch", False), force
            )
        if spec.format != "triton":
            return (*export_artifacts(source, out, spec, force=force, **load), None)

        prepare_triton_dir(out, replace=force)
        artifacts, manifest = export_artifacts(source, Path(out) / "artifacts", spec, force=True, **load)
        repository = artifacts_to_triton(
            artifacts, Path(out) / "model_repository", max_batch=spec.engine.max_batch
        )
        return artifacts, manifest, repository


def _export_peft(source, out, spec: ExportSpec, base, allow_base_mismatch: bool, force: bool):
    """``--format peft``: a PEFT LoRA adapter folder for transformers' ``SamModel`` (``exporters.peft``)."""

    written = run_to_peft(
        source,
        out,
        replace=force,
        base_checkpoint=base,
        allow_base_mismatch=allow_base_mismatch,
        merge=spec.merge,
    )
    return written, peft_manifest(written), None


def rebuild_source(manifest: Manifest, base=None, progress: Optional[bool] = False) -> ExportSource:
    """The PyTorch model an artifact directory was exported from, merged the same way (``progress``:
    the merge's, as ``load_source``). The merge is not measured again: the manifest holds its report."""
    described = manifest.source
    spec = ExportSpec.from_manifest(manifest)
    spec.format, spec.precision = "onnx", "fp32"  # the PyTorch reference: no engine, full precision
    path = Path(described["path"])
    if not path.exists():
        raise NasloraError(
            f"the export source {path} is gone; the PyTorch model cannot be rebuilt without it"
        )
    variant = described.get("variant") or manifest.variant
    base = base or described.get("base")
    return load_source(path, spec, variant, base, progress=progress, measure=False)


def _manifest(
    loaded: ExportSource, spec: ExportSpec, files: Dict[str, Path], engines: Dict[str, Path]
) -> Manifest:
    import onnx

    model = loaded.model
    described = {path.name: _describe(path) for path in files.values()}
    for path in engines.values():
        described[path.name] = _describe(path)
        described[path.name + ".json"] = _describe(Path(str(path) + ".json"))
    spec_dict = loaded.description.get("spec")
    # which model this is: the run's own record, or (a plain SAM checkpoint) the model's
    record = (
        RunSpec.from_dict(spec_dict).model_record()
        if spec_dict
        else plain_model_record(model, loaded.variant)
    )
    return Manifest(
        **record,
        naslora_deploy_version=__version__,
        torch_version=torch.__version__,
        onnx_version=onnx.__version__,
        merge={
            "mode": loaded.merge_report["mode"] if loaded.merge_report else "none (plain SAM checkpoint)",
            "report": loaded.merge_report,
        },
        precision=spec.precision,
        onnx_precision=spec.onnx_precision,
        opset=spec.opset,
        prompt_point_slots=spec.point_slots + 2 if spec.prompts else None,
        export=spec.to_dict(),
        source=loaded.description,
        files=described,
        trtexec={  # how to build each engine on the target (a Jetson) from the ONNX files
            name: trtexec_command(
                path, path.with_suffix(".engine"), io_signature(path)["inputs"], spec.engine
            )
            for name, path in files.items()
        },
    )


def plain_model_record(model, variant: str) -> dict:
    """``RunSpec.model_record`` for a plain SAM checkpoint: no run, so read from the model."""
    return {
        "variant": variant,
        "image_size": model.image_size,
        "normalization": model.normalization,
        "head": "binary",
        "classes": {"num_classes": model.num_classes},
        "num_queries": 0,
        "input_mapping": None,
    }
