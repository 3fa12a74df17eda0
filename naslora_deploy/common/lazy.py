"""Optional packages imported where they are needed, with one line on how to get them."""

from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import Optional

from naslora_deploy.common.errors import NasloraError


def lazy_import(name: str, extra: str = "", purpose: str = "", message: Optional[str] = None) -> ModuleType:
    """Import module ``name``, or raise ``NasloraError`` naming the extra that installs it.

    ``extra`` is an extra of this package (``plot``, ``trt``...) or, where the
    package is not one of ours to pin, a plain pip requirement (``pip:onnxruntime``).
    ``message`` replaces the whole line where installing takes more than pip (TensorRT).
    """
    try:
        return import_module(name)
    except ImportError:
        if message is not None:
            raise NasloraError(message) from None
        if extra.startswith("pip:"):
            how = f"pip install {extra[4:]}"
        else:
            how = f"pip install 'naslora-deploy[{extra}]'"
        needs = f"{purpose} needs" if purpose else "this needs"
        raise NasloraError(f"{needs} the {name.split('.')[0]} package: {how}") from None
