"""Losses of the paper's Appendix A: BCE + Dice, and the multi-class matching loss."""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import IGNORE_INDEX
from naslora_deploy.core.model.heads import upsample_logits

LAMBDA_SEG = 1.0
LAMBDA_CLS = 2.0


def require_finite(loss: torch.Tensor, step: int, lr: float, arch_lr: float) -> torch.Tensor:
    """``loss`` if finite; else stop the run (one line) before the optimiser spreads NaN into the weights."""
    if not torch.isfinite(loss.detach()).all():
        raise NasloraError(
            f"the training loss became {loss.item()} at step {step}: the run diverged; lower --lr (now "
            f"{lr:g}) or --arch-lr (now {arch_lr:g}); checkpoints of earlier epochs are kept"
        )
    return loss


def bce_dice(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over masks of BCE + Dice (Eq. 9-10), counting only ``valid`` pixels.

    logits, target, valid: (M, H, W); Dice uses sum(y^2) + sum(p^2) as in Eq. 10.
    """
    valid = valid.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1.0)
    prob = logits.sigmoid() * valid
    target = target * valid
    inter = (prob * target).flatten(1).sum(1)
    denom = target.pow(2).flatten(1).sum(1) + prob.pow(2).flatten(1).sum(1)
    dice = 1.0 - 2.0 * inter / denom.clamp(min=1e-6)
    return (bce + dice).mean()


def binary_loss(outputs: Dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """BCE + Dice of the single mask against 0/1 labels (255 ignored)."""
    logits = upsample_logits(outputs["mask_logits"], labels.shape[-1])[:, 0]
    valid = labels != IGNORE_INDEX
    return bce_dice(logits, (labels == 1).float(), valid)


def box_loss(outputs: Dict[str, torch.Tensor], targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """BCE + Dice of every box prompt's mask against its component: ``targets``, ``valid`` (P, S, S)."""
    if len(targets) == 0:  # no object in the batch: nothing to prompt, a zero that keeps the graph
        return outputs["mask_logits"].sum() * 0.0
    logits = upsample_logits(outputs["mask_logits"], targets.shape[-1])[:, 0]
    return bce_dice(logits, targets.float(), valid)


def _pairwise_cost(
    prob: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """(Q, C) BCE + Dice cost of every query mask against every class mask."""
    v = valid.flatten().float()
    lg = logits.flatten(1)
    tg = targets.flatten(1).float() * v
    pos = F.binary_cross_entropy_with_logits(lg, torch.ones_like(lg), reduction="none") * v
    neg = F.binary_cross_entropy_with_logits(lg, torch.zeros_like(lg), reduction="none") * v
    background = (1 - targets.flatten(1).float()) * v
    bce = (pos @ tg.T + neg @ background.T) / v.sum().clamp(min=1)
    p = prob.flatten(1) * v
    dice = 1 - 2 * (p @ tg.T) / (p.pow(2).sum(1)[:, None] + tg.pow(2).sum(1)[None, :]).clamp(min=1e-6)
    return bce + dice


def match_queries(
    outputs: Dict[str, torch.Tensor], labels: torch.Tensor
) -> List[Tuple[np.ndarray, np.ndarray, torch.Tensor]]:
    """Hungarian matching per image: (query indices, class ids, class masks) of the matches.

    Cost = lambda_cls * (-p(class)) + lambda_seg * (BCE + Dice), over the classes
    present in the image.
    """
    size = labels.shape[-1]
    matches = []
    with torch.no_grad():
        logits = upsample_logits(outputs["mask_logits"], size)
        class_prob = outputs["class_logits"].softmax(-1)
        for b in range(labels.shape[0]):
            present = [int(c) for c in torch.unique(labels[b]) if int(c) != IGNORE_INDEX]
            if not present:
                matches.append((np.zeros(0, int), np.zeros(0, int), labels.new_zeros((0, size, size))))
                continue
            class_ids = torch.tensor(present, device=labels.device)
            targets = labels[b][None] == class_ids[:, None, None]
            valid = labels[b] != IGNORE_INDEX
            cost = LAMBDA_SEG * _pairwise_cost(logits[b].sigmoid(), logits[b], targets, valid)
            cost = cost - LAMBDA_CLS * class_prob[b][:, class_ids]
            rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
            matches.append((rows, class_ids.cpu().numpy()[cols], targets[cols]))
    return matches


def multiclass_loss(
    outputs: Dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int, no_object_weight: float = 1.0
) -> torch.Tensor:
    """lambda_seg * (BCE + Dice) on matched queries + lambda_cls * CE over all queries.

    Unmatched queries are trained towards "no object" (index K). ``no_object_weight``
    weights that class in the CE, which is then the weighted mean over queries
    (``sum w_i * ce_i / sum w_i``, as ``F.cross_entropy`` with class weights and as
    Mask2Former, whose weight is 0.1); 1.0 is the plain mean.
    """
    if not (no_object_weight > 0 and math.isfinite(no_object_weight)):
        raise ValueError(f"no_object_weight must be a finite number > 0, got {no_object_weight!r}")
    matches = match_queries(outputs, labels)
    logits = upsample_logits(outputs["mask_logits"], labels.shape[-1])
    class_logits = outputs["class_logits"]
    batch, queries = class_logits.shape[:2]
    class_targets = torch.full((batch, queries), num_classes, dtype=torch.long, device=labels.device)
    seg_logits, seg_targets, seg_valid = [], [], []
    for b, (rows, class_ids, targets) in enumerate(matches):
        if len(rows) == 0:
            continue
        rows_t = torch.as_tensor(rows, device=labels.device)
        class_targets[b, rows_t] = torch.as_tensor(class_ids, device=labels.device)
        seg_logits.append(logits[b, rows_t])
        seg_targets.append(targets.float())
        seg_valid.append((labels[b] != IGNORE_INDEX)[None].expand(len(rows), -1, -1))
    class_weight = None
    if no_object_weight != 1.0:
        class_weight = class_logits.new_ones(num_classes + 1)
        class_weight[num_classes] = no_object_weight
    cls_loss = F.cross_entropy(class_logits.flatten(0, 1), class_targets.flatten(), weight=class_weight)
    if not seg_logits:
        return LAMBDA_CLS * cls_loss
    seg_loss = bce_dice(torch.cat(seg_logits), torch.cat(seg_targets), torch.cat(seg_valid))
    return LAMBDA_SEG * seg_loss + LAMBDA_CLS * cls_loss
