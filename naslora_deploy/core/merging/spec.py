"""`MergeSpec`: how a run is merged, declared once for ``merge``, ``export`` (nested in
``ExportSpec``), the PEFT export and ``verify``; and the merge's option rules, stated once.

No torch here: the CLI builds its options from these fields on machines without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from naslora_deploy.common.options import check_bounds, option
from naslora_deploy.core.adapters.config import MERGE_MODES


def recovery_steps(text: str) -> int:
    """``--recover STEPS`` from the command line: a whole number >= 0, or one clear ``ValueError``."""
    try:
        steps = int(text)
    except ValueError:
        steps = -1
    if steps < 0:
        raise ValueError(f"--recover must be a whole number of steps >= 0, got {text!r}")
    return steps


def merge_problem(mode: str, steps, has_calibration: bool, decoder: bool = False) -> str:
    """Why these merge options do not go together (one line), or "" when they do.

    The one statement of the rules: ``MergeSpec`` checks them before a model is
    loaded, ``merge()`` again for library callers.
    """
    if mode not in MERGE_MODES:
        return f"unknown merge mode {mode!r}; choose {' or '.join(MERGE_MODES)}"
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        return f"--recover must be a whole number of steps >= 0, got {steps!r}"
    if steps and mode != "dense":
        return "--recover tunes the dense fold; use it with the dense merge (fused is exact)"
    if steps and not has_calibration:
        return "--recover distils on unlabelled images: give them with --calibration FOLDER"
    if decoder and not steps:
        return "--recover-decoder needs --recover STEPS"
    return ""


# ``--calibration``'s help as ``merge`` gives it; ``export`` adds what int8 does with the images
CALIBRATION_HELP = "image folder for the dense merge's least-squares fold (and its measurement)"


@dataclass
class MergeSpec:
    """How to merge a run: the mode, the calibration images, and merge-aware recovery."""

    mode: str = field(
        default="dense",
        metadata=option("dense: plain SAM; fused: exact, tiny branch", choices=MERGE_MODES, flag="--merge"),
    )
    calibration: Optional[str] = field(
        default=None, metadata=option(CALIBRATION_HELP + " and for --precision int8's activation ranges")
    )
    calibration_images: int = field(default=16, metadata=option("how many calibration images to use", low=1))
    recover: int = field(
        default=0,
        metadata=option(
            "dense merge: tune the folded low-rank factors for STEPS steps by distillation from the unmerged "
            "model on the calibration images, then merge exactly (plain SAM; needs --calibration)",
            metavar="STEPS",
            parse=recovery_steps,
            shown="0",
        ),
    )
    recover_decoder: bool = field(
        default=False,
        metadata=option("with --recover: also tune the mask decoder (and distil its mask logits)"),
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        problem = merge_problem(self.mode, self.recover, bool(self.calibration), self.recover_decoder)
        if problem:
            raise ValueError(problem)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MergeSpec":
        """The inverse of ``to_dict``."""
        return cls(**data)
