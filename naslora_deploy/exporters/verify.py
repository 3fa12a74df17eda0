"""``naslora-deploy verify``: artifacts against the PyTorch model, and against plain SAM.

Parity: the PyTorch model (rebuilt from the manifest's source, merged the same
way) and every available backend run the same images; per output: max and mean
absolute error, relative error, and the IoU of thresholded masks. The
zero-overhead proof: the artifact's graphs against graphs exported from plain
``build_sam(variant)`` with the same settings, plus a measured latency ratio.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from naslora_deploy.common import contract as names
from naslora_deploy.common.lazy import lazy_import
from naslora_deploy.common.progress import progress as progress_bar
from naslora_deploy.core.merging.calibration import calibration_images
from naslora_deploy.core.merging.fidelity import probe_images
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.variants import build_sam
from naslora_deploy.exporters.criteria import PASS_CRITERIA, PassCriteria, criteria_for, criterion_text
from naslora_deploy.exporters.export import ExportSpec, export_graphs
from naslora_deploy.exporters.structure import compare_signatures, graph_signature
from naslora_deploy.exporters.torch_backend import rebuild_verified
from naslora_deploy.exporters.wrappers import MaskDecoderGraph
from naslora_deploy.runtime.backends import available_providers, open_graph, ort_session
from naslora_deploy.runtime.engines import load_engine_bytes
from naslora_deploy.runtime.manifest import artifact_file, read_manifest


@dataclass
class ParityRow:
    """One backend's agreement with PyTorch on one output, and the limits it is held to (None: reported)."""

    backend: str
    output: str
    max_abs: float
    mean_abs: float
    rel: float
    mask_iou: Optional[float] = None
    tolerance: Optional[float] = None
    min_mask_iou: Optional[float] = None
    max_rel: Optional[float] = None

    @property
    def passed(self) -> bool:
        """Within every limit it has (true where only reported)."""
        close = self.tolerance is None or self.max_abs <= self.tolerance
        close = close and (self.max_rel is None or self.rel <= self.max_rel)
        return close and (self.min_mask_iou is None or (self.mask_iou or 0.0) >= self.min_mask_iou)

    @property
    def criterion(self) -> str:
        """The limits as a short text."""
        return criterion_text(self.tolerance, self.max_rel, self.min_mask_iou)


@dataclass
class ParityReport:
    """All rows and the criteria they were held to; ``passed`` is false if any row misses its limits."""

    rows: List[ParityRow] = field(default_factory=list)
    criteria: Dict[str, PassCriteria] = field(default_factory=dict)  # "onnx" / "tensorrt" -> criteria

    @property
    def passed(self) -> bool:
        """Every row within its limits."""
        return all(row.passed for row in self.rows)

    def table(self) -> str:
        """A printable table, headed by the criteria it applies."""
        lines = [f"{kind} {c.describe()}" for kind, c in self.criteria.items()]
        lines.append(
            f"{'backend':<28} {'output':<34} {'max abs':>10} {'mean abs':>10} {'rel':>10} {'mask IoU':>9}  "
            f"{'criterion':<22} ok"
        )
        for r in self.rows:
            iou = f"{r.mask_iou:.4f}" if r.mask_iou is not None else "-"
            criterion = r.criterion if r.criterion != "reported only" else "report"
            lines.append(
                f"{r.backend:<28} {r.output:<34} {r.max_abs:>10.3e} {r.mean_abs:>10.3e} {r.rel:>10.3e} "
                f"{iou:>9}  {criterion:<22} " + ("yes" if r.passed else "NO")
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Rows, criteria and the verdict as JSON."""
        return {
            "criteria": {kind: c.to_dict() for kind, c in self.criteria.items()},
            "parity": [{**vars(r), "criterion": r.criterion, "passed": r.passed} for r in self.rows],
            "passed": self.passed,
        }


def verification_images(manifest: dict, images_dir=None, count: int = 2, seed: int = 0) -> np.ndarray:
    """(N, 3, S, S) float32 model inputs: preprocessed ``images_dir`` files or seeded probes."""
    size = manifest.image_size
    if images_dir:
        return calibration_images(images_dir, count, size, manifest.normalization).numpy()

    return probe_images(size, count, seed=seed).numpy()


def _row(backend, output, got, expected, limits: dict, masks=False) -> ParityRow:
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    rel = float(np.linalg.norm(diff) / max(np.linalg.norm(expected), 1e-30))
    iou = None
    if masks:
        a, b = got > 0, expected > 0
        union = np.logical_or(a, b).sum()
        iou = float(np.logical_and(a, b).sum() / union) if union else 1.0
    return ParityRow(backend, output, float(diff.max()), float(diff.mean()), rel, iou, **limits)


def torch_outputs(model, images: np.ndarray) -> Dict[str, np.ndarray]:
    """Reference outputs of the PyTorch model, through the same export wrappers."""

    with torch.no_grad():
        embeddings = model.sam.image_encoder(torch.from_numpy(images))
        decoded = MaskDecoderGraph(model)(embeddings)
    out = {names.IMAGE_EMBEDDINGS: embeddings.numpy()}
    out.update(
        {name: t.numpy() for name, t in zip(names.decoder_outputs(model.class_head is not None), decoded)}
    )
    return out


def verify_parity(
    directory,
    images_dir=None,
    count: int = 2,
    seed: int = 0,
    tolerance: Optional[float] = None,
    progress: Optional[bool] = False,
) -> ParityReport:
    """Compare every ONNX backend available here (and TensorRT engines) with PyTorch."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    source = rebuild_verified(manifest, directory)
    images = verification_images(manifest, images_dir, count, seed)
    expected = torch_outputs(source.model, images)
    criteria = criteria_for(manifest.onnx_precision, tolerance)
    report = ParityReport(criteria={"onnx": criteria})
    for provider in progress_bar(available_providers(), "verify: onnxruntime providers", progress):
        encoder = open_graph(directory, manifest, names.IMAGE_ENCODER, provider)
        decoder = open_graph(directory, manifest, names.MASK_DECODER, provider)
        embeddings = encoder.run(None, {names.IMAGE: images})[0]
        tag = f"onnxruntime {provider.replace('ExecutionProvider', '')}"
        report.rows.append(
            _row(
                tag,
                names.IMAGE_EMBEDDINGS,
                embeddings,
                expected[names.IMAGE_EMBEDDINGS],
                criteria.limits("embeddings"),
            )
        )
        outputs = [o.name for o in decoder.get_outputs()]
        for name, got in zip(
            outputs, decoder.run(None, {names.IMAGE_EMBEDDINGS: expected[names.IMAGE_EMBEDDINGS]})
        ):
            limits = criteria.limits("decoder")
            report.rows.append(
                _row(tag, f"{name} (torch embeddings)", got, expected[name], limits, "mask" in name)
            )
        end_to_end = decoder.run([names.MASK_LOGITS], {names.IMAGE_EMBEDDINGS: embeddings})[0]
        report.rows.append(
            _row(
                tag,
                f"{names.MASK_LOGITS} (end to end)",
                end_to_end,
                expected[names.MASK_LOGITS],
                criteria.limits("end_to_end"),
                True,
            )
        )
    engine_rows = verify_engines(directory, manifest, images, expected)
    if engine_rows:
        report.criteria["tensorrt"] = engine_criteria(manifest.precision)
    report.rows.extend(engine_rows)
    return report


def engine_criteria(precision: str) -> PassCriteria:
    """TensorRT engines' criteria: their precision's, except that int8 engines (built with ``--int8
    --fp16``) run their decoders in fp16, so the decoders get fp16's limits."""
    if precision != "int8":
        return PASS_CRITERIA[precision]
    fp16 = PASS_CRITERIA["fp16"]
    return dataclasses.replace(
        PASS_CRITERIA["int8"],
        decoder_max_abs=None,
        decoder_max_rel=fp16.decoder_max_rel,
        basis=PASS_CRITERIA["int8"].basis + "; decoders in fp16 at fp16's limit",
    )


def verify_engines(
    directory: Path, manifest: dict, images: np.ndarray, expected: Dict[str, np.ndarray]
) -> List[ParityRow]:
    """TensorRT engines run through polygraphy's ``TrtRunner`` and ``Comparator``, where present."""
    if not (directory / names.engine_file(names.IMAGE_ENCODER)).is_file():
        return []
    polygraphy_trt = lazy_import("polygraphy.backend.trt", "trt", "verifying TensorRT engines")
    Comparator = lazy_import("polygraphy.comparator", "trt", "verifying TensorRT engines").Comparator

    tag = f"tensorrt {manifest.precision} (polygraphy)"
    criteria = engine_criteria(manifest.precision)
    feeds = {
        names.IMAGE_ENCODER: {names.IMAGE: images},
        names.MASK_DECODER: {names.IMAGE_EMBEDDINGS: expected[names.IMAGE_EMBEDDINGS]},
    }
    rows = []
    for name, feed in feeds.items():
        engine_file = artifact_file(directory, manifest, names.engine_file(name))
        sidecar = artifact_file(directory, manifest, names.engine_file(name) + ".json")
        engine = polygraphy_trt.EngineFromBytes(load_engine_bytes(engine_file, sidecar))
        outputs = Comparator.run([polygraphy_trt.TrtRunner(engine, name=name)], data_loader=[feed])[0][1][0]
        for output, got in outputs.items():
            limits = criteria.limits("embeddings" if output == names.IMAGE_EMBEDDINGS else "decoder")
            rows.append(_row(tag, output, np.asarray(got), expected[output], limits, "mask" in output))
    return rows


def plain_sam_proof(directory, repeats: int = 10) -> dict:
    """Structure and ORT CPU latency of the artifact against plain ``build_sam(variant)``."""

    directory = Path(directory)
    manifest = read_manifest(directory)
    spec = ExportSpec.from_manifest(manifest)
    spec.format, spec.prompts = "onnx", False
    plain = SegmentationModel(build_sam(manifest.variant)).eval()  # pretrained weights where it has them
    with tempfile.TemporaryDirectory() as tmp:
        files = export_graphs(plain, spec, Path(tmp))
        artifact_encoder, plain_encoder = (
            artifact_file(directory, manifest, names.onnx_file(names.IMAGE_ENCODER)),
            files[names.IMAGE_ENCODER],
        )
        structure = compare_signatures(graph_signature(artifact_encoder), graph_signature(plain_encoder))
        if repeats > 0:
            structure["image_encoder_latency"] = latency_ratio(
                artifact_encoder, plain_encoder, manifest.image_size, repeats
            )
    structure["plain_sam"] = (
        structure["identical_operators"]
        and structure["identical_initializers"]
        and structure["identical_macs"]
    )
    structure["merge_mode"] = manifest.merge["mode"]
    return structure


def latency_ratio(candidate: Path, reference: Path, size: int, repeats: int = 10) -> dict:
    """Median ORT CPU latency of two encoders, alternating runs in one process."""
    sessions = {
        "artifact": ort_session(candidate, "CPUExecutionProvider"),
        "plain": ort_session(reference, "CPUExecutionProvider"),
    }
    image = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    for session in sessions.values():
        session.run(None, {names.IMAGE: image})
    times = {name: [] for name in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {names.IMAGE: image})
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    return {
        "artifact_ms": medians["artifact"],
        "plain_ms": medians["plain"],
        "ratio": medians["artifact"] / medians["plain"],
        "repeats": repeats,
    }


def proof_summary(proof: dict) -> str:
    """The plain-SAM proof in a few printable lines."""
    lines = [
        f"against plain SAM ({proof['merge_mode']} merge): identical operators "
        f"{proof['identical_operators']}, "
        f"initializers {proof['identical_initializers']}, MACs {proof['identical_macs']} "
        f"({proof['candidate']['gmacs']:.3f} vs {proof['reference']['gmacs']:.3f} GMAC)"
    ]
    if not proof["plain_sam"]:
        lines.append(
            f"  extra nodes {proof['extra_nodes']}, extra parameters {proof['extra_parameters']}, "
            f"extra MACs {proof['extra_gmacs']:.4f} G ({proof['extra_macs_percent']:.2f} %)"
        )
    latency = proof.get("image_encoder_latency")
    if latency:
        lines.append(
            f"  onnxruntime CPU encoder latency: {latency['artifact_ms']:.1f} ms vs plain "
            f"{latency['plain_ms']:.1f} ms, "
            f"ratio {latency['ratio']:.3f} (medians of {latency['repeats']} alternating runs)"
        )
    return "\n".join(lines)
