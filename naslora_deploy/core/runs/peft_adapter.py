"""A PEFT LoRA adapter for transformers' ``SamModel`` read as the start of a naslora-deploy LoRA run.

The inverse of ``exporters.peft.run_to_peft`` for LoRA runs (its module docstring
gives the algebra). It lives in ``core`` so that training (``train
--init-from-peft``) can use it: training never imports ``exporters``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Sequence, Tuple, Union

import torch

from naslora_deploy.common.errors import CheckpointError, NasloraError
from naslora_deploy.core.adapters.config import TARGETS, AdapterConfig
from naslora_deploy.core.adapters.injection import adapted_layers
from naslora_deploy.core.model.variants import first_mismatch
from naslora_deploy.core.model.weights import hf_to_segment_anything
from naslora_deploy.core.runs.checkpoint import load_weights

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"vision_encoder\.layers\.(\d+)\.attn\.qkv\.lora_([AB])\.weight")
Factors = Dict[int, Dict[str, Tuple[torch.Tensor, torch.Tensor]]]  # block -> target -> (A (r, C), B (d, r))


def _metadata(path: Path) -> dict:
    """The ``naslora_deploy`` record in a safetensors file's metadata ({} when absent or unreadable)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            return json.loads((handle.metadata() or {}).get("naslora_deploy", "{}"))
    except Exception:  # a missing, damaged or foreign file: no record
        return {}


# ----- the way back: a PEFT LoRA -> the start of a naslora-deploy LoRA run --------------------------
@dataclass
class PeftInit:
    """A PEFT adapter read as our LoRA: ``factors`` (block -> target -> (A_t, B_t), scaling folded into
    B_t), ``form`` (``block``: rank R/T per projection; ``shared``: rank R, A shared), and the mask
    decoder under segment-anything's names (empty when the adapter saved none)."""

    factors: Factors
    rank: int
    form: str
    decoder: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def targets(self) -> Tuple[str, ...]:
        """The adapted projections, in q, k, v order."""
        return tuple(t for t in TARGETS if t in next(iter(self.factors.values())))

    def adapter_config(self, base: AdapterConfig) -> AdapterConfig:
        """``base`` (a plain LoRA config: its seed and ops stay) with this adapter's rank, targets, blocks."""
        if base.method != "lora":
            raise NasloraError(
                f"--init-from-peft starts a plain LoRA run; got --method {base.method}: use lora"
            )
        return dataclasses.replace(base, rank=self.rank, targets=self.targets, blocks=sorted(self.factors))

    def apply(self, sam) -> None:
        """Copy the factors (and decoder) into ``sam`` after ``add_adapters(sam, adapter_config(...))``."""

        layers = dict(adapted_layers(sam))
        with torch.no_grad():
            for index, per_target in self.factors.items():
                for target, (lora_a, lora_b) in per_target.items():
                    adapter = _adapter_at(layers, index, target, lora_a, lora_b)
                    adapter.lora_A.copy_(lora_a)
                    adapter.lora_B.copy_(lora_b)
            if self.decoder:
                found = {k.removeprefix("mask_decoder."): v for k, v in self.decoder.items()}
                mismatch = first_mismatch(sam.mask_decoder.state_dict(), found)
                if mismatch:
                    raise CheckpointError(
                        f"the PEFT adapter's mask decoder does not fit this SAM: {mismatch}"
                    )
                sam.mask_decoder.load_state_dict(found)


def _adapter_at(layers: dict, index: int, target: str, lora_a: torch.Tensor, lora_b: torch.Tensor):
    """The adapter that takes block ``index``'s ``target`` factors, checked to exist and to fit them."""
    adapter = layers[index].adapters[target] if index in layers and target in layers[index].adapters else None
    if adapter is None or adapter.lora_A.shape != lora_a.shape or adapter.lora_B.shape != lora_b.shape:
        raise CheckpointError(
            f"the PEFT adapter's block {index} {target} (A {list(lora_a.shape)}, B {list(lora_b.shape)}) "
            "has no adapter of that shape in this SAM; train on the SAM the adapter was made for"
        )
    return adapter


REFUSED = {  # adapter_config.json field -> (value it must have, why)
    "peft_type": ("LORA", "only LoRA adapters convert"),
    "use_dora": (False, "DoRA's magnitude vector has no LoRA equivalent"),
    "lora_bias": (False, "our LoRA has no bias (NAS exports carry their intercept there)"),
    "fan_in_fan_out": (False, "qkv is an nn.Linear"),
    "bias": ("none", "trained base biases are not part of a LoRA run"),
}


def _read_peft_config(adapter_dir: Path) -> dict:
    path = adapter_dir / PEFT_CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read PEFT config {path} ({type(exc).__name__}); pass a PEFT adapter folder"
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a PEFT adapter config")
    for name, (wanted, why) in REFUSED.items():
        value = config.get(name, wanted)
        if value != wanted and not (wanted is False and value is None):
            raise CheckpointError(f"{path}: {name} is {config.get(name)!r}, not {wanted!r}: {why}")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise CheckpointError(f"{path}: per-layer rank_pattern / alpha_pattern cannot be one LoRA run's rank")
    return config


def read_peft_adapter(adapter_dir: Union[str, Path]) -> PeftInit:
    """Read a PEFT LoRA for ``SamModel`` as our LoRA (the inverse of ``run_to_peft`` for LoRA runs).

    Raises ``CheckpointError`` (one line) for anything a LoRA run cannot hold: LoRA on other
    modules, DoRA, LoRA biases, per-layer ranks, blocks of different ranks, other saved modules.
    """

    adapter_dir = Path(adapter_dir)
    config = _read_peft_config(adapter_dir)
    tensors = load_weights(adapter_dir / PEFT_WEIGHTS_NAME)
    saves_decoder = "mask_decoder" in (config.get("modules_to_save") or [])
    pairs: Dict[int, dict] = {}
    decoder = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        match = _LORA_KEY.fullmatch(name)
        if match:
            pairs.setdefault(int(match.group(1)), {})[match.group(2)] = tensor.float()
        elif name.startswith("mask_decoder.") and ".lora_" not in name and saves_decoder:
            decoder[name] = tensor
        else:
            raise CheckpointError(
                f"{adapter_dir} holds {key}: only LoRA on vision_encoder qkv (and the mask decoder) convert"
            )
    if not pairs:
        raise CheckpointError(f"{adapter_dir} holds no LoRA on vision_encoder.layers.*.attn.qkv")
    complete = [p for p in pairs.values() if len(p) == 2]
    ranks = {p["A"].shape[0] for p in complete} | {p["B"].shape[1] for p in complete}
    if len(ranks) != 1 or len(complete) != len(pairs):
        raise CheckpointError(
            f"{adapter_dir}: every qkv needs lora_A and lora_B of one rank, found ranks {sorted(ranks)}"
        )
    rank = ranks.pop()
    alpha = float(config.get("lora_alpha", rank))
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    targets = _metadata(adapter_dir / PEFT_WEIGHTS_NAME).get("targets") or list(TARGETS)
    factors, form, per_projection = _split(pairs, targets, rank, scaling)
    return PeftInit(factors, per_projection, form, hf_to_segment_anything(decoder))


def _split(pairs: Dict[int, dict], targets: Sequence[str], rank: int, scaling: float):
    """Per block and projection (A_t, s * B_t), the form and the rank per projection: ``block``
    (rank R/T) when every B is block-diagonal over ``targets``, else ``shared`` (rank R, A_t = A,
    all of q, k, v)."""
    dim = next(iter(pairs.values()))["B"].shape[0] // 3
    per = rank // len(targets) if rank % len(targets) == 0 else 0

    def rows(target: str) -> slice:
        start = TARGETS.index(target) * dim
        return slice(start, start + dim)

    def cut(pair: dict, j: int, target: str) -> Tuple[torch.Tensor, torch.Tensor]:
        columns = slice(j * per, (j + 1) * per)
        return pair["A"][columns].clone(), pair["B"][rows(target), columns] * scaling

    def is_block(lora_b: torch.Tensor) -> bool:
        outside = torch.ones_like(lora_b, dtype=torch.bool)
        for j, target in enumerate(targets):
            outside[rows(target), j * per : (j + 1) * per] = False
        return not bool(lora_b[outside].any())

    if per and all(is_block(p["B"]) for p in pairs.values()):
        return {i: {t: cut(p, j, t) for j, t in enumerate(targets)} for i, p in pairs.items()}, "block", per
    shared = {i: {t: (p["A"].clone(), p["B"][rows(t)] * scaling) for t in TARGETS} for i, p in pairs.items()}
    return shared, "shared", rank
