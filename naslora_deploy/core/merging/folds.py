"""The dense merge's folds: an r x r matrix ``M`` (and an r-vector ``c``) standing in for each cell.

A dense merge replaces one projection's adapter ``W_d cell(W_e x)`` by the affine
``W_d (M W_e x + c)``: ``W_d M W_e`` goes into the qkv weight and ``W_d c`` into its
bias. The folds are chosen here:

- ``identity_folds``: plain LoRA (exact);
- ``constant_response_folds``: each cell's response to a spatially constant code
  (needs no images; exact for the per-token parts of a linear cell);
- ``least_squares_folds`` (``fit="joint"``, the original fold): every projection
  fitted at once, on codes of the *unmerged* model, no intercept. Upstream blocks
  are merged too, so their errors compound downstream;
- ``sequential_folds`` (``fit="sequential"``): block by block in forward order, each
  fitted on the qkv input x' of the partially merged model (upstream blocks already
  folded), with an intercept in the qkv bias. Two targets: ``"cell"`` (the default):
  the unmerged cell on the merged stream, ``cell(W_e x')``; ``"model"``: the unmerged
  model's own qkv adaptation at that block, ``W0 (x - x') + W_d cell(W_e x)`` (x: the
  unmerged stream), which could also compensate upstream error within W_d's span.
  Measured (embedding error / adapters' effect, fit on 4 images, held out on 4
  others; 5 seeded vit_tiny cases and a perturbed LiteMedSAM on real photographs):
  the two are within 1 % of each other everywhere; ``cell`` is as good or better
  held out on the 5 vit_tiny cases, ``model`` 0.3 % better on LiteMedSAM (0.1266
  against 0.1270; joint 0.1685). ``cell`` needs no unmerged pass and is the simpler
  fit, so it is the default. Nearly all of the gain over the joint fold comes from
  the intercept (it absorbs max pooling's and the borders' mean response; error
  0.23 -> 0.06, 0.58 -> 0.19 on two vit_tiny cases): without it the sequential fit
  is within 1 % of the joint one. On one conv-only vit_tiny case the intercept
  overfits the 4 fitting images (held out 0.660 against the joint fold's 0.617).

Every fit accumulates its normal equations in float64 and solves them with a
pseudo-inverse; the fit in code space is also the best fit after ``W_d``.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from naslora_deploy.common.errors import MergeError
from naslora_deploy.common.progress import steps
from naslora_deploy.core.adapters.injection import adapted_layers, attention_blocks
from naslora_deploy.core.adapters.layers import AdaptedQKV

Folds = Dict[int, Dict[str, torch.Tensor]]  # block -> projection -> (r, r) float64 fold M
Intercepts = Dict[int, Dict[str, torch.Tensor]]  # block -> projection -> (r,) float64 intercept c
FITS = ("sequential", "joint")
SEQUENTIAL_TARGETS = ("cell", "model")


def identity_folds(layers: Dict[int, AdaptedQKV]) -> Folds:
    """The identity fold of every adapter: plain LoRA's exact dense form."""
    return {
        i: {
            t: torch.eye(a.lora_A.shape[0], dtype=torch.float64, device=a.lora_A.device)
            for t, a in layer.adapters.items()
        }
        for i, layer in layers.items()
    }


def constant_response_folds(layers: Dict[int, AdaptedQKV]) -> Folds:
    """``constant_response_fold`` of every adapter, by block and projection."""
    return {
        i: {t: a.constant_response_fold() for t, a in layer.adapters.items()} for i, layer in layers.items()
    }


def merged_qkv(
    layer: AdaptedQKV,
    fold: Dict[str, torch.Tensor],
    intercept: Optional[Dict[str, torch.Tensor]] = None,
    index: int = 0,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The folded (3*dim, C) qkv weight ``W0 + W_d M W_e`` and (3*dim,) bias ``b0 + W_d c``.

    In the base layer's dtype, computed in float64. ``intercept`` None: bias
    unchanged. Raises ``MergeError`` (naming block ``index``) if either is not finite.
    """
    base = layer.base_layer
    weight = (base.weight.double() + layer.delta_weight(fold)).to(base.weight.dtype)
    bias = None if base.bias is None else base.bias.detach().double().clone()
    if intercept is not None and bias is not None:
        rows = layer.target_columns.split([a.lora_B.shape[0] for a in layer.adapters.values()])
        for (target, adapter), index_rows in zip(layer.adapters.items(), rows):
            bias[index_rows] += adapter.lora_B.double() @ intercept[target].double()
    if bias is not None:
        bias = bias.to(base.bias.dtype)
    if not bool(torch.isfinite(weight).all()) or (bias is not None and not bool(torch.isfinite(bias).all())):
        raise MergeError(
            f"dense merge of block {index} qkv gives non-finite weights; the model was left unchanged"
        )
    return weight, bias


def folded_linear(layer: AdaptedQKV, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    """A new ``nn.Linear`` shaped (and typed, placed) as ``layer.base_layer``, holding the given weights."""
    base = layer.base_layer
    linear = nn.Linear(
        base.in_features,
        base.out_features,
        bias=base.bias is not None,
        device=base.weight.device,
        dtype=base.weight.dtype,
    )
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def dense_copy(
    model, layers: Dict[int, AdaptedQKV], folds: Folds, intercepts: Optional[Intercepts] = None
) -> nn.Module:
    """A plain-SAM copy with folded qkv weights (and biases, given ``intercepts``).

    The unmeasured core of a dense merge (``merge`` adds the fidelity report).
    Every weight is checked before the copy is made: a non-finite one raises ``MergeError``.
    """
    merged = {
        index: merged_qkv(layer, folds[index], (intercepts or {}).get(index), index)
        for index, layer in layers.items()
    }
    plain = copy.deepcopy(model)
    if hasattr(plain, "adapter_config"):
        del plain.adapter_config
    blocks = [block for _, block in attention_blocks(plain.image_encoder)]
    for index, layer in layers.items():
        blocks[index].attn.qkv = folded_linear(layer, *merged[index])
    for param in plain.parameters():
        param.requires_grad_(True)
    return plain


def least_squares_folds(model, batches: Iterable[torch.Tensor]) -> Folds:
    """``fit="joint"``: per projection, the r x r ``M`` minimising ||M z - cell(z)|| over all tokens.

    Accumulates the normal equations in float64 from hooks on the unmerged
    model (all blocks in one pass, no intercept).
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
            model.image_encoder(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {
        i: {t: (torch.linalg.pinv(gram[i][t], hermitian=True) @ cross[i][t]).T for t in gram[i]}
        for i in layers
    }


class _Stop(Exception):
    """Raised by a pre-hook once the wanted qkv input is captured: the rest of the pass is not needed."""


def qkv_input(model, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The input ``module`` (one block's qkv layer) sees when ``model.image_encoder`` runs on ``images``.

    The forward pass stops at that layer.
    """
    captured = []

    def pre_hook(_module, inputs):
        captured.append(inputs[0])
        raise _Stop

    handle = module.register_forward_pre_hook(pre_hook)
    try:
        model.image_encoder(images)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise MergeError("a qkv layer was not reached by the image encoder's forward pass")
    return captured[0]


def sequential_folds(
    model,
    batches: Callable[[], Iterable[torch.Tensor]],
    target: str = "cell",
    intercept: bool = True,
    progress: Optional[bool] = False,
) -> Tuple[Folds, Optional[Intercepts]]:
    """``fit="sequential"``: folds (and intercepts) fitted block by block on the merged stream.

    ``batches()`` is called once per adapted block; ``target="model"`` runs each batch
    through the merged and the unmerged model (see the module docstring). ``intercept``: fit
    ``c`` too; dropped (returns None) where a qkv layer has no bias. ``model``
    is not modified: a copy is merged block by block.
    """
    if target not in SEQUENTIAL_TARGETS:
        raise ValueError(f"unknown fit target {target!r}; choose one of {', '.join(SEQUENTIAL_TARGETS)}")
    layers = dict(adapted_layers(model))
    intercept = intercept and all(layer.base_layer.bias is not None for layer in layers.values())
    work = copy.deepcopy(model)
    work_blocks = [block for _, block in attention_blocks(work.image_encoder)]
    folds: Folds = {}
    intercepts: Intercepts = {}
    blocks = sorted(layers)
    for index in steps(blocks, "merge: fit block", progress, label=lambda i: f"(attention block {i})"):
        layer = layers[index]
        gram: Dict[str, torch.Tensor] = {}
        cross: Dict[str, torch.Tensor] = {}
        for batch in batches():
            merged_x = qkv_input(work, work_blocks[index].attn.qkv, batch)
            true_x = qkv_input(model, layer, batch) if target == "model" else None
            _accumulate(layer, merged_x, true_x, intercept, gram, cross)
        rank = next(iter(layer.adapters.values())).lora_A.shape[0]
        solved = {t: torch.linalg.pinv(gram[t], hermitian=True) @ cross[t] for t in gram}
        folds[index] = {t: s[:rank].T.contiguous() for t, s in solved.items()}
        if intercept:
            intercepts[index] = {t: s[rank].clone() for t, s in solved.items()}
        weight, bias = merged_qkv(layer, folds[index], intercepts.get(index), index)
        work_blocks[index].attn.qkv = folded_linear(layer, weight, bias)
    return folds, (intercepts if intercept else None)


def _accumulate(
    layer: AdaptedQKV,
    x: torch.Tensor,
    true_x: Optional[torch.Tensor],
    intercept: bool,
    gram: Dict[str, torch.Tensor],
    cross: Dict[str, torch.Tensor],
) -> None:
    """Add one batch's normal equations: codes of ``x`` (merged stream) against the target.

    ``true_x`` None: the target is the cell's output on ``x``'s codes. Otherwise the
    unmerged qkv adaptation, ``W0 (true_x - x) + delta(true_x)``, brought into code
    space by ``pinv(W_d)``.
    """
    code, out = layer.codes(x)  # (B, H, W, T, r)
    rank = code.shape[-1]
    if true_x is not None:
        columns = layer.target_columns
        residual = F.linear(true_x - x, layer.base_layer.weight[columns]) + layer.delta(true_x)
        residual = residual.reshape(-1, residual.shape[-1]).double()
        parts = residual.split([a.lora_B.shape[0] for a in layer.adapters.values()], dim=1)
    for g, (name, adapter) in enumerate(layer.adapters.items()):
        z = code[..., g, :].reshape(-1, rank).double()
        if true_x is None:
            y = out[..., g, :].reshape(-1, rank).double()
        else:
            y = parts[g] @ torch.linalg.pinv(adapter.lora_B.double()).T
        if intercept:
            z = torch.cat([z, z.new_ones(z.shape[0], 1)], dim=1)
        gram[name] = gram.get(name, 0) + z.T @ z
        cross[name] = cross.get(name, 0) + z.T @ y
