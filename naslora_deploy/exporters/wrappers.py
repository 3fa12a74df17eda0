"""Export-only modules: static-shape, batch-friendly graphs around SAM's own parts.

Training code is never bent for ONNX: these wrappers hold the trained modules
and restate the decoder's token assembly in a batched form (SAM's
``MaskDecoder.forward`` broadcasts one image over many prompts, which a graph
with a batch axis cannot use). Parity tests pin them to segment-anything's own
forward. Masks come out at the padded model input size; cropping and resizing
to the original image happen in the runtime, so no ``orig_im_size`` input.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from naslora_deploy.heads import decode_queries


def batched_predict_masks(
    decoder, embeddings: torch.Tensor, image_pe: torch.Tensor, dense: torch.Tensor, sparse: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAM's ``MaskDecoder.predict_masks`` for B images with B prompt sets.

    Returns all mask-token masks (B, M, 4h, 4w) and IoU predictions (B, M).
    """
    batch = embeddings.shape[0]
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = tokens.unsqueeze(0).expand(batch, -1, -1)
    if sparse is not None:
        tokens = torch.cat([tokens, sparse], dim=1)
    src = embeddings + dense
    pos = image_pe.expand(batch, -1, -1, -1)
    channels, height, width = embeddings.shape[1:]
    hidden, src = decoder.transformer(src, pos, tokens)
    iou_out = hidden[:, 0, :]
    mask_out = hidden[:, 1 : 1 + decoder.num_mask_tokens, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(batch, channels, height, width))
    hyper = torch.stack([mlp(mask_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    up_c, up_h, up_w = upscaled.shape[1:]
    masks = (hyper @ upscaled.reshape(batch, up_c, up_h * up_w)).reshape(batch, -1, up_h, up_w)
    return masks, decoder.iou_prediction_head(iou_out)


class ImageEncoderGraph(nn.Module):
    """``image`` (B, 3, S, S), normalised and padded -> ``image_embeddings``."""

    def __init__(self, image_encoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class MaskDecoderGraph(nn.Module):
    """Prompt-free decoder: ``image_embeddings`` -> low-res logits, S x S mask logits
    (and class logits for multi-class models)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.decoder = model.sam.mask_decoder
        self.class_head = model.class_head
        self.image_size = model.image_size
        sparse, dense, image_pe = model.prompt_free_embeddings(1)
        self.register_buffer("dense", dense.detach().clone())
        self.register_buffer("image_pe", image_pe.detach().clone())

    def forward(self, image_embeddings: torch.Tensor):
        if self.class_head is None:
            masks, _ = batched_predict_masks(self.decoder, image_embeddings, self.image_pe, self.dense, None)
            low_res = masks[:, :1]
            upscaled = F.interpolate(low_res, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
            return low_res, upscaled
        outputs = decode_queries(self.decoder, self.class_head, image_embeddings, self.dense, self.image_pe)
        low_res = outputs["mask_logits"]
        upscaled = F.interpolate(low_res, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return low_res, upscaled, outputs["class_logits"]


class PromptDecoderGraph(nn.Module):
    """Promptable decoder with N fixed point slots (SAM's ONNX convention).

    ``point_coords`` (B, N, 2) in the padded model-input frame, ``point_labels``
    (B, N): 1 positive, 0 negative, 2 / 3 box top-left / bottom-right, -1 padding.
    Outputs the single-mask prediction as S x S logits, low-res logits and IoU.
    """

    def __init__(self, sam) -> None:
        super().__init__()
        self.decoder = sam.mask_decoder
        self.prompt_encoder = sam.prompt_encoder
        self.image_size = sam.image_encoder.img_size
        encoder = sam.prompt_encoder
        _, dense = encoder(points=None, boxes=None, masks=None)
        self.register_buffer("dense", dense.detach().clone())
        self.register_buffer("image_pe", encoder.get_dense_pe().detach().clone())

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sparse prompt embeddings, as ``PromptEncoder`` computes them, without boolean indexing."""
        encoder = self.prompt_encoder
        coords = (coords + 0.5) / self.image_size
        embedding = encoder.pe_layer._pe_encoding(coords)
        labels = labels.unsqueeze(-1).to(embedding.dtype)
        embedding = embedding * (labels != -1).to(embedding.dtype)
        embedding = embedding + encoder.not_a_point_embed.weight * (labels == -1).to(embedding.dtype)
        for i in range(encoder.num_point_embeddings):
            embedding = embedding + encoder.point_embeddings[i].weight * (labels == i).to(embedding.dtype)
        return embedding

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor):
        sparse = self.embed_points(point_coords, point_labels)
        masks, iou = batched_predict_masks(self.decoder, image_embeddings, self.image_pe, self.dense, sparse)
        low_res = masks[:, :1]
        upscaled = F.interpolate(low_res, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return upscaled, low_res, iou[:, :1]
