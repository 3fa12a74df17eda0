"""``train``, ``eval``, ``inspect`` and ``demo``: the training room's commands (torch imported inside)."""

from __future__ import annotations

from pathlib import Path

import click

from naslora_deploy.cli.options import (
    adapter_argument,
    base_options,
    check_outputs,
    device_option,
    emit_json,
    fields_of,
    json_option,
    load_run,
    options_from,
    overwrite_option,
    progress_option,
    say,
)
from naslora_deploy.common.outputs import RUN_MARKER, check_file_output, discarded_on_failure
from naslora_deploy.training.config import DemoConfig, TrainConfig
from naslora_deploy.training.data.masks import SPLITS

TRAIN_HELPS = {
    "out": f"run directory: new or empty (marked as a run with {RUN_MARKER}; locked while training)",
    "overwrite": f"replace the earlier run in --out: only a folder marked {RUN_MARKER} that holds nothing "
    "else (no user file) is cleared",
}


@click.command()
@options_from(TrainConfig, helps=TRAIN_HELPS)
@device_option
@progress_option
def train(**options) -> None:
    """Fine-tune SAM with LoRA / NAS-LoRA / NAS-PC-LoRA on a folder data set.

    A run that fails before its first checkpoint (a full disk, bad data) leaves no run folder behind.
    """
    from naslora_deploy.training.trainer import train as run_training

    config = TrainConfig(**fields_of(TrainConfig, options))
    config.validate()  # before any file is read
    with discarded_on_failure(config.out):  # a run that failed before its first checkpoint
        run = run_training(config)
    click.echo(f"run directory: {run}")


EVAL_OPTIONS = ("data", "batch_size", "skip_bad", "prompt", "saliency_protocol")  # TrainConfig's declarations
EVAL_HELPS = {
    "data": "folder data set to evaluate on",
    "prompt": "none, or a box per ground-truth component (default: as trained)",
}


@click.command(name="eval")
@adapter_argument
@base_options
@options_from(TrainConfig, only=EVAL_OPTIONS, helps=EVAL_HELPS, unset=("prompt",))
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    help="default: test, else val (on the run's own data without split folders: the images "
    "training held out), else train",
)
@device_option
@json_option
@overwrite_option("replace an existing --json FILE")
def evaluate(adapter, base, allow_base_mismatch, split, device, json_target, overwrite, **options) -> None:
    """Metrics of a trained adapter on a data set (IoU, Dice, BER... or mIoU)."""
    from naslora_deploy.training.evaluate import evaluate_run, format_metrics

    check_outputs(overwrite, json=json_target)
    model = load_run(adapter, base, allow_base_mismatch, device)
    data = options["data"]
    result = evaluate_run(model, split=split, **options)
    say(
        json_target,
        f"{adapter} on {data} ({result['split']}, {result['images']} images, prompt {result['prompt']}):\n"
        + format_metrics(result["metrics"]),
    )
    emit_json(json_target, {"adapter": str(adapter), "data": str(data), **result}, overwrite)


@click.command()
@adapter_argument
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    help="also draw the operation shares to this PNG, and alpha's trajectory to PLOT-trajectory.png "
    "(extra: plot); existing files need --overwrite",
)
@json_option
@overwrite_option("replace existing --plot and --json files")
def inspect(adapter, plot, json_target, overwrite) -> None:
    """The searched architecture: softmax(alpha) per block and projection."""
    from naslora_deploy.core.runs.architecture import inspection_summary

    trajectory = plot.with_name(f"{plot.stem}-trajectory{plot.suffix}") if plot is not None else None
    check_outputs(overwrite, json=json_target, plot=plot)
    check_file_output(trajectory, overwrite, "--plot")
    summary = inspection_summary(adapter, plot)
    say(json_target, summary["table"] + (f"\nplot: {summary['plot']}" if "plot" in summary else ""))
    emit_json(json_target, {k: v for k, v in summary.items() if k != "table"}, overwrite)


@click.command()
@options_from(DemoConfig)
@progress_option
def demo(**options) -> None:
    """Real LiteMedSAM weights on real photographs: each method trained, evaluated and merged."""
    from naslora_deploy.training.demo import run_demo

    run_demo(DemoConfig(**fields_of(DemoConfig, options)))
