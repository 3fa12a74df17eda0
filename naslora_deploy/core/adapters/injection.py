"""Put adapters into a SAM model, and the parameter groups the optimisers use.

Every function here takes what the public loaders return: a SAM (``build_sam``,
``add_adapters``, a merged one) or a ``SegmentationModel`` around one
(``load_adapter``, a merged one); ``heads.sam_of`` finds the SAM.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Tuple

import torch
from torch import nn

from naslora_deploy.core.adapters.config import AdapterConfig
from naslora_deploy.core.adapters.layers import CELL_FORWARDS, AdaptedQKV
from naslora_deploy.core.model.heads import sam_of
from naslora_deploy.core.model.tinyvit import qkv_layout


def add_adapters(model, config: AdapterConfig):
    """Wrap the chosen blocks' ``attn.qkv`` with adapters; returns the same ``model``.

    Freezes the image encoder (``full``: leaves it trainable, with no adapters)
    and prompt encoder, leaves the mask decoder trainable. LoRA starts the
    standard way (W_e random, W_d zero), so a fresh adapter changes no output.
    Initialisation is seeded by ``config.seed`` and leaves the global random
    state untouched. Raises ``ValueError``, leaving ``model`` as it was, if it
    already has adapters or a chosen block's qkv is not a plain ``Linear`` (a
    fused merge keeps its cells in place).
    """
    sam = sam_of(model)
    if any(True for _ in adapted_layers(sam)):
        raise ValueError("this model already has adapters; build a fresh SAM to add another set")
    config.validate()
    blocks = [block for _, block in attention_blocks(sam.image_encoder)]
    indices = config.block_indices(len(blocks))  # raises for a block out of range, whatever the method
    if not config.has_adapters:
        indices = []
    refuse_non_linear_qkv(blocks, indices)
    for param in sam.image_encoder.parameters():
        param.requires_grad_(config.trains_encoder)
    for param in sam.prompt_encoder.parameters():
        param.requires_grad_(False)
    for param in sam.mask_decoder.parameters():
        param.requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for index in indices:
            base = blocks[index].attn.qkv
            columns, grid = qkv_layout(blocks[index])
            wrapped = AdaptedQKV(base, config, columns, grid)
            blocks[index].attn.qkv = wrapped.to(device=base.weight.device, dtype=base.weight.dtype)
    sam.adapter_config = config
    return model


def refuse_non_linear_qkv(blocks: List[nn.Module], indices: List[int]) -> None:
    """Raise ``ValueError`` naming the first chosen block whose ``attn.qkv`` is not an ``nn.Linear``."""
    for index in indices:
        qkv = blocks[index].attn.qkv
        if not isinstance(qkv, nn.Linear):
            raise ValueError(
                f"block {index}'s attn.qkv is a {type(qkv).__name__}, not a Linear: add adapters to a fresh "
                "or a dense-merged SAM (a fused merge keeps its cells in place)"
            )


def attention_blocks(image_encoder) -> List[Tuple[str, nn.Module]]:
    """``(path, block)`` of every encoder block with an ``attn.qkv``, in order: the adaptable blocks.

    SAM ViT: ``blocks.i``; TinyViT: ``layers.l.blocks.j`` (its MBConv blocks have no
    attention). A block's position in this list is its index in ``AdapterConfig.blocks``.
    """
    return [
        (name, module)
        for name, module in image_encoder.named_modules()
        if isinstance(getattr(getattr(module, "attn", None), "qkv", None), nn.Module)
    ]


def adapted_layers(model) -> Iterator[Tuple[int, AdaptedQKV]]:
    """Yield ``(block_index, AdaptedQKV)`` for every adapted block, in order."""
    for index, (_, block) in enumerate(attention_blocks(sam_of(model).image_encoder)):
        if isinstance(block.attn.qkv, AdaptedQKV):
            yield index, block.attn.qkv


def architecture_parameters(model) -> List[nn.Parameter]:
    """The alpha vectors: one per (block, projection), for the architecture optimiser."""
    return [
        adapter.alpha
        for _, layer in adapted_layers(model)
        for adapter in layer.adapters.values()
        if adapter.has_cell
    ]


def weight_parameters(model) -> List[nn.Parameter]:
    """Every trainable parameter that is not an alpha: adapters' weights, the decoder and, on a
    ``SegmentationModel``, its class head."""
    arch = {id(p) for p in architecture_parameters(model)}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in arch]


@dataclass
class ParameterCount:
    """Trainable and total parameters of one part of the model."""

    trainable: int
    total: int


@dataclass
class TrainableSummary:
    """The paper's "Params(M) / Ratio(%)" figures, and where the trainable ones live."""

    trainable: int
    total: int
    adapters: ParameterCount
    decoder: ParameterCount
    other: ParameterCount

    @property
    def ratio_percent(self) -> float:
        """Trainable parameters as a percentage of all parameters."""
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        """A JSON-ready dict, ratio included."""
        data = asdict(self)
        data["ratio_percent"] = self.ratio_percent
        return data

    def __str__(self) -> str:
        return (
            f"trainable {self.trainable / 1e6:.4f} M of {self.total / 1e6:.2f} M ({self.ratio_percent:.2f} "
            "%): "
            f"adapters {self.adapters.trainable / 1e6:.4f} M, decoder {self.decoder.trainable / 1e6:.4f} M, "
            f"other {self.other.trainable / 1e6:.4f} M"
        )


def trainable_summary(model) -> TrainableSummary:
    """Count trainable and total parameters of ``model``, split into adapters / SAM's mask decoder /
    other (a full fine-tune's encoder, a ``SegmentationModel``'s class head)."""
    adapter_params = {id(p) for _, layer in adapted_layers(model) for p in layer.adapters.parameters()}
    decoder_params = {id(p) for p in sam_of(model).mask_decoder.parameters()}
    counts: Dict[str, List[int]] = {"adapters": [0, 0], "decoder": [0, 0], "other": [0, 0]}
    for param in model.parameters():
        part = (
            "adapters"
            if id(param) in adapter_params
            else "decoder"
            if id(param) in decoder_params
            else "other"
        )
        counts[part][1] += param.numel()
        if param.requires_grad:
            counts[part][0] += param.numel()
    parts = {name: ParameterCount(*values) for name, values in counts.items()}
    return TrainableSummary(
        trainable=sum(c.trainable for c in parts.values()),
        total=sum(c.total for c in parts.values()),
        **parts,
    )


@contextlib.contextmanager
def adapters_disabled(model) -> Iterator[None]:
    """Run ``model`` as its base SAM: every adapter switched off inside the block."""
    layers = [layer for _, layer in adapted_layers(model)]
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield
    finally:
        for layer, was in zip(layers, previous):
            layer.disabled = was


def set_cell_forward(model, mode: str) -> None:
    """Choose how cells run: ``kernel`` (one mixed convolution) or ``naive`` (8 ops)."""
    if mode not in CELL_FORWARDS:
        raise ValueError(f"unknown cell forward {mode!r}; choose one of {', '.join(CELL_FORWARDS)}")
    for _, layer in adapted_layers(model):
        layer.cell_forward = mode
