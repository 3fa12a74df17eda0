"""Injection, freezing, parameter groups and the trainable summary."""

import pytest
import torch

from naslora_deploy import (
    AdapterConfig,
    adapted_layers,
    add_adapters,
    architecture_parameters,
    build_sam,
    trainable_summary,
    weight_parameters,
)


@pytest.mark.parametrize("method", ["lora", "nas_lora", "nas_pc_lora"])
def test_parameter_groups_are_disjoint_and_complete(adapted_factory, method):
    sam = adapted_factory(method)
    weights = weight_parameters(sam)
    arch = architecture_parameters(sam)
    weight_ids, arch_ids = {id(p) for p in weights}, {id(p) for p in arch}
    assert not weight_ids & arch_ids
    trainable = {id(p) for p in sam.parameters() if p.requires_grad}
    assert weight_ids | arch_ids == trainable
    expected_alphas = 0 if method == "lora" else 4 * 3
    assert len(arch) == expected_alphas
    assert all(p.shape == (8,) for p in arch)


def test_freezing(adapted_factory):
    sam = adapted_factory("nas_pc_lora")
    for name, param in sam.named_parameters():
        in_adapter = ".adapters." in name
        if name.startswith("mask_decoder.") or in_adapter:
            assert param.requires_grad, name
        else:
            assert not param.requires_grad, name


def test_blocks_and_targets_select_where_adapters_go():
    sam = build_sam("vit_tiny")
    add_adapters(sam, AdapterConfig(method="nas_lora", blocks=[1, 3], targets=("q", "v")))
    layers = dict(adapted_layers(sam))
    assert sorted(layers) == [1, 3]
    assert all(list(layer.adapters) == ["q", "v"] for layer in layers.values())


def test_adding_twice_or_out_of_range_is_refused():
    sam = build_sam("vit_tiny")
    with pytest.raises(ValueError, match="block 9 is out of range"):
        add_adapters(sam, AdapterConfig(blocks=[9]))
    add_adapters(sam, AdapterConfig())
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(sam, AdapterConfig())


def test_initialisation_is_seeded_and_leaves_global_rng_alone():
    states = []
    for _ in range(2):
        sam = build_sam("vit_tiny")
        torch.manual_seed(5)
        add_adapters(sam, AdapterConfig(seed=11))
        states.append({k: v for k, v in sam.state_dict().items() if ".adapters." in k})
        assert torch.equal(torch.rand(3), (torch.manual_seed(5), torch.rand(3))[1])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    first = next(k for k in states[0] if k.endswith("lora_B"))
    assert states[0][first].abs().sum() == 0  # W_d starts at zero
    alpha = next(v for k, v in states[0].items() if k.endswith("alpha"))
    assert 0 < alpha.abs().max() < 1e-2  # N(0, 1) * 1e-3


def test_trainable_summary_counts(adapted_factory):
    sam = adapted_factory("nas_pc_lora")
    summary = trainable_summary(sam)
    total = sum(p.numel() for p in sam.parameters())
    adapter_params = sum(p.numel() for _, layer in adapted_layers(sam) for p in layer.adapters.parameters())
    decoder_params = sum(p.numel() for p in sam.mask_decoder.parameters())
    assert summary.total == total
    assert summary.adapters.trainable == adapter_params
    assert summary.decoder.trainable == decoder_params
    assert summary.other.trainable == 0
    assert summary.trainable == adapter_params + decoder_params
    assert summary.ratio_percent == pytest.approx(100 * summary.trainable / total)
    # rank 3, dim 128: W_e and W_d are 2 * 3 * 128 per projection; PC cell on 2 channels:
    # depthwise 2*(9+25+9+25) + pointwise 4*4 + alpha 8 = 160.
    assert adapter_params == 4 * 3 * (2 * 3 * 128 + 160)
    assert "%" in str(summary) and summary.to_dict()["ratio_percent"] == summary.ratio_percent


def test_method_none_is_the_decoder_only_baseline():
    from naslora_deploy import merge, probe_images

    sam = build_sam("vit_tiny")
    add_adapters(sam, AdapterConfig(method="none"))
    assert not list(adapted_layers(sam)) and not architecture_parameters(sam)
    summary = trainable_summary(sam)
    assert summary.adapters.trainable == 0 and summary.trainable == summary.decoder.trainable > 0
    merged, report = merge(sam, "dense", calibration=probe_images(256, 1))
    assert report.fold.startswith("nothing to fold") and report.embedding_rel_error == 0.0
    build_sam("vit_tiny").load_state_dict(merged.state_dict())
