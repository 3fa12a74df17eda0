"""Stated limits on what an input may declare, checked before anything is allocated.

A file's header, an annotation's height and width, a polygon's coordinates or a
command-line count can ask for any amount of memory. Each such amount is checked
against one of the limits below *before* the allocation, and refused with one line
that names the limit and the environment variable that changes it. The defaults
are far above what real data needs (a COCO train2017 annotation file is 0.45 GB,
a Sentinel-2 scene 13 bands of 10980 x 10980); a user who needs more raises the
variable, e.g. ``NASLORA_MAX_PIXELS=400000000 naslora-deploy predict ...``.
The README's "Limits" table lists them (a test keeps it in step with ``LIMITS``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict

from naslora_deploy.common.errors import NasloraError


@dataclass(frozen=True)
class Limit:
    """One limit: its default, the environment variable that overrides it, and what it bounds."""

    name: str
    default: int
    env: str
    what: str  # "pixels of one image", completes "<amount> <what>"

    @property
    def value(self) -> int:
        """The limit in force: ``env`` if set (a positive integer), else ``default``."""
        text = os.environ.get(self.env, "").strip().replace("_", "")
        if not text:
            return self.default
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise NasloraError(
                f"environment variable {self.env}={os.environ[self.env]!r} is not a positive whole number; "
                f"set it to the largest {self.what} to accept (default {self.default:,}) or unset it"
            )
        return value

    def check(self, amount: int, source: object, todo: str = "") -> None:
        """Raise one line if ``amount`` is above the limit: what, which source, what to do."""
        limit = self.value
        if amount > limit:
            advice = f"{todo}, or raise" if todo else "raise"
            raise NasloraError(
                f"{source}: {amount:,} {self.what}, above the limit of {limit:,}; "
                f"{advice} the limit with {self.env}=N"
            )


def _limit(name: str, default: int, what: str) -> Limit:
    return Limit(name, default, f"NASLORA_MAX_{name.upper()}", what)


IMAGE_PIXELS = _limit("pixels", 89_478_485, "pixels in one image")  # Pillow's decompression-bomb limit
DECODED_BYTES = _limit("decoded_bytes", 2 << 30, "bytes decoded for one image, mask or array")
JSON_BYTES = _limit("json_bytes", 1 << 30, "bytes in one JSON file")
POINTS_PER_SIDE = _limit("points_per_side", 256, "points per side of everything mode's grid")
TILE_WINDOWS = _limit("tile_windows", 16_384, "tiling windows for one image")

LIMITS: Dict[str, Limit] = {
    limit.name: limit for limit in (IMAGE_PIXELS, DECODED_BYTES, JSON_BYTES, POINTS_PER_SIDE, TILE_WINDOWS)
}
