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
from typing import Dict, List, Sequence, Tuple, Union

import torch

from naslora_deploy.common.errors import CheckpointError, NasloraError
from naslora_deploy.common.io import read_json
from naslora_deploy.core.adapters.config import TARGETS, AdapterConfig
from naslora_deploy.core.adapters.injection import adapted_layers
from naslora_deploy.core.model.variants import first_mismatch
from naslora_deploy.core.model.weights import hf_to_segment_anything
from naslora_deploy.core.runs.checkpoint import check_finite, load_weights, shown

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"vision_encoder\.layers\.(\d+)\.attn\.qkv\.lora_([AB])\.weight")
Factors = Dict[int, Dict[str, Tuple[torch.Tensor, torch.Tensor]]]  # block -> target -> (A (r, C), B (d, r))


def _metadata(path: Path) -> dict:
    """The ``naslora_deploy`` record in a safetensors file's metadata: a JSON object, or {} when it is
    absent, unreadable or not an object (the tensors' own reader then names what is wrong)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            record = json.loads((handle.metadata() or {}).get("naslora_deploy", "{}"))
    except Exception:  # a missing, damaged or foreign file, or nesting too deep: no record
        return {}
    return record if isinstance(record, dict) else {}


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
    source: str = "the PEFT adapter"  # its folder, as messages name it

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
                    adapter = _adapter_at(layers, index, target, lora_a, lora_b, self.source)
                    adapter.lora_A.copy_(lora_a)
                    adapter.lora_B.copy_(lora_b)
            if self.decoder:
                found = {k.removeprefix("mask_decoder."): v for k, v in self.decoder.items()}
                mismatch = first_mismatch(sam.mask_decoder.state_dict(), found)
                if mismatch:
                    raise CheckpointError(f"{self.source}'s mask decoder does not fit this SAM: {mismatch}")
                sam.mask_decoder.load_state_dict(found)


def _adapter_at(layers: dict, index: int, target: str, lora_a: torch.Tensor, lora_b: torch.Tensor, source):
    """The adapter that takes block ``index``'s ``target`` factors, checked to exist and to fit them."""
    adapter = layers[index].adapters[target] if index in layers and target in layers[index].adapters else None
    if adapter is None or adapter.lora_A.shape != lora_a.shape or adapter.lora_B.shape != lora_b.shape:
        raise CheckpointError(
            f"{source}: block {index} {target} (A {list(lora_a.shape)}, B {list(lora_b.shape)}) "
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


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_names(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# adapter_config.json field -> (check, what it must be), for the fields read or passed on; absent: default
PEFT_TYPES = {
    "r": (_is_count, "a positive integer"),
    "lora_alpha": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        "a finite number",
    ),
    "use_rslora": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "target_modules": (lambda v: v is None or isinstance(v, str) or _is_names(v), "a list of module names"),
    "modules_to_save": (lambda v: v is None or _is_names(v), "null or a list of module names"),
}


def _read_peft_config(adapter_dir: Path) -> dict:
    path = adapter_dir / PEFT_CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found; pass a PEFT adapter folder (adapter_config.json and weights)"
        )
    try:
        config = read_json(path, "PEFT adapter config")  # deep nesting, bad UTF-8, bad syntax: one line
    except NasloraError as exc:
        raise CheckpointError(f"{exc}; pass a PEFT adapter folder as PEFT saved it") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a JSON {type(config).__name__}, not a PEFT adapter config")
    for name, (check, expected) in PEFT_TYPES.items():
        if name in config and not check(config[name]):
            raise CheckpointError(
                f"{path}: {name} is {shown(config[name])}, not {expected}; fix it or save the adapter again"
            )
    for name, (wanted, why) in REFUSED.items():
        value = config.get(name, wanted)
        if value != wanted and not (wanted is False and value is None):
            raise CheckpointError(f"{path}: {name} is {shown(value)}, not {wanted!r}: {why}")
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
    check_finite(tensors, adapter_dir / PEFT_WEIGHTS_NAME)
    saves_decoder = "mask_decoder" in (config.get("modules_to_save") or [])  # a list: checked above
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
    rank = _rank(pairs, adapter_dir)
    if config.get("r", rank) != rank:
        raise CheckpointError(
            f"{adapter_dir / PEFT_CONFIG_NAME}: r is {config['r']}, but its lora_A / lora_B have rank "
            f"{rank}; fix r or save the adapter again"
        )
    alpha = float(config.get("lora_alpha", rank))
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    targets = _recorded_targets(adapter_dir / PEFT_WEIGHTS_NAME)
    factors, form, per_projection = _split(pairs, targets, rank, scaling)
    return PeftInit(factors, per_projection, form, hf_to_segment_anything(decoder), str(adapter_dir))


def _rank(pairs: Dict[int, dict], adapter_dir: Path) -> int:
    """The one rank R of every block's qkv pair, each checked to be A (R, C) and B (3 * C, R)."""
    for index, pair in sorted(pairs.items()):
        if len(pair) != 2:
            raise CheckpointError(f"{adapter_dir}: block {index}'s qkv has lora_{''.join(pair)} but not both")
        lora_a, lora_b = pair["A"], pair["B"]
        if lora_a.dim() != 2 or lora_b.dim() != 2 or lora_b.shape != (3 * lora_a.shape[1], lora_a.shape[0]):
            raise CheckpointError(
                f"{adapter_dir}: block {index}'s qkv lora_A {list(lora_a.shape)} and lora_B "
                f"{list(lora_b.shape)} are not a LoRA of a qkv layer (A: (r, C), B: (3C, r)); "
                "use an adapter PEFT saved for SamModel"
            )
        if lora_a.shape[0] == 0 or lora_a.shape[1] == 0:
            raise CheckpointError(f"{adapter_dir}: block {index}'s qkv LoRA is empty (rank or width 0)")
    ranks = sorted({p["A"].shape[0] for p in pairs.values()})
    if len(ranks) != 1:
        raise CheckpointError(
            f"{adapter_dir}: every qkv needs lora_A and lora_B of one rank, found ranks {ranks}"
        )
    return ranks[0]


def _recorded_targets(weights: Path) -> List[str]:
    """The projections our PEFT export recorded in its metadata (q, k, v order), or all three."""
    targets = _metadata(weights).get("targets")
    if targets is None:
        return list(TARGETS)
    if not (
        _is_names(targets) and targets and len(set(targets)) == len(targets) and set(targets) <= set(TARGETS)
    ):
        raise CheckpointError(
            f"{weights}: its naslora_deploy metadata records targets {shown(targets)}, not a list of "
            f"q, k, v; remove that metadata entry or export the adapter again"
        )
    return [t for t in TARGETS if t in targets]


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
