"""Where and how fast a training step runs: the device, gradient checkpointing and ``torch.compile``.

Each switch acts on the image encoder's blocks in place and leaves the state-dict keys
unchanged, so checkpoints are the same whichever switches a run used.
"""

from __future__ import annotations

import sys
from typing import List

import torch

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.core.adapters.injection import attention_blocks


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NasloraError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def enable_gradient_checkpointing(sam) -> None:
    """Recompute each image-encoder block in the backward pass to save activation memory."""
    from torch.utils.checkpoint import checkpoint

    for _, block in attention_blocks(sam.image_encoder):
        forward = block.forward
        block.forward = lambda x, f=forward: checkpoint(f, x, use_reentrant=False)


def compile_encoder_blocks(sam) -> None:
    """``torch.compile`` each image-encoder block in place (state-dict keys unchanged).

    Per block rather than the whole model: the blocks are where the time goes, and
    a graph break elsewhere (the decoder's per-image loop) then costs nothing.
    """
    if not hasattr(torch.nn.Module, "compile"):
        raise NasloraError(f"--compile needs torch >= 2.2 (this is {torch.__version__})")
    for _, block in attention_blocks(sam.image_encoder):
        block.compile()


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether a run at ``precision`` (auto, fp32, bf16) trains under bf16 autocast on ``device``.

    ``auto``: on CUDA, and on a CPU that computes bf16 natively: there three paired LiteMedSAM runs
    (all blocks, 400 steps) kept test IoU (bf16 - fp32: -0.008, +0.053, -0.022) at 2.2x the fp32
    step rate (benchmarks/RESULTS.md, issue 25); fp32 on any other CPU.
    """
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        raise NasloraError("--precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); use fp32")
    return precision == "bf16"


def resumed_bf16(precision: str, device: torch.device, history: List[dict], bf16: bool, say: bool) -> bool:
    """Whether a resumed run trains under bf16 (``bf16``: what its settings resolve to here). With
    ``auto``, as its epochs so far did (each ``metrics.jsonl`` record names its precision), so a run
    resumed on another CPU, or after auto's meaning changed, is not switched between fp32 and bf16
    mid-run (``say``: print that on stderr); a typed precision (changed only with
    ``--allow-changed``) is the user's."""
    ran = next((r["precision"] for r in reversed(history) if "precision" in r), None)
    if precision != "auto" or ran is None or ran == ("bf16" if bf16 else "fp32"):
        return bf16
    if say:
        print(f"--precision auto: continuing in {ran}, as this run trained so far", file=sys.stderr)
    return uses_bf16(ran, device)  # bf16 on a CPU without native bf16: the one-line refusal
