"""`ClassSpec`: binary or K-class labels, names and an optional RGB palette."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import read_json


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
        """Read a data set's ``classes.json``: {"names": [...], "palette": [[r, g, b], ...]}.

        Every problem (not JSON, ``names`` not a list of distinct non-empty strings, a
        palette that is not one [r, g, b] of 0..255 per name) is one ``NasloraError`` line.
        """
        try:
            data = read_json(path, "classes.json")
        except NasloraError as exc:
            raise NasloraError(f"{exc}; {CLASSES_JSON_FORM}") from None
        problem = classes_json_problem(data)
        if problem:
            raise NasloraError(f"{path}: {problem}; {CLASSES_JSON_FORM}")
        return cls(len(data["names"]), list(data["names"]), data.get("palette"))


CLASSES_JSON_FORM = (
    'expected {"names": ["background", "lesion", ...], "palette": [[r, g, b], ...] (optional)}'
)


def _json_kind(value: object) -> str:
    """A JSON value's kind in words, for messages."""
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    kinds = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _names_problem(names: object) -> Optional[str]:
    if not isinstance(names, list):
        return f'"names" is {_json_kind(names)}, not a list of class names'
    if not 1 <= len(names) <= 254:
        return f'"names" lists {len(names)} classes; give 1 (binary) to 254'
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            return f'"names"[{i}] is {_json_kind(name)}, not a class name (a non-empty string)'
    repeated = next((name for i, name in enumerate(names) if name in names[:i]), None)
    return f'"names" lists {repeated!r} twice; class names must differ' if repeated is not None else None


def _palette_problem(palette: object, count: int) -> Optional[str]:
    if palette is None:
        return None
    if not isinstance(palette, list) or len(palette) != count:
        kind = _json_kind(palette)
        return f'"palette" must be a list of {count} [r, g, b] colours, one per name; it is {kind}'
    for i, colour in enumerate(palette):
        valid = isinstance(colour, list) and len(colour) == 3
        if not valid or not all(type(c) is int and 0 <= c <= 255 for c in colour):
            return f'"palette"[{i}] is {json.dumps(colour)[:40]}, not [r, g, b] with whole numbers 0..255'
    return None


def classes_json_problem(data: object) -> Optional[str]:
    """What is wrong with a parsed ``classes.json`` (one phrase), or None when it is valid."""
    if not isinstance(data, dict):
        return f"the top level is {_json_kind(data)}, not an object"
    if "names" not in data:
        return '"names" is missing'
    return _names_problem(data["names"]) or _palette_problem(data.get("palette"), len(data["names"]))
