"""Train and eval modes of an adapted SAM: what is frozen stays in eval mode.

Frozen parameters are not enough to freeze a module. In training mode BatchNorm
normalises with batch statistics and overwrites its running ones (LiteMedSAM's
TinyViT has 27 BatchNorm2d layers: batch-statistic embeddings differ from the
running-statistic ones by ~78 %), and TinyViT's attention drops the bias cache it
keeps in eval mode. ``settle_modes`` gives every module of a SAM the mode a run
needs: in training mode only what is trained follows it (the adapters, a ``darts``
cell's own BatchNorm, the mask decoder, image-encoder modules whose own weights
are trained under ``full``); the frozen base and every BatchNorm of the base
(``full`` too: its statistics stay the pretrained ones, as is usual when
fine-tuning at small batch sizes) stay in eval mode.
"""

from __future__ import annotations

from typing import Dict

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _adapter_modules(sam) -> set:
    """Ids of every module inside a trained adapter: a module whose class sets ``follows_run_mode``
    (``adapters.layers.LowRankAdapter``) and all of its submodules. A class attribute rather than an
    import, so the model room needs nothing from the adapters room above it."""
    marked = [m for m in sam.modules() if getattr(type(m), "follows_run_mode", False)]
    return {id(module) for adapter in marked for module in adapter.modules()}


def wanted_modes(sam, training: bool) -> Dict[nn.Module, bool]:
    """The mode each module of ``sam`` should be in when the run is in ``training`` mode."""
    trained = _adapter_modules(sam)
    modes: Dict[nn.Module, bool] = {sam: training}
    for part in (sam.image_encoder, sam.prompt_encoder):
        for module in part.modules():
            if id(module) in trained:
                modes[module] = training
            elif isinstance(module, _BatchNorm):
                modes[module] = False
            else:
                own = module.parameters(recurse=False)
                modes[module] = training and any(p.requires_grad for p in own)
    for module in sam.mask_decoder.modules():
        modes[module] = training
    return modes


def settle_modes(sam, training: bool) -> None:
    """Put ``sam``'s modules in the modes of ``wanted_modes`` (see the module docstring)."""
    modes = wanted_modes(sam, training)
    # modules that override train() (TinyViT's attention refreshes its bias cache there) get the call;
    # it recurses into their children, so every flag is then set again, one module at a time
    for module, mode in modes.items():
        if type(module).train is not nn.Module.train and module is not sam:
            module.train(mode)
    for module, mode in modes.items():
        module.training = mode
