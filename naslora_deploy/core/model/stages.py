"""An image encoder as an ordered list of stages, so a frozen prefix can be run once and cached.

``encoder_stages(encoder)`` splits SAM ViT's ``ImageEncoderViT`` (patch embedding
plus positional embedding, each block, the neck) and TinyViT (patch embedding,
the convolutional layer 0, each attention block, each layer's patch merging, the
neck) into callables that, applied in order, compute exactly the encoder's own
forward: the same modules, the same operations in the same order.
``trainable_start`` is the first stage that holds a trained weight (the first
adapted block); everything before it is a frozen prefix whose output depends
only on the input image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import nn


@dataclass
class Stage:
    """One step of an encoder's forward: ``run(x)``; ``module`` holds its weights (None: none)."""

    name: str
    run: Callable[[torch.Tensor], torch.Tensor]
    module: Optional[nn.Module]


def _vit_stages(encoder) -> List[Stage]:
    def embed(x: torch.Tensor) -> torch.Tensor:
        x = encoder.patch_embed(x)
        return x if encoder.pos_embed is None else x + encoder.pos_embed

    stages = [Stage("patch_embed", embed, encoder.patch_embed)]
    stages += [Stage(f"blocks.{i}", block, block) for i, block in enumerate(encoder.blocks)]
    stages.append(Stage("neck", lambda x: encoder.neck(x.permute(0, 3, 1, 2)), encoder.neck))
    return stages


def _tinyvit_stages(encoder) -> List[Stage]:
    stages = [
        Stage("patch_embed", encoder.patch_embed, encoder.patch_embed),
        Stage("layers.0", encoder.layers[0], encoder.layers[0]),
    ]
    for i, layer in enumerate(encoder.layers):
        if i == 0:
            continue
        stages += [Stage(f"layers.{i}.blocks.{j}", block, block) for j, block in enumerate(layer.blocks)]
        if layer.downsample is not None:
            stages.append(Stage(f"layers.{i}.downsample", layer.downsample, layer.downsample))

    def neck(x: torch.Tensor) -> torch.Tensor:  # TinyViT.forward_features' own reshape (64 x 64 tokens)
        batch, _, channels = x.size()
        return encoder.neck(x.view(batch, 64, 64, channels).permute(0, 3, 1, 2))

    stages.append(Stage("neck", neck, encoder.neck))
    return stages


def encoder_stages(encoder) -> List[Stage]:
    """The stages of a SAM ViT or TinyViT image encoder, in forward order."""
    if hasattr(encoder, "blocks") and hasattr(encoder, "neck"):
        return _vit_stages(encoder)
    if type(encoder).__name__ == "TinyViT":
        return _tinyvit_stages(encoder)
    raise ValueError(f"no stage split for image encoder {type(encoder).__name__}")


def trainable_start(encoder, stages: List[Stage]) -> int:
    """Index of the first stage with a trainable parameter; ``len(stages)`` when none has one."""
    for index, stage in enumerate(stages):
        if stage.module is not None and any(p.requires_grad for p in stage.module.parameters()):
            return index
    return len(stages)


def run_stages(
    stages: List[Stage], x: torch.Tensor, start: int = 0, stop: Optional[int] = None
) -> torch.Tensor:
    """Apply ``stages[start:stop]`` to ``x`` in order."""
    for stage in stages[start:stop]:
        x = stage.run(x)
    return x
