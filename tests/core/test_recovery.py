"""Merge-aware recovery: the dense fold as LoRA, tuned by distillation, merged exactly into plain SAM."""

import pytest
import torch

from naslora_deploy import adapted_layers, build_sam, merge, probe_images
from naslora_deploy.core.adapters.layers import AdaptedQKV, FusedQKV
from naslora_deploy.core.merging.recovery import Recovery, lora_form

CONVS = ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


def _encode(module, images):
    with torch.no_grad():
        return torch.cat([module.image_encoder(image) for image in images.split(1)])


def test_the_lora_form_of_a_fold_is_the_dense_fold(adapted_factory):
    from naslora_deploy.core.merging.folds import dense_copy, sequential_folds

    sam = adapted_factory("nas_pc_lora", seed=2)
    images = probe_images(256, 2, seed=3)
    layers = dict(adapted_layers(sam))
    with torch.no_grad():
        folds, intercepts = sequential_folds(sam, lambda: [images])
        dense = dense_copy(sam, layers, folds, intercepts)
        student = lora_form(sam, layers, folds, intercepts)
    lora_layers = dict(adapted_layers(student))
    assert sorted(lora_layers) == sorted(layers)
    assert all(layer.config.method == "lora" for layer in lora_layers.values())
    # the same weights as factors and as one matrix: float32 rounding apart, whatever the machine
    torch.testing.assert_close(_encode(student, images), _encode(dense, images), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def recovered_case():
    """A conv-heavy cell (what a dense fold approximates worst), fitted and recovered on probe images."""
    from conftest import make_adapted

    sam = make_adapted("nas_lora", favoured=CONVS, seed=1)
    calibration = probe_images(256, 6, seed=40)
    plain, plain_report = merge(sam, "dense", calibration=calibration)
    recovered, report = merge(sam, "dense", calibration=calibration, recover=Recovery(steps=30))
    return sam, calibration, plain, plain_report, recovered, report


def test_recovery_reduces_the_held_out_embedding_error(recovered_case):
    sam, calibration, plain, plain_report, recovered, report = recovered_case
    held_out = calibration[1::2]
    unmerged = _encode(sam, held_out)
    plain_error = float((_encode(plain, held_out) - unmerged).norm() / unmerged.norm())
    recovered_error = float((_encode(recovered, held_out) - unmerged).norm() / unmerged.norm())
    assert plain_error > 1e-3  # something to recover
    assert recovered_error < 0.9 * plain_error
    assert report.embedding_rel_error == pytest.approx(recovered_error, rel=1e-3)
    assert plain_report.embedding_rel_error == pytest.approx(plain_error, rel=1e-3)
    r = report.recovery
    assert (r.steps, r.images, r.decoder) == (30, 3, False) and r.loss_after < r.loss_before
    assert "odd positions" in report.measured_on and "recovery" in report.fold
    assert "recovery: 30 steps" in report.summary()


def test_recovery_gives_plain_sam(recovered_case):
    sam, _, _, _, recovered, _ = recovered_case
    assert not any(isinstance(m, (AdaptedQKV, FusedQKV)) for m in recovered.modules())
    assert not hasattr(recovered, "adapter_config")
    plain = build_sam("vit_tiny")
    plain.load_state_dict(recovered.state_dict())  # strict: the keys and shapes of plain SAM
    assert len(list(adapted_layers(sam))) == 4  # the input model is untouched


def test_recovery_is_seeded(adapted_factory):
    sam = adapted_factory("nas_pc_lora", seed=5)
    calibration = probe_images(256, 4, seed=41)
    first, a = merge(sam, "dense", calibration=calibration, recover=3)
    second, b = merge(sam, "dense", calibration=calibration, recover=3)
    assert a.recovery.loss_after == b.recovery.loss_after
    torch.testing.assert_close(first.state_dict(), second.state_dict(), rtol=0, atol=0)


def test_recovery_with_the_decoder_on_a_segmentation_model(tmp_path):
    from conftest import make_adapter_dir

    from naslora_deploy import load_adapter

    model = load_adapter(make_adapter_dir(tmp_path))
    calibration = probe_images(256, 4, seed=42)
    merged, report = merge(model, "dense", calibration=calibration, recover=Recovery(steps=4, decoder=True))
    assert type(merged) is type(model) and report.recovery.decoder
    changed = [
        name
        for (name, a), b in zip(
            model.sam.mask_decoder.state_dict().items(), merged.sam.mask_decoder.state_dict().values()
        )
        if not torch.equal(a, b)
    ]
    assert changed, "the decoder was to be tuned"
    assert set(report.mask_iou) == {"none"} and 0.0 <= report.mask_iou["none"] <= 1.0
    assert report.recovery.loss_after < report.recovery.loss_before


def test_bad_recovery_settings():
    with pytest.raises(ValueError, match="recovery steps must be an integer >= 0"):
        Recovery(steps=-2)
    with pytest.raises(ValueError, match="recovery lr must be a positive number"):
        Recovery(steps=2, lr=0.0)
    with pytest.raises(ValueError, match="batch size"):
        Recovery(steps=2, batch_size=0)


def test_recovering_the_decoder_needs_a_segmentation_model(adapted_factory):
    sam = adapted_factory("nas_pc_lora")
    with pytest.raises(ValueError, match="needs a segmentation model"):
        merge(sam, "dense", calibration=probe_images(256, 2), recover=Recovery(steps=2, decoder=True))


def test_recovery_that_makes_the_fit_worse_keeps_the_plain_fold(adapted_factory):
    sam = adapted_factory("nas_pc_lora", seed=3)
    calibration = probe_images(256, 4, seed=43)
    plain, _ = merge(sam, "dense", calibration=calibration)
    merged, report = merge(sam, "dense", calibration=calibration, recover=Recovery(steps=3, lr=3.0))
    assert report.recovery.kept_fold and report.recovery.loss_after >= report.recovery.loss_before
    assert "plain fold was kept" in report.summary()
    for (name, a), b in zip(plain.state_dict().items(), merged.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_recovery_steps_are_relative_to_the_factors_size(adapted_factory):
    """Factors 50x smaller (as after a short training) recover at the same default step."""
    from naslora_deploy.core.adapters.testing import perturb_adapters

    sam = adapted_factory("nas_pc_lora", seed=0)
    perturb_adapters(sam, seed=7, b_std=1e-3)
    calibration = probe_images(256, 6, seed=50)
    _, plain = merge(sam, "dense", calibration=calibration)
    _, recovered = merge(sam, "dense", calibration=calibration, recover=10)
    r = recovered.recovery
    assert not r.kept_fold and r.loss_after < 0.8 * r.loss_before  # an absolute step made it 18x worse
    assert recovered.embedding_rel_error < 0.95 * plain.embedding_rel_error
