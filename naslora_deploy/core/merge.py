"""Fold adapters back into SAM: ``merge(model, "dense" | "fused")``.

Dense: each adapter becomes ``W_d M W_e`` added to the qkv weight, with ``M`` an
r x r matrix standing in for the cell. Exact for LoRA and the per-token parts of
a cell (skip, none, PC pass-through channels); spatial candidates can only be
approximated, by least squares over calibration images or by their response to
a spatially constant input. Fused: the cell collapses into one fixed kernel;
exact. Every merge is measured against the unmerged model (see ``fidelity``).

The per-layer maths lives on the layers (``AdaptedQKV.delta_weight``,
``AdaptedQKV.fused``, ``LowRankAdapter.constant_response_fold``); this module
walks the model, chooses the fold and writes the report.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Iterable, Optional

import torch
from torch import nn

from naslora_deploy.common.errors import MergeError
from naslora_deploy.common.progress import progress as progress_bar
from naslora_deploy.core.adapters import adapted_layers, attention_blocks
from naslora_deploy.core.calibration import Calibration, calibration_batches
from naslora_deploy.core.config import MERGE_MODES
from naslora_deploy.core.fidelity import measure_fidelity, probe_images
from naslora_deploy.core.layers import AdaptedQKV
from naslora_deploy.core.report import MergeReport, ProjectionFidelity

Folds = Dict[int, Dict[str, torch.Tensor]]  # block -> projection -> (r, r) float64 fold


def merge(
    model,
    mode: str,
    calibration: Optional[Calibration] = None,
    probe_count: int = 2,
    progress: Optional[bool] = False,
):
    """Merge the adapters of ``model``; returns ``(merged_model, report)``.

    ``model``: an adapted SAM, or a ``SegmentationModel`` (what ``load_adapter``
    returns), which gives back a ``SegmentationModel`` with its head copied.
    ``model`` itself is never modified. ``calibration``: a (N, 3, S, S) batch of
    preprocessed images, or a callable returning an iterable of such batches
    (called once to fit, once to measure), or any re-iterable of batches.
    Without it, spatial ops are folded by their constant-input response and the
    report is measured on ``probe_count`` generated images. ``progress``: bars
    over the calibration passes (None: on a terminal only). Raises
    ``MergeError`` if a merged weight is not finite.
    """
    if hasattr(model, "sam"):  # a SegmentationModel: merge its SAM, keep (a copy of) its head
        merged_sam, report = merge(model.sam, mode, calibration, probe_count, progress)
        merged = model.with_sam(merged_sam)
        merged.class_head = copy.deepcopy(model.class_head)
        return merged.train(model.training), report
    if mode not in MERGE_MODES:
        raise ValueError(f"unknown merge mode {mode!r}; choose dense or fused")
    layers = dict(adapted_layers(model))
    config = getattr(model, "adapter_config", None) or (
        next(iter(layers.values())).config if layers else None
    )
    if config is None:
        raise MergeError("the model has no adapters; nothing to merge")
    image_size = model.image_encoder.img_size
    batches = calibration_batches(calibration, image_size) if calibration is not None else None

    with torch.no_grad():
        if config.method == "none":  # decoder-only fine-tuning: the encoder is plain SAM already
            merged, candidates = dense_copy(model, layers, {})
            fold = "nothing to fold (decoder-only fine-tuning)"
        elif mode == "fused":
            merged, candidates = _fused_copy(model, layers)
            fold = "exact (one mixed kernel + max pool)" if config.has_cell else "exact (LoRA branch kept)"
        else:
            if not config.has_cell:
                folds, fold = _identity_folds(layers), "identity (plain LoRA)"
            elif batches is not None:
                fitting = progress_bar(batches(), "merge: fit folds", progress)
                folds, fold = least_squares_folds(model, fitting), "least squares over calibration images"
            else:
                folds, fold = constant_response_folds(layers), "constant-input response"
            merged, candidates = dense_copy(model, layers, folds)

        if batches is not None:
            images, measured_on = batches(), "calibration images"
        else:
            images, measured_on = (
                [probe_images(image_size, probe_count, device=_device(model))],
                (f"generated probe images (probe_images(size={image_size}, count={probe_count}, seed=0))"),
            )
        fidelity = measure_fidelity(
            model, merged, layers, candidates, progress_bar(images, "merge: measure", progress)
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
    )
    if mode == "dense" and config.has_cell and "max_pool_3x3" in config.ops:
        report.notes.append("max pooling is non-linear: its dense fold is an approximation")
    return merged, report


def _device(model) -> torch.device:
    return next(model.parameters()).device


def constant_response_folds(layers: Dict[int, AdaptedQKV]) -> Folds:
    """``constant_response_fold`` of every adapter, by block and projection."""
    return {
        i: {t: a.constant_response_fold() for t, a in layer.adapters.items()} for i, layer in layers.items()
    }


def _identity_folds(layers: Dict[int, AdaptedQKV]) -> Folds:
    return {
        i: {
            t: torch.eye(a.lora_A.shape[0], dtype=torch.float64, device=a.lora_A.device)
            for t, a in layer.adapters.items()
        }
        for i, layer in layers.items()
    }


def least_squares_folds(model, batches: Iterable[torch.Tensor]) -> Folds:
    """Fit, per projection, the r x r ``M`` minimising ||M z - cell(z)|| over all tokens.

    Accumulates the normal equations in float64 from hooks on the unmerged
    model; the fit in code space also minimises the error after W_d.
    """
    layers = dict(adapted_layers(model))
    gram: Folds = {i: {} for i in layers}
    cross: Folds = {i: {} for i in layers}

    def hook_for(index: int) -> Callable:
        def hook(module: AdaptedQKV, inputs, _output) -> None:
            code, out = module.codes(inputs[0])
            for g, target in enumerate(module.adapters):
                z = code[..., g, :].reshape(-1, code.shape[-1]).double()
                y = out[..., g, :].reshape(-1, out.shape[-1]).double()
                gram[index][target] = gram[index].get(target, 0) + z.T @ z
                cross[index][target] = cross[index].get(target, 0) + z.T @ y

        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in layers.items()]
    try:
        for batch in batches:
            model.image_encoder(batch.to(_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return {
        i: {t: (torch.linalg.pinv(gram[i][t], hermitian=True) @ cross[i][t]).T for t in gram[i]}
        for i in layers
    }


def dense_copy(model, layers: Dict[int, AdaptedQKV], folds: Folds):
    """A plain-SAM copy with folded qkv weights, and per-layer candidate branches.

    The unmeasured core of a dense merge (``merge`` adds the fidelity report).
    """
    merged_weights: Dict[int, torch.Tensor] = {}
    for index, layer in layers.items():
        base = layer.base_layer.weight
        merged = (base.double() + layer.delta_weight(folds[index])).to(base.dtype)
        if not bool(torch.isfinite(merged).all()):
            raise MergeError(
                f"dense merge of block {index} qkv gives non-finite weights; the model was left unchanged"
            )
        merged_weights[index] = merged
    plain = copy.deepcopy(model)
    if hasattr(plain, "adapter_config"):
        del plain.adapter_config
    blocks = [block for _, block in attention_blocks(plain.image_encoder)]
    candidates = {}
    for index, layer in layers.items():
        attn = blocks[index].attn
        linear: nn.Linear = attn.qkv.base_layer
        linear.weight.data.copy_(merged_weights[index])
        attn.qkv = linear
        effective = merged_weights[index].double() - layer.base_layer.weight.double()
        candidates[index] = _linear_branch(effective[layer.target_columns])
    for param in plain.parameters():
        param.requires_grad_(True)
    return plain, candidates


def _linear_branch(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.nn.functional.linear(x.double(), weight)


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
