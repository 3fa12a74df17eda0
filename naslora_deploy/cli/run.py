"""``predict`` and ``bench``: artifacts on the runtime. Torch-free: they run where torch is absent."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Dict, List

import click

from naslora_deploy.cli.options import (
    EVERYTHING_OPTIONS,
    Bounded,
    CliOption,
    check_outputs,
    emit_json,
    fields_of,
    json_option,
    open_artifacts,
    options_from,
    overwrite_option,
    progress_option,
    runtime_options,
    say,
)
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.runtime.bench import bench as run_bench
from naslora_deploy.runtime.bench import bench_prompts, format_prompt_rows, format_rows
from naslora_deploy.runtime.everything import EverythingSpec
from naslora_deploy.runtime.predict import (
    EVERYTHING_ALONE,
    RESULTS_NAME,
    check_out,
    gather_inputs,
    predict_files,
    tiling_from_options,
)
from naslora_deploy.runtime.prompts import parse_box, parse_points


def _batch_sizes(ctx, param, text: str) -> List[int]:
    """``--batch-sizes 1,4``: whole numbers >= 1, or click's usage error."""
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"give comma-separated whole numbers >= 1, got {text!r}")
    return sizes


@click.command()
@click.argument("artifacts", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="folder for masks, overlays, results.jsonl"
)
@click.option(
    "--points", help="point prompts in image pixels: 'x,y[,label];x,y[,label]' (needs an --prompts export)"
)
@click.option("--box", help="box prompt in image pixels: x0,y0,x1,y1")
@click.option(
    "--tile",
    type=Bounded(int, 32),
    metavar="SIZE",
    help="segment each image in SIZE x SIZE windows, blended where they overlap (large images)",
)
@click.option(
    "--overlap",
    type=Bounded(int, 0),
    metavar="PIXELS",
    help="pixels that neighbouring --tile windows share, < SIZE [default: SIZE/8]",
)
@click.option(
    "--everything",
    is_flag=True,
    help="every object in each image (SAM's automatic masks; needs an --prompts export): "
    "an instance-label PNG and COCO RLEs in results.jsonl",
)
@options_from(EverythingSpec, only=EVERYTHING_OPTIONS)
@runtime_options
@progress_option
@json_option
@overwrite_option("replace an existing --json FILE")
def predict(
    artifacts,
    inputs,
    out,
    points,
    box,
    tile,
    overlap,
    everything,
    backend,
    device,
    progress,
    json_target,
    overwrite,
    **rest,
):
    """Segment images (files, folders or globs) with an artifact directory; no torch needed.

    Outputs are named after each input's path (``x.png`` -> ``x.png_mask.png``) and
    results.jsonl is appended to; unusable inputs are listed and make the exit code 1.
    ``--json FILE``: this run's records (results.jsonl's new lines) and the inputs skipped.
    """
    prompts = parse_points(points), parse_box(box)
    tiling = tiling_from_options(tile, overlap, prompts != (None, None))
    spec = _everything(everything, rest, prompted=prompts != (None, None) or tiling is not None)
    found = gather_inputs(inputs)
    if not found.files:
        _report_skipped(found.problems if len(found.problems) > 1 else [])
        raise NasloraError(f"nothing to segment: {_failed(found.problems)}")
    check_out(out, found.files, found.folders)  # before the artifacts are opened
    check_outputs(overwrite, json=json_target)
    segmenter = open_artifacts(artifacts, backend, device)
    say(json_target, f"backend: {segmenter.backend_name}; {len(found.files)} image(s)")
    results = out / RESULTS_NAME
    start = results.stat().st_size if results.is_file() else 0  # results.jsonl is a log runs append to
    with contextlib.redirect_stdout(sys.stderr if json_target == "-" else sys.stdout):  # stdout: the JSON
        done, errors = predict_files(
            segmenter, found.files, out, *prompts, progress, tiling=tiling, everything=spec
        )
    _report_skipped(found.problems + errors)
    say(json_target, f"wrote masks, overlays and results.jsonl for {done} image(s) to {out}")
    if json_target is not None:
        records = [json.loads(line) for line in _lines_after(results, start)]
        emit_json(json_target, {"results": records, "skipped": found.problems + errors}, overwrite)
    if found.problems or errors:
        click.echo(f"naslora-deploy predict: error: {_failed(found.problems + errors)}", err=True)
        raise click.exceptions.Exit(1)


def _everything(everything: bool, options: Dict[str, object], prompted: bool):
    """``--everything`` and its settings as an ``EverythingSpec`` (None without the flag), or one line."""
    spec = EverythingSpec(**fields_of(EverythingSpec, options))
    if not everything:
        if spec != EverythingSpec():
            changed = next(f for f in EVERYTHING_OPTIONS if getattr(spec, f) != getattr(EverythingSpec(), f))
            raise ValueError(f"--{changed.replace('_', '-')} sets everything mode: add --everything")
        return None
    if prompted:
        raise ValueError(EVERYTHING_ALONE)
    return spec


def _lines_after(path: Path, start: int) -> List[str]:
    """The lines appended to ``path`` after byte ``start``."""
    if not path.is_file():
        return []
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read().decode("utf-8").splitlines()


def _report_skipped(problems: List[str]) -> None:
    for problem in problems:
        click.echo(f"naslora-deploy predict: skipped {problem}", err=True)


def _failed(problems: List[str]) -> str:
    """One line for the inputs that could not be used: the problem itself, or how many (listed above)."""
    return problems[0] if len(problems) == 1 else f"{len(problems)} inputs could not be used (listed above)"


@click.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--batch-sizes", default="1", show_default=True, callback=_batch_sizes, help="comma-separated batch sizes"
)
@click.option(
    "--prompt-counts",
    metavar="N,M",
    cls=CliOption,
    old=("--prompts",),
    callback=lambda ctx, param, value: None if value is None else _batch_sizes(ctx, param, value),
    help="also time the predictor: one embedding, then N box prompts in one call (comma-separated N)",
)
@click.option(
    "--repeats",
    type=Bounded(int, 1),
    default=20,
    show_default=True,
    cls=CliOption,
    old=("--runs",),
    help="timed runs per row (medians are quoted)",
)
@click.option("--warmup", type=Bounded(int, 0), default=3, show_default=True, help="untimed runs first")
@runtime_options
@json_option
@overwrite_option("replace an existing --json FILE")
def bench(
    artifacts, batch_sizes, prompt_counts, repeats, warmup, backend, device, json_target, overwrite
) -> None:
    """Latency, throughput and memory; two artifact directories alternate run by run (A B).

    ``--prompt-counts N,M``: also the predictor path (one embedding, N box prompts in one
    decoder call) against N one-shot calls; its rows (key ``prompts``) follow the batch rows.
    """
    if len(artifacts) > 2:
        raise ValueError("bench compares at most two artifact directories (A B)")
    check_outputs(overwrite, json=json_target)
    segmenters = [open_artifacts(a, backend, device) for a in artifacts]
    if prompt_counts and any(s.point_slots is None for s in segmenters):
        raise ValueError("--prompt-counts times the prompt decoder: export the artifacts with --prompts")
    rows = run_bench(segmenters, batch_sizes, repeats, warmup)
    say(json_target, format_rows(rows))
    if prompt_counts:
        prompt_rows = bench_prompts(segmenters, prompt_counts, repeats, warmup)
        say(json_target, format_prompt_rows(prompt_rows))
        rows = rows + prompt_rows
    emit_json(json_target, rows, overwrite)
