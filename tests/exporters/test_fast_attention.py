"""SDPA attention for SAM's image encoder: same numbers, same parameters, really used."""

import pickle

import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, Block

from naslora_deploy import AdapterConfig, add_adapters, build_sam, merge
from naslora_deploy.core.adapters.testing import perturb_adapters
from naslora_deploy.exporters.fast_attention import (
    SdpaAttention,
    sdpa_disabled,
    sdpa_enabled_count,
    undo_sdpa,
    use_sdpa,
)


def tiny_sam(adapters: bool):
    """vit_tiny with random weights, non-zero rel-pos tables and optionally perturbed NAS-PC-LoRA adapters."""
    torch.manual_seed(0)
    sam = build_sam("vit_tiny")
    with torch.no_grad():  # SAM zero-initialises the rel-pos tables; make them matter
        for block in sam.image_encoder.blocks:
            block.attn.rel_pos_h.normal_(std=0.5)
            block.attn.rel_pos_w.normal_(std=0.5)
    if adapters:
        add_adapters(sam, AdapterConfig(method="nas_pc_lora"))
        perturb_adapters(sam, seed=1, b_std=0.02)
    return sam.eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(5))


def encode_both_ways(encoder, images):
    """(original, sdpa) encoder outputs; the model is switched in between."""
    with torch.no_grad():
        original = encoder(images)
        assert use_sdpa(encoder) == len(encoder.blocks)
        fast = encoder(images)
    return original, fast


@pytest.mark.parametrize("adapters", [False, True], ids=["plain", "nas_pc_lora"])
def test_sdpa_encoder_matches_original(images, adapters):
    encoder = tiny_sam(adapters).image_encoder
    windowed = [b.window_size for b in encoder.blocks]
    assert 0 in windowed and any(w > 0 for w in windowed)  # both block kinds are exercised
    original, fast = encode_both_ways(encoder, images)
    assert original.abs().max() > 0.1
    # SDPA and SAM's attention round differently (by kernel and machine): a float32 bound, not 1e-5
    torch.testing.assert_close(fast, original, rtol=1e-4, atol=1e-4)


def test_sdpa_matches_after_dense_merge(images):
    merged, _ = merge(tiny_sam(True), "dense", probe_count=1)
    original, fast = encode_both_ways(merged.image_encoder, images)
    torch.testing.assert_close(fast, original, rtol=1e-4, atol=1e-4)


def test_patching_keeps_state_dict_and_counts(images):
    sam = tiny_sam(True)
    encoder = sam.image_encoder
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    params_before = [id(p) for p in sam.parameters()]
    assert use_sdpa(encoder) == 4
    assert use_sdpa(encoder) == 0  # already switched: nothing changes
    after = sam.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert [id(p) for p in sam.parameters()] == params_before
    assert all(isinstance(b.attn, Attention) for b in encoder.blocks)
    pickle.loads(pickle.dumps(encoder))  # still a picklable module
    assert undo_sdpa(encoder) == 4 and sdpa_enabled_count(encoder) == 0


def test_sdpa_is_really_called(images, monkeypatch):
    encoder = tiny_sam(True).image_encoder
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(kwargs.get("attn_mask") is not None)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    with torch.no_grad():
        encoder(images[:1])
        assert calls == []  # SAM's own forward does not use SDPA
        use_sdpa(encoder)
        fast = encoder(images[:1])
        assert calls == [True] * 4  # one call per block, with the rel-pos bias
        with sdpa_disabled(encoder) as restored:
            assert restored == 4
            original = encoder(images[:1])
        assert len(calls) == 4 and sdpa_enabled_count(encoder) == 4
    torch.testing.assert_close(fast, original, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_close(images):
    encoder = tiny_sam(False).image_encoder
    with torch.no_grad():
        reference = encoder(images[:1])
        use_sdpa(encoder)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = encoder(images[:1]).float()
    assert (fast - reference).abs().max() < 0.1 * reference.abs().max()


@pytest.mark.slow
def test_one_vit_b_global_block():
    """One global block with vit_b's width (dim 768, 12 heads, relative positions), built from SAM's own
    Block, on a 32 x 32 token grid (vit_b's own 64 x 64 needs 3.5 GB for the reference attention)."""
    from functools import partial

    from naslora_deploy.core.model.variants import VARIANTS

    spec = VARIANTS["vit_b"]
    grid = spec.image_size // 32
    torch.manual_seed(0)
    block = Block(
        dim=spec.embed_dim,
        num_heads=spec.num_heads,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=0,
        input_size=(grid, grid),
    ).eval()
    with torch.no_grad():
        block.attn.rel_pos_h.normal_(std=0.5)
        block.attn.rel_pos_w.normal_(std=0.5)
        x = torch.randn(1, grid, grid, spec.embed_dim, generator=torch.Generator().manual_seed(3))
        original = block(x)
        block.attn.__class__ = SdpaAttention
        fast = block(x)
    torch.testing.assert_close(fast, original, rtol=1e-5, atol=2e-5)
