"""The two optimisers of a run (paper Alg. 1) and their parameter groups.

Weights: one Adam with up to three groups, each with its own base learning rate,
scaled together by the schedule (``schedule.learning_rate`` at base 1):

- ``decoder``: the mask decoder and the class head, at ``--lr``;
- ``adapters``: W_e and the cell's own weights (``full``: ``encoder``, the image encoder's
  weights), at ``--adapter-lr`` (default ``--lr``);
- ``lora_B``: W_d, at ``--adapter-lr x s`` with weight decay ``wd / s**2``, where
  ``s = --lora-alpha / r``. That is PEFT's scaling ``h += s W_d cell(W_e x)`` in its
  exact Adam form: Adam's step ignores the scale of a gradient, so training W_d' with
  W_d = s W_d' moves W_d s times as fast, while every other gradient is unchanged (it
  sees only the product). The stored ``lora_B`` is then the effective W_d, and merges,
  exports and PEFT files need no scale. W_d starts at zero, so both forms start equal.

Alpha: its own optimiser at a constant ``--arch-lr``. ``--arch-decay decoupled``
(AdamW) shrinks alpha by ``lr x wd`` per step whatever its gradient; ``coupled`` (the
paper's Adam with an L2 term) adds ``wd x alpha`` to the loss gradient, which is linear
in W_d: while W_d is small (~1e-7 gradients) the decay term dominates Adam's normalised
step and pins alpha near ``-grad / wd`` ~ 1e-4; once W_d has grown both move alpha
alike (benchmarks/RESULTS.md, issue 25).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from naslora_deploy.core.adapters.injection import adapted_layers, architecture_parameters, weight_parameters


def lora_scale(config) -> float:
    """``--lora-alpha / r`` (1 without ``--lora-alpha``)."""
    return 1.0 if config.lora_alpha is None else config.lora_alpha / config.rank


def weight_groups(model, config) -> List[dict]:
    """The weights' parameter groups (empty ones left out), each with its ``base_lr`` and ``name``."""
    sam = model.sam
    weights = weight_parameters(model)  # a SegmentationModel's: adapters, decoder and class head
    lora_b = [adapter.lora_B for _, layer in adapted_layers(sam) for adapter in layer.adapters.values()]
    encoder = {id(p) for p in sam.image_encoder.parameters()}
    in_b = {id(p) for p in lora_b}
    adapter_lr = config.lr if config.adapter_lr is None else config.adapter_lr
    scale = lora_scale(config)
    groups = [
        ("decoder", [p for p in weights if id(p) not in encoder], config.lr, config.weight_decay),
        (
            "encoder" if config.method == "full" else "adapters",
            [p for p in weights if id(p) in encoder and id(p) not in in_b],
            adapter_lr,
            None,
        ),
        ("lora_B", [p for p in weights if id(p) in in_b], adapter_lr * scale, config.weight_decay / scale**2),
    ]
    return [
        {
            "params": params,
            "lr": lr,
            "base_lr": lr,
            "weight_decay": config.weight_decay if decay is None else decay,
            "name": name,
        }
        for name, params, lr, decay in groups
        if params
    ]


def build_optimizers(model, config) -> Tuple[torch.optim.Optimizer, Optional[torch.optim.Optimizer]]:
    """The weights' Adam (``weight_groups``) and alpha's Adam/AdamW (None without a cell)."""
    weight_opt = torch.optim.Adam(weight_groups(model, config), foreach=True)
    alphas = architecture_parameters(model.sam)
    if not alphas:
        return weight_opt, None
    kind = torch.optim.AdamW if config.arch_decay == "decoupled" else torch.optim.Adam
    return weight_opt, kind(alphas, lr=config.arch_lr, weight_decay=config.arch_weight_decay, foreach=True)


def set_schedule_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's learning rate = its ``base_lr`` x ``factor`` (the schedule at this step)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
