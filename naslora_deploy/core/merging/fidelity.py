"""Measure how closely a merged model follows the unmerged one.

Three figures, all measured on real forward passes:
- per adapted projection, the relative error of the merged branch against the
  unmerged adapter branch, on the very inputs that projection sees;
- on the image embeddings, the error relative to the embeddings themselves and
  relative to the adapters' whole effect (unmerged minus base SAM), the honest
  figure: it says what share of the adaptation a merge loses;
- task level (where the model has a head, ``Heads``): the IoU between the merged
  and the unmerged model's predicted masks (probability > 0.5), per image, averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from naslora_deploy.core.adapters.injection import adapters_disabled
from naslora_deploy.core.adapters.layers import AdaptedQKV
from naslora_deploy.core.model.heads import semantic_probabilities, upsample_logits

Key = Tuple[int, str]


@dataclass
class Fidelity:
    """Raw measured figures; ``merge`` wraps them into a ``MergeReport``."""

    images: int
    embedding_rel_error: float
    embedding_rel_error_of_adaptation: Optional[float]
    branch_errors: Dict[Key, Tuple[float, float]]  # (relative error, branch RMS)
    mask_iou: Dict[str, float] = field(default_factory=dict)  # prompt -> mean IoU merged vs unmerged


@dataclass
class Heads:
    """The segmentation models around the unmerged and merged SAMs, for task-level fidelity.

    ``prompts``: ``"none"`` (prompt-free) and/or ``"box"`` (one fixed box per image,
    ``fixed_box``; binary heads only).
    """

    unmerged: object  # SegmentationModel
    merged: object  # SegmentationModel
    prompts: List[str] = field(default_factory=lambda: ["none"])


def fixed_box(image_size: int) -> torch.Tensor:
    """The (1, 4) box a box-trained model is measured with: the central 3/4 of the input square.

    Calibration images carry no labels, so there is no object box; both models
    get the same box, which is what an agreement figure needs.
    """
    low, high = image_size / 8, image_size * 7 / 8
    return torch.tensor([[low, low, high, high]])


def predicted_masks(head, embeddings: torch.Tensor, prompt: str) -> torch.Tensor:
    """(B, H, W) boolean masks (binary: foreground; multi-class: argmax label) at the input size."""
    size = head.image_size
    if prompt == "box":
        boxes = [fixed_box(size).to(embeddings) for _ in range(embeddings.shape[0])]
        logits = head.decode_boxes(embeddings, boxes)["mask_logits"]
    else:
        outputs = head.decode(embeddings)
        logits = outputs["mask_logits"]
        if "class_logits" in outputs:
            prob = semantic_probabilities(
                upsample_logits(logits.float(), size), outputs["class_logits"].float()
            )
            return prob.argmax(1)
    return upsample_logits(logits.float(), size)[:, 0] > 0.0  # sigmoid > 0.5


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two same-shaped masks: boolean foregrounds, or label maps (mean over the labels present).

    Two empty foregrounds agree completely (1.0).
    """
    if a.dtype == torch.bool:
        union = int((a | b).sum())
        return 1.0 if union == 0 else int((a & b).sum()) / union
    labels = torch.unique(torch.cat([a.flatten(), b.flatten()]))
    return sum(mask_iou(a == k, b == k) for k in labels.tolist()) / len(labels)


def probe_images(
    image_size: int, count: int = 2, seed: int = 0, device=None, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Seeded, spatially correlated (N, 3, S, S) images at SAM's normalised scale (float32 by default).

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
    return images.to(device=device, dtype=dtype or images.dtype)


def measure_fidelity(
    model,
    merged,
    layers: Dict[int, AdaptedQKV],
    candidates: Dict[int, Callable[[torch.Tensor], torch.Tensor]],
    image_batches: Iterable[torch.Tensor],
    heads: Optional[Heads] = None,
) -> Fidelity:
    """Run the unmerged, merged and base models on the same images and compare.

    ``candidates[i](x)`` gives the merged model's (..., T*dim) branch for block
    ``i`` on that block's qkv input ``x``; the unmerged branch is the adapter's.
    ``heads``: also compare the predicted masks (``Fidelity.mask_iou``).
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

    parameter = next(model.parameters())
    err_sq = ref_sq = adapt_sq = 0.0
    images = 0
    ious: Dict[str, List[float]] = {prompt: [] for prompt in (heads.prompts if heads else [])}
    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in layers.items()]
    try:
        for batch in image_batches:
            for image in batch.to(parameter).split(1):
                unmerged_embedding = model.image_encoder(image)
                merged_embedding = merged.image_encoder(image)
                unmerged, merged_out = unmerged_embedding.double(), merged_embedding.double()
                with adapters_disabled(model):
                    base = model.image_encoder(image).double()
                for prompt, values in ious.items():
                    values.append(
                        mask_iou(
                            predicted_masks(heads.merged, merged_embedding, prompt)[0],
                            predicted_masks(heads.unmerged, unmerged_embedding, prompt)[0],
                        )
                    )
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
        mask_iou={prompt: sum(v) / len(v) for prompt, v in ious.items() if v},
    )


def _ratio(err_sq: float, ref_sq: float) -> float:
    """sqrt(err/ref); an all-zero reference gives the absolute error instead of inf."""
    if ref_sq == 0.0:
        return math.sqrt(err_sq)
    return math.sqrt(err_sq / ref_sq)
