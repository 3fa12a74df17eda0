"""Prompt-free heads: shapes, and batched decoding equal to one image at a time."""

import torch

from naslora_deploy import build_sam
from naslora_deploy.core.model.heads import SegmentationModel, semantic_probabilities


def test_binary_head_uses_sams_decoder_per_image(tiny_images):
    torch.manual_seed(0)
    model = SegmentationModel(build_sam("vit_tiny")).eval()
    with torch.no_grad():
        both = model(tiny_images)["mask_logits"]
        one = model(tiny_images[1:])["mask_logits"]
    assert both.shape == (2, 1, 64, 64)
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in model.sam.prompt_encoder.parameters())


def test_multiclass_head_shapes_and_batching(tiny_images):
    torch.manual_seed(0)
    model = SegmentationModel(build_sam("vit_tiny"), num_classes=3, num_queries=5).eval()
    with torch.no_grad():
        out = model(tiny_images)
        single = model(tiny_images[:1])
    assert out["mask_logits"].shape == (2, 5, 64, 64)
    assert out["class_logits"].shape == (2, 5, 4)
    torch.testing.assert_close(out["mask_logits"][:1], single["mask_logits"], rtol=1e-5, atol=1e-5)
    semantic = semantic_probabilities(out["mask_logits"], out["class_logits"])
    assert semantic.shape == (2, 3, 64, 64) and (semantic >= 0).all()
