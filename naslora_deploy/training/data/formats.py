"""The annotation formats a data folder may hold, detected in a fixed order (a plain registry).

``FORMATS`` maps a name to (detect, load): ``detect(root)`` says whether the folder holds
that format; ``load(root, SourceOptions)`` returns its ``ClassSpec`` and split -> pairs.
Mask folders (``images/`` + ``masks/``) are ``folder.py``'s own and come before these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from naslora_deploy.core.classes import ClassSpec
from naslora_deploy.training.data import coco, labelme, npz
from naslora_deploy.training.data.sources import SourceOptions

Detect = Callable[[Path], bool]
Load = Callable[[Path, SourceOptions], Tuple[ClassSpec, Dict[str, List[tuple]]]]

FORMATS: Dict[str, Tuple[Detect, Load]] = {
    "coco": (coco.detect, coco.load),
    "labelme": (labelme.detect, labelme.load),
    "npz": (npz.detect, npz.load),
}


def detect_format(root: Path) -> Optional[str]:
    """The first format in ``FORMATS`` that ``root`` holds, or None."""
    return next((name for name, (detect, _) in FORMATS.items() if detect(root)), None)
