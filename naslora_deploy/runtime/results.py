"""What the runtime takes and gives: ``ImageInput`` and one image's ``Segmentation``.

Below the segmenter and its helpers (tiling, everything mode), so each can name them
without importing the segmenter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

ImageInput = Union[str, Path, np.ndarray]


@dataclass
class Segmentation:
    """One image's result, at the image's original size."""

    size: Tuple[int, int]
    mask: np.ndarray  # (H, W) bool: foreground (binary) or any non-background class
    probability: np.ndarray  # (H, W) float32: foreground / winning-class probability
    class_map: Optional[np.ndarray] = None  # (H, W) uint8 class indices (multi-class)
    class_areas: Optional[Dict[str, int]] = None  # pixels per class name (multi-class)
    score: Optional[float] = None  # SAM's IoU prediction, for prompted results
    timings: Dict[str, float] = field(default_factory=dict)  # milliseconds

    @property
    def area(self) -> int:
        """Foreground pixels."""
        return int(self.mask.sum())
