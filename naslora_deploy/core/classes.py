"""`ClassSpec`: binary or K-class labels, names and an optional RGB palette."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from naslora_deploy.common.errors import NasloraError


@dataclass
class ClassSpec:
    """What the masks mean.

    ``num_classes == 1`` is the binary head (foreground vs background). Otherwise
    masks hold class indices 0..K-1 (background is a class, as in Trans10K),
    with 255 ignored; ``palette`` maps colour-coded masks to those indices.
    """

    num_classes: int = 1
    names: List[str] = field(default_factory=list)
    palette: Optional[List[Tuple[int, int, int]]] = None

    def __post_init__(self) -> None:
        if self.num_classes < 1 or self.num_classes > 254:
            raise ValueError(f"number of classes must be 1 (binary) or 2..254, got {self.num_classes}")
        if not self.names:
            self.names = ["foreground"] if self.binary else [f"class_{i}" for i in range(self.num_classes)]
        if len(self.names) != self.num_classes:
            raise ValueError(f"{len(self.names)} class names for {self.num_classes} classes")
        if self.palette is not None:
            self.palette = [tuple(int(c) for c in colour) for colour in self.palette]
            if len(self.palette) != self.num_classes or any(len(c) != 3 for c in self.palette):
                raise ValueError(f"the palette must give one [r, g, b] colour per class ({self.num_classes})")

    @property
    def binary(self) -> bool:
        """One foreground class: the binary head and its metrics."""
        return self.num_classes == 1

    @property
    def head(self) -> str:
        """Name of the model head these classes need."""
        return "binary" if self.binary else "multiclass"

    def palette_lookup(self) -> Optional[Dict[Tuple[int, int, int], int]]:
        """RGB colour -> class index, or None for index masks."""
        return None if self.palette is None else {colour: i for i, colour in enumerate(self.palette)}

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"num_classes": self.num_classes, "names": list(self.names), "palette": self.palette}

    @classmethod
    def from_dict(cls, data: dict) -> "ClassSpec":
        """Rebuild from ``to_dict`` output."""
        palette = data.get("palette")
        return cls(
            int(data["num_classes"]),
            list(data.get("names") or []),
            [tuple(c) for c in palette] if palette else None,
        )

    @classmethod
    def from_classes_json(cls, path: Path) -> "ClassSpec":
        """Read a data set's ``classes.json``: {"names": [...], "palette": [[r, g, b], ...]}."""
        try:
            data = json.loads(Path(path).read_text())
            names = data["names"]
            return cls(len(names), list(names), data.get("palette"))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise NasloraError(
                f'{path}: not a valid classes.json ({exc}); expected {{"names": [...], "palette": [[r, g, '
                f"b], ...]}}"
            ) from None
