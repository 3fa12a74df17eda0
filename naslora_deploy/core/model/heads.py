"""Prompt-free segmentation heads on SAM: binary, and multi-class with a class head.

The prompt encoder is frozen and given no prompts (empty sparse embeddings, its
"no mask" dense embedding). Binary models call segment-anything's own
``MaskDecoder`` forward, one image at a time (its forward broadcasts one image
over many prompts, so a batch of images cannot go through it at once).
Multi-class models (paper Sec. 3.3, footnote) add N query tokens to the
decoder's two-way transformer, one mask hypernetwork shared by the queries and
a class head with K+1 outputs (the last is "no object"), as in Mask2Former.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from naslora_deploy.core.model.modes import settle_modes


class MultiClassHead(nn.Module):
    """N learned queries, their mask hypernetwork and a (K+1)-way class head."""

    def __init__(self, transformer_dim: int, num_queries: int, num_classes: int) -> None:
        super().__init__()
        from segment_anything.modeling.mask_decoder import MLP

        self.queries = nn.Embedding(num_queries, transformer_dim)
        self.mask_mlp = MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
        self.class_mlp = nn.Linear(transformer_dim, num_classes + 1)


class SegmentationModel(nn.Module):
    """SAM + prompt-free head. ``forward(images)`` gives low-resolution mask logits
    ``(B, Q, 4h, 4w)`` (Q = 1 for binary) and, multi-class, ``class_logits (B, Q, K+1)``.
    ``forward(images, boxes)`` (binary): one mask per box prompt, as MedSAM is trained.
    """

    def __init__(self, sam, num_classes: int = 1, num_queries: int = 0) -> None:
        super().__init__()
        self.sam = sam
        self.num_classes = num_classes
        self.class_head = None
        if num_classes > 1:
            dim = sam.mask_decoder.transformer_dim
            self.class_head = MultiClassHead(dim, num_queries or num_classes, num_classes)
        for param in sam.prompt_encoder.parameters():
            param.requires_grad_(False)
        self.encoder_cache = None  # training.prefix_cache: a callable standing in for the image encoder

    def train(self, mode: bool = True) -> "SegmentationModel":
        """Training mode for what is trained; the frozen base stays in eval mode (``core.model.modes``)."""
        super().train(mode)
        settle_modes(self.sam, mode)
        return self

    def with_sam(self, sam) -> "SegmentationModel":
        """The same head (class head shared, not copied) on another SAM, e.g. a merged one."""
        model = SegmentationModel(sam)
        model.num_classes = self.num_classes
        model.class_head = self.class_head
        return model

    @property
    def image_size(self) -> int:
        """Side of the square, padded model input."""
        return self.sam.image_encoder.img_size

    @property
    def normalization(self) -> str:
        """The input normalisation of the SAM variant (``build_sam`` records it; SAM's own by default)."""
        return getattr(self.sam, "normalization", "imagenet")

    def prompt_free_embeddings(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Empty sparse prompts, the no-mask dense embedding and the positional encoding."""
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=None, masks=None)
        return sparse, dense, self.sam.prompt_encoder.get_dense_pe()

    def forward(
        self, images: torch.Tensor, boxes: Optional[List[torch.Tensor]] = None
    ) -> Dict[str, torch.Tensor]:
        embeddings = self.encode(images)
        return self.decode(embeddings) if boxes is None else self.decode_boxes(embeddings, boxes)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, C, h, w) of (B, 3, S, S) model inputs (through ``encoder_cache`` if set)."""
        if self.encoder_cache is not None:
            return self.encoder_cache(images)
        return self.sam.image_encoder(images)

    def decode_boxes(self, embeddings: torch.Tensor, boxes: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Box-prompted decoding: ``boxes[b]`` (K_b, 4) x0, y0, x1, y1 in the model-input frame.

        Returns ``mask_logits`` (P, 1, 4h, 4w) for the P = sum K_b prompts and
        ``prompt_image`` (P,): the image each prompt belongs to. SAM's own decoder
        runs each image with all its boxes at once.
        """
        if self.class_head is not None:
            raise ValueError("box prompts train and evaluate the binary head; this model is multi-class")
        image_pe = self.sam.prompt_encoder.get_dense_pe()
        masks, owners = [], []
        for index, (embedding, image_boxes) in enumerate(zip(embeddings, boxes)):
            if len(image_boxes) == 0:
                continue
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=image_boxes.to(embedding), masks=None)
            logits, _ = self.sam.mask_decoder(
                image_embeddings=embedding[None],
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            masks.append(logits)
            owners.append(torch.full((len(image_boxes),), index, dtype=torch.long, device=logits.device))
        if not masks:
            size = 4 * embeddings.shape[-1]
            return {
                "mask_logits": embeddings.new_zeros(0, 1, size, size),
                "prompt_image": torch.zeros(0, dtype=torch.long),
            }
        return {"mask_logits": torch.cat(masks), "prompt_image": torch.cat(owners)}

    def decode(self, embeddings: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Run the (prompt-free) decoder on image embeddings."""
        sparse, dense, image_pe = self.prompt_free_embeddings(embeddings.shape[0])
        if self.class_head is None:
            masks = [
                self.sam.mask_decoder(
                    image_embeddings=embedding[None],
                    image_pe=image_pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=False,
                )[0]
                for embedding in embeddings
            ]
            return {"mask_logits": torch.cat(masks)}

        return decode_queries(self.sam.mask_decoder, self.class_head, embeddings, dense, image_pe)


def sam_of(model):
    """The segment-anything ``Sam`` that ``model`` is or wraps.

    ``model``: what the public loaders return: a ``Sam`` (``build_sam``, an
    adapted or merged one) or a ``SegmentationModel`` (``load_adapter``, a merged
    one), whose ``.sam`` this gives. Every public function that reads a model's
    encoder or decoder reads it through here, so each takes all of them.
    Raises ``TypeError`` for anything else.
    """
    sam = model.sam if isinstance(model, SegmentationModel) else model
    if not hasattr(sam, "image_encoder"):
        raise TypeError(
            f"expected a SAM model (build_sam, add_adapters, merge) or a SegmentationModel (load_adapter), "
            f"got {type(model).__name__}"
        )
    return sam


def two_way_pass(
    decoder,
    embeddings: torch.Tensor,
    dense: torch.Tensor,
    image_pe: torch.Tensor,
    extra_tokens: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAM's ``MaskDecoder`` token pass for B images at once.

    The tokens [IoU token, M mask tokens, ``extra_tokens`` (B, E, C): prompts or
    class queries] attend to ``embeddings + dense`` (B, C, h, w) in the two-way
    transformer. Returns the tokens after it (B, 1 + M + E, C) and the upscaled
    image features (B, C/8, 4h, 4w). SAM's own forward broadcasts one image
    over many prompts, which a batch of images cannot use.
    """
    batch = embeddings.shape[0]
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])[None].expand(batch, -1, -1)
    if extra_tokens is not None:
        tokens = torch.cat([tokens, extra_tokens], dim=1)
    pos = image_pe.expand(batch, -1, -1, -1)
    hidden, src = decoder.transformer(embeddings + dense, pos, tokens)
    channels, height, width = embeddings.shape[1:]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(batch, channels, height, width))
    return hidden, upscaled


def _project(mask_embed: torch.Tensor, upscaled: torch.Tensor) -> torch.Tensor:
    """(B, Q, C') mask embeddings x (B, C', H, W) features -> (B, Q, H, W) mask logits."""
    batch, channels, height, width = upscaled.shape
    return (mask_embed @ upscaled.reshape(batch, channels, height * width)).reshape(batch, -1, height, width)


def batched_predict_masks(
    decoder,
    embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    dense: torch.Tensor,
    sparse: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAM's ``MaskDecoder.predict_masks`` for B images with B prompt sets (``sparse`` (B, N, C) or None).

    Returns all mask-token masks (B, M, 4h, 4w) and IoU predictions (B, M).
    """
    hidden, upscaled = two_way_pass(decoder, embeddings, dense, image_pe, sparse)
    mask_out = hidden[:, 1 : 1 + decoder.num_mask_tokens, :]
    hyper = torch.stack(
        [mlp(mask_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    return _project(hyper, upscaled), decoder.iou_prediction_head(hidden[:, 0, :])


def decode_queries(
    decoder, head: MultiClassHead, embeddings: torch.Tensor, dense: torch.Tensor, image_pe: torch.Tensor
) -> Dict[str, torch.Tensor]:
    """Batched multi-class decoding: the queries join SAM's output tokens in its two-way transformer."""
    queries = head.queries.weight[None].expand(embeddings.shape[0], -1, -1)
    hidden, upscaled = two_way_pass(decoder, embeddings, dense, image_pe, queries)
    query_out = hidden[:, 1 + decoder.num_mask_tokens :, :]
    return {
        "mask_logits": _project(head.mask_mlp(query_out), upscaled),
        "class_logits": head.class_mlp(query_out),
    }


def upsample_logits(mask_logits: torch.Tensor, size: int) -> torch.Tensor:
    """Low-resolution logits to the padded ``size x size`` model input."""
    return F.interpolate(mask_logits, (size, size), mode="bilinear", align_corners=False)


def semantic_probabilities(mask_logits: torch.Tensor, class_logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W): class probabilities times mask probabilities, summed over queries."""
    class_prob = class_logits.softmax(-1)[..., :-1]  # drop "no object"
    return torch.einsum("bqk,bqhw->bkhw", class_prob, mask_logits.sigmoid())
