"""Merge-aware recovery: tune the dense fold's low-rank factors by distillation, then merge exactly.

A dense fold is a rank-r LoRA per projection: ``W0 x + W_d (M W_e x + c)`` is LoRA
with ``lora_A = W_e``, ``lora_B = W_d M`` on a qkv whose bias holds ``b0 + W_d c``.
``lora_form`` builds that model (method ``lora``, through ``add_adapters``);
``distil`` tunes its factors (and optionally the mask decoder) with Adam to
reproduce the unmerged model's image embeddings (and mask logits) on unlabelled
calibration images; the dense merge of a LoRA is exact, so the result is plain
SAM with zero inference overhead (``recover_dense``).

The learning rate defaults (``RECOVER_LR``, ``RECOVER_DECODER_LR``) were chosen
by measurement; see their comment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from naslora_deploy.common.progress import phase, steps
from naslora_deploy.core.adapters.config import AdapterConfig
from naslora_deploy.core.adapters.injection import adapted_layers, add_adapters
from naslora_deploy.core.adapters.layers import AdaptedQKV
from naslora_deploy.core.merging.fidelity import fixed_box
from naslora_deploy.core.merging.folds import Folds, Intercepts, dense_copy, identity_folds
from naslora_deploy.core.merging.report import RecoveryReport

# Step sizes are relative: each tensor's Adam lr is this times its RMS, so one setting fits factors
# of any scale (a W_d M trained for a few steps is 100x smaller than a perturbed test one; an absolute
# step tuned on one overshoots on the other). See ``Recovery`` for how they were chosen.
RECOVER_LR = 5e-3
RECOVER_DECODER_LR = 2e-5


@dataclass
class Recovery:
    """How to recover: ``steps`` Adam steps on batches of ``batch_size`` calibration images.

    lr: the factors' step relative to their size (each tensor's Adam lr is ``lr``
    times its RMS). decoder: also tune the mask decoder (and distil its mask
    logits), at the relative step ``decoder_lr``. seed: the order of the images.

    How the defaults were chosen (held-out embedding error / adapters' effect,
    fit on 4 images, measured on 4 others). Absolute steps first: on 3 seeded
    vit_tiny cases after 40 steps, 1e-4, 3e-4, 1e-3 were within 3 % of each
    other, 3e-3 worse than no recovery on two cases, 1e-2 diverged; on
    LiteMedSAM (real weights, perturbed adapters; 0.127 without recovery) 1e-4
    gave 0.119 / 0.111 after 15 / 30 steps, 3e-4 0.113 / 0.106, 1e-3 0.146 (worse
    than none). Then relative steps (the same vit_tiny cases, plus one with W_d
    50x smaller), 10 / 40 steps: 2e-3, 5e-3 and 1.5e-2 all recover; 5e-3 is within
    3 % of the best at 40 steps on every case and the best or near it at 10, and
    is the relative form of the 3e-4 that won on LiteMedSAM (factor RMS ~0.05).
    The decoder's pretrained weights need far smaller steps: at an absolute 1e-5
    the mask-logit loss rose 10x in 4 steps; at 1e-6 (relative ~2e-5) and 1e-7 it fell.
    Should the distillation loss on the fitting images end higher than it began,
    the plain fold is kept (``RecoveryReport.kept_fold``).
    """

    steps: int = 0
    lr: float = RECOVER_LR
    batch_size: int = 2
    decoder: bool = False
    decoder_lr: float = RECOVER_DECODER_LR
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"recovery steps must be an integer >= 0, got {self.steps!r}")
        for name in ("lr", "decoder_lr"):
            value = getattr(self, name)
            if not (value > 0.0 and value < float("inf")):
                raise ValueError(f"recovery {name} must be a positive number, got {value!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"recovery batch size must be an integer >= 1, got {self.batch_size!r}")


def lora_form(sam, layers: Dict[int, AdaptedQKV], folds: Folds, intercepts: Optional[Intercepts]):
    """A copy of ``sam`` as plain LoRA equal to the dense fold: ``lora_A = W_e``, ``lora_B = W_d M``.

    Its qkv biases hold the intercepts ``b0 + W_d c``. Built with ``add_adapters``
    (method ``lora``, the rank, targets, blocks and seed of ``sam``'s config), so
    only the adapters and the mask decoder are trainable.
    """
    config = next(iter(layers.values())).config
    zero = {
        i: {t: torch.zeros_like(f, dtype=torch.float64) for t, f in fold.items()} for i, fold in folds.items()
    }
    student = dense_copy(sam, layers, zero, intercepts)  # base weights, biases with the intercepts
    lora = AdapterConfig(
        method="lora", rank=config.rank, targets=config.targets, blocks=config.blocks, seed=config.seed
    )
    add_adapters(student, lora)
    with torch.no_grad():
        for index, layer in adapted_layers(student):
            for target, adapter in layer.adapters.items():
                source = layers[index].adapters[target]
                adapter.lora_A.copy_(source.lora_A)
                adapter.lora_B.copy_(source.lora_B.double() @ folds[index][target].double())
    return student


def _prompt_logits(head, embeddings: torch.Tensor, prompt: str) -> torch.Tensor:
    """The (B, Q, h, w) low-resolution mask logits of ``head`` for ``embeddings`` under ``prompt``."""
    if prompt == "box":
        boxes = [fixed_box(head.image_size).to(embeddings) for _ in range(embeddings.shape[0])]
        return head.decode_boxes(embeddings, boxes)["mask_logits"]
    return head.decode(embeddings)["mask_logits"]


def distil(
    student,
    teacher,
    images: List[torch.Tensor],
    recovery: Recovery,
    student_head=None,
    teacher_head=None,
    prompt: str = "none",
    progress: Optional[bool] = False,
) -> Tuple[float, float, bool]:
    """Tune ``student``'s LoRA factors (and decoder) towards ``teacher``'s outputs.

    Returns the loss before and after, and whether the initial values were kept
    (restored because the loss did not fall).

    ``images``: (1, 3, S, S) images. The loss is the relative squared error of
    the image embeddings (``||e_s - e_t||^2 / ||e_t||^2`` per batch), plus that
    of the mask logits (through ``student_head`` / ``teacher_head`` under
    ``prompt``) when ``recovery.decoder``. Both models stay in eval mode
    (TinyViT's batch norms keep their statistics); only the chosen parameters move.
    """
    for param in student.parameters():
        param.requires_grad_(False)
    trainable = [
        p
        for _, layer in adapted_layers(student)
        for p in (
            *(a.lora_A for a in layer.adapters.values()),
            *(a.lora_B for a in layer.adapters.values()),
        )
    ]
    groups = [{"params": [p], "lr": recovery.lr * _rms(p)} for p in trainable]
    if recovery.decoder:
        decoder = list(student.mask_decoder.parameters())
        groups += [{"params": [p], "lr": recovery.decoder_lr * _rms(p)} for p in decoder]
        trainable = trainable + decoder
    initial = [p.detach().clone() for p in trainable]
    for param in trainable:
        param.requires_grad_(True)
    modes = (student.training, teacher.training)
    student.eval()
    teacher.eval()
    with torch.no_grad():
        targets = []
        for image in images:
            embedding = teacher.image_encoder(image)
            logits = _prompt_logits(teacher_head, embedding, prompt) if recovery.decoder else None
            targets.append((embedding, logits))

    def loss_of(chosen: List[int]) -> torch.Tensor:
        batch = torch.cat([images[i] for i in chosen])
        embedding = student.image_encoder(batch)
        reference = torch.cat([targets[i][0] for i in chosen])
        loss = F.mse_loss(embedding, reference, reduction="sum") / reference.pow(2).sum()
        if recovery.decoder:
            logits = _prompt_logits(student_head, embedding, prompt)
            wanted = torch.cat([targets[i][1] for i in chosen])
            loss = loss + F.mse_loss(logits, wanted, reduction="sum") / wanted.pow(2).sum().clamp_min(1e-12)
        return loss

    def full_loss() -> float:
        with torch.no_grad():
            chunks = _chunks(list(range(len(images))), recovery.batch_size)
            return sum(float(loss_of(c)) * len(c) for c in chunks) / len(images)

    with phase(f"merge: recovery loss before ({len(images)} images)", progress):
        before = full_loss()
    optimiser = torch.optim.Adam(groups)
    generator = torch.Generator().manual_seed(recovery.seed)
    order: List[int] = []
    with torch.enable_grad():
        for _ in steps(range(recovery.steps), "merge: recovery step", progress):
            if len(order) < recovery.batch_size:
                order += torch.randperm(len(images), generator=generator).tolist()
            chosen, order = order[: recovery.batch_size], order[recovery.batch_size :]
            optimiser.zero_grad(set_to_none=True)
            loss_of(chosen).backward()
            optimiser.step()
    for param in trainable:
        param.requires_grad_(False)
    after = full_loss()
    kept = not after < before
    if kept:  # recovery made the fit worse: back to the fold
        with torch.no_grad():
            for param, value in zip(trainable, initial):
                param.copy_(value)
    student.train(modes[0])
    teacher.train(modes[1])
    return before, after, kept


def _rms(tensor: torch.Tensor) -> float:
    """Root mean square of a tensor's values (a tiny floor keeps an all-zero tensor's lr positive)."""
    return max(float(tensor.detach().double().pow(2).mean().sqrt()), 1e-12)


def _chunks(items: List[int], size: int) -> List[List[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def recover_dense(
    sam,
    head,
    layers: Dict[int, AdaptedQKV],
    folds: Folds,
    intercepts: Optional[Intercepts],
    batches: Callable[[], Iterable[torch.Tensor]],
    recovery: Recovery,
    prompt: str = "none",
    progress: Optional[bool] = False,
):
    """The dense fold, recovered and merged exactly: returns ``(plain SAM, RecoveryReport)``.

    ``sam`` (the unmerged model, ``head`` its ``SegmentationModel`` or None) is the
    teacher and is not modified; ``batches()`` gives the unlabelled images to distil on.
    """
    started = time.perf_counter()
    images = [image for batch in batches() for image in batch.split(1)]
    student = lora_form(sam, layers, folds, intercepts)
    student_head = head.with_sam(student) if head is not None else None
    loss_before, loss_after, kept = distil(
        student, sam, images, recovery, student_head, head, prompt if head is not None else "none", progress
    )
    student_layers = dict(adapted_layers(student))
    with torch.no_grad():
        merged = dense_copy(student, student_layers, identity_folds(student_layers))
    merged.train(sam.training)
    report = RecoveryReport(
        steps=recovery.steps,
        lr=recovery.lr,
        batch_size=recovery.batch_size,
        decoder=recovery.decoder,
        images=len(images),
        loss_before=loss_before,
        loss_after=loss_after,
        seconds=time.perf_counter() - started,
        decoder_lr=recovery.decoder_lr if recovery.decoder else None,
        kept_fold=kept,
    )
    return merged, report
