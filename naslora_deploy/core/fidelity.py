"""Measure how closely a merged model follows the unmerged one.

Two figures, both measured on real forward passes:
- per adapted projection, the relative error of the merged branch against the
  unmerged adapter branch, on the very inputs that projection sees;
- on the image embeddings, the error relative to the embeddings themselves and
  relative to the adapters' whole effect (unmerged minus base SAM), the honest
  figure: it says what share of the adaptation a merge loses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F

from naslora_deploy.core.adapters import adapters_disabled
from naslora_deploy.core.layers import AdaptedQKV

Key = Tuple[int, str]


@dataclass
class Fidelity:
    """Raw measured figures; ``merge`` wraps them into a ``MergeReport``."""

    images: int
    embedding_rel_error: float
    embedding_rel_error_of_adaptation: Optional[float]
    branch_errors: Dict[Key, Tuple[float, float]]  # (relative error, branch RMS)


def probe_images(image_size: int, count: int = 2, seed: int = 0, device=None) -> torch.Tensor:
    """Seeded, spatially correlated (N, 3, S, S) images at SAM's normalised scale.

    A sum of smooth random fields at several scales plus a few flat-coloured
    rectangles: neighbouring tokens are correlated, as in real photographs, which
    is what makes spatial ops differ from their dense folds.
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 3, image_size, image_size)
    for cells, amplitude in ((4, 1.0), (16, 0.5), (64, 0.25)):
        noise = torch.randn(count, 3, cells, cells, generator=generator) * amplitude
        images += F.interpolate(noise, size=(image_size, image_size), mode="bicubic", align_corners=False)
    for n in range(count):
        for _ in range(3):
            x0, y0 = torch.randint(0, image_size * 3 // 4, (2,), generator=generator).tolist()
            w, h = torch.randint(image_size // 8, image_size // 3, (2,), generator=generator).tolist()
            colour = torch.randn(3, 1, 1, generator=generator)
            images[n, :, y0 : y0 + h, x0 : x0 + w] = colour
    return images.to(device) if device is not None else images


def measure_fidelity(
    model,
    merged,
    layers: Dict[int, AdaptedQKV],
    candidates: Dict[int, Callable[[torch.Tensor], torch.Tensor]],
    image_batches: Iterable[torch.Tensor],
) -> Fidelity:
    """Run the unmerged, merged and base models on the same images and compare.

    ``candidates[i](x)`` gives the merged model's (..., T*dim) branch for block
    ``i`` on that block's qkv input ``x``; the unmerged branch is the adapter's.
    """
    sums: Dict[Key, list] = {}

    def hook_for(index: int) -> Callable:
        def hook(module: AdaptedQKV, inputs, _output) -> None:
            if module.disabled:  # the base-SAM pass of the same image
                return
            x = inputs[0]
            reference = module.delta(x).double()
            candidate = candidates[index](x).double()
            groups = len(module.adapters)
            diff = (candidate - reference).unflatten(-1, (groups, -1))
            ref = reference.unflatten(-1, (groups, -1))
            for g, target in enumerate(module.adapters):
                entry = sums.setdefault((index, target), [0.0, 0.0, 0])
                entry[0] += float(diff[..., g, :].pow(2).sum())
                entry[1] += float(ref[..., g, :].pow(2).sum())
                entry[2] += ref[..., g, :].numel()

        return hook

    device = next(model.parameters()).device
    err_sq = ref_sq = adapt_sq = 0.0
    images = 0
    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in layers.items()]
    try:
        for batch in image_batches:
            for image in batch.to(device).split(1):
                unmerged = model.image_encoder(image).double()
                with adapters_disabled(model):
                    base = model.image_encoder(image).double()
                merged_out = merged.image_encoder(image).double()
                err_sq += float((merged_out - unmerged).pow(2).sum())
                ref_sq += float(unmerged.pow(2).sum())
                adapt_sq += float((unmerged - base).pow(2).sum())
                images += 1
    finally:
        for handle in handles:
            handle.remove()
    branch_errors = {key: (_ratio(e, r), math.sqrt(r / max(n, 1))) for key, (e, r, n) in sums.items()}
    return Fidelity(
        images=images,
        embedding_rel_error=_ratio(err_sq, ref_sq),
        embedding_rel_error_of_adaptation=None if adapt_sq == 0.0 else math.sqrt(err_sq / adapt_sq),
        branch_errors=branch_errors,
    )


def _ratio(err_sq: float, ref_sq: float) -> float:
    """sqrt(err/ref); an all-zero reference gives the absolute error instead of inf."""
    if ref_sq == 0.0:
        return math.sqrt(err_sq)
    return math.sqrt(err_sq / ref_sq)
