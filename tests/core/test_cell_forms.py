"""Cell forms: ``scaled`` equalises the candidates; ``darts`` is DARTS' own primitives and fuses exactly."""

import pytest
import torch
import torch.nn.functional as F

from naslora_deploy import AdapterConfig
from naslora_deploy.core.adapters.config import OP_NAMES
from naslora_deploy.core.adapters.layers import AdaptedQKV, LowRankAdapter
from naslora_deploy.core.adapters.ops import OP_SPECS, build_op, op_scales


def _bn(x, bn, training):
    return F.batch_norm(x, bn.running_mean.clone(), bn.running_var.clone(), training=training, eps=bn.eps)


def darts_reference(name, op, x, training):
    """A DARTS search-phase primitive, written out from its definition (operations.py, model_search.py).

    The weights are read from ``op``; the structure (ReLU placement, two stacks, padding,
    dilation, count_include_pad=False, BN affine=False after pools) is this function's.
    """
    spec = OP_SPECS[name]
    channels = x.shape[1]
    if name.startswith("sep_conv"):
        depthwise = [op[1].weight, op[5].weight]
        pointwise = [op[2].weight, op[6].weight]
        norms = [op[3], op[7]]
        for dw, pw, bn in zip(depthwise, pointwise, norms):
            x = F.conv2d(F.relu(x), dw, padding=spec.kernel // 2, groups=channels)
            x = _bn(F.conv2d(x, pw), bn, training)
        return x
    if name.startswith("dil_conv"):
        pad = 2 * (spec.kernel - 1) // 2
        x = F.conv2d(F.relu(x), op[1].weight, padding=pad, dilation=2, groups=channels)
        return _bn(F.conv2d(x, op[2].weight), op[3], training)
    if name == "avg_pool_3x3":
        summed = F.conv2d(x, torch.ones(channels, 1, 3, 3, dtype=x.dtype), padding=1, groups=channels)
        counts = F.conv2d(torch.ones_like(x[:, :1]), torch.ones(1, 1, 3, 3, dtype=x.dtype), padding=1)
        return _bn(summed / counts, op[1], training)
    if name == "max_pool_3x3":
        padded = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
        return _bn(padded.unfold(2, 3, 1).unfold(3, 3, 1).amax(dim=(-1, -2)), op[1], training)
    if name == "skip_connect":
        return x
    return torch.zeros_like(x)


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("training", [True, False])
def test_darts_ops_equal_the_darts_definition(name, training):
    torch.manual_seed(3)
    op = build_op(name, 4, "darts").double()
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    if not training:
        op.train()
        for _ in range(3):
            op(torch.randn(2, 4, 9, 11, dtype=torch.float64) * 2 + 0.5)  # non-trivial running statistics
    expected = darts_reference(name, op, x, training)
    got = op.train(training)(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    if name not in ("none",):
        assert got.abs().max() > 1e-3


def _darts_layer(fields, dim=16, seed=0):
    torch.manual_seed(seed)
    base = torch.nn.Linear(dim, 3 * dim).double()
    layer = AdaptedQKV(base, AdapterConfig(cell_form="darts", **fields)).double()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for adapter in layer.adapters.values():
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=generator, dtype=torch.float64))
            adapter.alpha.copy_(torch.randn(adapter.alpha.shape, generator=generator, dtype=torch.float64))
    layer.train()
    with torch.no_grad():  # train-mode passes move the BN running statistics off their (0, 1) start
        for _ in range(3):
            layer(torch.randn(2, 7, 9, dim, dtype=torch.float64) * 1.5)
    return layer.eval()


DARTS_CASES = [
    dict(method="nas_lora"),
    dict(method="nas_pc_lora", rank=6, channel_ratio=0.5),
    dict(method="nas_pc_lora", targets=("q", "v"), ops=("sep_conv_3x3", "max_pool_3x3", "none")),
]


@pytest.mark.parametrize("fields", DARTS_CASES)
def test_fused_darts_equals_the_trained_cell_float64(fields):
    layer = _darts_layer(fields)
    fused = layer.fused()
    assert fused.cell is not None and fused.cell_kernel.numel() == 0
    x = torch.randn(3, 7, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        expected, got = layer(x), fused(x)
    assert (expected - layer.base_layer(x)).abs().max() > 1e-3  # the adapters really contribute
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    # and the fused form holds no BatchNorm: every BN went into the conv before it
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())


def test_darts_cell_is_the_weighted_sum_of_its_ops():
    layer = _darts_layer(dict(method="nas_lora"))
    adapter = layer.adapters["q"]
    code = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    weights = adapter.op_weights()
    expected = sum(
        w * darts_reference(n, adapter.ops[n], code, False) for w, n in zip(weights, adapter.op_names)
    )
    torch.testing.assert_close(adapter.naive_cell(code), expected, rtol=0, atol=1e-12)


def test_darts_has_no_linear_fold_and_trains_alpha():
    layer = _darts_layer(dict(method="nas_lora"))
    with pytest.raises(ValueError, match="darts"):
        layer.adapters["q"].constant_response_fold()
    layer.train()
    layer(torch.randn(2, 5, 5, 16, dtype=torch.float64)).pow(2).sum().backward()
    assert all(a.alpha.grad.abs().sum() > 0 for a in layer.adapters.values())
    buffers = dict(layer.adapters.named_buffers())
    assert any(name.endswith("running_var") for name in buffers)  # BN statistics are state, saved with alpha


@pytest.mark.parametrize("name", [n for n in OP_NAMES if n != "none"])
def test_scaled_candidates_have_unit_gain_on_white_noise(name):
    torch.manual_seed(0)
    ops = torch.nn.ModuleDict({name: build_op(name, 8)})
    scale = float(op_scales([name], ops)[0])
    x = torch.randn(4, 8, 72, 72, dtype=torch.float64)
    with torch.no_grad():
        out = ops.double()[name](x)[..., 8:-8, 8:-8] * scale
    gain = float(out.pow(2).mean().sqrt())
    assert gain == pytest.approx(1.0, abs=0.06)
    if name != "skip_connect":
        raw = gain / scale
        assert abs(raw - 1.0) > 0.1  # the linear form is far from unit gain, which is why "scaled" exists


def test_scaled_form_keeps_its_scales_in_the_state():
    config = AdapterConfig(method="nas_lora", cell_form="scaled", rank=4)
    adapter = LowRankAdapter(16, 16, config)
    assert "op_scale" in adapter.state_dict()
    weights = adapter.mixing_weights()
    torch.testing.assert_close(weights, adapter.op_weights() * adapter.op_scale)
    plain = LowRankAdapter(16, 16, AdapterConfig(method="nas_lora", rank=4))
    assert "op_scale" not in plain.state_dict()  # the linear form's checkpoints are unchanged


@pytest.mark.parametrize("form", ["scaled", "darts"])
def test_cell_forms_round_trip_through_a_checkpoint_and_fuse_exactly(tmp_path, tiny_images, form):
    from conftest import make_adapter_dir
    from safetensors.torch import load_file

    from naslora_deploy import load_adapter, merge
    from naslora_deploy.core.runs.checkpoint import WEIGHTS_NAME, trainable_state

    directory = make_adapter_dir(tmp_path, method="nas_pc_lora", cell_form=form)
    saved = load_file(str(directory / WEIGHTS_NAME))
    marker = "op_scale" if form == "scaled" else "running_var"
    assert any(key.endswith(marker) for key in saved)
    model = load_adapter(directory)
    assert model.sam.adapter_config.cell_form == form
    state = trainable_state(model)
    assert state.keys() == saved.keys()
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    fused, report = merge(model, "fused")
    with torch.no_grad():
        expected = model.sam.image_encoder(tiny_images[:1])
        got = fused.sam.image_encoder(tiny_images[:1])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert report.embedding_rel_error < 1e-5
