"""Dense and fused merges: one shared check over a table of cases, plus the hard cases."""

import copy

import pytest
import torch

from naslora_deploy import MergeError, adapted_layers, adapters_disabled, build_sam, merge, probe_images
from naslora_deploy.core.adapters.layers import AdaptedQKV, FusedQKV
from naslora_deploy.core.merging.report import MergeReport

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
    calibration = probe_images(256, 4, seed=21) if calibrated else None
    merged, report = merge(sam, mode, calibration=calibration)
    fitted = calibrated and mode == "dense" and method != "lora"

    # the input model is untouched
    after = sam.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    # merged vs unmerged vs base, measured independently on the report's images: where a fold was
    # fitted on the calibration images, only the held-out ones (odd positions)
    images = (calibration[1::2] if fitted else calibration) if calibrated else probe_images(256, 2, seed=0)
    assert ("odd positions" in report.measured_on) == fitted
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


def test_joint_least_squares_beats_constant_response_in_sample(adapted_factory):
    """The joint fold minimises each branch's error on its fitting tokens: it cannot lose in sample."""
    from naslora_deploy.core.merging.fidelity import measure_fidelity
    from naslora_deploy.core.merging.merge import (
        constant_response_folds,
        dense_candidates,
        dense_copy,
        least_squares_folds,
    )

    sam = adapted_factory("nas_pc_lora", seed=3)
    calibration = probe_images(256, 3, seed=8)
    layers = dict(adapted_layers(sam))
    with torch.no_grad():
        errors = {}
        for name, folds in (
            ("constant", constant_response_folds(layers)),
            ("joint", least_squares_folds(sam, [calibration])),
        ):
            plain = dense_copy(sam, layers, folds)
            errors[name] = measure_fidelity(
                sam, plain, layers, dense_candidates(plain, layers), [calibration]
            )
    for key, (joint_error, _) in errors["joint"].branch_errors.items():
        assert joint_error <= errors["constant"].branch_errors[key][0] + 1e-9
    assert errors["joint"].embedding_rel_error < errors["constant"].embedding_rel_error
    _, constant = merge(sam, "dense", calibration=None, probe_count=2)
    _, fitted = merge(sam, "dense", calibration=calibration, fit="joint")
    assert constant.fold.startswith("constant") and fitted.fold.startswith("least squares, joint")


def _in_sample_errors(sam, calibration):
    """Embedding error of the joint and the sequential fold, measured on the images they were fitted on."""
    from naslora_deploy.core.merging.fidelity import measure_fidelity
    from naslora_deploy.core.merging.folds import sequential_folds
    from naslora_deploy.core.merging.merge import dense_candidates, dense_copy, least_squares_folds

    layers = dict(adapted_layers(sam))
    errors = {}
    with torch.no_grad():
        arms = {
            "joint": (least_squares_folds(sam, calibration.split(2)), None),
            "sequential": sequential_folds(sam, lambda: calibration.split(2)),
        }
        for name, (folds, intercepts) in arms.items():
            plain = dense_copy(sam, layers, folds, intercepts)
            fidelity = measure_fidelity(sam, plain, layers, dense_candidates(plain, layers), [calibration])
            errors[name] = fidelity.embedding_rel_error
    return errors, arms["sequential"][1]


@pytest.mark.parametrize(
    "method, favoured, seed",
    [("nas_pc_lora", None, 0), ("nas_pc_lora", None, 4), ("nas_lora", CONVS, 1)],
    ids=["pc-random-0", "pc-random-4", "naslora-convs-1"],
)
def test_sequential_fold_with_intercept_is_no_worse_in_sample_than_the_joint_fold(
    adapted_factory, method, favoured, seed
):
    sam = adapted_factory(method, favoured=favoured, seed=seed)  # non-zero W_d (perturbed)
    calibration = probe_images(256, 4, seed=30 + seed)  # spatially correlated
    errors, intercepts = _in_sample_errors(sam, calibration)
    assert errors["joint"] > 1e-3, "the case must be one a dense fold cannot do exactly"
    assert errors["sequential"] <= errors["joint"]
    assert any(float(c.abs().max()) > 1e-6 for block in intercepts.values() for c in block.values())


def test_sequential_intercept_goes_into_the_qkv_bias(adapted_factory):
    from naslora_deploy.core.merging.folds import sequential_folds

    sam = adapted_factory("nas_pc_lora", seed=2)
    calibration = probe_images(256, 2, seed=5)
    folds, intercepts = sequential_folds(sam, lambda: [calibration])
    merged, report = merge(
        sam, "dense", calibration=torch.cat([calibration, probe_images(256, 2, seed=6)])[[0, 2, 1, 3]]
    )
    # the merge fitted on positions 0 and 2: the same two images
    layer = sam.image_encoder.blocks[1].attn.qkv
    expected = layer.base_layer.bias.double().clone()
    for (target, adapter), rows in zip(layer.adapters.items(), layer.target_columns.split(128)):
        expected[rows] += adapter.lora_B.double() @ intercepts[1][target]
    torch.testing.assert_close(
        merged.image_encoder.blocks[1].attn.qkv.bias.double(), expected, rtol=0, atol=1e-6
    )
    assert not torch.allclose(expected, layer.base_layer.bias.double())
    assert "intercept in the qkv bias" in report.fold and "sequential" in report.fold


def test_a_qkv_without_bias_gets_no_intercept_and_the_report_says_so(adapted_factory):
    sam = adapted_factory("nas_pc_lora", seed=1)
    for _, layer in adapted_layers(sam):
        base = layer.base_layer
        plain = torch.nn.Linear(base.in_features, base.out_features, bias=False)
        plain.weight.data.copy_(base.weight.data)
        layer.base_layer = plain
    merged, report = merge(sam, "dense", calibration=probe_images(256, 2, seed=3))
    assert any("no bias" in note for note in report.notes)
    assert merged.image_encoder.blocks[0].attn.qkv.bias is None
    assert "intercept" not in report.fold


def test_fidelity_is_measured_on_held_out_calibration_images(adapted_factory):
    sam = adapted_factory("nas_pc_lora", seed=6)
    calibration = probe_images(256, 5, seed=12)
    merged, report = merge(sam, "dense", calibration=calibration)
    assert report.images == 2 and "odd positions" in report.measured_on
    assert report.fitted_on.startswith("3 calibration image(s) at even positions")
    held_out = calibration[[1, 3]]
    expected = _rel(_encode(merged, held_out), _encode(sam, held_out))
    assert report.embedding_rel_error == pytest.approx(expected, rel=1e-3)
    # the split counts images across batches, whatever the batching
    _, rebatched = merge(sam, "dense", calibration=[calibration[:2], calibration[2:3], calibration[3:]])
    assert rebatched.embedding_rel_error == pytest.approx(report.embedding_rel_error, rel=1e-6)
    # one image cannot be split: measured in sample, and the report says so
    _, single = merge(sam, "dense", calibration=calibration[:1])
    assert single.images == 1 and "in sample" in single.measured_on
    # nothing fitted (fused): every calibration image measures
    _, fused = merge(sam, "fused", calibration=calibration)
    assert fused.images == 5 and fused.fitted_on == "nothing"


@pytest.mark.parametrize("calibrated", [False, True], ids=["probes", "calibration"])
def test_float64_models_merge(adapted_factory, calibrated):
    sam = adapted_factory("nas_pc_lora", seed=2).double()
    calibration = probe_images(256, 2, seed=4) if calibrated else None  # float32 images: cast to the model
    for mode in ("dense", "fused"):
        merged, report = merge(sam, mode, calibration=calibration)
        assert next(merged.parameters()).dtype == torch.float64
        # upper bounds only: an exact (fused) merge may measure 0.0, depending on the machine's rounding
        assert report.embedding_rel_error < (1e-10 if mode == "fused" else 0.1)


def test_a_darts_cell_without_calibration_is_fitted_on_probe_images(adapted_factory):
    sam = adapted_factory("nas_pc_lora", seed=3, cell_form="darts")
    merged, report = merge(sam, "dense", probe_count=2)
    assert (
        report.fold.startswith("least squares") and "probe images" in report.fold and "darts" in report.fold
    )
    assert "seed=1" in report.fitted_on and "seed=0" in report.measured_on  # fitted and measured apart
    assert any("darts cell is non-linear" in note for note in report.notes)
    assert not any(isinstance(m, (AdaptedQKV, FusedQKV)) for m in merged.modules())


def test_calibration_forms_agree(adapted_factory):
    sam = adapted_factory("nas_pc_lora")
    images = probe_images(256, 4, seed=2)
    _, from_tensor = merge(sam, "dense", calibration=images)
    _, from_callable = merge(sam, "dense", calibration=lambda: iter(images.split(2)))
    _, from_list = merge(sam, "dense", calibration=list(images.split(1)))
    for other in (from_callable, from_list):
        assert other.images == 2
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
    with pytest.raises(ValueError, match="unknown fit 'greedy'"):
        merge(sam, "dense", fit="greedy")
    with pytest.raises(ValueError, match="give them with --calibration"):
        merge(sam, "dense", recover=5)
    with pytest.raises(ValueError, match="use it with the dense merge"):
        merge(sam, "fused", calibration=probe_images(256, 2), recover=5)
    with pytest.raises(ValueError, match="recovery steps must be an integer >= 0"):
        merge(sam, "dense", calibration=probe_images(256, 2), recover=-1)


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
        assert set(report.mask_iou) == {"none"}
        if mode == "fused":
            assert report.mask_iou["none"] == pytest.approx(1.0, abs=1e-3)  # exact: the same masks
        assert MergeReport.from_dict(report.to_dict()) == report


def test_mask_iou_is_the_mean_per_image_iou_of_the_thresholded_predictions(tmp_path):
    from conftest import make_adapter_dir

    from naslora_deploy import load_adapter
    from naslora_deploy.core.model.heads import upsample_logits

    model = load_adapter(make_adapter_dir(tmp_path))
    calibration = probe_images(256, 4, seed=9)
    merged, report = merge(model, "dense", calibration=calibration)
    ious = []
    with torch.no_grad():
        for image in calibration[[1, 3]].split(1):  # the held-out images
            a = upsample_logits(model(image)["mask_logits"], 256)[0, 0] > 0
            b = upsample_logits(merged(image)["mask_logits"], 256)[0, 0] > 0
            union = int((a | b).sum())
            ious.append(1.0 if union == 0 else int((a & b).sum()) / union)
    assert report.mask_iou["none"] == pytest.approx(sum(ious) / 2, abs=1e-6)
    assert "IoU merged vs unmerged" in report.summary()
    # a box-trained model is measured under a box prompt
    model.spec.prompt = "box"
    _, boxed = merge(model, "dense", calibration=calibration)
    assert set(boxed.mask_iou) == {"box"} and 0.0 <= boxed.mask_iou["box"] <= 1.0
    assert any("box prompt" in note for note in boxed.notes)


def test_mask_iou_of_label_maps_and_empty_masks():
    from naslora_deploy.core.merging.fidelity import mask_iou

    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert mask_iou(empty, empty) == 1.0
    a = torch.tensor([[0, 1], [2, 2]])
    b = torch.tensor([[0, 1], [1, 2]])
    # labels 0: 1/1, 1: 1/2, 2: 1/2
    assert mask_iou(a, b) == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_merge_measure_false_gives_the_same_weights_without_a_report(adapted_factory, tiny_images):
    sam = adapted_factory("nas_pc_lora")
    measured, report = merge(sam, "dense", calibration=tiny_images)
    rebuilt, none = merge(sam, "dense", calibration=tiny_images, measure=False)
    assert report is not None and none is None
    for (name, a), b in zip(measured.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), name


def test_merge_logs_each_block_and_image_and_writes_json(binary_adapter, binary_data, tmp_path, capsys):
    """In a log (stderr is no terminal under pytest) one line per phase, fitted block and measured image;
    ``--json`` holds the report and the files written; ``--no-progress`` is silent."""
    import json
    import re

    from naslora_deploy.cli import main

    out, result = tmp_path / "merged.pth", tmp_path / "merge.json"
    options = ["--mode", "dense", "--calibration", str(binary_data), "--calibration-images", "4"]
    assert main(["merge", str(binary_adapter), *options, "--out", str(out), "--json", str(result)]) == 0
    log = capsys.readouterr().err
    blocks = [int(n) for n in re.findall(r"merge: fit block \d+/(\d+) \(attention block \d+\)", log)]
    assert blocks and len(blocks) == blocks[0]  # one line per adapted block
    assert "merge: measure image 1/2" in log and "merge: measure image 2/2" in log
    for phase in ("merge: load run", "merge: read calibration images", "merge: dense fold", "merge: write"):
        assert phase in log
    data = json.loads(result.read_text())
    assert data["report"]["mode"] == "dense" and data["report"]["images"] == 2
    assert data["written"][0] == str(out) and out.is_file()
    assert (
        main(["merge", str(binary_adapter), *options, "--out", str(out), "--overwrite", "--no-progress"]) == 0
    )
    assert "merge:" not in capsys.readouterr().err


def test_merge_help_names_only_its_own_options():
    from click.testing import CliRunner

    from naslora_deploy.cli import cli

    merge_help = " ".join(CliRunner().invoke(cli, ["merge", "--help"]).output.split())
    assert "--precision" not in merge_help and "--json" in merge_help
    export_help = " ".join(CliRunner().invoke(cli, ["export", "--help"]).output.split())
    assert "--precision int8" in export_help and "litemedsam" in export_help and "--json" in export_help
