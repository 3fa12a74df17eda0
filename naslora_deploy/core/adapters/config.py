"""`AdapterConfig`: what adapters to put where, validated and JSON round-trippable.

No torch here: the command line declares its choices from these names anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Tuple, Union

from naslora_deploy.common.io import atomic_write_text
from naslora_deploy.common.options import option

# none: fine-tune the mask decoder only; full: the whole image encoder and the decoder (no adapters)
METHODS = ("lora", "nas_lora", "nas_pc_lora", "none", "full")
ADAPTER_METHODS = ("lora", "nas_lora", "nas_pc_lora")
TARGETS = ("q", "k", "v")
MERGE_MODES = ("dense", "fused")
# How the cell's candidates are built (``core.adapters.ops``): ``linear`` (depthwise -> pointwise, no ReLU/BN,
# the cell collapses into one kernel), ``scaled`` (the same with a fixed per-op output scale that
# equalises the candidates at initialisation; still one kernel), ``darts`` (DARTS' own primitives:
# ReLU, BN, two-stack separable convs; non-linear, so a dense merge can only approximate it).
CELL_FORMS = ("linear", "scaled", "darts")
# The cell's eight candidates (DARTS' names); ``ops.OP_SPECS`` gives their shapes.
OP_NAMES = (
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "avg_pool_3x3",
    "max_pool_3x3",
    "skip_connect",
    "none",
)


def parse_targets(text: str) -> List[str]:
    """``--targets qv`` (or ``q,v``) as a list of projections."""
    return list(text.replace(",", ""))


def parse_blocks(text: str) -> Union[str, List[int]]:
    """``--blocks 8,9`` as block indices; ``--blocks all`` as ``"all"``."""
    if text.strip().lower() == "all":
        return "all"
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--blocks takes block indices such as 8,9 or all, got {text!r}") from None


def parse_names(text: str) -> List[str]:
    """Comma-separated names as a list (empty entries dropped: ``"a,,b"`` is ``a, b``)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_ops(text: str) -> List[str]:
    """``--ops a,b`` as a list; one that names no operation (``--ops ,``) is refused, not read as all."""
    names = parse_names(text)
    if not names:
        raise ValueError(f"--ops {text!r} names no operation; give one or more of {', '.join(OP_NAMES)}")
    return names


# the command-line options of the adapter fields, declared once here (``TrainConfig`` takes them over)
ADAPTER_OPTIONS = {
    "method": option("adapter method", choices=METHODS),
    "rank": option("LoRA rank r", low=1),
    "targets": option(
        "projections to adapt, e.g. qkv or qv", parse=parse_targets, shown="qkv", metavar="QKV"
    ),
    "ops": option("comma-separated candidate ops", parse=parse_ops, shown="all eight", metavar="OPS"),
    "blocks": option(
        "attention blocks to adapt, e.g. 4,5,6,7,8,9, or all", parse=parse_blocks, shown="all", metavar="N,N"
    ),
    "channel_ratio": option(
        "nas_pc_lora: share of the rank channels that go through the cell (Table D1)",
        low=0,
        high=1,
        open_low=True,
    ),
    "cell_form": option(
        "how the cell's candidates are built: linear (one collapsible kernel), scaled or darts",
        choices=CELL_FORMS,
    ),
}


@dataclass
class AdapterConfig:
    """Adapters on the Q/K/V projections of a SAM image encoder.

    method: ``lora`` (plain low-rank), ``nas_lora`` (searchable cell on all rank
        channels), ``nas_pc_lora`` (cell on a fixed ``channel_ratio`` of them), or
        ``none`` (no adapters: the decoder-only baseline) or ``full`` (no adapters;
        every image-encoder weight is trained with the decoder, as MedSAM is fine-tuned).
    rank: LoRA rank r (paper default 3).
    targets: which slices of ``attn.qkv`` get an adapter, in q, k, v order.
    blocks: ``"all"`` or a list of image-encoder block indices.
    ops: candidate operations of the cell (any non-empty subset of ``OP_NAMES``).
    channel_ratio: share of the rank channels that go through the cell (PC only).
    alpha_init_std: architecture weights start as N(0, 1) * this.
    cell_form: how the candidates are built, one of ``CELL_FORMS``.
    seed: seeds every adapter initialisation, so a config rebuilds the same adapters.
    """

    method: str = field(default="nas_pc_lora", metadata=ADAPTER_OPTIONS["method"])
    rank: int = field(default=3, metadata=ADAPTER_OPTIONS["rank"])
    targets: Tuple[str, ...] = field(default=TARGETS, metadata=ADAPTER_OPTIONS["targets"])
    blocks: Union[str, List[int]] = field(default="all", metadata=ADAPTER_OPTIONS["blocks"])
    ops: Tuple[str, ...] = field(default=OP_NAMES, metadata=ADAPTER_OPTIONS["ops"])
    channel_ratio: float = field(default=2.0 / 3.0, metadata=ADAPTER_OPTIONS["channel_ratio"])
    alpha_init_std: float = 1e-3
    seed: int = 0
    cell_form: str = field(default="linear", metadata=ADAPTER_OPTIONS["cell_form"])

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        self.ops = tuple(self.ops)
        if not isinstance(self.blocks, str):
            self.blocks = [int(b) for b in self.blocks]
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message on the first invalid field."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        if not self.targets:
            raise ValueError("targets is empty; give a non-empty subset of q, k, v")
        for target in self.targets:
            if target not in TARGETS:
                raise ValueError(f"unknown target {target!r}; targets are a subset of q, k, v")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets has duplicates: {list(self.targets)}")
        self.targets = tuple(t for t in TARGETS if t in self.targets)
        if isinstance(self.blocks, str):
            if self.blocks != "all":
                raise ValueError(f"blocks must be 'all' or a list of block indices, got {self.blocks!r}")
        else:
            if not self.blocks:
                raise ValueError("blocks is an empty list; use 'all' or name at least one block")
            if any(b < 0 for b in self.blocks):
                raise ValueError(f"block indices must be >= 0, got {self.blocks}")
            if len(set(self.blocks)) != len(self.blocks):
                raise ValueError(f"blocks has duplicates: {self.blocks}")
        if not self.ops:
            raise ValueError("ops is empty; give a non-empty subset of " + ", ".join(OP_NAMES))
        for op in self.ops:
            if op not in OP_NAMES:
                raise ValueError(f"unknown op {op!r}; ops are a subset of {', '.join(OP_NAMES)}")
        if len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ops has duplicates: {list(self.ops)}")
        if not (0.0 < self.channel_ratio <= 1.0) or math.isnan(self.channel_ratio):
            raise ValueError(f"channel_ratio must be in (0, 1], got {self.channel_ratio!r}")
        if not (self.alpha_init_std >= 0.0 and math.isfinite(self.alpha_init_std)):
            raise ValueError(f"alpha_init_std must be a finite number >= 0, got {self.alpha_init_std!r}")
        if self.cell_form not in CELL_FORMS:
            raise ValueError(f"unknown cell_form {self.cell_form!r}; choose one of {', '.join(CELL_FORMS)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def has_adapters(self) -> bool:
        """Whether adapter layers wrap the qkv projections (not for ``none`` and ``full``)."""
        return self.method in ADAPTER_METHODS

    @property
    def trains_encoder(self) -> bool:
        """Whether the image encoder's own weights are trained (``full``)."""
        return self.method == "full"

    @property
    def has_cell(self) -> bool:
        """Whether the adapters carry a searchable cell (and architecture weights)."""
        return self.method in ("nas_lora", "nas_pc_lora")

    @property
    def linear_cell(self) -> bool:
        """Whether the cell, max pooling aside, is one linear kernel (``linear`` and ``scaled`` forms).

        A ``darts`` cell is non-linear: its dense merge is always fitted by least squares.
        """
        return self.has_cell and self.cell_form != "darts"

    @property
    def cell_channels(self) -> int:
        """How many of the rank channels go through the cell (0 for plain LoRA)."""
        if not self.has_cell:
            return 0
        if self.method == "nas_lora":
            return self.rank
        return max(1, min(self.rank, round(self.channel_ratio * self.rank)))

    def block_indices(self, depth: int) -> List[int]:
        """The adapted block indices for an encoder of ``depth`` blocks."""
        if self.blocks == "all":
            return list(range(depth))
        bad = [b for b in self.blocks if b >= depth]
        if bad:
            raise ValueError(
                f"block {bad[0]} is out of range: the image encoder has {depth} blocks (0..{depth - 1})"
            )
        return sorted(self.blocks)

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        data = dataclasses.asdict(self)
        data["targets"] = list(self.targets)
        data["ops"] = list(self.ops)
        return data

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> "AdapterConfig":
        """Build from a dict; unknown keys are an error, not silently dropped."""
        if not isinstance(data, dict):
            raise ValueError(f"an adapter config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown adapter config field {unknown[0]!r}; known fields: {', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "AdapterConfig":
        """Parse a config from its JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"adapter config is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: Union[str, Path]) -> Path:
        """Write the config as JSON (atomically) and return the path."""

        return atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "AdapterConfig":
        """Read a config written by ``save``."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read adapter config {path}: {exc.strerror}") from None
        try:
            return cls.from_json(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
