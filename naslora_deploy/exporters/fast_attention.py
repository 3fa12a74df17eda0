"""Inference-time SAM image-encoder attention through ``F.scaled_dot_product_attention``.

segment-anything's ``Attention.forward`` materialises ``attn = (q * scale) @ k^T``,
adds the decomposed relative-position terms (``add_decomposed_rel_pos``), then
softmax and ``@ v``. Here the relative-position terms alone are formed as a
float bias, with segment-anything's own ``get_rel_pos``, and handed to
``scaled_dot_product_attention`` as ``attn_mask``, so PyTorch may pick a fused
kernel (memory-efficient attention on CUDA) instead of the three-step
computation. Everything else (qkv, including our adapter wrappers, proj, the
relative-position tables, window partitioning in the block) is SAM's.

Patching swaps the class of each block's ``attn`` for a subclass that only
overrides ``forward``: parameters, buffers and ``state_dict`` keys are the same
objects, ``isinstance(attn, Attention)`` still holds and the model still pickles.

    from naslora_deploy.exporters.fast_attention import use_sdpa, sdpa_disabled
    use_sdpa(sam.image_encoder)        # returns the number of blocks switched
    with sdpa_disabled(sam.image_encoder):
        ...                            # the original computation, temporarily
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: Tuple[int, int],
    k_size: Tuple[int, int],
) -> torch.Tensor:
    """The additive term of SAM's ``add_decomposed_rel_pos``, without an attention map.

    ``q``: (B, heads, q_h * q_w, C), unscaled, as SAM passes it. Returns the
    (B, heads, q_h * q_w, k_h * k_w) bias ``rel_h + rel_w`` in ``q``'s dtype.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    table_h = get_rel_pos(q_h, k_h, rel_pos_h)
    table_w = get_rel_pos(q_w, k_w, rel_pos_w)
    batch, heads, _, channels = q.shape
    grid_q = q.reshape(batch * heads, q_h, q_w, channels)
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid_q, table_h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid_q, table_w)
    bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return bias.reshape(batch, heads, q_h * q_w, k_h * k_w).to(q.dtype)


class SdpaAttention(Attention):
    """SAM's ``Attention`` with its forward computed by ``scaled_dot_product_attention``.

    Never constructed directly: ``use_sdpa`` re-labels existing ``Attention``
    instances with this class, so they keep their own parameters.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same inputs and result as ``Attention.forward``: (B, H, W, dim) -> (B, H, W, dim)."""
        batch, height, width, _ = x.shape
        tokens = height * width
        # (3, B, heads, H*W, head_dim), exactly as SAM lays qkv out
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(
                q, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width)
            )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.permute(0, 2, 1, 3).reshape(batch, height, width, -1)
        return self.proj(out)


def _attention_modules(image_encoder) -> List[Attention]:
    """The ``attn`` of every block of a SAM ``ImageEncoderViT``."""
    blocks = getattr(image_encoder, "blocks", None)
    if blocks is None:
        raise TypeError(f"expected a SAM ImageEncoderViT (with .blocks), got {type(image_encoder).__name__}")
    return [block.attn for block in blocks if isinstance(getattr(block, "attn", None), Attention)]


def _switch_class(image_encoder, old: type, new: type) -> int:
    """Re-label every block ``attn`` whose class is exactly ``old`` as ``new``; returns how many."""
    switched = 0
    for attn in _attention_modules(image_encoder):
        if type(attn) is old:
            attn.__class__ = new
            switched += 1
    return switched


def use_sdpa(image_encoder) -> int:
    """Switch every block's SAM ``Attention`` to the SDPA forward, in place.

    Only instances whose class is exactly segment-anything's ``Attention`` are
    switched (already switched ones and foreign subclasses are left alone).
    Parameters and ``state_dict`` are untouched; ``attn.qkv`` may be a plain
    ``nn.Linear`` or one of our adapter wrappers. Meant for inference: the
    result equals the original to float rounding, gradients flow too, but
    training has not been validated with it. Returns the number of blocks switched.
    """
    return _switch_class(image_encoder, Attention, SdpaAttention)


def undo_sdpa(image_encoder) -> int:
    """Put every SDPA-switched block back on segment-anything's own forward; returns how many."""
    return _switch_class(image_encoder, SdpaAttention, Attention)


@contextmanager
def sdpa_disabled(image_encoder) -> Iterator[int]:
    """Run the original attention inside the block; SDPA blocks are switched back after.

    Yields the number of blocks that were temporarily restored.
    """
    restored_blocks = [attn for attn in _attention_modules(image_encoder) if type(attn) is SdpaAttention]
    for attn in restored_blocks:
        attn.__class__ = Attention
    try:
        yield len(restored_blocks)
    finally:
        for attn in restored_blocks:
            attn.__class__ = SdpaAttention


def sdpa_enabled_count(image_encoder) -> int:
    """How many blocks currently run the SDPA forward."""
    return sum(type(attn) is SdpaAttention for attn in _attention_modules(image_encoder))


__all__ = [
    "use_sdpa",
    "undo_sdpa",
    "sdpa_disabled",
    "sdpa_enabled_count",
    "SdpaAttention",
    "decomposed_rel_pos_bias",
]
