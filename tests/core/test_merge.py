"""Dense and fused merges: one shared check over a table of cases, plus the hard cases."""

import copy

import pytest
import torch

from naslora_deploy import MergeError, adapted_layers, adapters_disabled, build_sam, merge, probe_images
from naslora_deploy.core.layers import AdaptedQKV, FusedQKV
from naslora_deploy.core.report import MergeReport

CONVS = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]

# (id, method, favoured candidates or None for random alpha, mode, calibrated, exact expected)
CASES = [
    ("lora-dense", "lora", None, "dense", False, True),
    ("lora-fused", "lora", None, "fused", False, True),
    ("naslora-skip-dense", "nas_lora", ["skip_connect"], "dense", False, True),
    ("pc-none-dense", "nas_pc_lora", ["none"], "dense", False, True),
    ("pc-skip-dense-lsq", "nas_pc_lora", ["skip_connect"], "dense", True, True),
    ("naslora-fused", "nas_lora", None, "fused", False, True),
    ("pc-fused-calibrated", "nas_pc_lora", None, "fused", True, True),
    ("naslora-convs-dense", "nas_lora", CONVS, "dense", False, False),
    ("pc-convs-dense-lsq", "nas_pc_lora", CONVS, "dense", True, False),
]


def _encode(module, images):
    with torch.no_grad():
        return torch.cat([module.image_encoder(image) for image in images.split(1)])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_merge_case(adapted_factory, case):
    _, method, favoured, mode, calibrated, exact = case
    sam = adapted_factory(method, favoured=favoured)
    before = copy.deepcopy(sam.state_dict())
    calibration = probe_images(256, 3, seed=21) if calibrated else None
    merged, report = merge(sam, mode, calibration=calibration)

    # the input model is untouched
    after = sam.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    # merged vs unmerged vs base, measured independently on the report's images
    images = calibration if calibrated else probe_images(256, 2, seed=0)
    unmerged = _encode(sam, images)
    with adapters_disabled(sam):
        base = _encode(sam, images)
    merged_out = _encode(merged, images)
    assert _rel(unmerged, base) > 1e-3, "adapters must really change the model"
    assert _rel(merged_out, base) > 1e-3
    assert report.images == images.shape[0]
    assert report.embedding_rel_error == pytest.approx(_rel(merged_out, unmerged), rel=1e-3, abs=1e-7)
    assert report.embedding_rel_error_of_adaptation == pytest.approx(
        float((merged_out - unmerged).norm() / (unmerged - base).norm()), rel=1e-3, abs=1e-7
    )
    assert len(report.projections) == 4 * 3
    if exact:
        assert report.embedding_rel_error <= 1e-5
        assert report.max_branch_rel_error <= 1e-5
    else:
        assert report.max_branch_rel_error > 0.05
        assert report.embedding_rel_error_of_adaptation > 0.01

    if mode == "dense":
        plain = build_sam("vit_tiny").state_dict()
        state = merged.state_dict()
        assert list(state) == list(plain)
        assert all(state[k].shape == plain[k].shape for k in plain)
        assert not any(isinstance(m, (AdaptedQKV, FusedQKV)) for m in merged.modules())
    else:
        assert sum(isinstance(m, FusedQKV) for m in merged.modules()) == 4
    assert MergeReport.from_dict(report.to_dict()) == report


def test_dense_conv_error_matches_an_independent_computation(adapted_factory):
    """Recompute one projection's branch error with the naive ops in float64."""
    sam = adapted_factory("nas_lora", favoured=CONVS)
    merged, report = merge(sam, "dense")
    images = probe_images(256, 2, seed=0)
    block, target = 2, "v"
    captured = []
    layer = sam.image_encoder.blocks[block].attn.qkv
    handle = layer.register_forward_hook(lambda m, inputs, out: captured.append(inputs[0].detach()))
    _encode(sam, images)
    handle.remove()
    x = torch.cat(captured).double()

    adapter = copy.deepcopy(layer.adapters[target]).double()
    code = torch.nn.functional.linear(x, adapter.lora_A).permute(0, 3, 1, 2)
    with torch.no_grad():
        reference = torch.nn.functional.linear(adapter.naive_cell(code).permute(0, 2, 3, 1), adapter.lora_B)
    dim = 128
    rows = slice(2 * dim, 3 * dim)
    w_merged = merged.image_encoder.blocks[block].attn.qkv.weight[rows].double()
    w_base = layer.base_layer.weight[rows].double()
    candidate = torch.nn.functional.linear(x, (w_merged - w_base).detach())
    independent = float((candidate - reference).norm() / reference.norm())

    entry = next(p for p in report.projections if (p.block, p.target) == (block, target))
    assert independent > 0.05
    assert entry.branch_rel_error == pytest.approx(independent, rel=1e-3)
    assert entry.spatial_weight == pytest.approx(1.0)


def test_least_squares_beats_constant_response_in_sample(adapted_factory):
    sam = adapted_factory("nas_pc_lora", seed=3)
    calibration = probe_images(256, 3, seed=8)
    _, constant = merge(sam, "dense", calibration=None, probe_count=2)
    _, fitted = merge(sam, "dense", calibration=calibration)
    # measure the constant-response fold on the calibration images too
    from naslora_deploy.core.fidelity import measure_fidelity
    from naslora_deploy.core.merge import constant_response_folds, dense_copy

    layers = dict(adapted_layers(sam))
    with torch.no_grad():
        plain, candidates = dense_copy(sam, layers, constant_response_folds(layers))
        on_calibration = measure_fidelity(sam, plain, layers, candidates, [calibration])
    for entry in fitted.projections:
        constant_error = on_calibration.branch_errors[(entry.block, entry.target)][0]
        assert entry.branch_rel_error <= constant_error + 1e-9
    assert constant.fold.startswith("constant") and fitted.fold.startswith("least squares")


def test_calibration_forms_agree(adapted_factory):
    sam = adapted_factory("nas_pc_lora")
    images = probe_images(256, 4, seed=2)
    _, from_tensor = merge(sam, "dense", calibration=images)
    _, from_callable = merge(sam, "dense", calibration=lambda: iter(images.split(2)))
    _, from_list = merge(sam, "dense", calibration=list(images.split(1)))
    for other in (from_callable, from_list):
        assert other.images == 4
        assert other.max_branch_rel_error == pytest.approx(from_tensor.max_branch_rel_error, rel=1e-6)


def test_non_finite_merge_raises_and_leaves_the_model_unchanged(adapted_factory):
    sam = adapted_factory("nas_lora")
    layer = sam.image_encoder.blocks[1].attn.qkv
    with torch.no_grad():
        layer.adapters["k"].lora_B[0, 0] = float("inf")
    before = copy.deepcopy(sam.state_dict())
    for mode in ("dense", "fused"):
        with pytest.raises(MergeError, match="block 1 qkv gives non-finite"):
            merge(sam, mode)
    after = sam.state_dict()
    for key in before:
        torch.testing.assert_close(after[key], before[key], equal_nan=True, rtol=0, atol=0)
    assert isinstance(sam.image_encoder.blocks[1].attn.qkv, AdaptedQKV)


def test_bad_inputs_to_merge(adapted_factory):
    with pytest.raises(MergeError, match="no adapters"):
        merge(build_sam("vit_tiny"), "dense")
    sam = adapted_factory("nas_lora")
    with pytest.raises(ValueError, match="unknown merge mode 'sparse'"):
        merge(sam, "sparse")
    with pytest.raises(ValueError, match=r"calibration batches must be \(N, 3, 256, 256\)"):
        merge(sam, "dense", calibration=torch.zeros(2, 3, 64, 64))


def test_merged_checkpoint_loads_into_segment_anything_module(adapted_factory, tmp_path):
    sam = adapted_factory("nas_pc_lora")
    merged, report = merge(sam, "dense")
    path = tmp_path / "merged.pth"
    torch.save(merged.state_dict(), path)
    reloaded = build_sam("vit_tiny", checkpoint=path)
    images = probe_images(256, 1, seed=0)
    torch.testing.assert_close(_encode(reloaded, images), _encode(merged, images), rtol=0, atol=0)
    assert report.mode == "dense"


def test_constant_response_fold_is_the_cells_response_to_a_constant_code(adapted_factory):
    sam = adapted_factory("nas_pc_lora", seed=5)
    adapter = copy.deepcopy(sam.image_encoder.blocks[0].attn.qkv.adapters["q"]).double()
    level = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)
    code = level.view(1, 3, 1, 1).expand(1, 3, 21, 21).contiguous()
    with torch.no_grad():
        centre = adapter.naive_cell(code)[0, :, 10, 10]
        fold = adapter.constant_response_fold()
    torch.testing.assert_close(fold @ level, centre, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_classes", [1, 3], ids=["binary", "multiclass"])
def test_merge_takes_what_load_adapter_returns_and_gives_the_same_kind_back(tmp_path, num_classes):
    from conftest import make_adapter_dir

    from naslora_deploy import load_adapter

    model = load_adapter(make_adapter_dir(tmp_path, num_classes=num_classes))
    images = probe_images(256, 1, seed=3)
    with torch.no_grad():
        expected = model(images)
    for mode in ("fused", "dense"):
        merged, report = merge(model, mode)
        assert type(merged) is type(model) and report.mode == mode
        assert (
            not list(adapted_layers(merged.sam)) and len(list(adapted_layers(model.sam))) == 4
        )  # input untouched
        if num_classes > 1:
            assert merged.class_head is not model.class_head
            for (name, a), b in zip(
                model.class_head.state_dict().items(), merged.class_head.state_dict().values()
            ):
                assert torch.equal(a, b), name
        with torch.no_grad():
            got = merged(images)
        assert set(got) == set(expected)
        if mode == "fused":
            for key in expected:
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-4)
        else:
            build_sam("vit_tiny").load_state_dict(
                merged.sam.state_dict()
            )  # strict: plain SAM keys and shapes
