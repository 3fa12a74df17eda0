"""Fold adapters back into SAM: ``merge(model, "dense" | "fused")``.

Dense: each adapter becomes ``W_d M W_e`` added to the qkv weight (and ``W_d c``
to its bias), with ``M`` an r x r matrix (``c`` an r-vector) standing in for the
cell. Exact for LoRA and the per-token parts of a linear cell (skip, none, PC
pass-through channels); spatial candidates can only be approximated, by least
squares over calibration images (``core.merging.folds``: sequential by default, block by
block on the merged stream) or by their response to a spatially constant input.
A ``darts`` cell is non-linear: it is always fitted by least squares, on
generated probe images where no calibration is given. Merge-aware recovery
(``recover=STEPS``, ``core.merging.recovery``) then tunes the folded low-rank factors by
distillation from the unmerged model and merges them exactly. Fused: the cell
collapses into one fixed kernel; exact.

Every merge is measured against the unmerged model (see ``fidelity``), on
images the fit never saw: where anything is fitted on calibration images, the
even positions fit and the odd ones measure (``calibration.split_positions``).

The per-layer maths lives on the layers (``AdaptedQKV.delta_weight``,
``AdaptedQKV.fused``, ``LowRankAdapter.constant_response_fold``) and in
``folds``; this module walks the model, chooses the fold and writes the report.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch

from naslora_deploy.common.errors import MergeError
from naslora_deploy.common.progress import phase, steps
from naslora_deploy.core.adapters.injection import adapted_layers, attention_blocks
from naslora_deploy.core.adapters.layers import AdaptedQKV
from naslora_deploy.core.merging.calibration import (
    Calibration,
    calibration_batches,
    count_images,
    split_positions,
)
from naslora_deploy.core.merging.fidelity import Heads, measure_fidelity, probe_images
from naslora_deploy.core.merging.folds import (
    FITS,
    Folds,
    Intercepts,
    constant_response_folds,
    dense_copy,
    identity_folds,
    least_squares_folds,
    sequential_folds,
)
from naslora_deploy.core.merging.recovery import Recovery, recover_dense
from naslora_deploy.core.merging.report import MergeReport, ProjectionFidelity
from naslora_deploy.core.merging.spec import merge_problem

Batches = Callable[[], Iterable[torch.Tensor]]

__all__ = [
    "merge",
    "dense_copy",
    "dense_candidates",
    "least_squares_folds",
    "constant_response_folds",
    "FITS",
]


@dataclass
class MergeJob:
    """One merge's inputs, checked: what the fold strategies read."""

    sam: object
    head: object  # the SegmentationModel around ``sam``, or None
    layers: Dict[int, AdaptedQKV]
    config: object  # the AdapterConfig
    batches: Optional[Batches]  # calibration, or None
    fit_images: Batches
    fitted: bool  # a dense cell fold is fitted by least squares
    fit: str
    recovery: Recovery
    prompt: str
    progress: Optional[bool]
    notes: List[str]


@dataclass
class Merged:
    """What a merge strategy gives: the merged SAM, its branches to measure, how it folded."""

    sam: object
    candidates: Dict[int, Callable]
    fold: str
    recovered: object = None  # a RecoveryReport where recovery ran


def merge(
    model,
    mode: str,
    calibration: Optional[Calibration] = None,
    probe_count: int = 2,
    progress: Optional[bool] = False,
    fit: str = "sequential",
    recover: Union[int, Recovery] = 0,
    measure: bool = True,
):
    """Merge the adapters of ``model``; returns ``(merged_model, report)``.

    ``model``: an adapted SAM, or a ``SegmentationModel`` (what ``load_adapter``
    returns), which gives back a ``SegmentationModel`` with its head copied and
    adds task-level fidelity (mask IoU merged vs unmerged) to the report.
    ``model`` itself is never modified. ``calibration``: a (N, 3, S, S) batch of
    preprocessed images, or a callable returning an iterable of such batches,
    or any re-iterable of batches; cast to the model's dtype and device.
    Without it, linear cells are folded by their constant-input response (a
    ``darts`` cell by least squares on generated probe images) and the report
    is measured on ``probe_count`` generated images. ``fit``: ``"sequential"``
    (block by block on the merged stream, with intercept) or ``"joint"`` (the
    original fold: all blocks on the unmerged model, no intercept); used where
    a fold is fitted. ``recover``: dense only, needs ``calibration``: tune the
    folded factors for this many steps (or a ``Recovery``) before the exact
    merge. ``progress``: bars over the passes (None: on a terminal only; a log gets one line per
    fitted block and measured image). ``measure=False``: skip the fidelity measurement (the report
    is None): for rebuilding a model whose merge was measured already (``verify``).
    Raises ``MergeError`` if a merged weight is not finite, ``ValueError`` on bad arguments.
    """
    head = model if hasattr(model, "sam") else None
    sam = head.sam if head is not None else model
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}; choose one of {', '.join(FITS)}")
    recovery = recover if isinstance(recover, Recovery) else Recovery(steps=recover)
    problem = merge_problem(mode, recovery.steps, calibration is not None, recovery.decoder)
    if problem:
        raise ValueError(problem)
    layers = dict(adapted_layers(sam))
    config = getattr(sam, "adapter_config", None) or (next(iter(layers.values())).config if layers else None)
    if config is None:
        raise MergeError("the model has no adapters; nothing to merge")
    if recovery.decoder and head is None:
        raise ValueError("recovering the decoder needs a segmentation model (what load_adapter returns)")
    parameter = next(sam.parameters())
    batches = None
    if calibration is not None:
        batches = calibration_batches(
            calibration, sam.image_encoder.img_size, parameter.dtype, parameter.device
        )
    folding = mode == "dense" and config.has_adapters
    fitted = folding and config.has_cell and (batches is not None or not config.linear_cell)
    fit_images, measure_images, fitted_on, measured_on, notes = _image_plan(
        batches, fitted or (folding and recovery.steps > 0), sam, probe_count
    )
    prompt = getattr(getattr(head, "spec", None), "prompt", "none")
    job = MergeJob(
        sam, head, layers, config, batches, fit_images, fitted, fit, recovery, prompt, progress, notes
    )
    with torch.no_grad():
        with phase(f"merge: {mode} fold of {len(layers)} adapted block(s)", progress):
            merged = MERGE_STRATEGIES[mode if config.has_adapters else "plain"](job)
        merged_head = None
        if head is not None:
            merged_head = head.with_sam(merged.sam)
            merged_head.class_head = copy.deepcopy(head.class_head)
        if not measure:
            return (merged.sam if head is None else merged_head.train(head.training)), None
        prompts = ["box"] if prompt == "box" and head is not None and head.class_head is None else ["none"]
        fidelity = measure_fidelity(
            sam,
            merged.sam,
            layers,
            merged.candidates,
            _one_by_one(measure_images, "merge: measure image", progress),
            Heads(head, merged_head, prompts) if head is not None else None,
        )
    fitted_on = fitted_on if (fitted or merged.recovered is not None) else "nothing"
    report = _report(mode, config, merged, fidelity, layers, notes, fitted_on, measured_on)
    if head is None:
        return merged.sam, report
    return merged_head.train(head.training), report


def _one_by_one(batches: Batches, desc: str, progress: Optional[bool]) -> Iterable[torch.Tensor]:
    """Each image of ``batches()`` as a batch of one, with a bar or one log line per image."""
    images = (image for batch in batches() for image in batch.split(1))
    return steps(images, desc, progress, total=count_images(batches))


def _report(mode, config, merged: Merged, fidelity, layers, notes, fitted_on, measured_on) -> MergeReport:
    """The merge's report: its fold, the images, the measured fidelity and the notes that qualify it."""
    report = MergeReport(
        mode=mode,
        method=config.method,
        fold=merged.fold,
        measured_on=measured_on,
        images=fidelity.images,
        embedding_rel_error=fidelity.embedding_rel_error,
        embedding_rel_error_of_adaptation=fidelity.embedding_rel_error_of_adaptation,
        projections=[
            ProjectionFidelity(i, t, layers[i].adapters[t].spatial_weight(), err, norm)
            for (i, t), (err, norm) in fidelity.branch_errors.items()
        ],
        notes=notes,
        fitted_on=fitted_on,
        mask_iou=fidelity.mask_iou,
        recovery=merged.recovered,
    )
    if "box" in report.mask_iou:
        report.notes.append("box prompt for the mask IoU: the central 3/4 of the input (fidelity.fixed_box)")
    if mode == "dense" and config.has_cell and not config.linear_cell:
        report.notes.append("the darts cell is non-linear: its dense fold is an approximation")
    elif mode == "dense" and config.has_cell and "max_pool_3x3" in config.ops:
        report.notes.append("max pooling is non-linear: its dense fold is an approximation")
    return report


# ----- merge strategies: the encoder as it is, fused, or dense (with its fold table) --------------
def _plain(job: MergeJob) -> Merged:
    """Decoder-only or full fine-tuning: the encoder is plain SAM already."""
    what = "full" if job.config.trains_encoder else "decoder-only"
    if job.recovery.steps:
        job.notes.append(f"recovery skipped: a {what} model has no folded factors")
    return Merged(dense_copy(job.sam, job.layers, {}), {}, f"nothing to fold ({what} fine-tuning)")


def _fused(job: MergeJob) -> Merged:
    """Exact: each cell collapses into one kernel (a darts cell is kept as trained)."""
    merged_sam, candidates = _fused_copy(job.sam, job.layers)
    fold = "exact (one mixed kernel + max pool)" if job.config.has_cell else "exact (LoRA branch kept)"
    if job.config.has_cell and not job.config.linear_cell:
        fold = "exact (the darts cell kept as trained)"
    return Merged(merged_sam, candidates, fold)


def _dense(job: MergeJob) -> Merged:
    """Plain SAM: the first fold of ``DENSE_FOLDS`` that applies, then recovery where asked."""
    folds, intercepts, fold = next(make(job) for applies, make in DENSE_FOLDS if applies(job))
    if job.recovery.steps:
        merged_sam, recovered = recover_dense(
            job.sam,
            job.head,
            job.layers,
            folds,
            intercepts,
            job.fit_images,
            job.recovery,
            job.prompt,
            job.progress,
        )
        fold += f", then {job.recovery.steps} steps of merge-aware recovery"
    else:
        merged_sam, recovered = dense_copy(job.sam, job.layers, folds, intercepts), None
    return Merged(merged_sam, dense_candidates(merged_sam, job.layers), fold, recovered)


def _fitted_folds(job: MergeJob) -> Tuple[Folds, Optional[Intercepts], str]:
    folds, intercepts, fold = _fit(job.sam, job.layers, job.fit_images, job.fit, job.progress, job.notes)
    if job.batches is not None:
        return folds, intercepts, fold + " over calibration images"
    return (
        folds,
        intercepts,
        fold + (" over generated probe images (the darts cell is non-linear and no calibration was given)"),
    )


FoldMaker = Callable[[MergeJob], Tuple[Folds, Optional[Intercepts], str]]
# (applies, make folds): the first that applies folds the cells; each gives (folds, intercepts, description)
DENSE_FOLDS: Tuple[Tuple[Callable[[MergeJob], bool], FoldMaker], ...] = (
    (
        lambda job: not job.config.has_cell,
        lambda job: (identity_folds(job.layers), None, "identity (plain LoRA)"),
    ),
    (lambda job: job.fitted, _fitted_folds),
    (lambda job: True, lambda job: (constant_response_folds(job.layers), None, "constant-input response")),
)
MERGE_STRATEGIES: Dict[str, Callable[[MergeJob], Merged]] = {
    "plain": _plain,
    "fused": _fused,
    "dense": _dense,
}


def _image_plan(
    batches: Optional[Batches], fitting: bool, sam, probe_count: int
) -> Tuple[Batches, Batches, str, str, list]:
    """Which images fit and which measure, and how the report names them."""
    parameter = next(sam.parameters())
    size = sam.image_encoder.img_size
    notes: list = []
    if batches is None:
        fit_count = max(probe_count, 2)

        def probes(seed: int, count: int) -> Batches:
            return lambda: [probe_images(size, count, seed, parameter.device, parameter.dtype)]

        return (
            probes(1, fit_count),
            probes(0, probe_count),
            f"generated probe images (probe_images(size={size}, count={fit_count}, seed=1))",
            f"generated probe images (probe_images(size={size}, count={probe_count}, seed=0))",
            notes,
        )
    total = count_images(batches)
    if not fitting:
        return batches, batches, "nothing", f"all {total} calibration image(s) (nothing was fitted)", notes
    if total < 2:
        notes.append("one calibration image: fitted and measured on the same image (in sample)")
        return batches, batches, "the one calibration image", "the same calibration image (in sample)", notes
    return (
        split_positions(batches, 0),
        split_positions(batches, 1),
        f"{(total + 1) // 2} calibration image(s) at even positions (0, 2, ...)",
        f"the other {total // 2} calibration image(s), at odd positions (1, 3, ...), held out from the fit",
        notes,
    )


def _fit(
    sam, layers: Dict[int, AdaptedQKV], images: Batches, fit: str, progress: Optional[bool], notes: list
) -> Tuple[Folds, Optional[Intercepts], str]:
    """Least-squares folds of the chosen ``fit`` and their description."""
    if fit == "joint":
        fitting = steps(list(images()), "merge: fit batch", progress)
        return (
            least_squares_folds(sam, fitting),
            None,
            "least squares, joint (all blocks on the unmerged model's codes, no intercept)",
        )
    folds, intercepts = sequential_folds(sam, images, progress=progress)
    if intercepts is None:
        notes.append("a qkv layer has no bias: the sequential fold was fitted without its intercept")
    return (
        folds,
        intercepts,
        "least squares, sequential (block by block on the merged stream, target: the unmerged cell"
        + (", intercept in the qkv bias)" if intercepts is not None else ")"),
    )


def dense_candidates(
    merged, layers: Dict[int, AdaptedQKV]
) -> Dict[int, Callable[[torch.Tensor], torch.Tensor]]:
    """Per adapted block, the merged model's branch (its qkv minus the base qkv) on the adapted columns."""
    blocks = [block for _, block in attention_blocks(merged.image_encoder)]
    candidates = {}
    for index, layer in layers.items():
        linear, base = blocks[index].attn.qkv, layer.base_layer
        columns = layer.target_columns
        weight = (linear.weight.double() - base.weight.double())[columns]
        bias = None if base.bias is None else (linear.bias.double() - base.bias.double())[columns]
        candidates[index] = _linear_branch(weight, bias)
    return candidates


def _linear_branch(
    weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.nn.functional.linear(x.double(), weight, bias)


def _columns_of(branch: Callable, columns: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A full-width branch narrowed to the adapted columns, in ``AdaptedQKV.delta``'s order."""
    return lambda x: branch(x)[..., columns]


def _fused_copy(model, layers: Dict[int, AdaptedQKV]):
    """A copy whose adapted qkv layers are ``FusedQKV``, and their branches."""
    fused = copy.deepcopy(model)
    blocks = [block for _, block in attention_blocks(fused.image_encoder)]
    candidates = {}
    for index, layer in layers.items():
        attn = blocks[index].attn
        module = attn.qkv.fused()
        for name, tensor in module.named_buffers():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise MergeError(
                    f"fused merge of block {index} qkv gives non-finite {name}; the model was left unchanged"
                )
        attn.qkv = module
        candidates[index] = _columns_of(module.delta, layer.target_columns)
    if hasattr(fused, "adapter_config"):
        fused.merged_from_config = fused.adapter_config
        del fused.adapter_config
    return fused, candidates
