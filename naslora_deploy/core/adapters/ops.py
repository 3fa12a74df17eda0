"""The eight candidate operations of the NAS-LoRA cell, and their kernels.

Every candidate but max pooling is a linear, translation-invariant map on the
(B, c, H, W) code of the low-rank bottleneck, i.e. a convolution. Each one can
therefore give its equivalent dense kernel, embedded in a common odd span, and a
softmax-weighted sum of those kernels is ONE convolution that equals the
weighted sum of the separate ops (zero padding everywhere, as the ops use).

Three forms (``AdapterConfig.cell_form``):

- ``linear`` (default): the convolutions are the linear form of the DARTS
  operations (depthwise k x k, optionally dilated, then pointwise 1 x 1; no ReLU
  or BatchNorm) and average pooling counts the zero padding. That is what lets
  the cell collapse into one kernel for training speed and exact deployment.
- ``scaled``: the same ops, each multiplied by a fixed scale (``op_scales``) that
  gives it unit output RMS on white noise at initialisation, the job DARTS' BN
  does, in a form that still collapses into one kernel.
- ``darts``: DARTS' own primitives as its search phase builds them (``darts_op``):
  separable conv = two stacks of ReLU -> depthwise -> pointwise -> BN, dilated conv
  = ReLU -> dilated depthwise -> pointwise -> BN, pooling without counting the
  padding and followed by BN; every BN is affine=False. Non-linear: the cell runs
  op by op, and ``fold_darts_op`` folds each BN into its conv for deployment.
"""

from __future__ import annotations

import copy
import math
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


def build_op(name: str, channels: int, form: str = "linear") -> nn.Module:
    """A fresh module for candidate ``name`` acting on ``channels`` channels, in cell ``form``."""
    if form == "darts":
        return darts_op(name, channels)
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


def _normal_max_rms(count: int = 9) -> float:
    """RMS of the max of ``count`` independent N(0, 1): sqrt(E[M^2]), by quadrature (about 1.60 for 9)."""
    x = torch.linspace(-8.0, 8.0, 16001, dtype=torch.float64)
    density = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    max_density = count * density * cdf ** (count - 1)
    return math.sqrt(float(torch.trapezoid(x * x * max_density, x)))


def white_noise_gain(name: str, module: nn.Module) -> float:
    """Output RMS / input RMS of linear-form candidate ``name`` on unit white noise, away from borders.

    A conv's gain is the RMS over output channels of its equivalent kernel's norm;
    3x3 average pooling (9 taps of 1/9) has 1/3, max pooling the RMS of a max of 9
    normals, skip 1; ``none`` has no output and is given 1.
    """
    if isinstance(module, DepthwisePointwise):
        with torch.no_grad():
            kernel = module.equivalent_kernel(OP_SPECS[name].span).double()
        return math.sqrt(float(kernel.pow(2).sum(dim=(1, 2, 3)).mean()))
    if name == "avg_pool_3x3":
        return 1.0 / 3.0
    if name == "max_pool_3x3":
        return _normal_max_rms(9)
    return 1.0


def op_scales(op_names: Iterable[str], ops: nn.ModuleDict) -> torch.Tensor:
    """(N,) fixed scales of the ``scaled`` form: 1 / white-noise gain of each candidate at initialisation."""
    return torch.tensor([1.0 / white_noise_gain(name, ops[name]) for name in op_names])


def _depthwise(channels: int, kernel: int, dilation: int = 1) -> nn.Conv2d:
    padding = dilation * (kernel - 1) // 2
    return nn.Conv2d(
        channels, channels, kernel, padding=padding, dilation=dilation, groups=channels, bias=False
    )


def _pointwise(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 1, bias=False)


def _batchnorm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, affine=False)


def darts_op(name: str, channels: int) -> nn.Module:
    """Candidate ``name`` as DARTS' search phase builds it (``model_search.py``: every BN affine=False).

    sep_conv: (ReLU, depthwise k, pointwise, BN) twice; dil_conv: ReLU, depthwise k at
    dilation 2, pointwise, BN; pools: stride 1, padding not counted, then BN; skip:
    identity; none: zero. Input and output (B, c, H, W).
    """
    spec = OP_SPECS[name]
    if name.startswith("sep_conv"):
        stack = []
        for _ in range(2):
            stack += [
                nn.ReLU(),
                _depthwise(channels, spec.kernel),
                _pointwise(channels),
                _batchnorm(channels),
            ]
        return nn.Sequential(*stack)
    if name.startswith("dil_conv"):
        return nn.Sequential(
            nn.ReLU(),
            _depthwise(channels, spec.kernel, spec.dilation),
            _pointwise(channels),
            _batchnorm(channels),
        )
    if name == "avg_pool_3x3":
        return nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), _batchnorm(channels)
        )
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _batchnorm(channels))
    if name == "skip_connect":
        return nn.Identity()
    if name == "none":
        return Zero()
    raise ValueError(f"unknown op {name!r}")


def _affine_of(bn: nn.BatchNorm2d) -> tuple:
    """Inference-mode BN as (scale, shift) per channel: y = x * scale + shift."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    return scale, -bn.running_mean * scale


def fold_darts_op(module: nn.Module, weight: float) -> nn.Module:
    """Inference form of a ``darts_op`` times its mixing ``weight``, every BN folded into the layer before it.

    Exact against ``weight * module.eval()(x)``: a pointwise conv followed by BN becomes
    one conv with a bias; pooling followed by BN gets a per-channel (depthwise 1x1)
    affine. ``weight`` is folded into the last layer. Returns a fresh module.
    """
    if isinstance(module, Zero):
        return Zero()
    if isinstance(module, nn.Identity):
        return _Scale(weight)
    layers, folded = list(module), []
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.BatchNorm2d):
            continue
        following = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(following, nn.BatchNorm2d):
            scale, shift = _affine_of(following)
            if isinstance(layer, nn.Conv2d):  # a pointwise conv: scale its rows, add the shift as bias
                conv = nn.Conv2d(layer.in_channels, layer.out_channels, 1, bias=True)
                conv.weight.data = layer.weight.detach() * scale.view(-1, 1, 1, 1)
            else:  # a pool: keep it, then a per-channel affine
                folded.append(_copy_layer(layer))
                channels = scale.numel()
                conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=True)
                conv.weight.data = scale.view(-1, 1, 1, 1).clone()
            conv.bias.data = shift.clone()
            folded.append(conv)
        else:
            folded.append(_copy_layer(layer))
    last = folded[-1]
    last.weight.data = last.weight.data * weight
    last.bias.data = last.bias.data * weight
    return nn.Sequential(*folded)


def _copy_layer(layer: nn.Module) -> nn.Module:
    return copy.deepcopy(layer)


class _Scale(nn.Module):
    """Multiply by a fixed scalar (a weighted skip connection)."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = float(weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.weight
