"""The kernel-space cell equals the naive sum of the separate ops."""

import copy

import pytest
import torch

from naslora_deploy import AdapterConfig, adapted_layers, adapters_disabled, set_cell_forward
from naslora_deploy.core.adapters.layers import AdaptedQKV

CELL_CASES = [
    dict(method="nas_lora"),
    dict(method="nas_pc_lora"),
    dict(method="nas_pc_lora", rank=6, channel_ratio=0.5, targets=("q", "v")),
    dict(method="nas_lora", ops=("avg_pool_3x3", "max_pool_3x3", "skip_connect", "none")),  # w/o convolution
    dict(
        method="nas_lora",
        ops=("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "skip_connect", "none"),
    ),
    dict(
        method="nas_pc_lora",
        ops=("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "avg_pool_3x3", "max_pool_3x3"),
    ),
    dict(method="nas_lora", ops=("skip_connect",)),
    dict(method="nas_lora", cell_form="scaled"),
    dict(method="nas_pc_lora", cell_form="scaled", rank=6, channel_ratio=0.5),
]


def _layer(fields, dim=32, seed=0):
    torch.manual_seed(seed)
    base = torch.nn.Linear(dim, 3 * dim).double()
    layer = AdaptedQKV(base, AdapterConfig(**fields)).double()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for adapter in layer.adapters.values():
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=generator, dtype=torch.float64))
            if adapter.has_cell:
                adapter.alpha.copy_(
                    torch.randn(adapter.alpha.shape, generator=generator, dtype=torch.float64)
                )
    return layer


@pytest.mark.parametrize("fields", CELL_CASES)
def test_kernel_space_equals_naive_sum_float64(fields):
    layer = _layer(fields)
    x = torch.randn(2, 9, 11, 32, dtype=torch.float64)
    layer.cell_forward = "naive"
    naive = layer(x)
    layer.cell_forward = "kernel"
    mixed = layer(x)
    assert (naive - layer.base_layer(x)).abs().max() > 1e-3  # the adapters really contribute
    torch.testing.assert_close(mixed, naive, rtol=0, atol=1e-10)


@pytest.mark.parametrize("fields", CELL_CASES[:3])
def test_kernel_space_gradients_equal_naive(fields):
    x = torch.randn(2, 7, 7, 32, dtype=torch.float64)
    grads = {}
    for mode in ("naive", "kernel"):
        layer = _layer(fields)
        layer.cell_forward = mode
        layer(x).pow(2).sum().backward()
        grads[mode] = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    assert grads["naive"].keys() == grads["kernel"].keys()
    assert any("alpha" in n for n in grads["kernel"]) and any("depthwise" in n for n in grads["kernel"])
    for name, grad in grads["naive"].items():
        torch.testing.assert_close(grads["kernel"][name], grad, rtol=0, atol=1e-9, msg=name)


def test_only_the_adapted_slices_change():
    layer = _layer(dict(method="nas_pc_lora", targets=("k",)))
    x = torch.randn(1, 5, 5, 32, dtype=torch.float64)
    delta = (layer(x) - layer.base_layer(x)).unflatten(-1, (3, 32))
    assert delta[..., 0, :].abs().max() == 0 and delta[..., 2, :].abs().max() == 0
    assert delta[..., 1, :].abs().max() > 1e-3


@pytest.mark.parametrize("targets", [("q", "k", "v"), ("q", "v"), ("k",)])
def test_interleaved_columns_get_their_own_adapter_rows(targets):
    """TinyViT interleaves q, k and v per head: each adapter's delta lands on its own columns
    (the definition: ``delta`` added at ``target_columns``), values and gradients alike."""
    torch.manual_seed(0)
    base = torch.nn.Linear(32, 96).double()
    columns = torch.randperm(96).view(3, 32).unbind(0)  # any layout, not SAM ViT's thirds
    x = torch.randn(2, 5, 5, 32, dtype=torch.float64)
    grads = {}
    for way in ("forward", "definition"):
        torch.manual_seed(2)  # the same adapters both ways
        layer = AdaptedQKV(copy.deepcopy(base), AdapterConfig(method="nas_pc_lora", targets=targets), columns)
        layer = layer.double()
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for adapter in layer.adapters.values():
                adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=generator, dtype=x.dtype))
        if way == "forward":
            out = layer(x)
        else:
            out = layer.base_layer(x).index_add(-1, layer.target_columns, layer.delta(x))
        out.pow(2).sum().backward()
        grads[way] = (
            out.detach(),
            {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None},
        )
    assert (grads["forward"][0] - base(x)).abs().max() > 1e-3  # the adapters contribute
    torch.testing.assert_close(grads["forward"][0], grads["definition"][0], rtol=0, atol=1e-12)
    assert grads["forward"][1].keys() == grads["definition"][1].keys()
    for name, grad in grads["definition"][1].items():
        torch.testing.assert_close(grads["forward"][1][name], grad, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("method", ["lora", "nas_lora", "nas_pc_lora"])
def test_fresh_adapters_change_nothing(adapted_factory, tiny_images, method):
    sam = adapted_factory(method, perturb=False)
    with torch.no_grad():
        adapted = sam.image_encoder(tiny_images)
        with adapters_disabled(sam):
            base = sam.image_encoder(tiny_images)
    assert torch.equal(adapted, base)


def test_whole_encoder_kernel_equals_naive_float64(adapted_factory, tiny_images):
    sam = adapted_factory("nas_pc_lora").double()
    images = tiny_images.double()
    with torch.no_grad():
        set_cell_forward(sam, "naive")
        naive = sam.image_encoder(images)
        set_cell_forward(sam, "kernel")
        mixed = sam.image_encoder(images)
        with adapters_disabled(sam):
            base = sam.image_encoder(images)
    assert (naive - base).abs().max() > 1e-3
    torch.testing.assert_close(mixed, naive, rtol=0, atol=1e-10)
    assert len(list(adapted_layers(sam))) == 4


def test_a_loaded_pc_mask_is_honoured_by_the_kernel_path():
    layer = _layer(dict(method="nas_pc_lora"))
    state = layer.state_dict()
    for target in "qkv":
        state[f"adapters.{target}.pc_mask"] = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    layer.load_state_dict(state)
    x = torch.randn(1, 7, 9, 32, dtype=torch.float64)
    layer.cell_forward = "naive"
    naive = layer(x)
    layer.cell_forward = "kernel"
    torch.testing.assert_close(layer(x), naive, rtol=0, atol=1e-10)
    assert layer.adapters["q"].cell_kernel()[0, 0, 4, 4] == 1.0  # channel 0 now passes straight through


FUSED_CASES = [
    dict(method="nas_pc_lora"),  # q, k, v: the branch is added inside one GEMM
    dict(method="nas_pc_lora", targets=("q", "v")),  # a subset: added slice by slice
    dict(method="nas_lora", ops=("sep_conv_3x3", "skip_connect")),  # no max pooling
    dict(method="lora", targets=("k",)),
    dict(method="nas_pc_lora", cell_form="scaled"),
]


@pytest.mark.parametrize("fields", FUSED_CASES)
def test_fused_form_equals_the_adapted_layer_float64(fields):
    layer = _layer(fields)
    fused = layer.fused()
    assert fused.has_max_pool == ("max_pool_3x3" in layer.adapters[fields.get("targets", "q")[0]].op_names)
    x = torch.randn(3, 7, 9, 32, dtype=torch.float64)
    with torch.no_grad():
        expected, got = layer(x), fused(x)
    assert (expected - layer.base_layer(x)).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
