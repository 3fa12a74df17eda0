"""Helpers that give adapters non-trivial values without training.

A fresh adapter has W_d = 0 and changes nothing, so every merge would look
exact. Tests, benchmarks and the (pre-training) demo use these to get adapters
whose branches really contribute.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from naslora_deploy.core.adapters.injection import adapted_layers


def perturb_adapters(model, seed: int = 0, b_std: float = 0.05, alpha_std: float = 1.0) -> None:
    """Draw non-zero W_d and spread-out alpha for every adapter, seeded."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapted_layers(model):
            for adapter in layer.adapters.values():
                adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=generator) * b_std)
                if adapter.has_cell:
                    adapter.alpha.copy_(torch.randn(adapter.alpha.shape, generator=generator) * alpha_std)


def set_alpha(model, favoured: Sequence[str], logit: float = 0.0, others: Optional[float] = -1e4) -> None:
    """Put (practically) all softmax weight on the ``favoured`` candidates."""
    with torch.no_grad():
        for _, layer in adapted_layers(model):
            for adapter in layer.adapters.values():
                values = [logit if name in favoured else others for name in adapter.op_names]
                adapter.alpha.copy_(torch.tensor(values))
