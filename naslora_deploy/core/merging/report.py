"""`MergeReport`: the measured fidelity of a merge, per projection and overall."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

from naslora_deploy.common.io import atomic_write_text


@dataclass
class ProjectionFidelity:
    """How well one adapted projection survived the merge.

    spatial_weight: softmax weight on spatial candidates (convs, pools); the
        share of the cell a dense merge can only approximate.
    branch_rel_error: ||merged branch - unmerged branch|| / ||unmerged branch||,
        measured on the report's images (0 when the branch is all zero).
    """

    block: int
    target: str
    spatial_weight: float
    branch_rel_error: float
    branch_norm: float


@dataclass
class RecoveryReport:
    """What merge-aware recovery did (``merge(..., recover=STEPS)``).

    loss_before / loss_after: the distillation loss on the fitting images (relative
    squared error of the image embeddings, plus that of the mask logits when the
    decoder was tuned), before the first and after the last step. lr, decoder_lr:
    relative step sizes (``core.merging.recovery.Recovery``). kept_fold: the loss did not
    fall, so the plain fold was kept.
    """

    steps: int
    lr: float
    batch_size: int
    decoder: bool
    images: int
    loss_before: float
    loss_after: float
    seconds: float
    decoder_lr: Optional[float] = None
    kept_fold: bool = False


@dataclass
class MergeReport:
    """What a merge did and how much it changed, all measured, nothing assumed.

    fitted_on: the images the folds (and any recovery) were fitted on, or "nothing".
    measured_on: the images every figure below was measured on (held out from the fit).
    mask_iou: prompt ("none", "box") -> mean IoU between the merged and the unmerged
        model's predicted masks (empty where the merged model has no head).
    recovery: set where merge-aware recovery ran; the figures are after it.
    """

    mode: str
    method: str
    fold: str
    measured_on: str
    images: int
    embedding_rel_error: float
    embedding_rel_error_of_adaptation: Optional[float]
    projections: List[ProjectionFidelity] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    fitted_on: str = "nothing"
    mask_iou: Dict[str, float] = field(default_factory=dict)
    recovery: Optional[RecoveryReport] = None

    @property
    def max_branch_rel_error(self) -> float:
        """The worst projection's measured branch error."""
        return max((p.branch_rel_error for p in self.projections), default=0.0)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        data = asdict(self)
        data["max_branch_rel_error"] = self.max_branch_rel_error
        return data

    def to_json(self) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: Union[str, Path]) -> Path:
        """Write the report as JSON, atomically."""
        return atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: dict) -> "MergeReport":
        """Rebuild a report from ``to_dict`` output."""
        data = dict(data)
        data.pop("max_branch_rel_error", None)
        data["projections"] = [ProjectionFidelity(**p) for p in data.get("projections", [])]
        if data.get("recovery") is not None:
            data["recovery"] = RecoveryReport(**data["recovery"])
        return cls(**data)

    def summary(self) -> str:
        """A few lines for a terminal: overall figures and the worst projections."""
        adaptation = (
            "n/a (adapters have no effect)"
            if self.embedding_rel_error_of_adaptation is None
            else f"{self.embedding_rel_error_of_adaptation:.3e}"
        )
        lines = [
            f"merge {self.mode} ({self.method}, fold: {self.fold})",
            f"  fitted on {self.fitted_on}; measured on {self.measured_on}, {self.images} image(s)",
        ]
        if self.recovery is not None:
            r = self.recovery
            lines.append(
                f"  recovery: {r.steps} steps (rel. lr {r.lr:g}, batch {r.batch_size}, "
                f"{'encoder factors + decoder' if r.decoder else 'encoder factors'}) on {r.images} image(s): "
                f"distillation loss {r.loss_before:.3e} -> {r.loss_after:.3e} ({r.seconds:.0f} s)"
                + ("; the loss did not fall: the plain fold was kept" if r.kept_fold else "")
            )
        lines.append(
            f"  image embeddings: rel. error {self.embedding_rel_error:.3e}; "
            f"error / adapters' effect on embeddings {adaptation}"
        )
        for prompt, iou in self.mask_iou.items():
            lines.append(
                f"  predicted masks ({'prompt-free' if prompt == 'none' else prompt + ' prompt'}): "
                f"IoU merged vs unmerged {iou:.4f}"
            )
        lines.append(
            f"  adapter branches: max rel. error {self.max_branch_rel_error:.3e} over "
            f"{len(self.projections)} projections"
        )
        worst = (
            sorted(self.projections, key=lambda p: -p.branch_rel_error)[:5]
            if self.max_branch_rel_error
            else []
        )
        for p in worst:
            lines.append(
                f"    block {p.block:>2} {p.target}: branch rel. error {p.branch_rel_error:.3e}, "
                f"spatial weight {p.spatial_weight:.3f}"
            )
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)
