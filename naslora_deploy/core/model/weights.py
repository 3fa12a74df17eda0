"""SAM weights from wherever users have them, turned into segment-anything's own state dict.

Pure functions on tensor dicts (no model is built here):

- ``weight_files``: a file, or a folder as the Hugging Face hub lays it out
  (``model.safetensors``, ``pytorch_model.bin``, or their sharded ``*.index.json``);
- ``unwrap``: ``{"model": ...}`` / ``{"state_dict": ...}`` training checkpoints;
- ``strip_prefixes``: ``module.`` (DataParallel / DDP), ``_orig_mod.`` (torch.compile),
  ``model.`` / ``sam.`` (a wrapping module), when every key carries one;
- ``detect_layout``: ``segment_anything`` or ``transformers`` (``SamModel``);
- ``hf_to_segment_anything`` / ``segment_anything_to_hf``: the key mapping between
  transformers' ``SamModel`` and segment-anything's ``Sam``. Both keep one fused
  ``qkv`` Linear per encoder block with the same [q | k | v] row layout, the same
  relative position tables and the same (1, H, W, C) absolute position embedding,
  so every tensor maps one to one, unchanged: only names differ (and the two MLP
  heads number their Linears differently). transformers ties
  ``shared_image_embedding.positional_embedding`` to the prompt encoder's
  ``shared_embedding.positional_embedding``; segment-anything has one matrix for both.

``to_segment_anything`` chains them; ``variants.read_state_dict`` calls it. A key
that maps nowhere is kept as it is, so ``load_fitting_state_dict`` names it.

A shard index may name only files inside its folder (``shard_names``: no absolute
path, no ``..``), and ``weights_sha256`` is the one digest of every byte a checkpoint
is read from (a shard index: the index and every shard), which runs record and check.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Tuple, Union

import torch

from naslora_deploy.common.errors import CheckpointError, NasloraError
from naslora_deploy.common.io import read_json, sha256_of

LAYOUTS = ("segment_anything", "transformers")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
PREFIXES = ("module.", "_orig_mod.", "model.", "sam.")
HUB_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
HF_PE = (
    "shared_image_embedding.positional_embedding",
    "prompt_encoder.shared_embedding.positional_embedding",
)
SAM_PE = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"

# (transformers name, segment-anything name) of a key's start; {n}: a number kept as it is.
# Order matters: the first match wins, the bare ``mask_decoder.`` row (same names) comes last.
RENAMES: Tuple[Tuple[str, str], ...] = (
    ("vision_encoder.patch_embed.projection.", "image_encoder.patch_embed.proj."),
    ("vision_encoder.pos_embed", "image_encoder.pos_embed"),
    ("vision_encoder.layers.{n}.layer_norm1.", "image_encoder.blocks.{n}.norm1."),
    ("vision_encoder.layers.{n}.layer_norm2.", "image_encoder.blocks.{n}.norm2."),
    ("vision_encoder.layers.{n}.attn.", "image_encoder.blocks.{n}.attn."),  # qkv, proj, rel_pos_h/w
    ("vision_encoder.layers.{n}.mlp.", "image_encoder.blocks.{n}.mlp."),  # lin1, lin2
    ("vision_encoder.neck.conv1.", "image_encoder.neck.0."),
    ("vision_encoder.neck.layer_norm1.", "image_encoder.neck.1."),
    ("vision_encoder.neck.conv2.", "image_encoder.neck.2."),
    ("vision_encoder.neck.layer_norm2.", "image_encoder.neck.3."),
    (HF_PE[0], SAM_PE),
    (HF_PE[1], SAM_PE),
    ("prompt_encoder.point_embed.{n}.", "prompt_encoder.point_embeddings.{n}."),
    ("prompt_encoder.not_a_point_embed.", "prompt_encoder.not_a_point_embed."),
    ("prompt_encoder.no_mask_embed.", "prompt_encoder.no_mask_embed."),
    ("prompt_encoder.mask_embed.conv1.", "prompt_encoder.mask_downscaling.0."),
    ("prompt_encoder.mask_embed.layer_norm1.", "prompt_encoder.mask_downscaling.1."),
    ("prompt_encoder.mask_embed.conv2.", "prompt_encoder.mask_downscaling.3."),
    ("prompt_encoder.mask_embed.layer_norm2.", "prompt_encoder.mask_downscaling.4."),
    ("prompt_encoder.mask_embed.conv3.", "prompt_encoder.mask_downscaling.6."),
    ("mask_decoder.transformer.layers.{n}.layer_norm{n}.", "mask_decoder.transformer.layers.{n}.norm{n}."),
    ("mask_decoder.transformer.layer_norm_final_attn.", "mask_decoder.transformer.norm_final_attn."),
    ("mask_decoder.upscale_conv1.", "mask_decoder.output_upscaling.0."),
    ("mask_decoder.upscale_layer_norm.", "mask_decoder.output_upscaling.1."),
    ("mask_decoder.upscale_conv2.", "mask_decoder.output_upscaling.3."),
    ("mask_decoder.", "mask_decoder."),  # iou/mask tokens, attention q/k/v/out_proj, mlp.lin1/2: same names
)
# the decoder's MLP heads: transformers' proj_in, layers.{j}, proj_out <-> segment-anything's layers.{0..L-1}
_HEAD = r"(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))"
_HF_MLP = re.compile(_HEAD + r"\.(proj_in|proj_out|layers\.(\d+))\.(.*)")
_SAM_MLP = re.compile(_HEAD + r"\.layers\.(\d+)\.(.*)")

State = Dict[str, torch.Tensor]


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{n\}", r"(\d+)"))


def _fill(template: str, numbers: Tuple[str, ...]) -> str:
    for number in numbers:
        template = template.replace("{n}", number, 1)
    return template


_FORWARD = [(_pattern(hf), sam) for hf, sam in RENAMES]
_BACKWARD = [(_pattern(sam), hf) for hf, sam in RENAMES if hf != HF_PE[1]]


def _rename(key: str, table) -> str:
    """``key`` with the first matching table row's start swapped; unmatched keys unchanged."""
    for pattern, template in table:
        match = pattern.match(key)
        if match:
            return _fill(template, match.groups()) + key[match.end() :]
    return key


def weight_files(path: Union[str, Path]) -> List[Path]:
    """The weight files behind ``path``: the file itself, or a hub-style folder's (shards in order).

    Raises ``CheckpointError`` (one line) when nothing is there or a shard index is damaged
    or names a shard outside its folder (``shard_names``).
    """
    path = Path(path)
    if path.is_file() and not is_shard_index(path):
        return [path]
    if path.is_dir():
        found = base_weights_file(path)
        if found is None:
            raise CheckpointError(
                f"checkpoint folder {path} holds none of {', '.join(HUB_FILES)}; pass a SAM weights file"
            )
        path = found
        if not is_shard_index(path):
            return [path]
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} not found; pass the path of a SAM .pth or .safetensors file (or a hub folder)"
        )
    shards = shard_names(path)
    missing = [s for s in shards if not (path.parent / s).is_file()]
    if missing:
        raise CheckpointError(f"shard index {path} names {missing[0]}, which is not beside it")
    return [path.parent / s for s in shards]


def is_shard_index(path: Union[str, Path]) -> bool:
    """Whether ``path`` names a Hugging Face shard index (``*.index.json``)."""
    return Path(path).name.endswith(".index.json")


def shard_names(index: Path) -> List[str]:
    """The shard files a shard index's ``weight_map`` names, sorted, each a relative path inside the
    index's folder: an absolute path or a ``..`` part is refused (it would read files elsewhere).
    Links inside the folder are followed (the hub cache's snapshots are links to its blobs)."""
    try:
        data = read_json(index, "shard index")
    except NasloraError as exc:  # deep nesting, bad UTF-8 or syntax, too large: one line
        raise CheckpointError(f"{exc}; use an intact checkpoint") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"shard index {index} is damaged: it holds no 'weight_map' object of tensor name -> shard file; "
            "use the checkpoint as the hub wrote it"
        )
    odd = next((n for n in weight_map.values() if not isinstance(n, str)), None)
    if odd is not None:
        raise CheckpointError(
            f"shard index {index} is damaged: its weight_map names a shard by a {type(odd).__name__}, "
            "not a file name; use the checkpoint as the hub wrote it"
        )
    names = sorted(set(weight_map.values()))
    for name in names:
        if not _inside(name):
            raise CheckpointError(
                f"shard index {index} names shard {name!r}, which is outside its folder; shards must be "
                "relative paths inside the checkpoint folder: use the checkpoint as the hub wrote it"
            )
    return names


def _inside(name: str) -> bool:
    """Whether a shard name is a relative path that stays in its folder (``\\`` read as ``/``)."""
    path = PurePosixPath(name.replace("\\", "/"))
    return bool(path.parts) and "\x00" not in name and not path.is_absolute() and ".." not in path.parts


def weights_sha256(path: Union[str, Path]) -> str:
    """The sha256 that stands for every byte ``read_state_dict(path)`` reads.

    A weights file: its own sha256 (as ``common.io.sha256_of``). A hub folder: that of its
    weights file or shard index (``base_weights_file``). A shard index: the sha256 of the
    text lines ``"<name> <sha256 of the file>\\n"``, first the index itself, then every shard
    it names in sorted name order, so a change to any shard (or to the index) changes it.
    Raises ``CheckpointError`` when nothing is there or the index is damaged.
    """
    path = Path(path)
    file = base_weights_file(path)
    if file is None:
        raise CheckpointError(f"checkpoint {path} not found; pass a SAM weights file or hub folder")
    if not is_shard_index(file):
        return sha256_of(file)
    digest = hashlib.sha256(f"{file.name} {sha256_of(file)}\n".encode())
    for shard in weight_files(file):
        digest.update(f"{shard.relative_to(file.parent).as_posix()} {sha256_of(shard)}\n".encode())
    return digest.hexdigest()


def is_tensor_dict(obj) -> bool:
    """Whether ``obj`` is a non-empty dict of tensors keyed by strings."""
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def unwrap(obj, depth: int = 3):
    """The state dict inside a training checkpoint: ``{"model": ...}``, ``{"state_dict": ...}``, ...

    A dict of tensors comes back as it is; otherwise the first ``WRAPPER_KEYS``
    entry holding a dict is opened, up to ``depth`` levels. Anything else comes back unchanged.
    """
    for _ in range(depth):
        if not isinstance(obj, dict) or is_tensor_dict(obj):
            return obj
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            return obj
        obj = inner
    return obj


def strip_prefixes(state: State) -> State:
    """Drop a ``PREFIXES`` entry shared by every key, repeatedly (``module.model.x`` -> ``x``)."""
    while state:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return state
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def detect_layout(state: State) -> str:
    """``transformers`` for a ``SamModel`` / ``SamVisionModel`` state dict, else ``segment_anything``."""
    markers = ("vision_encoder.", "shared_image_embedding.", "prompt_encoder.shared_embedding.")
    return "transformers" if any(k.startswith(markers) for k in state) else "segment_anything"


def _mlp_depths(state: State, pattern: re.Pattern, hidden_group: int) -> Dict[str, int]:
    """Per decoder MLP head: its number of Linears (transformers: hidden layers + 2; sam: max index + 1)."""
    depths: Dict[str, int] = {}
    for key in state:
        match = pattern.fullmatch(key)
        if match and match.group(hidden_group) is not None:
            index = int(match.group(hidden_group))
            depths[match.group(1)] = max(depths.get(match.group(1), 0), index + 1)
    return depths


def hf_to_segment_anything(state: State, source="checkpoint") -> State:
    """Rename a transformers ``SamModel`` state dict into segment-anything's ``Sam`` names.

    Tensors are not copied or changed. The two tied positional-embedding keys
    become one; if both are there and differ, no ``Sam`` can hold them: ``CheckpointError``.
    """
    hidden = _mlp_depths(state, _HF_MLP, 3)  # transformers: hidden Linears per head
    out: State = {}
    for key, tensor in state.items():
        match = _HF_MLP.fullmatch(key)
        if match:
            head, part, index, rest = match.groups()
            if part == "proj_in":
                number = 0
            else:
                number = hidden.get(head, 0) + 1 if part == "proj_out" else int(index) + 1
            out[f"{head}.layers.{number}.{rest}"] = tensor
            continue
        new = _rename(key, _FORWARD)
        if new == SAM_PE and new in out and not tensor.is_meta and not torch.equal(out[new], tensor):
            raise CheckpointError(
                f"checkpoint {source} holds two different positional embeddings ({HF_PE[0]} and "
                f"{HF_PE[1]}); segment-anything's SAM has one: tie them before converting"
            )
        out[new] = tensor
    return out


def segment_anything_to_hf(state: State) -> State:
    """Rename a segment-anything ``Sam`` state dict (or a part of one) into transformers' ``SamModel`` names.

    The inverse of ``hf_to_segment_anything``; the positional embedding is written
    under both tied names. Tensors are not copied.
    """
    depths = _mlp_depths(state, _SAM_MLP, 2)
    out: State = {}
    for key, tensor in state.items():
        match = _SAM_MLP.fullmatch(key)
        if match:
            head, index, rest = match.group(1), int(match.group(2)), match.group(3)
            last = depths[head] - 1
            part = "proj_in" if index == 0 else "proj_out" if index == last else f"layers.{index - 1}"
            out[f"{head}.{part}.{rest}"] = tensor
        elif key == SAM_PE:
            out.update({name: tensor for name in HF_PE})
        else:
            out[_rename(key, _BACKWARD)] = tensor
    return out


def to_segment_anything(obj, source="checkpoint") -> State:
    """Whatever ``torch.load`` / safetensors read -> a segment-anything state dict.

    Unwraps, strips prefixes and maps transformers names. Raises ``CheckpointError``
    (one line) when no dict of tensors is found.
    """
    state = unwrap(obj)
    if not is_tensor_dict(state):
        raise CheckpointError(f"checkpoint {source} is not a state dict of tensors; save model.state_dict()")
    state = strip_prefixes(state)
    if detect_layout(state) == "transformers":
        state = hf_to_segment_anything(state, source)
    return state


def hf_sam_config(spec) -> Dict[str, dict]:
    """``SamConfig`` keyword arguments for a SAM ViT ``VariantSpec`` (``SamConfig(**hf_sam_config(spec))``).

    The three sub-configs as plain dicts, so no transformers import is needed here.
    The decoder's LayerNorm eps is segment-anything's 1e-5 (transformers' default
    is 1e-6; the hub's facebook/sam-vit-* configs keep 1e-6: a difference of that
    eps only, not of the weights).
    """
    grid = spec.image_size // 16
    return {
        "vision_config": {
            "hidden_size": spec.embed_dim,
            "num_hidden_layers": spec.depth,
            "num_attention_heads": spec.num_heads,
            "global_attn_indexes": list(spec.global_attn_indexes),
            "image_size": spec.image_size,
            "patch_size": 16,
            "window_size": spec.window_size,
            "output_channels": spec.prompt_embed_dim,
            "num_pos_feats": spec.prompt_embed_dim // 2,
            "mlp_ratio": 4.0,
        },
        "prompt_encoder_config": {
            "hidden_size": spec.prompt_embed_dim,
            "image_size": spec.image_size,
            "patch_size": spec.image_size // grid,
            "mask_input_channels": 16,
        },
        "mask_decoder_config": {
            "hidden_size": spec.prompt_embed_dim,
            "mlp_dim": spec.decoder_mlp_dim,
            "num_attention_heads": spec.decoder_heads,
            "iou_head_hidden_dim": spec.iou_hidden,
            "layer_norm_eps": 1e-5,
        },
    }


def base_weights_file(path: Union[str, Path]) -> Optional[Path]:
    """The one file whose sha256 stands for ``path`` (a base checkpoint record): the file, a hub
    folder's weights file or shard index; None when nothing is there."""
    path = Path(path)
    if path.is_dir():
        return next((path / n for n in HUB_FILES if (path / n).is_file()), None)
    return path if path.is_file() else None
