"""``train``, ``eval``, ``inspect`` and ``demo``: the training room's commands (torch imported inside)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click

from naslora_deploy.cli.options import (
    CliOption,
    SectionedCommand,
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
    typed_options,
)
from naslora_deploy.common.outputs import (
    RUN_CONFIG,
    RUN_MARKER,
    RUN_METRICS,
    RUN_SUMMARY,
    check_file_output,
    discarded_on_failure,
)
from naslora_deploy.training.config import SECTIONS, DemoConfig, TrainConfig
from naslora_deploy.training.data.masks import SPLITS
from naslora_deploy.training.settings import MODEL_PROMPTS, train_settings

TRAIN_HELPS = {
    "data": "folder with images/ and masks/ (optionally train/ val/ test/); needed unless --config FILE or "
    "--resume gives it",
    "out": f"run directory: new or empty (marked as a run with {RUN_MARKER}; locked while training)",
    "overwrite": f"replace the earlier run in --out: only a folder marked {RUN_MARKER} that holds nothing "
    "else (no user file) is cleared; also an existing --json FILE",
    "prompt": "train prompt-free, or with a jittered box per ground-truth component (MedSAM)  [default: "
    + ", ".join(f"{prompt} for {model}" for model, prompt in MODEL_PROMPTS.items())
    + ", none otherwise]",
    "resume": f"continue from OUT/last/ with the settings saved in OUT/{RUN_CONFIG} (options need not be "
    "typed again; one that differs is refused without --allow-changed)",
}


class TrainCommand(SectionedCommand):
    """``train``: ``--data`` is required unless ``--config FILE`` or ``--resume`` (saved settings) gives
    it."""

    def parse_args(self, ctx, args):
        """Click's parsing, then the missing ``--data`` refused as click refuses a missing option."""
        rest = super().parse_args(ctx, args)
        given = ctx.params.get("data") is not None or ctx.params.get("config_file") is not None
        if not (given or ctx.params.get("resume") or ctx.resilient_parsing):
            raise click.MissingParameter(ctx=ctx, param=next(p for p in self.params if p.name == "data"))
        return rest


@click.command(cls=TrainCommand, sections=SECTIONS)
@options_from(TrainConfig, helps=TRAIN_HELPS, unset=("data", "prompt"))
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    cls=CliOption,
    group="output",
    help=f"start a new run from the settings saved in a run's {RUN_CONFIG} (the options given override "
    "them; --out is this run's own)",
)
@click.option(
    "--allow-changed",
    is_flag=True,
    cls=CliOption,
    group="output",
    help="with --resume: accept options that differ from the run's saved settings (the new ones are saved)",
)
@device_option
@progress_option
@json_option
@click.pass_context
def train(ctx, config_file, allow_changed, json_target, **options) -> None:
    """Fine-tune SAM with LoRA / NAS-LoRA / NAS-PC-LoRA on a folder data set.

    A run that fails before its first checkpoint (a full disk, bad data) leaves no run folder behind.
    """
    from naslora_deploy.training.trainer import train as run_training

    config = train_settings(typed_options(ctx, options), config_file, allow_changed)
    config.validate()  # before any file is read
    check_outputs(config.overwrite, json=json_target)
    # with --json -, stdout carries only the JSON: the epoch lines go to stderr
    with discarded_on_failure(config.out), contextlib.redirect_stdout(_human_output(json_target)):
        run = run_training(config)
    say(json_target, f"run directory: {run}")
    if os.environ.get("RANK", "0") == "0":  # a data-parallel run's main process
        emit_json(json_target, _run_result(run), config.overwrite)


def _human_output(json_target):
    """Where human-readable lines go: stderr when stdout carries JSON (``--json -``)."""
    return sys.stderr if json_target == "-" else sys.stdout


def _run_result(run: Path) -> dict:
    """``train --json``: the run folder, its ``run_summary.json`` and the last epoch's record."""
    from naslora_deploy.common.io import read_json

    lines = (run / RUN_METRICS).read_text().splitlines() if (run / RUN_METRICS).is_file() else []
    last = json.loads(lines[-1]) if lines else {}
    summary = read_json(run / RUN_SUMMARY, "run summary")
    return {"run": str(run), **summary, "train_loss": last.get("train_loss"), "val": last.get("val")}


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
@click.option(
    "--gallery",
    type=click.Path(path_type=Path),
    help="also write per-image metrics (per_image.csv, per_image.jsonl) and overlays of the worst and best "
    "images (ground truth outlined, prompt boxes drawn; worst/, best/, gallery.png) into this folder: new "
    "or empty, never inside the data folder",
)
@click.option(
    "--gallery-count",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="how many worst and how many best images --gallery draws",
)
@device_option
@json_option
@overwrite_option("replace an existing --json FILE, or an earlier --gallery folder (nothing else in it)")
def evaluate(adapter, base, allow_base_mismatch, split, device, json_target, overwrite, **options) -> None:
    """Metrics of a trained adapter on a data set (IoU, Dice, BER... or mIoU), and per image (--gallery)."""
    from naslora_deploy.training.evaluate import evaluate_run, format_metrics
    from naslora_deploy.training.gallery import check_gallery_dir

    check_outputs(overwrite, json=json_target)
    data, gallery, gallery_count = options["data"], options.pop("gallery"), options.pop("gallery_count")
    if gallery is not None:
        check_gallery_dir(gallery, overwrite, data)  # before the model is loaded
    model = load_run(adapter, base, allow_base_mismatch, device)
    result = evaluate_run(
        model, split=split, gallery=gallery, gallery_count=gallery_count, overwrite=overwrite, **options
    )
    drawn = (
        f"\ngallery: {result['gallery']} (per_image.csv, per_image.jsonl, worst/, best/, gallery.png)"
        if "gallery" in result
        else ""
    )
    say(
        json_target,
        f"{adapter} on {data} ({result['split']}, {result['images']} images, prompt {result['prompt']}):\n"
        + format_metrics(result["metrics"])
        + drawn,
    )
    emit_json(json_target, {"adapter": str(adapter), "data": str(data), **result}, overwrite)


@click.command()
@adapter_argument
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    help="also draw a heatmap of softmax(alpha) (rows: block and projection, columns: operations) to "
    "this PNG, and, where the run logged it, alpha's trajectory over the steps to PLOT-trajectory.png "
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
    pictures = [f"\n{name}: {summary[key]}" for key, name in PICTURES if key in summary]
    if plot is not None and "trajectory_plot" not in summary:
        pictures.append("\nno trajectory plot: the run logged no alpha trajectory (metrics.jsonl)")
    say(json_target, summary["table"] + "".join(pictures))
    emit_json(json_target, {k: v for k, v in summary.items() if k != "table"}, overwrite)


PICTURES = (("plot", "heatmap"), ("trajectory_plot", "trajectory"))  # inspect's --plot files


@click.command()
@options_from(DemoConfig)
@progress_option
@json_option
def demo(json_target, **options) -> None:
    """Real LiteMedSAM weights on real photographs: each method trained, evaluated and merged.

    ``--json FILE``: the table (``OUT/summary.json``: one row per method, the wall time).
    """
    from naslora_deploy.common.io import read_json
    from naslora_deploy.training.demo import run_demo

    config = DemoConfig(**fields_of(DemoConfig, options))
    check_outputs(config.overwrite, json=json_target)
    with contextlib.redirect_stdout(_human_output(json_target)):
        run_demo(config)
    emit_json(json_target, read_json(Path(config.out) / "summary.json", "demo summary"), config.overwrite)
