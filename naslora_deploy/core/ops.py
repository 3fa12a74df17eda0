"""The eight candidate operations of the NAS-LoRA cell, and their kernels.

Every candidate but max pooling is a linear, translation-invariant map on the
(B, c, H, W) code of the low-rank bottleneck, i.e. a convolution. Each one can
therefore give its equivalent dense kernel, embedded in a common odd span, and a
softmax-weighted sum of those kernels is ONE convolution that equals the
weighted sum of the separate ops (zero padding everywhere, as the ops use).

The convolutions are the linear form of the DARTS operations (depthwise k x k,
optionally dilated, then pointwise 1 x 1; no ReLU or BatchNorm): that is what
lets the cell collapse into one kernel for training speed and exact deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class OpSpec:
    """Shape of one candidate: kernel size, dilation and whether it is linear."""

    kernel: int
    dilation: int = 1
    linear: bool = True
    spatial: bool = True

    @property
    def span(self) -> int:
        """Width in tokens of the receptive field (5x5 at dilation 2 spans 9)."""
        return self.dilation * (self.kernel - 1) + 1


OP_SPECS: Dict[str, OpSpec] = {
    "sep_conv_3x3": OpSpec(3),
    "sep_conv_5x5": OpSpec(5),
    "dil_conv_3x3": OpSpec(3, dilation=2),
    "dil_conv_5x5": OpSpec(5, dilation=2),
    "avg_pool_3x3": OpSpec(3),
    "max_pool_3x3": OpSpec(3, linear=False),
    "skip_connect": OpSpec(1, spatial=False),
    "none": OpSpec(1, spatial=False),
}


class DepthwisePointwise(nn.Module):
    """Depthwise k x k convolution (optionally dilated) followed by a 1 x 1 one."""

    def __init__(self, channels: int, kernel: int, dilation: int = 1) -> None:
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        self.depthwise = nn.Conv2d(
            channels, channels, kernel, padding=padding, dilation=dilation, groups=channels, bias=False
        )
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.dilation = dilation

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(z))

    def equivalent_kernel(self, span: int) -> torch.Tensor:
        """The (c, c, span, span) dense kernel of depthwise-then-pointwise."""
        depthwise = self.depthwise.weight[:, 0]  # (c, k, k)
        dilated = dilate(depthwise, self.dilation)
        taps = embed_centered(dilated, span)  # (c, span, span)
        pointwise = self.pointwise.weight[:, :, 0, 0]  # (c_out, c_in)
        return pointwise[:, :, None, None] * taps[None, :, :, :]


class Zero(nn.Module):
    """The 'none' candidate: cuts the path."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(z)


def build_op(name: str, channels: int) -> nn.Module:
    """A fresh module for candidate ``name`` acting on ``channels`` channels."""
    spec = OP_SPECS[name]
    if name.startswith(("sep_conv", "dil_conv")):
        return DepthwisePointwise(channels, spec.kernel, spec.dilation)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=1, padding=1)
    if name == "skip_connect":
        return nn.Identity()
    if name == "none":
        return Zero()
    raise ValueError(f"unknown op {name!r}")


def dilate(taps: torch.Tensor, dilation: int) -> torch.Tensor:
    """Insert ``dilation - 1`` zeros between the taps of (..., k, k) kernels."""
    if dilation == 1:
        return taps
    k = taps.shape[-1]
    span = dilation * (k - 1) + 1
    out = taps.new_zeros(*taps.shape[:-2], span, span)
    out[..., ::dilation, ::dilation] = taps
    return out


def embed_centered(taps: torch.Tensor, span: int) -> torch.Tensor:
    """Zero-pad (..., k, k) kernels to (..., span, span), keeping them centred."""
    k = taps.shape[-1]
    pad = (span - k) // 2
    if pad == 0:
        return taps
    return F.pad(taps, (pad, pad, pad, pad))


def linear_op_kernel(
    name: str, module: nn.Module, channels: int, span: int, like: torch.Tensor
) -> torch.Tensor:
    """The (c, c, span, span) kernel of linear candidate ``name``."""
    if isinstance(module, DepthwisePointwise):
        return module.equivalent_kernel(span)
    kernel = like.new_zeros(channels, channels, span, span)
    center = span // 2
    eye = torch.arange(channels, device=like.device)
    if name == "avg_pool_3x3":
        # count_include_pad=True: every output divides by 9, borders included.
        kernel[eye, eye, center - 1 : center + 2, center - 1 : center + 2] = 1.0 / 9.0
    elif name == "skip_connect":
        kernel[eye, eye, center, center] = 1.0
    elif name != "none":
        raise ValueError(f"{name} is not a linear candidate")
    return kernel


def common_span(names: Iterable[str]) -> int:
    """The smallest odd span that holds every linear candidate in ``names``."""
    spans = [OP_SPECS[n].span for n in names if OP_SPECS[n].linear]
    return max(spans, default=1)
