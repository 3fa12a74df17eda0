"""Hostile arguments (issue 13, items 10 and 11): out-of-range, non-finite and malformed values.

Every number a command takes is checked where it is declared (a field's bounds, or the
option's ``Bounded`` type), so each row below must end in one line and exit 2 before any
model is built or file is written.
"""

from pathlib import Path

import numpy as np
import pytest
from harness import Attack, check_attack, copy_into, train_argv


def train(*extra):
    """``train`` on the binary set into a fresh run directory, plus ``extra``."""

    return lambda tmp, ctx: train_argv(ctx, tmp / "run", *extra)


def nothing_written(tmp: Path, ctx: dict) -> None:
    assert not (tmp / "run").exists() and not (tmp / "out").exists(), sorted(tmp.iterdir())


def export(*extra):
    return lambda tmp, ctx: ["export", str(ctx["adapter"]), "--out", str(tmp / "out"), *extra]


def merge(*extra):
    return lambda tmp, ctx: [
        "merge",
        str(ctx["adapter"]),
        "--mode",
        "dense",
        "--out",
        str(tmp / "out" / "merged.safetensors"),
        *extra,
    ]


def predict(*extra):
    def argv(tmp: Path, ctx: dict):
        image = tmp / "photo.png"
        from PIL import Image

        Image.fromarray(ctx["photo"]).save(image)
        return ["predict", str(ctx["artifacts"]), str(image), "--out", str(tmp / "out"), *extra]

    return argv


def command(name, *extra, artifacts=True):
    return lambda tmp, ctx: [name, *([str(ctx["artifacts"])] if artifacts else []), *extra]


def no_nan_in_results(tmp: Path, ctx: dict) -> None:
    results = tmp / "out" / "results.jsonl"
    assert not results.exists() or "NaN" not in results.read_text()


def diverged_run_kept_no_nan_checkpoint(tmp: Path, ctx: dict) -> None:
    from safetensors.numpy import load_file

    for weights in (tmp / "run").rglob("*.safetensors"):
        assert all(np.isfinite(v).all() for v in load_file(str(weights)).values() if v.dtype.kind == "f")


def int32_adapter(tmp: Path, ctx: dict):
    """The adapter run with its LoRA tensors rewritten as int32, then merged."""
    from safetensors.torch import load_file, save_file

    run = copy_into(ctx["adapter"], tmp)
    weights = next(run.rglob("adapter_model.safetensors"))
    state = load_file(str(weights))
    save_file({k: (v * 100).int() if "lora" in k else v for k, v in state.items()}, str(weights))
    return ["merge", str(run), "--mode", "fused", "--out", str(tmp / "out" / "merged.safetensors")]


ATTACKS = [
    # item 10: NaN
    Attack(
        "train-lr-1e8-diverges",
        10,
        "loss became",
        train("--lr", "1e8", "--epochs", "2", "--search-start", "1", "--batch-size", "2"),
        after=diverged_run_kept_no_nan_checkpoint,
    ),
    Attack("train-lr-nan", 10, "finite", train("--lr", "nan"), after=nothing_written),
    Attack("train-arch-lr-inf", 10, "finite", train("--arch-lr", "inf"), after=nothing_written),
    Attack(
        "predict-points-nan", 10, "finite numbers", predict("--points", "nan,nan"), after=no_nan_in_results
    ),
    Attack("predict-points-inf", 10, "finite numbers", predict("--points", "inf,3"), after=no_nan_in_results),
    Attack("predict-box-nan", 10, "finite numbers", predict("--box", "0,0,nan,5"), after=no_nan_in_results),
    Attack("predict-points-text", 10, "finite numbers", predict("--points", "a,b")),
    Attack("predict-points-label-7", 10, "label is 1", predict("--points", "10,10,7")),
    Attack("predict-box-inverted", 10, "must exceed", predict("--box", "50,50,10,10")),
    # item 11: arguments
    Attack("train-device-tpu9", 11, "not a device", train("--device", "tpu9"), after=nothing_written),
    Attack("train-max-steps-minus-1", 11, "--max-steps", train("--max-steps", "-1"), after=nothing_written),
    Attack("train-max-steps-0", 11, "--max-steps", train("--max-steps", "0"), after=nothing_written),
    Attack("train-val-fraction-negative", 11, "--val-fraction", train("--val-fraction", "-0.5")),
    Attack("train-val-fraction-1", 11, "--val-fraction", train("--val-fraction", "1")),
    Attack("train-classes-0", 11, "--classes", train("--classes", "0"), after=nothing_written),
    Attack("train-queries-negative", 11, "--queries", train("--queries", "-5"), after=nothing_written),
    Attack("train-epochs-0", 11, "--epochs", train("--epochs", "0")),
    Attack("train-batch-size-0", 11, "--batch-size", train("--batch-size", "0")),
    Attack("train-rank-0", 11, "--rank", train("--rank", "0")),
    Attack("train-channel-ratio-0", 11, "--channel-ratio", train("--channel-ratio", "0")),
    Attack("train-epochs-text", 11, "whole number", train("--epochs", "three")),
    Attack("train-workers-negative", 11, "--workers", train("--workers", "-2")),
    Attack("export-opset-5", 11, "--opset", export("--opset", "5"), after=nothing_written),
    Attack("export-calibration-images-0", 11, "--calibration-images", export("--calibration-images", "0")),
    Attack(
        "export-calibration-images-negative", 11, "--calibration-images", export("--calibration-images", "-1")
    ),
    Attack("export-point-slots-0", 11, "--point-slots", export("--point-slots", "0")),
    Attack("export-workspace-negative", 11, "--workspace", export("--workspace", "-1")),
    Attack("merge-calibration-images-0", 11, "--calibration-images", merge("--calibration-images", "0")),
    Attack("verify-count-0", 11, "--count", command("verify", "--count", "0")),
    Attack("verify-tolerance-negative", 11, "--tolerance", command("verify", "--tolerance", "-1")),
    Attack("bench-runs-0", 11, "--runs", command("bench", "--runs", "0")),
    Attack("bench-batch-sizes-0", 11, "--batch-sizes", command("bench", "--batch-sizes", "0")),
    Attack("bench-batch-sizes-text", 11, "--batch-sizes", command("bench", "--batch-sizes", "1,x")),
    Attack("predict-device-tpu9", 11, "not a device", predict("--device", "tpu9")),
    Attack(
        "eval-batch-size-0",
        11,
        "--batch-size",
        lambda tmp, ctx: [
            "eval",
            str(ctx["adapter"]),
            "--data",
            str(ctx["binary_data"]),
            "--batch-size",
            "0",
        ],
    ),
    Attack("merge-int32-adapter-tensors", 11, "torch.int32 values", int32_adapter, after=nothing_written),
    Attack("demo-images-0", 11, "--images", command("demo", "--images", "0", "--out", "x", artifacts=False)),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack(attack, hostile_ctx, tmp_path, capsys):
    check_attack(attack, tmp_path, hostile_ctx, capsys)


def test_library_configs_check_the_same_bounds():
    """The dataclasses refuse what the options refuse: one declaration, both doors."""
    from naslora_deploy.exporters.specs import ExportSpec
    from naslora_deploy.training.config import DemoConfig, TrainConfig

    with pytest.raises(ValueError, match="--max-steps must be >= 1"):
        TrainConfig(data="d", out="o", max_steps=-1).validate()
    with pytest.raises(ValueError, match="--lr must be a finite number"):
        TrainConfig(data="d", out="o", lr=float("nan")).validate()
    with pytest.raises(ValueError, match="--device 'tpu9'"):
        TrainConfig(data="d", out="o", device="tpu9").validate()
    with pytest.raises(ValueError, match="--opset must be >= 14 and <= 20"):
        ExportSpec(opset=5)
    with pytest.raises(ValueError, match="--count must be >= 1"):
        DemoConfig(images=0)
    TrainConfig(
        data="d", out="o", model="vit_tiny", max_steps=1, device="cuda:1"
    ).validate()  # the edges are allowed
