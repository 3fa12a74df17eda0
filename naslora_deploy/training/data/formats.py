"""The annotation formats a data folder may hold, detected in a fixed order (a plain registry).

``FORMATS`` maps a name to (detect, load): ``detect(root)`` says whether the folder holds
that format; ``load(root, SourceOptions)`` returns its ``ClassSpec`` and split -> pairs.
Mask folders (``images/`` + ``masks/``, ``masks.py``) come first; a folder that holds none of
them is read as mask folders, whose reader says what a data folder needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data import coco, labelme, masks, npz
from naslora_deploy.training.data.sources import SourceOptions

Detect = Callable[[Path], bool]
Load = Callable[[Path, SourceOptions], Tuple[ClassSpec, Dict[str, List[tuple]]]]

FORMATS: Dict[str, Tuple[Detect, Load]] = {
    "masks": (masks.detect, masks.load),
    "coco": (coco.detect, coco.load),
    "labelme": (labelme.detect, labelme.load),
    "npz": (npz.detect, npz.load),
}


def detect_format(root: Path) -> Optional[str]:
    """The first format in ``FORMATS`` that ``root`` holds, or None."""
    return next((name for name, (detect, _) in FORMATS.items() if detect(root)), None)
