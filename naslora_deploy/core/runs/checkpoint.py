"""Adapter checkpoints: ``adapter_config.json`` + ``adapter_model.safetensors``.

A checkpoint directory holds everything needed to rebuild the trained model on
top of its base SAM checkpoint, whose sha256 is recorded and checked (for a
sharded Hugging Face checkpoint: of the index and every shard, ``weights_sha256``).
A run trained on random weights on purpose saves them as ``base_model.safetensors``
in its run folder and records ``base_random``; an adapter that records no base at
all is refused rather than loaded onto random weights (``load_adapter``). The
safetensors file holds the whole trainable state and nothing else: adapters
(W_e, W_d, cell ops, alpha, PC masks), the mask decoder and the class head.
Directories are replaced atomically: a reader sees the old one or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

import torch

from naslora_deploy import __version__
from naslora_deploy.common.contract import ADAPTER_CONFIG_NAME
from naslora_deploy.common.errors import CheckpointError, NasloraError, first_line, read_errors_as
from naslora_deploy.common.imaging import InputMapping
from naslora_deploy.common.io import atomic_write, atomic_write_text, read_json, sha256_of, write_directory
from naslora_deploy.common.outputs import RUN_BASE
from naslora_deploy.core.adapters.config import AdapterConfig
from naslora_deploy.core.adapters.injection import adapted_layers, add_adapters, attention_blocks
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.variants import VARIANTS, build_sam, first_mismatch
from naslora_deploy.core.model.weights import base_weights_file, is_shard_index, weights_sha256

CONFIG_NAME = ADAPTER_CONFIG_NAME
WEIGHTS_NAME = "adapter_model.safetensors"
TRAINING_STATE_NAME = "training_state.pt"
FORMAT = "naslora-deploy-adapter/1"
# what a random-base run recorded before ``base_random`` existed (the trainer's only such record): read as
# random on purpose, since the file it names is the run's own saved base and its sha256 is checked
LEGACY_RANDOM_BASE = f"../{RUN_BASE}"
CHECKPOINT_HELP = "pass the base checkpoint it was trained on with --checkpoint"


@dataclass
class RunSpec:
    """Everything needed to rebuild a trained model, saved as ``adapter_config.json``."""

    variant: str
    adapter: AdapterConfig
    classes: ClassSpec = field(default_factory=ClassSpec)
    num_queries: int = 0
    image_size: int = 1024
    base_checkpoint: Optional[str] = None
    base_sha256: Optional[str] = None
    progress: dict = field(default_factory=dict)
    normalization: str = "imagenet"
    prompt: str = "none"  # how it was trained: prompt-free, or with box prompts
    training: dict = field(default_factory=dict)  # the TrainConfig it was trained with (empty: older files)
    base_random: bool = False  # trained on random weights on purpose (saved in the run directory)

    @property
    def head(self) -> str:
        """``binary`` or ``multiclass``."""
        return self.classes.head

    def to_dict(self) -> dict:
        """JSON-ready form, with the format tag and package version."""
        return {
            "format": FORMAT,
            "naslora_deploy_version": __version__,
            "variant": self.variant,
            "image_size": self.image_size,
            "normalization": self.normalization,
            "prompt": self.prompt,
            "head": self.head,
            "classes": self.classes.to_dict(),
            "num_queries": self.num_queries,
            "base_checkpoint": self.base_checkpoint,
            "base_sha256": self.base_sha256,
            "base_random": self.base_random,
            "adapter": self.adapter.to_dict(),
            "progress": self.progress,
            "training": self.training,
            "input_mapping": self.input_mapping,
        }

    def model_record(self) -> dict:
        """Which model this is, as an artifact manifest and a merge report record it: variant, input
        size and normalisation, head, classes, queries (the class head's own count) and input mapping."""
        queries = (self.num_queries or self.classes.num_classes) if self.head == "multiclass" else 0
        return {
            "variant": self.variant,
            "image_size": self.image_size,
            "normalization": self.normalization,
            "head": self.head,
            "classes": self.classes.to_dict(),
            "num_queries": queries,
            "input_mapping": self.input_mapping,
        }

    @property
    def input_mapping(self) -> Optional[dict]:
        """The run's ``--bands`` / ``--stretch`` as ``imaging.InputMapping.to_dict`` (None: plain reading);
        export copies it into the artifact manifest, where the runtime applies it to its inputs."""
        return InputMapping.of(self.training.get("bands"), self.training.get("stretch")).to_dict()

    @classmethod
    def from_dict(cls, data: dict, source: str = "adapter config") -> "RunSpec":
        """Parse ``to_dict`` output; a foreign or damaged file gets one clear ``CheckpointError`` line."""
        if not isinstance(data, dict):
            raise CheckpointError(
                f"{source} holds a JSON {type(data).__name__}, not a naslora-deploy adapter config"
            )
        if data.get("format") != FORMAT:
            raise CheckpointError(
                f"{source} is not a naslora-deploy adapter config (format {data.get('format')!r})"
            )
        _check_spec_types(data, source)
        base_random = data.get("base_random")
        if base_random is None:  # files older than the field
            base_random = data.get("base_checkpoint") == LEGACY_RANDOM_BASE
        try:
            spec = cls(
                variant=data["variant"],
                adapter=AdapterConfig.from_dict(data["adapter"]),
                classes=ClassSpec.from_dict(data["classes"]),
                num_queries=data.get("num_queries", 0),
                image_size=data["image_size"],
                normalization=data.get("normalization", "imagenet"),  # files older than the field: SAM's
                prompt=data.get("prompt", "none"),
                base_checkpoint=data.get("base_checkpoint"),
                base_sha256=data.get("base_sha256"),
                progress=dict(data.get("progress") or {}),
                training=dict(data.get("training") or {}),  # files older than the field: none recorded
                base_random=base_random,
            )
            spec.input_mapping  # noqa: B018 -- the recorded --bands / --stretch must parse
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{source} is damaged: {first_line(exc)}; {SPEC_HELP}") from None
        return spec


SPEC_HELP = "use the adapter_config.json its training wrote"


def _whole(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


# adapter_config.json key -> (check, what it must be); keys that are absent take their defaults
SPEC_TYPES = {
    "variant": (lambda v: isinstance(v, str) and v in VARIANTS, f"one of {', '.join(VARIANTS)}"),
    "image_size": (_whole(1), "a positive integer"),
    "num_queries": (_whole(0), "a whole number"),
    "normalization": (lambda v: isinstance(v, str), "a normalisation name"),
    "prompt": (lambda v: isinstance(v, str), "a prompt mode"),
    "base_checkpoint": (lambda v: v is None or (isinstance(v, str) and v != ""), "a path or null"),
    "base_sha256": (
        lambda v: v is None or (isinstance(v, str) and len(v) == 64 and set(v) <= set("0123456789abcdef")),
        "64 hex digits or null",
    ),
    "base_random": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "adapter": (lambda v: isinstance(v, dict), "an object"),
    "classes": (lambda v: isinstance(v, dict), "an object"),
    "progress": (lambda v: v is None or isinstance(v, dict), "an object"),
    "training": (lambda v: v is None or isinstance(v, dict), "an object"),
}


def _check_spec_types(data: dict, source) -> None:
    """Each ``SPEC_TYPES`` key present in ``data`` holds what it must; else one line naming the first."""
    for key, (check, expected) in SPEC_TYPES.items():
        if key in data and not check(data[key]):
            raise CheckpointError(
                f"{source} is damaged: {key!r} is {shown(data[key])}, not {expected}; {SPEC_HELP}"
            )


def shown(value) -> str:
    """A JSON value as a one-line message shows it: its JSON cut short, or its kind when too deep to print."""
    try:
        text = json.dumps(value)
    except (RecursionError, ValueError):
        return f"a deeply nested JSON {'object' if isinstance(value, dict) else 'array'}"
    return text if len(text) <= 60 else text[:57] + "..."


def trainable_state(model) -> Dict[str, torch.Tensor]:
    """The whole trainable state of a ``SegmentationModel``, by structure, not by requires_grad."""

    paths = [path for path, _ in attention_blocks(model.sam.image_encoder)]
    keep = set()
    for index, layer in adapted_layers(model.sam):
        prefix = f"sam.image_encoder.{paths[index]}.attn.qkv.adapters."
        keep.update(prefix + name for name, _ in layer.adapters.named_parameters())
        keep.update(prefix + name for name, _ in layer.adapters.named_buffers())
    state = model.state_dict()
    trained = ("sam.mask_decoder.", "class_head.")
    if getattr(getattr(model.sam, "adapter_config", None), "trains_encoder", False):
        trained += ("sam.image_encoder.",)  # full fine-tuning: the whole encoder is the run's state
    keep.update(k for k in state if k.startswith(trained))
    # named_buffers() also lists non-persistent buffers (derived kernel bases), which are not state
    return {k: state[k].detach().contiguous().cpu() for k in sorted(keep) if k in state}


def save_checkpoint(directory: Path, model, spec: RunSpec, training_state: Optional[dict] = None) -> Path:
    """Write one checkpoint directory atomically."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file(trainable_state(model), str(tmp / WEIGHTS_NAME))
        atomic_write_text(tmp / CONFIG_NAME, json.dumps(spec.to_dict(), indent=2) + "\n")
        if training_state is not None:
            torch.save(training_state, tmp / TRAINING_STATE_NAME)

    return write_directory(Path(directory), write)


def resolve_checkpoint_dir(path: Union[str, Path]) -> Path:
    """A checkpoint directory, or a run directory's ``best/`` (``last/`` without validation)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"adapter directory {path} not found")
    if (path / CONFIG_NAME).is_file():
        return path
    for name in ("best", "last", ".best.old", ".last.old"):
        if (path / name / CONFIG_NAME).is_file():
            return path / name
    raise CheckpointError(
        f"{path} holds no {CONFIG_NAME} (nor best/ or last/); pass a run or checkpoint directory"
    )


def read_spec(directory: Union[str, Path]) -> RunSpec:
    """Read ``adapter_config.json`` of a (resolved) checkpoint directory."""
    path = resolve_checkpoint_dir(directory) / CONFIG_NAME
    try:
        data = read_json(path, "adapter config")  # deep nesting, bad UTF-8, bad syntax: one line
    except NasloraError as exc:
        raise CheckpointError(f"{exc}; {SPEC_HELP}") from None
    return RunSpec.from_dict(data, source=str(path))


def _base_path(spec: RunSpec, directory: Path, base_checkpoint) -> Optional[Path]:
    """``--checkpoint`` if given, else the recorded base (relative: to ``directory``), else None."""
    if base_checkpoint is not None:
        return Path(base_checkpoint)
    if spec.base_checkpoint is None:
        return None
    recorded = Path(spec.base_checkpoint)
    recorded = recorded if recorded.is_absolute() else (directory / recorded)
    if not recorded.exists():  # weights that ship with a package move with its install: look there
        bundled = VARIANTS[spec.variant].pretrained_checkpoint()
        if bundled is not None and weights_sha256(bundled) == spec.base_sha256:
            return Path(bundled)
    return recorded


def verified_base(
    spec: RunSpec, directory: Path, base_checkpoint=None, allow_base_mismatch: bool = False
) -> Path:
    """The base SAM checkpoint to load ``directory``'s adapters onto, checked against its record.

    ``base_checkpoint`` (``--checkpoint``) or the recorded one; its ``weights_sha256`` (every
    shard of a sharded checkpoint) must equal the recorded sha256 unless ``allow_base_mismatch``.
    An adapter that records no base is refused: loading it onto random weights would export a
    model that was never trained. Each refusal is one ``CheckpointError`` line naming ``--checkpoint``.
    """
    base = _base_path(spec, directory, base_checkpoint)
    config = directory / CONFIG_NAME
    if base is None:
        what = (
            "records random base weights but not the file holding them: its adapters would be loaded onto "
            "other random weights"
            if spec.base_random
            else "records no base checkpoint: its adapters would be loaded onto random weights"
        )
        raise CheckpointError(f"{config} {what}; {CHECKPOINT_HELP}")
    if not base.exists() and base_checkpoint is not None:
        raise CheckpointError(
            f"--checkpoint {base} not found; pass the base checkpoint {directory} was trained on"
        )
    if not base.exists():
        trained_on = (
            f"random base weights saved as {spec.base_checkpoint} (keep its run folder whole)"
            if spec.base_random
            else f"base checkpoint {spec.base_checkpoint}"
        )
        raise CheckpointError(
            f"{directory} was trained on {trained_on}, which is not at {base}; {CHECKPOINT_HELP}"
        )
    if spec.base_sha256 is not None and not allow_base_mismatch:
        _check_base_sha256(spec, directory, base)
    return base


def _check_base_sha256(spec: RunSpec, directory: Path, base: Path) -> None:
    found = weights_sha256(base)
    if found == spec.base_sha256:
        return
    file = base_weights_file(base) or base
    if is_shard_index(file) and sha256_of(file) == spec.base_sha256:
        raise CheckpointError(
            f"{directory} recorded the sha256 of shard index {file} only (an older naslora-deploy), which "
            "does not cover its shards; pass --allow-base-mismatch to use the shards unchecked, or retrain"
        )
    shards = " (its index and every shard)" if is_shard_index(file) else ""
    raise CheckpointError(
        f"base checkpoint {base}{shards} has sha256 {found[:12]}..., but {directory} was trained on "
        f"{spec.base_sha256[:12]}...; {CHECKPOINT_HELP}, or pass --allow-base-mismatch to use this one anyway"
    )


def load_adapter(directory, base_checkpoint=None, allow_base_mismatch: bool = False, device="cpu"):
    """Rebuild a trained ``SegmentationModel`` from a run or checkpoint directory.

    The base SAM checkpoint is ``base_checkpoint`` or the recorded one, checked by
    ``verified_base`` (its sha256 must match the recorded one unless ``allow_base_mismatch``;
    an adapter that records no base needs ``base_checkpoint``).
    """

    directory = resolve_checkpoint_dir(directory)
    spec = read_spec(directory)
    base = verified_base(spec, directory, base_checkpoint, allow_base_mismatch)
    sam = build_sam(spec.variant, base, pretrained=False)  # exactly the recorded base
    check_finite(sam.state_dict(), f"base checkpoint {base}")
    with read_errors_as(  # values out of any real range (a rank of 10**19) fail inside torch
        CheckpointError,
        lambda why: f"{directory / CONFIG_NAME} describes a model that cannot be built ({why}); {SPEC_HELP}",
    ):
        add_adapters(sam, spec.adapter)
        model = SegmentationModel(sam, spec.classes.num_classes, spec.num_queries)
    load_trainable(model, directory / WEIGHTS_NAME, f"its {CONFIG_NAME}")
    model.spec = spec
    return model.to(device).eval()


def load_weights(path: Union[str, Path], framework: str = "pt") -> dict:
    """A ``.safetensors`` file's tensors (``framework`` ``pt`` or ``numpy``); a damaged file is one
    ``CheckpointError`` line (safetensors raises several types on truncated or foreign files)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found; pass a complete checkpoint directory")
    with read_errors_as(
        CheckpointError,
        lambda why: (
            f"cannot read {path} ({why}): it is truncated or not a safetensors file; use an intact checkpoint"
        ),
    ):
        if framework == "numpy":
            from safetensors.numpy import load_file
        else:
            from safetensors.torch import load_file
        return load_file(str(path))


def check_finite(state: Dict[str, torch.Tensor], source) -> None:
    """Refuse weights holding NaN or infinity: they export and run, but every mask comes out empty."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{source} holds NaN or infinite values (in {name}); the weights are damaged, "
                "use a healthy checkpoint"
            )


def load_trainable(model, path: Path, described_by: str = "the model") -> None:
    """Load a checkpoint's trainable state into ``model`` after checking that it reads, fits and is finite."""

    state = load_weights(path)
    mismatch = first_mismatch(trainable_state(model), state)
    if mismatch:
        raise CheckpointError(f"{path} does not fit {described_by}: {mismatch}")
    check_finite(state, path)
    model.load_state_dict(state, strict=False)


def resumable_checkpoint(out: Path) -> Path:
    """The checkpoint ``--resume`` continues from: ``out/last``, or ``.last.old`` left by a kill mid-swap."""
    for name in ("last", ".last.old"):
        if (Path(out) / name / TRAINING_STATE_NAME).is_file():
            return Path(out) / name
    raise CheckpointError(f"--resume: {out} has no complete last/ checkpoint to resume from")


RESUME_HELP = "it is damaged: resume from an intact run or train into a new --out"
# what ``Trainer.training_state`` writes: key -> (check, what it must be); arch_opt and best may be None
TRAINING_STATE_SCHEMA = {
    "weight_opt": (lambda v: isinstance(v, dict), "an optimiser state"),
    "arch_opt": (lambda v: v is None or isinstance(v, dict), "an optimiser state or None"),
    "epoch": (lambda v: isinstance(v, int) and v >= 0, "an epoch number"),
    "step": (lambda v: isinstance(v, int) and v >= 0, "a step number"),
    "torch_rng": (lambda v: isinstance(v, torch.Tensor) and v.dtype == torch.uint8, "a torch RNG state"),
    "python_rng": (lambda v: isinstance(v, (tuple, list)) and len(v) == 3, "a Python RNG state"),
}


def load_training_state(path: Union[str, Path], device="cpu") -> dict:
    """Read ``training_state.pt`` (tensors and plain types only) and check its keys and types."""
    path = Path(path)
    with read_errors_as(  # truncated zip, foreign pickle, refused globals: several types
        CheckpointError,
        lambda why: (
            f"cannot read {path} ({why}): it is truncated or was not written by naslora-deploy; "
            "resume from an intact run or train into a new --out"
        ),
    ):
        state = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a training state; {RESUME_HELP}")
    for key, (check, expected) in TRAINING_STATE_SCHEMA.items():
        if key not in state and key != "arch_opt":
            raise CheckpointError(f"{path} has no {key!r}; {RESUME_HELP}")
        if key in state and not check(state[key]):
            raise CheckpointError(f"{path}: {key!r} is not {expected}; {RESUME_HELP}")
    return state


@contextlib.contextmanager
def restoring(path: Path) -> Iterator[None]:
    """Restoring optimisers and RNGs from ``path``: their own errors become one ``CheckpointError`` line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not fit this run ({first_line(exc)}); {RESUME_HELP}") from None


def read_jsonl(path: Path) -> List[dict]:
    """The records of a JSON-lines file (none if it is absent); a damaged line is a ``CheckpointError``."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            raise CheckpointError(f"{path} line {number} is not a JSON object; {RESUME_HELP}")
        records.append(record)
    return records


def source_sha256(path: Union[str, Path]) -> str:
    """What an export was made from, as one sha256: a checkpoint file's own (a shard index's: with
    its shards, ``weights_sha256``), or for an adapter run or checkpoint directory a digest of its
    resolved checkpoint's config and weights (its base is checked by ``load_adapter``)."""
    path = Path(path)
    if path.is_file():
        return weights_sha256(path)  # a shard index: with every shard it names
    directory = resolve_checkpoint_dir(path)
    digest = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"{file} not found; pass a complete checkpoint directory")
        digest.update(f"{name} {sha256_of(file)}\n".encode())
    return digest.hexdigest()


def save_state(path: Path, state: dict) -> Path:
    """A tensor dict to ``.safetensors`` or a ``torch.save`` file, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        return atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    return atomic_write(path, lambda tmp: torch.save(state, tmp))
