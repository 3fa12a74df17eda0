"""segment-anything's prompt encoder and mask decoder, shaped for a variant: shared by every family."""

from __future__ import annotations

from typing import Tuple


def prompt_and_mask_decoder(
    embed_dim: int, grid: int, image_size: int, mlp_dim: int = 2048, heads: int = 8, iou_hidden: int = 256
) -> Tuple[object, object]:
    """``PromptEncoder`` for a ``grid`` x ``grid`` embedding of an ``image_size`` input, and SAM's
    ``MaskDecoder`` (3 multimask outputs, two-way transformer of depth 2); defaults are SAM's own."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt_encoder = PromptEncoder(
        embed_dim=embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=embed_dim, mlp_dim=mlp_dim, num_heads=heads),
        transformer_dim=embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=iou_hidden,
    )
    return prompt_encoder, mask_decoder
