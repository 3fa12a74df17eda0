"""naslora-deploy: NAS-LoRA fine-tuning of Segment Anything, merging, export and runtime.

One import root, four rooms on a torch-free base:

- ``common``: errors, atomic I/O, image reading and preprocessing, lazy imports,
  progress bars, the artifact contract. No torch.
- ``core``: SAM variants, adapters and their layers, merge, fidelity, checkpoints.
- ``training``: data sets, losses, metrics, the trainer, evaluation, the demo.
- ``exporters``: ONNX / TensorRT / Triton artifacts, their proofs, the PyTorch backend.
- ``runtime``: torch-free inference on the artifacts.

The allowed import arrows (``tests/test_architecture.py`` fails on any other,
function-level imports included):

    common    -> (nothing of ours)
    core      -> common
    training  -> core, common
    runtime   -> common                      (and never torch)
    exporters -> core, runtime, common
    cli       -> everything
    this file -> its lazy public names below

Public names are imported lazily, so ``import naslora_deploy.runtime`` never
pulls in torch (the runtime runs on machines without it).
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_sam": "naslora_deploy.core.model.variants",
    "variant_of": "naslora_deploy.core.model.variants",
    "VARIANTS": "naslora_deploy.core.model.variants",
    "AdapterConfig": "naslora_deploy.core.adapters.config",
    "add_adapters": "naslora_deploy.core.adapters.injection",
    "adapters_disabled": "naslora_deploy.core.adapters.injection",
    "adapted_layers": "naslora_deploy.core.adapters.injection",
    "architecture_parameters": "naslora_deploy.core.adapters.injection",
    "weight_parameters": "naslora_deploy.core.adapters.injection",
    "trainable_summary": "naslora_deploy.core.adapters.injection",
    "set_cell_forward": "naslora_deploy.core.adapters.injection",
    "load_adapter": "naslora_deploy.core.runs.checkpoint",
    "merge": "naslora_deploy.core.merging.merge",
    "MergeReport": "naslora_deploy.core.merging.report",
    "probe_images": "naslora_deploy.core.merging.fidelity",
    "NasloraError": "naslora_deploy.common.errors",
    "CheckpointError": "naslora_deploy.common.errors",
    "MergeError": "naslora_deploy.common.errors",
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
