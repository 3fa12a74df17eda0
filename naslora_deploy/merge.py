"""Fold adapters back into SAM: ``merge(model, "dense" | "fused")``.

Dense: each adapter becomes ``W_d M W_e`` added to the qkv weight, with ``M`` an
r x r matrix standing in for the cell. Exact for LoRA and the per-token parts of
a cell (skip, none, PC pass-through channels); spatial candidates can only be
approximated, by least squares over calibration images or by their response to
a spatially constant input. Fused: the cell collapses into one fixed kernel;
exact. Every merge is measured against the unmerged model (see ``fidelity``).
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn

from naslora_deploy.adapters import adapted_layers
from naslora_deploy.errors import MergeError
from naslora_deploy.fidelity import measure_fidelity, probe_images
from naslora_deploy.layers import AdaptedQKV, LowRankAdapter, fused_from_adapted
from naslora_deploy.report import MergeReport, ProjectionFidelity

MODES = ("dense", "fused")
Calibration = Union[torch.Tensor, Callable[[], Iterable[torch.Tensor]], Iterable[torch.Tensor]]
Key = Tuple[int, str]


def merge(model, mode: str, calibration: Optional[Calibration] = None, probe_count: int = 2):
    """Merge the adapters of ``model``; returns ``(merged_model, report)``.

    ``model`` itself is never modified. ``calibration``: a (N, 3, S, S) batch of
    preprocessed images, or a callable returning an iterable of such batches
    (called once to fit, once to measure), or any re-iterable of batches.
    Without it, spatial ops are folded by their constant-input response and the
    report is measured on ``probe_count`` generated images. Raises
    ``MergeError`` if a merged weight is not finite.
    """
    if mode not in MODES:
        raise ValueError(f"unknown merge mode {mode!r}; choose dense or fused")
    layers = dict(adapted_layers(model))
    if not layers:
        raise MergeError("the model has no adapters; nothing to merge")
    config = getattr(model, "adapter_config", None) or next(iter(layers.values())).config
    image_size = model.image_encoder.img_size
    batches = _calibration_source(calibration, image_size) if calibration is not None else None

    with torch.no_grad():
        if mode == "fused":
            merged, candidates = _fused_copy(model, layers)
            fold = "exact (one mixed kernel + max pool)" if config.has_cell else "exact (LoRA branch kept)"
        else:
            if not config.has_cell:
                folds, fold = _identity_folds(layers), "identity (plain LoRA)"
            elif batches is not None:
                folds, fold = least_squares_folds(model, batches()), "least squares over calibration images"
            else:
                folds, fold = constant_response_folds(layers), "constant-input response"
            merged, candidates = dense_copy(model, layers, folds)

        if batches is not None:
            images, measured_on = batches(), "calibration images"
        else:
            images, measured_on = [probe_images(image_size, probe_count, device=_device(model))], (
                f"generated probe images (probe_images(size={image_size}, count={probe_count}, seed=0))"
            )
        fidelity = measure_fidelity(model, merged, layers, candidates, images)
    report = MergeReport(
        mode=mode,
        method=config.method,
        fold=fold,
        measured_on=measured_on,
        images=fidelity.images,
        embedding_rel_error=fidelity.embedding_rel_error,
        embedding_rel_error_of_adaptation=fidelity.embedding_rel_error_of_adaptation,
        projections=[
            ProjectionFidelity(i, t, spatial_weight(layers[i].adapters[t]), err, norm)
            for (i, t), (err, norm) in fidelity.branch_errors.items()
        ],
    )
    if mode == "dense" and config.has_cell and "max_pool_3x3" in config.ops:
        report.notes.append("max pooling is non-linear: its dense fold is an approximation")
    return merged, report


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _calibration_source(calibration: Calibration, image_size: int) -> Callable[[], Iterator[torch.Tensor]]:
    """Normalise the accepted calibration forms into a re-callable batch iterator."""
    if isinstance(calibration, torch.Tensor):
        source: Callable[[], Iterable[torch.Tensor]] = lambda: calibration.split(4)
    elif callable(calibration):
        source = calibration
    else:
        materialised = list(calibration)
        source = lambda: materialised

    def batches() -> Iterator[torch.Tensor]:
        count = 0
        for batch in source():
            if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or tuple(batch.shape[1:]) != (3, image_size, image_size):
                shape = list(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
                raise ValueError(
                    f"calibration batches must be (N, 3, {image_size}, {image_size}) preprocessed images, got {shape}"
                )
            count += 1
            yield batch
        if count == 0:
            raise ValueError("calibration gave no images")

    return batches


def spatial_weight(adapter: LowRankAdapter) -> float:
    """Softmax weight on the spatial candidates of an adapter's cell."""
    from naslora_deploy.ops import OP_SPECS

    if not adapter.has_cell:
        return 0.0
    weights = adapter.op_weights().detach()
    return float(sum(weights[i] for i, name in enumerate(adapter.op_names) if OP_SPECS[name].spatial))


def constant_response_fold(adapter: LowRankAdapter) -> torch.Tensor:
    """r x r matrix: the cell's output for a spatially constant code, away from borders."""
    kernel = adapter.cell_kernel().double()
    return kernel.sum(dim=(-1, -2)) + torch.diag(adapter.max_pool_weight().double())


def constant_response_folds(layers: Dict[int, AdaptedQKV]) -> Dict[Key, torch.Tensor]:
    """``constant_response_fold`` of every adapter, keyed by (block, projection)."""
    return {(i, t): constant_response_fold(a) for i, layer in layers.items() for t, a in layer.adapters.items()}


def _identity_folds(layers: Dict[int, AdaptedQKV]) -> Dict[Key, torch.Tensor]:
    return {
        (i, t): torch.eye(a.lora_A.shape[0], dtype=torch.float64, device=a.lora_A.device)
        for i, layer in layers.items()
        for t, a in layer.adapters.items()
    }


def least_squares_folds(model, batches: Iterable[torch.Tensor]) -> Dict[Key, torch.Tensor]:
    """Fit, per projection, the r x r ``M`` minimising ||M z - cell(z)|| over all tokens.

    Accumulates the normal equations in float64 from hooks on the unmerged
    model; the fit in code space also minimises the error after W_d.
    """
    layers = dict(adapted_layers(model))
    gram: Dict[Key, torch.Tensor] = {}
    cross: Dict[Key, torch.Tensor] = {}

    def hook_for(index: int) -> Callable:
        def hook(module: AdaptedQKV, inputs, _output) -> None:
            code, out = module.codes(inputs[0])
            for g, target in enumerate(module.adapters):
                z = code[..., g, :].reshape(-1, code.shape[-1]).double()
                y = out[..., g, :].reshape(-1, out.shape[-1]).double()
                key = (index, target)
                gram[key] = gram.get(key, 0) + z.T @ z
                cross[key] = cross.get(key, 0) + z.T @ y

        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in layers.items()]
    try:
        for batch in batches:
            model.image_encoder(batch.to(_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return {key: (torch.linalg.pinv(gram[key], hermitian=True) @ cross[key]).T for key in gram}


def dense_weight_delta(layer: AdaptedQKV, index: int, folds: Dict[Key, torch.Tensor]) -> torch.Tensor:
    """The float64 (3*dim, C) update ``W_d M W_e`` for every adapted slice of one qkv."""
    weight = layer.base_layer.weight
    dim = weight.shape[0] // 3
    delta = torch.zeros(weight.shape, dtype=torch.float64, device=weight.device)
    for target, adapter in layer.adapters.items():
        row = "qkv".index(target) * dim
        update = adapter.lora_B.double() @ folds[(index, target)] @ adapter.lora_A.double()
        delta[row : row + dim] = update
    return delta


def dense_copy(model, layers: Dict[int, AdaptedQKV], folds: Dict[Key, torch.Tensor]):
    """A plain-SAM copy with folded qkv weights, and per-layer candidate branches.

    The unmeasured core of a dense merge (``merge`` adds the fidelity report).
    """
    merged_weights: Dict[int, torch.Tensor] = {}
    for index, layer in layers.items():
        base = layer.base_layer.weight
        merged = (base.double() + dense_weight_delta(layer, index, folds)).to(base.dtype)
        if not bool(torch.isfinite(merged).all()):
            raise MergeError(f"dense merge of block {index} qkv gives non-finite weights; the model was left unchanged")
        merged_weights[index] = merged
    plain = copy.deepcopy(model)
    if hasattr(plain, "adapter_config"):
        del plain.adapter_config
    candidates = {}
    for index, layer in layers.items():
        attn = plain.image_encoder.blocks[index].attn
        linear: nn.Linear = attn.qkv.base_layer
        linear.weight.data.copy_(merged_weights[index])
        attn.qkv = linear
        effective = merged_weights[index].double() - layer.base_layer.weight.double()
        rows = torch.cat([_slice_rows(t, effective.shape[0] // 3) for t in layer.adapters])
        candidates[index] = _linear_branch(effective[rows])
    for param in plain.parameters():
        param.requires_grad_(True)
    return plain, candidates


def _slice_rows(target: str, dim: int) -> torch.Tensor:
    start = "qkv".index(target) * dim
    return torch.arange(start, start + dim)


def _linear_branch(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.nn.functional.linear(x.double(), weight)


def _fused_copy(model, layers: Dict[int, AdaptedQKV]):
    """A copy whose adapted qkv layers are ``FusedQKV``, and their branches."""
    fused = copy.deepcopy(model)
    candidates = {}
    for index in layers:
        attn = fused.image_encoder.blocks[index].attn
        module = fused_from_adapted(attn.qkv)
        for name, tensor in module.named_buffers():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise MergeError(f"fused merge of block {index} qkv gives non-finite {name}; the model was left unchanged")
        attn.qkv = module
        candidates[index] = module.delta
    if hasattr(fused, "adapter_config"):
        fused.merged_from_config = fused.adapter_config
        del fused.adapter_config
    return fused, candidates


__all__: List[str] = [
    "merge", "least_squares_folds", "constant_response_fold", "constant_response_folds", "dense_copy",
    "dense_weight_delta", "spatial_weight",
]
