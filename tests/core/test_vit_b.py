"""The real vit_b architecture (random weights, 256-pixel inputs): injection and dense-merge structure."""

import pytest
import torch
from conftest import vit_b_small

from naslora_deploy import AdapterConfig, adapted_layers, add_adapters, merge, trainable_summary
from naslora_deploy.core.adapters.testing import perturb_adapters

pytestmark = pytest.mark.slow


def test_vit_b_injection_and_dense_merge_is_plain_sam(tmp_path):
    torch.manual_seed(0)
    sam = vit_b_small()
    plain_state = {k: v.shape for k, v in sam.state_dict().items()}
    add_adapters(sam, AdapterConfig(method="nas_pc_lora"))
    layers = dict(adapted_layers(sam))
    assert sorted(layers) == list(range(12))
    assert all(
        layer.base_layer.in_features == 768 and layer.base_layer.out_features == 2304
        for layer in layers.values()
    )
    summary = trainable_summary(sam)
    # 12 blocks x 3 projections x (W_e + W_d at rank 3 on dim 768 + a 160-parameter PC cell)
    assert summary.adapters.trainable == 12 * 3 * (2 * 3 * 768 + 160)
    assert summary.ratio_percent < 5.0

    perturb_adapters(sam, seed=1, b_std=0.02)
    merged, report = merge(sam, "dense", probe_count=1)
    state = merged.state_dict()
    assert {k: v.shape for k, v in state.items()} == plain_state
    assert report.images == 1 and len(report.projections) == 36
    assert 0 < report.embedding_rel_error < 1.0

    path = tmp_path / "sam_vit_b_merged.pth"
    torch.save(state, path)
    reloaded = vit_b_small()  # plain segment-anything modules: the merged state loads strictly
    reloaded.load_state_dict(torch.load(path, weights_only=True), strict=True)
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    qkv = reloaded.image_encoder.blocks[4].attn.qkv
    base_qkv = layers[4].base_layer
    assert type(qkv) is torch.nn.Linear
    assert not torch.equal(qkv.weight, base_qkv.weight)  # the adapters were folded in
