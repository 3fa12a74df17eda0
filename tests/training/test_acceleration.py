"""Device choice, gradient checkpointing and per-block compile leave the model's maths and keys alone."""

import json

import pytest
import torch
from conftest import train_config

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.core.model.variants import build_sam
from naslora_deploy.training.acceleration import (
    compile_encoder_blocks,
    enable_gradient_checkpointing,
    pick_device,
    resumed_bf16,
    uses_bf16,
)
from naslora_deploy.training.trainer import Trainer


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


CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "precision, history, now, expected",
    [
        ("auto", [{"precision": "fp32"}], True, False),  # auto keeps the run's fp32 where auto is now bf16
        ("auto", [{"precision": "fp32"}, {"precision": "bf16"}], False, True),  # the latest epoch decides
        ("auto", [{"epoch": 0}], True, True),  # records from before the precision was logged: as now
        ("auto", [], True, True),
        ("fp32", [{"precision": "bf16"}], False, False),  # typed (with --allow-changed): the user's
    ],
)
def test_a_resumed_auto_run_keeps_its_arithmetic(monkeypatch, precision, history, now, expected):
    monkeypatch.setattr("naslora_deploy.training.acceleration.cpu_has_bf16", lambda: True)
    assert resumed_bf16(precision, CPU, history, now, say=False) is expected


def test_resuming_a_bf16_run_on_a_cpu_without_bf16_is_one_line(monkeypatch):
    monkeypatch.setattr("naslora_deploy.training.acceleration.cpu_has_bf16", lambda: False)
    with pytest.raises(NasloraError, match="--precision bf16: this CPU has no native bf16"):
        resumed_bf16("auto", CPU, [{"precision": "bf16"}], False, say=False)


def test_a_run_resumed_where_auto_means_bf16_goes_on_in_fp32(monkeypatch, binary_data, tmp_path, capfd):
    """The run trained its first epoch where auto meant fp32; resumed where auto means bf16, its
    second epoch is fp32 too (metrics.jsonl records each epoch's arithmetic)."""
    settings = dict(model="vit_tiny", method="lora", blocks=[2, 3], batch_size=4, precision="auto")
    monkeypatch.setattr("naslora_deploy.training.acceleration.cpu_has_bf16", lambda: False)
    Trainer(train_config(binary_data, tmp_path, settings, epochs=1)).run()
    monkeypatch.setattr("naslora_deploy.training.acceleration.cpu_has_bf16", lambda: True)
    resumed = Trainer(train_config(binary_data, tmp_path, settings, epochs=2, resume=True))
    assert resumed.bf16  # what auto means here now
    resumed.run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["precision"]) for r in records if "precision" in r] == [(0, "fp32"), (1, "fp32")]
    assert "--precision auto: continuing in fp32" in capfd.readouterr().err


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
