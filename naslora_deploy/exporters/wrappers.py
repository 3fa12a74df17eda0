"""Export-only modules: static-shape, batch-friendly graphs around SAM's own parts.

Training code is never bent for ONNX: these wrappers hold the trained modules
and run the decoder through the batched token pass of ``core.model.heads`` (SAM's
``MaskDecoder.forward`` broadcasts one image over many prompts, which a graph
with a batch axis cannot use). Their graphs' input and output names are the
artifact contract's (``common.contract``). Parity tests pin them to segment-anything's own
forward. Masks come out at the padded model input size; cropping and resizing
to the original image happen in the runtime, so no ``orig_im_size`` input.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import torch
from torch import nn

from naslora_deploy.core.model.heads import batched_predict_masks, decode_queries, upsample_logits
from naslora_deploy.runtime.prompts import HAS_MASK_INPUT, MASK_INPUT, MASK_INPUT_AXES


def _batch_dynamic_merging_forward(self, x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 3:  # TinyViT takes ``B = len(x)``, a constant once traced; ``x.shape[0]`` stays symbolic
        height, width = self.input_resolution
        x = x.view(x.shape[0], height, width, -1).permute(0, 3, 1, 2)
    return type(self).__mro__[1].forward(self, x)


@contextmanager
def batch_dynamic(image_encoder: nn.Module) -> Iterator[None]:
    """Inside the block, TinyViT's patch mergings keep the batch axis dynamic when traced.

    Their class is swapped for a subclass that only overrides ``forward`` (same
    maths, same parameters), and swapped back after; SAM ViT encoders are untouched.
    """
    swapped = []
    for module in image_encoder.modules():
        cls = type(module)
        if cls.__name__ == "PatchMerging" and hasattr(module, "input_resolution"):
            module.__class__ = type(
                f"BatchDynamic{cls.__name__}", (cls,), {"forward": _batch_dynamic_merging_forward}
            )
            swapped.append((module, cls))
    try:
        yield
    finally:
        for module, cls in swapped:
            module.__class__ = cls


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
            return low_res, upsample_logits(low_res, self.image_size)
        outputs = decode_queries(self.decoder, self.class_head, image_embeddings, self.dense, self.image_pe)
        low_res = outputs["mask_logits"]
        return low_res, upsample_logits(low_res, self.image_size), outputs["class_logits"]


class PromptDecoderGraph(nn.Module):
    """Promptable decoder: K prompts of N points on one image's embedding (or one each).

    ``image_embeddings`` (E, C, h, w) with E = 1 (broadcast over the prompts, as
    SAM's ``MaskDecoder`` does) or E = K; ``point_coords`` (K, N, 2) in the padded
    model-input frame; ``point_labels`` (K, N): 1 positive, 0 negative, 2 / 3 box
    top-left / bottom-right, -1 padding (SAM's prompt encoder layout: points, then
    a box's corners, or one padding point when there is no box); ``mask_input``
    (B, 1, 4h, 4w) low-res logits of an earlier prediction and ``has_mask_input``
    (B, 1), 1 where that mask is used and 0 for SAM's "no mask" embedding, B = 1
    (shared by the K prompts) or K: segment-anything's ``SamOnnxModel`` inputs.
    Outputs every mask token's low-res logits (K, M, 4h, 4w) and IoU predictions
    (K, M): mask 0 is SAM's single-mask output, masks 1..M-1 its multimask
    outputs; the runtime picks, upsamples and crops (SamPredictor's post-processing).
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

    def embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """Dense prompt embeddings (B, C, h, w): the downscaled mask where ``has_mask_input`` is 1, SAM's
        ``no_mask_embed`` where it is 0 (``SamOnnxModel._embed_masks``)."""
        encoder = self.prompt_encoder
        has = has_mask_input.reshape(-1, 1, 1, 1).to(mask_input.dtype)
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has * encoder.mask_downscaling(mask_input) + (1 - has) * no_mask

    def onnx_extra_inputs(self) -> Tuple[Tuple[str, ...], Tuple[torch.Tensor, ...], dict]:
        """The inputs this graph takes beyond the contract's ``PROMPT_INPUTS`` (``onnx_export.module_to_onnx``
        adds them): names, tensors to trace with (one mask shared by the prompts, not used), dynamic axes."""
        size = 4 * self.dense.shape[-1]
        examples = (torch.zeros(1, 1, size, size), torch.zeros(1, 1))
        return (MASK_INPUT, HAS_MASK_INPUT), examples, MASK_INPUT_AXES

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: Optional[torch.Tensor] = None,
        has_mask_input: Optional[torch.Tensor] = None,
    ):
        sparse = self.embed_points(point_coords, point_labels)
        # E = 1 broadcasts over the K prompts (ONNX Expand keeps E = K as it is)
        embeddings = image_embeddings.expand(point_coords.shape[0], -1, -1, -1)
        dense = self.dense
        if mask_input is not None:
            if has_mask_input is None:
                has_mask_input = mask_input.new_ones(mask_input.shape[0], 1)
            # B = 1 goes to K by an explicit Expand, as the embeddings do, so that no elementwise op
            # broadcasts a dynamic axis (kept simple for TensorRT; not yet built with it here)
            dense = self.embed_masks(mask_input, has_mask_input).expand(point_coords.shape[0], -1, -1, -1)
        masks, iou = batched_predict_masks(self.decoder, embeddings, self.image_pe, dense, sparse)
        return masks, iou
