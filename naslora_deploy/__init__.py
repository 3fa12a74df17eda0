"""naslora-deploy: NAS-LoRA fine-tuning of Segment Anything, merging, export and runtime.

Public names are imported lazily, so ``import naslora_deploy.runtime`` never
pulls in torch (the runtime runs on machines without it).
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_sam": "naslora_deploy.variants",
    "variant_of": "naslora_deploy.variants",
    "VARIANTS": "naslora_deploy.variants",
    "AdapterConfig": "naslora_deploy.config",
    "add_adapters": "naslora_deploy.adapters",
    "adapters_disabled": "naslora_deploy.adapters",
    "adapted_layers": "naslora_deploy.adapters",
    "architecture_parameters": "naslora_deploy.adapters",
    "weight_parameters": "naslora_deploy.adapters",
    "trainable_summary": "naslora_deploy.adapters",
    "set_cell_forward": "naslora_deploy.adapters",
    "merge": "naslora_deploy.merge",
    "MergeReport": "naslora_deploy.report",
    "probe_images": "naslora_deploy.fidelity",
    "NasloraError": "naslora_deploy.errors",
    "CheckpointError": "naslora_deploy.errors",
    "MergeError": "naslora_deploy.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'naslora_deploy' has no attribute {name!r}")


def __dir__():
    return __all__
