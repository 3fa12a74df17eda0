"""``naslora-deploy verify``: artifacts against the PyTorch model, and against plain SAM.

Parity: the PyTorch model (rebuilt from the manifest's source, merged the same
way) and every available backend run the same images through every model the
artifact holds: the image encoder, the prompt-free decoder, and the prompt
decoder with boxes, with points and (where its graph takes one) with a previous
mask as ``mask_input``; per output: max and mean absolute error, relative error,
and the IoU of thresholded masks; per model: the largest difference, the lowest
mask IoU and pass or fail. Progress is shown per model and image. The
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
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from naslora_deploy.common import contract as names
from naslora_deploy.common.lazy import lazy_import
from naslora_deploy.common.progress import phase, steps
from naslora_deploy.core.merging.calibration import calibration_images
from naslora_deploy.core.merging.fidelity import probe_images
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.variants import build_sam
from naslora_deploy.exporters.criteria import PASS_CRITERIA, PassCriteria, criteria_for, criterion_text
from naslora_deploy.exporters.export import ExportSpec, export_graphs
from naslora_deploy.exporters.structure import compare_signatures, graph_signature
from naslora_deploy.exporters.torch_backend import rebuild_verified
from naslora_deploy.exporters.wrappers import MaskDecoderGraph, PromptDecoderGraph
from naslora_deploy.runtime.backends import OnnxRuntimeBackend, available_providers, ort_session
from naslora_deploy.runtime.engines import load_checked_engine
from naslora_deploy.runtime.manifest import artifact_file, is_listed, read_manifest
from naslora_deploy.runtime.prompts import MASK_INPUT

# the models verify compares, as its table and JSON name them
ENCODER_MODEL, DECODER_MODEL, PROMPT_MODEL = "image encoder", "prompt-free decoder", "prompt decoder"
MODELS = (ENCODER_MODEL, DECODER_MODEL, PROMPT_MODEL)
PROMPT_KINDS = ("boxes", "points", "box + mask_input")  # the last only where the graph takes mask_input
NOT_IN_ARTIFACT = "not in artifact (exported without --prompts)"


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
    model: str = ""  # one of MODELS

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
class ModelVerdict:
    """One model on one backend: the largest logit (or embedding) difference, the lowest mask IoU, the
    verdict ("pass", "FAIL", or why it was not compared)."""

    backend: str
    model: str
    max_abs: Optional[float] = None
    min_mask_iou: Optional[float] = None
    status: str = "pass"

    def line(self) -> str:
        """``model: max abs ..., mask IoU ..., pass`` (or its status alone)."""
        if self.max_abs is None:
            return f"{self.model}: {self.status}"
        iou = f", mask IoU {self.min_mask_iou:.4f}" if self.min_mask_iou is not None else ""
        what = "embeddings" if self.model == ENCODER_MODEL else "logits"
        return f"{self.model}: max abs ({what}) {self.max_abs:.3e}{iou}, {self.status}"


@dataclass
class ParityReport:
    """All rows and the criteria they were held to; ``passed`` is false if any row misses its limits."""

    rows: List[ParityRow] = field(default_factory=list)
    criteria: Dict[str, PassCriteria] = field(default_factory=dict)  # "onnx" / "tensorrt" -> criteria
    absent: Dict[str, str] = field(default_factory=dict)  # model -> why it was not compared

    @property
    def passed(self) -> bool:
        """Every row within its limits."""
        return all(row.passed for row in self.rows)

    def models(self) -> List[ModelVerdict]:
        """Per backend and model: the largest logit/embedding difference, the lowest mask IoU, the verdict."""
        verdicts: Dict[tuple, ModelVerdict] = {}
        for row in self.rows:
            verdict = verdicts.setdefault((row.backend, row.model), ModelVerdict(row.backend, row.model, 0.0))
            if "logits" in row.output or row.output == names.IMAGE_EMBEDDINGS:
                verdict.max_abs = max(verdict.max_abs, row.max_abs)
            if row.mask_iou is not None:
                verdict.min_mask_iou = min(row.mask_iou, verdict.min_mask_iou or 1.0)
            if not row.passed:
                verdict.status = "FAIL"
        backends = dict.fromkeys(row.backend for row in self.rows)
        for backend in backends:
            for model, why in self.absent.items():
                verdicts[(backend, model)] = ModelVerdict(backend, model, status=why)
        return sorted(
            verdicts.values(), key=lambda v: (list(backends).index(v.backend), MODELS.index(v.model))
        )

    def table(self) -> str:
        """A printable table, headed by the criteria it applies and followed by one verdict per model."""
        lines = [f"{kind} {c.describe()}" for kind, c in self.criteria.items()]
        lines.append(
            f"{'backend':<28} {'output':<44} {'max abs':>10} {'mean abs':>10} {'rel':>10} {'mask IoU':>9}  "
            f"{'criterion':<22} ok"
        )
        for r in self.rows:
            iou = f"{r.mask_iou:.4f}" if r.mask_iou is not None else "-"
            criterion = r.criterion if r.criterion != "reported only" else "report"
            lines.append(
                f"{r.backend:<28} {r.output:<44} {r.max_abs:>10.3e} {r.mean_abs:>10.3e} {r.rel:>10.3e} "
                f"{iou:>9}  {criterion:<22} " + ("yes" if r.passed else "NO")
            )
        backend = None
        for verdict in self.models():
            if verdict.backend != backend:
                backend = verdict.backend
                lines.append(f"per model, {backend}:")
            lines.append(f"  {verdict.line()}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Rows, per-model verdicts, criteria and the verdict as JSON."""
        return {
            "criteria": {kind: c.to_dict() for kind, c in self.criteria.items()},
            "parity": [{**vars(r), "criterion": r.criterion, "passed": r.passed} for r in self.rows],
            "models": [vars(verdict) for verdict in self.models()],
            "passed": self.passed,
        }


def verification_images(manifest: dict, images_dir=None, count: int = 2, seed: int = 0) -> np.ndarray:
    """(N, 3, S, S) float32 model inputs: preprocessed ``images_dir`` files or seeded probes."""
    size = manifest.image_size
    if images_dir:
        return calibration_images(images_dir, count, size, manifest.normalization).numpy()

    return probe_images(size, count, seed=seed).numpy()


def verification_prompts(size: int, kind: str, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Two seeded prompts in the prompt decoder's layout (``wrappers.PromptDecoderGraph``): (2, N, 2)
    coords and (2, N) labels. ``boxes``: the central 3/4 and a random box (labels 2, 3); ``points``
    (and the rest): a positive and a negative point, then two positive ones, each ended by padding (-1)."""
    rng = np.random.default_rng(seed)
    if kind == "points":
        coords = rng.uniform(0, size - 1, (2, 3, 2))
        labels = np.array([[1, 0, -1], [1, 1, -1]])
        coords[:, 2] = 0.0
    else:
        corners = np.sort(rng.uniform(0, size - 1, (2, 2)), axis=0)  # rows: top-left, bottom-right
        coords = np.stack([[[size / 8] * 2, [size * 7 / 8] * 2], corners])
        labels = np.array([[2, 3], [2, 3]])
    return coords.astype(np.float32), labels.astype(np.float32)


def _row(backend, output, got, expected, limits: dict, masks=False, model="") -> ParityRow:
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    rel = float(np.linalg.norm(diff) / max(np.linalg.norm(expected), 1e-30))
    iou = None
    if masks:
        a, b = got > 0, expected > 0
        union = np.logical_or(a, b).sum()
        iou = float(np.logical_and(a, b).sum() / union) if union else 1.0
    return ParityRow(backend, output, float(diff.max()), float(diff.mean()), rel, iou, **limits, model=model)


def _per_image(count: int, desc: str, progress: Optional[bool], run: Callable) -> Dict[str, np.ndarray]:
    """``run(i)`` (name -> array) for each image, with progress, concatenated along the first axis."""
    parts: Dict[str, list] = {}
    for index in steps(range(count), desc, progress):
        for name, value in run(index).items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(values) for name, values in parts.items()}


def _prompt_feeds(size: int, kind: str, seed: int, index: int, reference: Dict[str, np.ndarray]) -> tuple:
    """(coords, labels, mask_input or None) of ``kind`` for image ``index``; ``box + mask_input`` feeds
    PyTorch's own box logits (mask 0) back, as a refinement does."""
    coords, labels = verification_prompts(size, kind, seed * 1000 + index)
    if kind != "box + mask_input":
        return coords, labels, None
    previous = reference["boxes"][names.LOW_RES_LOGITS]
    return coords, labels, np.ascontiguousarray(previous[2 * index : 2 * index + 2, :1])


def torch_outputs(model, images: np.ndarray, prompts=(), seed: int = 0, progress=False) -> dict:
    """Reference outputs of the PyTorch model, through the same export wrappers, per image: names ->
    arrays, and for each prompt kind in ``prompts`` its own dict (``verification_prompts``)."""
    count, size = len(images), images.shape[-1]
    decoder = MaskDecoderGraph(model)
    with torch.no_grad():
        out = _per_image(
            count,
            "verify: PyTorch image encoder and prompt-free decoder, image",
            progress,
            lambda i: _torch_decoded(model, decoder, images[i : i + 1]),
        )
        graph = PromptDecoderGraph(model.sam) if prompts else None
        for kind in prompts:

            def run(i: int, kind=kind) -> Dict[str, np.ndarray]:
                coords, labels, mask = _prompt_feeds(size, kind, seed, i, out)
                extra = () if mask is None else (torch.from_numpy(mask), torch.ones(len(mask), 1))
                embedding = torch.from_numpy(out[names.IMAGE_EMBEDDINGS][i : i + 1])
                decoded = graph(embedding, torch.from_numpy(coords), torch.from_numpy(labels), *extra)
                return dict(zip(names.PROMPT_OUTPUTS, (t.numpy() for t in decoded)))

            out[kind] = _per_image(count, f"verify: PyTorch prompt decoder ({kind}), image", progress, run)
    return out


def _torch_decoded(model, decoder, image: np.ndarray) -> Dict[str, np.ndarray]:
    embeddings = model.sam.image_encoder(torch.from_numpy(image))
    decoded = decoder(embeddings)
    outputs = names.decoder_outputs(model.class_head is not None)
    return {names.IMAGE_EMBEDDINGS: embeddings.numpy(), **{n: t.numpy() for n, t in zip(outputs, decoded)}}


def prompt_kinds(manifest) -> Tuple[str, ...]:
    """The prompt kinds the artifact's prompt decoder is compared on (none where it has no prompt decoder;
    ``box + mask_input`` where its graph takes ``mask_input``)."""
    name = names.onnx_file(names.PROMPT_DECODER)
    if not is_listed(manifest, name):
        return ()
    takes_mask = any(value.get("name") == MASK_INPUT for value in manifest.files[name].get("inputs", []))
    return PROMPT_KINDS if takes_mask else PROMPT_KINDS[:2]


def verify_parity(
    directory,
    images_dir=None,
    count: int = 2,
    seed: int = 0,
    tolerance: Optional[float] = None,
    progress: Optional[bool] = False,
) -> ParityReport:
    """Compare every model (image encoder, prompt-free decoder, and the prompt decoder with boxes and
    points where the artifact has one) on every ONNX backend available here (and TensorRT engines)
    with PyTorch. ``progress``: per model and image (``common.progress``)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    with phase(f"verify: rebuild the PyTorch model from {manifest.source.get('path')}", progress):
        source = rebuild_verified(manifest, directory, progress)
    images = verification_images(manifest, images_dir, count, seed)
    kinds = prompt_kinds(manifest)
    expected = torch_outputs(source.model, images, kinds, seed, progress)
    criteria = criteria_for(manifest.onnx_precision, tolerance)
    report = ParityReport(criteria={"onnx": criteria})
    if not kinds:
        report.absent[PROMPT_MODEL] = NOT_IN_ARTIFACT
    for provider in available_providers():
        with phase(f"verify: onnxruntime {provider}", progress):
            backend = OnnxRuntimeBackend(directory, manifest, [provider])
            tag = f"onnxruntime {provider.replace('ExecutionProvider', '')}"
            report.rows.extend(_backend_rows(backend, tag, images, expected, criteria, kinds, seed, progress))
    engine_rows = verify_engines(directory, manifest, images, expected)
    if engine_rows:
        report.criteria["tensorrt"] = engine_criteria(manifest.precision)
    report.rows.extend(engine_rows)
    return report


def _host(value) -> np.ndarray:
    """An encoder output as a host array (the GPU backend hands back an OrtValue)."""
    return value if isinstance(value, np.ndarray) else value.numpy()


def _backend_rows(backend, tag, images, expected, criteria, kinds, seed, progress) -> List[ParityRow]:
    """One backend's rows, model by model, each run image by image (with progress)."""
    count, size = len(images), images.shape[-1]
    reference = expected[names.IMAGE_EMBEDDINGS]

    def row(model, output, got, wanted, part, masks=False) -> ParityRow:
        return _row(tag, output, got, wanted, criteria.limits(part), masks, model)

    def encode(i: int) -> Dict[str, np.ndarray]:
        return {names.IMAGE_EMBEDDINGS: _host(backend.encode(images[i : i + 1]))}

    embeddings = _per_image(count, f"verify: {tag} image encoder, image", progress, encode)
    embeddings = embeddings[names.IMAGE_EMBEDDINGS]
    rows = [row(ENCODER_MODEL, names.IMAGE_EMBEDDINGS, embeddings, reference, "embeddings")]

    def decode(i: int) -> Dict[str, np.ndarray]:
        end_to_end = backend.decode(embeddings[i : i + 1])[names.MASK_LOGITS]
        return {**backend.decode(reference[i : i + 1]), "end_to_end": end_to_end}

    decoded = _per_image(count, f"verify: {tag} prompt-free decoder, image", progress, decode)
    for name in names.decoder_outputs(names.CLASS_LOGITS in decoded):
        rows.append(
            row(
                DECODER_MODEL,
                f"{name} (torch embeddings)",
                decoded[name],
                expected[name],
                "decoder",
                "mask" in name,
            )
        )
    rows.append(
        row(
            DECODER_MODEL,
            f"{names.MASK_LOGITS} (end to end)",
            decoded["end_to_end"],
            expected[names.MASK_LOGITS],
            "end_to_end",
            True,
        )
    )
    for kind in kinds:

        def prompt_decode(i: int, kind=kind) -> Dict[str, np.ndarray]:
            coords, labels, mask = _prompt_feeds(size, kind, seed, i, expected)
            out = backend.prompt_decode(reference[i : i + 1], coords, labels, mask_input=mask)
            if kind == "boxes":  # and on the artifact's own embeddings: the encoder and this decoder together
                out["end_to_end"] = backend.prompt_decode(embeddings[i : i + 1], coords, labels)[
                    names.LOW_RES_LOGITS
                ]
            return out

        decoded = _per_image(count, f"verify: {tag} prompt decoder ({kind}), image", progress, prompt_decode)
        wanted = expected[kind]
        for name in names.PROMPT_OUTPUTS:
            masks = name == names.LOW_RES_LOGITS
            rows.append(row(PROMPT_MODEL, f"{name} ({kind})", decoded[name], wanted[name], "decoder", masks))
        if "end_to_end" in decoded:
            output = f"{names.LOW_RES_LOGITS} ({kind}, end to end)"
            rows.append(
                row(
                    PROMPT_MODEL,
                    output,
                    decoded["end_to_end"],
                    wanted[names.LOW_RES_LOGITS],
                    "end_to_end",
                    True,
                )
            )
    return rows


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
        # the runtime's own check: registered, unchanged, built by this TensorRT on this GPU
        engine = polygraphy_trt.EngineFromBytes(load_checked_engine(directory, manifest, name))
        outputs = Comparator.run([polygraphy_trt.TrtRunner(engine, name=name)], data_loader=[feed])[0][1][0]
        for output, got in outputs.items():
            limits = criteria.limits("embeddings" if output == names.IMAGE_EMBEDDINGS else "decoder")
            model = ENCODER_MODEL if name == names.IMAGE_ENCODER else DECODER_MODEL
            rows.append(_row(tag, output, np.asarray(got), expected[output], limits, "mask" in output, model))
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
