"""Device choice, gradient checkpointing and per-block compile leave the model's maths and keys alone."""

import pytest
import torch

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.core.model.variants import build_sam
from naslora_deploy.training.acceleration import (
    compile_encoder_blocks,
    enable_gradient_checkpointing,
    pick_device,
    uses_bf16,
)


def test_auto_picks_what_is_there_and_cuda_without_cuda_is_one_line():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(NasloraError, match="--device cuda:1: CUDA is not available on this machine"):
            pick_device("cuda:1")


@pytest.mark.parametrize("native", [True, False])
def test_precision_resolves_by_device_and_cpu_capability(monkeypatch, native):
    """auto: bf16 on CUDA and on a CPU with native bf16, else fp32; fp32 is fp32 everywhere; bf16 on
    a CPU needs native bf16."""
    monkeypatch.setattr("naslora_deploy.training.acceleration.cpu_has_bf16", lambda: native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_bf16("auto", cuda) and uses_bf16("auto", cpu) == native
    assert not uses_bf16("fp32", cpu) and not uses_bf16("fp32", cuda)
    assert uses_bf16("bf16", cuda)
    if native:
        assert uses_bf16("bf16", cpu)
    else:
        with pytest.raises(NasloraError, match="--precision bf16: this CPU has no native bf16"):
            uses_bf16("bf16", cpu)


def _encoder_grads(sam, image):
    """(output, gradients, number of tensors autograd saved during the forward)."""
    sam.zero_grad()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        out = sam.image_encoder(image)
    out.square().mean().backward()
    grads = [p.grad.clone() for p in sam.image_encoder.parameters() if p.grad is not None]
    return out.detach(), grads, len(saved)


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    sam = build_sam("vit_tiny").train()
    image = torch.randn(1, 3, 256, 256)
    plain_out, plain_grads, plain_saved = _encoder_grads(sam, image)
    enable_gradient_checkpointing(sam)
    out, grads, saved = _encoder_grads(sam, image)
    assert saved < plain_saved / 2  # the blocks' activations are recomputed, not kept
    torch.testing.assert_close(out, plain_out)
    assert len(grads) == len(plain_grads) > 0
    for got, expected in zip(grads, plain_grads):
        torch.testing.assert_close(got, expected)


def test_compiling_blocks_keeps_the_state_dict_keys():
    sam = build_sam("vit_tiny")
    keys = list(sam.state_dict())
    compile_encoder_blocks(sam)  # compiles lazily, on the first forward
    assert list(sam.state_dict()) == keys
