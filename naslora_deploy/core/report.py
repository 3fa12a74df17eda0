"""`MergeReport`: the measured fidelity of a merge, per projection and overall."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Union

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
class MergeReport:
    """What a merge did and how much it changed, all measured, nothing assumed."""

    mode: str
    method: str
    fold: str
    measured_on: str
    images: int
    embedding_rel_error: float
    embedding_rel_error_of_adaptation: Optional[float]
    projections: List[ProjectionFidelity] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

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
        return cls(**data)

    def summary(self) -> str:
        """A few lines for a terminal: overall figures and the worst projections."""
        adaptation = (
            "n/a (adapters have no effect)"
            if self.embedding_rel_error_of_adaptation is None
            else f"{self.embedding_rel_error_of_adaptation:.3e}"
        )
        lines = [
            f"merge {self.mode} ({self.method}, fold: {self.fold}), measured on {self.measured_on}, "
            f"{self.images} image(s)",
            f"  image embeddings: rel. error {self.embedding_rel_error:.3e}; "
            f"error / adapters' effect on embeddings {adaptation}",
            f"  adapter branches: max rel. error {self.max_branch_rel_error:.3e} over "
            f"{len(self.projections)} projections",
        ]
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
