"""Fold adapters back into SAM: ``merge(model, "dense" | "fused")``.

Dense: each adapter becomes ``W_d M W_e`` added to the qkv weight (and ``W_d c``
to its bias), with ``M`` an r x r matrix (``c`` an r-vector) standing in for the
cell. Exact for LoRA and the per-token parts of a linear cell (skip, none, PC
pass-through channels); spatial candidates can only be approximated, by least
squares over calibration images (``core.folds``: sequential by default, block by
block on the merged stream) or by their response to a spatially constant input.
A ``darts`` cell is non-linear: it is always fitted by least squares, on
generated probe images where no calibration is given. Merge-aware recovery
(``recover=STEPS``, ``core.recovery``) then tunes the folded low-rank factors by
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
from typing import Callable, Dict, Iterable, Optional, Tuple, Union

import torch

from naslora_deploy.common.errors import MergeError
from naslora_deploy.common.progress import progress as progress_bar
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


def merge(
    model,
    mode: str,
    calibration: Optional[Calibration] = None,
    probe_count: int = 2,
    progress: Optional[bool] = False,
    fit: str = "sequential",
    recover: Union[int, Recovery] = 0,
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
    merge. ``progress``: bars over the passes (None: on a terminal only).
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
    image_size = sam.image_encoder.img_size
    batches = (
        calibration_batches(calibration, image_size, parameter.dtype, parameter.device)
        if calibration is not None
        else None
    )
    folding = mode == "dense" and config.has_adapters
    fitted = folding and config.has_cell and (batches is not None or not config.linear_cell)
    fit_images, measure_images, fitted_on, measured_on, notes = _image_plan(
        batches, fitted or (folding and recovery.steps > 0), sam, probe_count
    )
    prompt = getattr(getattr(head, "spec", None), "prompt", "none")
    recovered = None

    with torch.no_grad():
        if not config.has_adapters:  # decoder-only or full fine-tuning: the encoder is plain SAM already
            merged_sam, candidates = dense_copy(sam, layers, {}), {}
            what = "full" if config.trains_encoder else "decoder-only"
            fold = f"nothing to fold ({what} fine-tuning)"
            if recovery.steps:
                notes.append(f"recovery skipped: a {what} model has no folded factors")
        elif mode == "fused":
            merged_sam, candidates = _fused_copy(sam, layers)
            fold = "exact (one mixed kernel + max pool)" if config.has_cell else "exact (LoRA branch kept)"
            if config.has_cell and not config.linear_cell:
                fold = "exact (the darts cell kept as trained)"
        else:
            intercepts: Optional[Intercepts] = None
            if not config.has_cell:
                folds, fold = identity_folds(layers), "identity (plain LoRA)"
            elif fitted:
                folds, intercepts, fold = _fit(sam, layers, fit_images, fit, progress, notes)
                fold += (
                    " over calibration images"
                    if batches is not None
                    else " over generated probe images (the darts cell is non-linear and no calibration "
                    "was given)"
                )
            else:
                folds, fold = constant_response_folds(layers), "constant-input response"
            if recovery.steps:
                merged_sam, recovered = recover_dense(
                    sam, head, layers, folds, intercepts, fit_images, recovery, prompt, progress
                )
                fold += f", then {recovery.steps} steps of merge-aware recovery"
            else:
                merged_sam = dense_copy(sam, layers, folds, intercepts)
            candidates = dense_candidates(merged_sam, layers)

        merged_head = None
        if head is not None:
            merged_head = head.with_sam(merged_sam)
            merged_head.class_head = copy.deepcopy(head.class_head)
        prompts = ["box"] if prompt == "box" and head is not None and head.class_head is None else ["none"]
        fidelity = measure_fidelity(
            sam,
            merged_sam,
            layers,
            candidates,
            progress_bar(measure_images(), "merge: measure", progress),
            Heads(head, merged_head, prompts) if head is not None else None,
        )
    report = MergeReport(
        mode=mode,
        method=config.method,
        fold=fold,
        measured_on=measured_on,
        images=fidelity.images,
        embedding_rel_error=fidelity.embedding_rel_error,
        embedding_rel_error_of_adaptation=fidelity.embedding_rel_error_of_adaptation,
        projections=[
            ProjectionFidelity(i, t, layers[i].adapters[t].spatial_weight(), err, norm)
            for (i, t), (err, norm) in fidelity.branch_errors.items()
        ],
        notes=notes,
        fitted_on=fitted_on if (fitted or recovered is not None) else "nothing",
        mask_iou=fidelity.mask_iou,
        recovery=recovered,
    )
    if "box" in report.mask_iou:
        report.notes.append("box prompt for the mask IoU: the central 3/4 of the input (fidelity.fixed_box)")
    if mode == "dense" and config.has_cell and not config.linear_cell:
        report.notes.append("the darts cell is non-linear: its dense fold is an approximation")
    elif mode == "dense" and config.has_cell and "max_pool_3x3" in config.ops:
        report.notes.append("max pooling is non-linear: its dense fold is an approximation")
    if head is None:
        return merged_sam, report
    return merged_head.train(head.training), report


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
        fitting = progress_bar(images(), "merge: fit folds", progress)
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
