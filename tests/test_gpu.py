"""What only a GPU shows: the bf16 train step, merge parity on CUDA, SDPA and compile on CUDA.

Every test here skips, saying so, on a machine without CUDA.
"""

import copy
import math

import pytest
import torch
from conftest import first_batch, train_config

from naslora_deploy import merge
from naslora_deploy.core.adapters.testing import perturb_adapters
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.exporters.fast_attention import use_sdpa
from naslora_deploy.training.trainer import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)"),
]


DEFAULTS = dict(model="vit_tiny", epochs=1, search_start=0, batch_size=4, lr=1e-3, device="cuda")


def _trainer(data, out, **changes):
    return Trainer(train_config(data, out, DEFAULTS, **changes))


@pytest.mark.parametrize("alpha_pass", ["second", "same"])
def test_bf16_train_step_moves_weights_and_alpha(binary_data, tmp_path, alpha_pass):
    trainer = _trainer(binary_data, tmp_path / alpha_pass, alpha_pass=alpha_pass)
    assert trainer.bf16, "bf16 autocast is the CUDA default"
    perturb_adapters(trainer.model.sam, seed=3, b_std=0.05)
    alphas = [a.detach().clone() for a in trainer.alphas]
    weights = [w.detach().clone() for w in trainer.weights]
    result = trainer.train_step(first_batch(trainer), None, "weights+alpha")
    assert torch.isfinite(torch.tensor(result["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(alphas, trainer.alphas))
    assert any(not torch.equal(a, b) for a, b in zip(weights, trainer.weights))


def test_compiled_train_step_equals_eager(binary_data, tmp_path):
    eager = _trainer(binary_data, tmp_path / "eager", precision="fp32", grad_checkpoint=False)
    compiled = _trainer(
        binary_data, tmp_path / "compiled", precision="fp32", grad_checkpoint=False, compile=True
    )
    batch = first_batch(eager)
    with torch.no_grad():
        torch.testing.assert_close(compiled.loss(batch), eager.loss(batch), rtol=1e-3, atol=1e-4)


def test_merges_on_cuda_match_the_unmerged_model(adapted_factory, tiny_images):
    sam = adapted_factory("nas_pc_lora").cuda()
    images = tiny_images.cuda()
    with torch.no_grad():
        unmerged = sam.image_encoder(images)
        fused_model, _ = merge(sam, "fused")
        fused = fused_model.image_encoder(images)
        dense_model, report = merge(sam, "dense")
        dense = dense_model.image_encoder(images)
    torch.testing.assert_close(fused, unmerged, rtol=1e-4, atol=1e-4)
    assert (
        math.isfinite(report.embedding_rel_error) and report.embedding_rel_error > 0
    )  # measured on the GPU too
    assert dense.is_cuda and torch.isfinite(dense).all()


def test_sdpa_on_cuda_bf16_matches_sam_attention(adapted_factory, tiny_images):
    sam = adapted_factory("nas_pc_lora").cuda().eval()
    fast = copy.deepcopy(sam)
    assert use_sdpa(fast.image_encoder) == len(fast.image_encoder.blocks)
    images = tiny_images.cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        reference = SegmentationModel(sam)(images)["low_res_logits"].float()
        got = SegmentationModel(fast)(images)["low_res_logits"].float()
    assert (got - reference).abs().max() < 0.05 * reference.abs().max()
