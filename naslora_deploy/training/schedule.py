"""The weights' learning-rate schedule: a pure function of the step, so a resumed run needs no state.

``constant``, ``cosine`` (to zero) or ``poly`` (``(1 - progress) ** 0.9``, the
segmentation literature's usual power), each after an optional linear warm-up.
Only the weights' optimiser follows it; alpha's Adam keeps a constant learning
rate, as DARTS does (cosine-annealed weights, constant-rate alpha).
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine", "poly")
POLY_POWER = 0.9


def total_steps(epochs: int, steps_per_epoch: int, max_steps=None) -> int:
    """The run's length in optimiser steps: ``epochs x steps_per_epoch``, or ``max_steps`` if smaller."""
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"a run needs epochs >= 1 and steps per epoch >= 1, got {epochs} and {steps_per_epoch}"
        )
    total = epochs * steps_per_epoch
    return max(1, min(total, max_steps)) if max_steps is not None else total


def learning_rate(
    step: int, total: int, base_lr: float, schedule: str = "constant", warmup_steps: int = 0
) -> float:
    """The learning rate of (0-based) optimiser step ``step`` of a ``total``-step run.

    Warm-up: step ``s < warmup_steps`` uses ``base_lr * (s + 1) / warmup_steps``. After
    it, ``progress = (s - warmup_steps) / (total - warmup_steps)`` runs from 0 at the
    first step towards 1 (never reached: the last step still learns); ``cosine``
    gives ``base_lr * (1 + cos(pi * progress)) / 2`` and ``poly``
    ``base_lr * (1 - progress) ** 0.9``. Steps past ``total`` keep the last value.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if step < 0 or total < 1 or warmup_steps < 0:
        raise ValueError(f"bad schedule position: step {step}, total {total}, warm-up {warmup_steps}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant" or total <= warmup_steps:
        return base_lr
    progress = min(step - warmup_steps, total - warmup_steps - 1) / (total - warmup_steps)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base_lr * (1.0 - progress) ** POLY_POWER


def search_never_starts(config, steps_per_epoch: int):
    """Why a stage-wise run's alpha would never take a step, or None when its search does start.

    Alpha's steps begin at epoch ``search_start`` (T_B); a run whose last epoch, or whose
    ``max_steps``, comes first leaves alpha at its initialisation.
    """
    if config.joint:
        return None
    if config.search_start >= config.epochs:
        return (
            f"no search will run: --search-start {config.search_start} is at or past the last epoch "
            f"({config.epochs} epochs, counted from 0); alpha stays at its initialisation"
        )
    first_search_step = config.search_start * steps_per_epoch
    if config.max_steps is not None and config.max_steps <= first_search_step:
        return (
            f"no search will run: --max-steps {config.max_steps} ends the run before epoch "
            f"{config.search_start + 1} (step {first_search_step + 1}), where alpha's steps start; "
            "alpha stays at its initialisation"
        )
    return None
