"""The ``naslora-deploy`` command line: train, eval, inspect, merge, export, verify, predict, bench, demo.

One decorated function per command; each body only reads its options and calls
the room that does the work. Options that set a dataclass (``TrainConfig``,
``DemoConfig``, ``ExportSpec``, ``EngineSpec``) are generated from its fields,
so names, types, defaults and help live beside the fields; options shared by
several commands are declared once below. Only torch-free modules are imported
here: ``predict`` and ``bench`` run where torch is absent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import click

from naslora_deploy import __version__
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.lazy import lazy_import
from naslora_deploy.common.options import bound_error, check_device
from naslora_deploy.core.adapters.config import MERGE_MODES
from naslora_deploy.core.merging.spec import MergeSpec
from naslora_deploy.exporters.specs import EngineSpec, ExportSpec
from naslora_deploy.runtime.backends import RUNTIME_BACKENDS
from naslora_deploy.runtime.everything import EverythingSpec
from naslora_deploy.training.config import PROMPTS, SALIENCY_PROTOCOLS, DemoConfig, TrainConfig

BACKENDS = RUNTIME_BACKENDS + ("torch",)  # torch: built by exporters.torch_backend and handed to the runtime


# ----- options generated from dataclass fields ----------------------------------------------------
class Bounded(click.ParamType):
    """An int or float within ``low``..``high`` and finite: the click side of ``common.options`` bounds."""

    def __init__(self, kind: type, low=None, high=None, open_low: bool = False) -> None:
        self.kind, self.low, self.high, self.open_low = kind, low, high, open_low
        self.name = kind.__name__

    def convert(self, value, param, ctx):
        """The number, or click's usage error naming the option and the allowed range."""
        flag = param.opts[0] if param is not None else "value"
        try:
            number = value if isinstance(value, self.kind) else self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{flag} must be {'a whole number' if self.kind is int else 'a number'}, got {value!r}")
        error = bound_error(flag, number, self.low, self.high, self.open_low)
        if error:  # click names the option itself: "Invalid value for '--count': must be >= 1, got 0"
            self.fail(error[len(flag) + 1 :])
        return number


def _option_for(field: dataclasses.Field, hint) -> Callable:
    meta = field.metadata["cli"]
    flag = meta["flag"] or "--" + field.name.replace("_", "-")
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    args = typing.get_args(hint)
    kind = next(a for a in args if a is not type(None)) if type(None) in args else hint
    if kind is bool:
        if field.default is not False:  # None (decide later) or True: a --x/--no-x pair
            return click.option(f"{flag}/--no-{flag[2:]}", field.name, default=None, help=meta["help"])
        return click.option(flag, field.name, is_flag=True, default=field.default, help=meta["help"])
    if meta["parse"] is not None:  # a string on the command line, the field's own type after parsing
        parse = meta["parse"]
        return click.option(
            flag,
            field.name,
            type=str,
            default=None,
            show_default=meta["shown"],
            metavar=meta["metavar"],
            callback=lambda ctx, param, value: None if value is None else parse(value),
            help=meta["help"],
        )
    click_type = click.Choice(meta["choices"]) if meta["choices"] else kind
    if kind in (int, float) and not meta["choices"]:  # finite, and within the field's declared bounds
        click_type = Bounded(kind, meta["low"], meta["high"], meta["open_low"])
    # a required option gets no default at all: click >= 8.3 takes an explicit None as a given default
    default = {} if required else {"default": field.default, "show_default": field.default is not None}
    return click.option(
        flag,
        field.name,
        type=click_type,
        required=required,
        metavar=meta["metavar"],
        help=meta["help"],
        **default,
    )


def options_from(cls, only: Optional[Sequence[str]] = None) -> Callable:
    """Decorator: one click option per field of ``cls`` that carries ``common.options.option`` metadata."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if "cli" in f.metadata and (only is None or f.name in only)]

    def decorate(func: Callable) -> Callable:
        for field in reversed(fields):
            func = _option_for(field, hints[field.name])(func)
        return func

    return decorate


def fields_of(cls, options: Dict[str, object]) -> Dict[str, object]:
    """The options that set fields of ``cls``; unset (None) ones leave the field's default."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in options.items() if k in names and v is not None}


EVERYTHING_OPTIONS = tuple(f.name for f in dataclasses.fields(EverythingSpec) if f.name != "output_mode")


# ----- options shared by several commands, declared once ------------------------------------------
def _compose(*decorators: Callable) -> Callable:
    def decorate(func: Callable) -> Callable:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return decorate


progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    help="progress bars (default: on a terminal only; logs get one line per event)",
)
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    callback=lambda ctx, param, value: check_device(value),
    help="auto, cpu, cuda, cuda:N or mps",
)
json_option = click.option(
    "--json", "json_target", metavar="FILE", help="write the results as JSON to FILE ('-': stdout)"
)
adapter_argument = click.argument("adapter", type=click.Path(path_type=Path))
base_options = _compose(
    click.option("--base", help="the base SAM checkpoint (default: the one recorded at training)"),
    click.option(
        "--allow-base-mismatch", is_flag=True, help="accept a base whose sha256 differs from the recorded one"
    ),
)
runtime_options = _compose(
    click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default="auto",
        show_default=True,
        help="auto: TensorRT where engines were built, else onnxruntime",
    ),
    device_option,
)


def export_spec_from(options: Dict[str, object]) -> ExportSpec:
    """The ``ExportSpec`` (with its ``MergeSpec`` and ``EngineSpec``) that ``export``'s options describe;
    the engines' precision is resolved by ``ExportSpec`` itself."""
    engine = EngineSpec(**{k: v for k, v in fields_of(EngineSpec, options).items() if k != "precision"})
    merge = MergeSpec(**fields_of(MergeSpec, options))
    return ExportSpec(
        **{k: v for k, v in fields_of(ExportSpec, options).items() if k != "merge"},
        merge=merge,
        engine=engine,
    )


def emit_json(target: Optional[str], data) -> None:
    """``--json``: write ``data`` to the file ``target``, or to stdout for ``-``."""
    if target is None:
        return
    text = json.dumps(data, indent=2)
    if target == "-":
        click.echo(text)
        return
    from naslora_deploy.common.io import atomic_write_text

    atomic_write_text(Path(target), text + "\n")
    click.echo(f"wrote {target}", err=True)


def say(json_target: Optional[str], text: str) -> None:
    """Human-readable output, kept off stdout when stdout carries JSON (``--json -``)."""
    click.echo(text, err=json_target == "-")


def _load(adapter, base, allow_base_mismatch, device):
    from naslora_deploy.core.runs.checkpoint import load_adapter
    from naslora_deploy.training.acceleration import pick_device

    return load_adapter(adapter, base, allow_base_mismatch, device=pick_device(device))


def _segmenter(artifacts, backend: str, device: str):
    if backend == "torch":
        lazy_import("torch", "pip:torch", "--backend torch")
        from naslora_deploy.exporters.torch_backend import open_segmenter

        return open_segmenter(artifacts, backend, device)
    from naslora_deploy.runtime import Segmenter

    return Segmenter.open(artifacts, backend, device)


# ----- commands -----------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="naslora-deploy")
def cli() -> None:
    """Fine-tune SAM with NAS-LoRA, merge the adapters, export to ONNX/TensorRT and run it."""


@cli.command()
@options_from(TrainConfig)
@device_option
@progress_option
def train(**options) -> None:
    """Fine-tune SAM with LoRA / NAS-LoRA / NAS-PC-LoRA on a folder data set."""
    from naslora_deploy.training.trainer import train as run_training

    config = TrainConfig(**fields_of(TrainConfig, options))
    config.validate()  # before any file is read
    click.echo(f"run directory: {run_training(config)}")


@cli.command(name="eval")
@adapter_argument
@base_options
@click.option("--data", required=True, type=click.Path(path_type=Path), help="folder data set to evaluate on")
@click.option(
    "--split",
    type=click.Choice(("train", "val", "test")),
    help="default: test, else val (on the run's own data without split folders: the images "
    "training held out), else train",
)
@click.option("--batch-size", type=Bounded(int, 1), default=4, show_default=True)
@click.option("--skip-bad", is_flag=True, help="skip unreadable or unpaired files with a warning")
@click.option(
    "--prompt",
    type=click.Choice(PROMPTS),
    help="none, or a box per ground-truth component (default: as trained)",
)
@click.option(
    "--saliency-protocol",
    type=click.Choice(SALIENCY_PROTOCOLS),
    default="normalized",
    show_default=True,
    help="saliency figures on per-image min-max stretched (the standard) or raw probabilities",
)
@device_option
@json_option
def evaluate(
    adapter,
    base,
    allow_base_mismatch,
    data,
    split,
    batch_size,
    skip_bad,
    prompt,
    saliency_protocol,
    device,
    json_target,
) -> None:
    """Metrics of a trained adapter on a data set (IoU, Dice, BER... or mIoU)."""
    from naslora_deploy.training.data.folder import discover
    from naslora_deploy.training.evaluate import evaluate as run_evaluation
    from naslora_deploy.training.evaluate import format_metrics

    model = _load(adapter, base, allow_base_mismatch, device)
    classes = model.spec.classes
    trained = model.spec.training or {}  # the run's data options (COCO category, bands, stretch)
    formats = {k: trained.get(k) for k in ("category", "bands", "stretch")}
    # the run's own data without split folders: its held-out val images, split as training split them
    same_data = trained.get("data") is not None and Path(trained["data"]).resolve() == Path(data).resolve()
    run = TrainConfig.from_dict(trained) if same_data else None
    held_out = {"val_fraction": run.val_fraction, "seed": run.seed} if run else {"val_fraction": 0.0}
    splits = discover(
        data, None if classes.binary else classes.num_classes, skip_bad=skip_bad, **held_out, **formats
    )
    split = split or next(s for s in ("test", "val", "train") if splits.split(s))
    pairs = splits.split(split)
    if not pairs:
        raise NasloraError(f"{data} has no {split} split")
    prompt = prompt or model.spec.prompt
    device = next(model.parameters()).device
    metrics = run_evaluation(model, pairs, classes, batch_size, device, prompt, saliency_protocol)
    say(
        json_target,
        f"{adapter} on {data} ({split}, {len(pairs)} images, prompt {prompt}):\n{format_metrics(metrics)}",
    )
    result = {
        "adapter": str(adapter),
        "data": str(data),
        "split": split,
        "prompt": prompt,
        "metrics": metrics,
    }
    emit_json(json_target, result)


@cli.command()
@adapter_argument
@click.option(
    "--plot", type=click.Path(path_type=Path), help="also draw the operation shares to this PNG (extra: plot)"
)
@json_option
def inspect(adapter, plot, json_target) -> None:
    """The searched architecture: softmax(alpha) per block and projection."""
    from naslora_deploy.core.runs.architecture import inspection_summary

    summary = inspection_summary(adapter, plot)
    say(json_target, summary["table"] + (f"\nplot: {summary['plot']}" if "plot" in summary else ""))
    emit_json(json_target, {k: v for k, v in summary.items() if k != "table"})


@cli.command()
@adapter_argument
@base_options
@click.option("--mode", required=True, type=click.Choice(MERGE_MODES), help="dense: plain SAM; fused: exact")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="output checkpoint (.pth or .safetensors)"
)
@click.option("--force", is_flag=True, help="replace an earlier merge at --out (never any other file)")
@options_from(MergeSpec, only=("calibration", "calibration_images", "recover", "recover_decoder"))
@device_option
@progress_option
def merge(adapter, base, allow_base_mismatch, mode, out, force, device, progress, **options) -> None:
    """Fold the adapters into SAM: dense (plain SAM) or fused (exact), with the measured fidelity."""
    from naslora_deploy.common.outputs import check_output_files, json_field
    from naslora_deploy.core.merging.files import sidecar_paths, write_merged
    from naslora_deploy.core.merging.run import merge_run
    from naslora_deploy.training.acceleration import pick_device

    spec = MergeSpec(mode=mode, **fields_of(MergeSpec, options))  # its rules, before the model is loaded
    sidecars = sidecar_paths(out)  # an earlier merge's report names its checkpoint
    earlier = json_field(sidecars["report"], "checkpoint") == out.name
    check_output_files([out, *sidecars.values()], kind="merged checkpoint", earlier=earlier, replace=force)
    merged, report = merge_run(
        adapter,
        spec,
        base=base,
        allow_base_mismatch=allow_base_mismatch,
        device=pick_device(device),
        progress=progress,
    )
    written = write_merged(merged, report, out, source=str(adapter))
    click.echo(report.summary())
    for path in written:
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="artifact directory (new or empty)"
)
@click.option(
    "--force", is_flag=True, help="replace an earlier artifact directory at --out (never another folder)"
)
@click.option("--model", help="variant of a SAM checkpoint file (vit_b, vit_l, vit_h, vit_tiny)")
@options_from(ExportSpec)
@options_from(MergeSpec)
@options_from(EngineSpec)
@base_options
@progress_option
def export(source, out, force, model, base, allow_base_mismatch, progress, **options) -> None:
    """ONNX / TensorRT / Triton artifacts from an adapter directory or a SAM checkpoint file."""
    from naslora_deploy.core.merging.report import MergeReport
    from naslora_deploy.exporters.export import export as run_export

    spec = export_spec_from(options)
    artifacts, manifest, repository = run_export(
        source, out, spec, model, base, allow_base_mismatch, progress, force=force
    )
    report = (manifest["merge"] or {}).get("report")
    if report:
        click.echo(MergeReport.from_dict(report).summary())
    for name, entry in manifest["files"].items():
        click.echo(f"wrote {artifacts / name} ({entry['bytes'] / 1e6:.1f} MB)")
    for name, command in manifest["trtexec"].items():
        click.echo(f"trtexec equivalent for {name}: {command}")
    if spec.format != "peft":  # a PEFT adapter folder has its own adapter_config.json, no manifest
        click.echo(f"manifest: {artifacts / 'manifest.json'}")
    if repository is not None:
        click.echo(
            f"Triton model repository: {repository} (serve with: tritonserver "
            f"--model-repository={repository})"
        )


@cli.command()
@click.argument("artifacts", type=click.Path(path_type=Path))
@click.option(
    "--images", type=click.Path(path_type=Path), help="image folder (default: seeded generated images)"
)
@click.option("--count", type=Bounded(int, 1), default=2, show_default=True, help="images to compare on")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--tolerance",
    type=Bounded(float, 0, open_low=True),
    help="max abs error allowed on the embeddings, in place of the precision's criteria (printed above "
    "the table: fp32 max abs 1e-4, fp16 rel 3e-2)",
)
@click.option(
    "--against-plain-sam", is_flag=True, help="structure and latency against plain build_sam(variant)"
)
@click.option(
    "--repeats",
    type=Bounded(int, 1),
    default=30,
    show_default=True,
    help="alternating latency runs (medians are quoted)",
)
@json_option
@progress_option
def verify(
    artifacts, images, count, seed, tolerance, against_plain_sam, repeats, json_target, progress
) -> None:
    """Prove the artifacts compute what the PyTorch model computes (and, dense, that they are plain SAM)."""
    from naslora_deploy.exporters.verify import plain_sam_proof, proof_summary, verify_parity

    report = verify_parity(artifacts, images, count, seed, tolerance, progress)
    say(json_target, report.table())
    result = report.to_dict()
    if against_plain_sam:
        proof = plain_sam_proof(artifacts, repeats)
        result["against_plain_sam"] = proof
        say(json_target, "\n" + proof_summary(proof))
    emit_json(json_target, result)
    if not report.passed:
        missed = sum(not row.passed for row in report.rows)
        click.echo(f"verify: {missed} output(s) miss the pass criteria printed above the table", err=True)
        raise click.exceptions.Exit(1)


def _numbers(flag: str, text: str, counts: Tuple[int, ...], form: str) -> List[float]:
    """Comma-separated finite numbers, as many as one of ``counts``, or one clear ``ValueError``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{flag} {text!r}: give {form} as finite numbers")
    return values


def _points(text: Optional[str]) -> Optional[List[Tuple[float, ...]]]:
    if not text:
        return None
    points = [tuple(_numbers("--points", item, (2, 3), "x,y or x,y,label")) for item in text.split(";")]
    if any(len(p) == 3 and p[2] not in (0.0, 1.0) for p in points):
        raise ValueError(f"--points {text!r}: a label is 1 (object) or 0 (background)")
    return points


def _box(text: Optional[str]) -> Optional[List[float]]:
    if not text:
        return None
    x0, y0, x1, y1 = _numbers("--box", text, (4,), "x0,y0,x1,y1")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"--box {text!r}: x1 must exceed x0 and y1 must exceed y0")
    return [x0, y0, x1, y1]


def _tiling(tile: Optional[int], overlap: Optional[int], prompted: bool) -> Optional[Tuple[int, int]]:
    """``--tile``/``--overlap`` as (tile, overlap), None without ``--tile``, or one ``ValueError`` line."""
    from naslora_deploy.runtime.predict import TILED_PROMPTS
    from naslora_deploy.runtime.tiling import check_tiling

    if tile is None:
        if overlap is not None:
            raise ValueError("--overlap needs --tile SIZE (it is the pixels that neighbouring windows share)")
        return None
    if prompted:
        raise ValueError(TILED_PROMPTS)
    overlap = tile // 8 if overlap is None else overlap
    check_tiling(tile, overlap, ("--tile", "--overlap"))
    return tile, overlap


def _batch_sizes(ctx, param, text: str) -> List[int]:
    """``--batch-sizes 1,4``: whole numbers >= 1, or click's usage error."""
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"give comma-separated whole numbers >= 1, got {text!r}")
    return sizes


@cli.command()
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
def predict(
    artifacts, inputs, out, points, box, tile, overlap, everything, backend, device, progress, **rest
):
    """Segment images (files, folders or globs) with an artifact directory; no torch needed.

    Outputs are named after each input's path (``x.png`` -> ``x.png_mask.png``) and
    results.jsonl is appended to; unusable inputs are listed and make the exit code 1.
    """
    from naslora_deploy.runtime.predict import check_out, gather_inputs, predict_files

    prompts = _points(points), _box(box)
    tiling = _tiling(tile, overlap, prompts != (None, None))
    spec = _everything(everything, rest, prompted=prompts != (None, None) or tiling is not None)
    found = gather_inputs(inputs)
    if not found.files:
        _report_skipped(found.problems if len(found.problems) > 1 else [])
        raise NasloraError(f"nothing to segment: {_failed(found.problems)}")
    check_out(out, found.files, found.folders)  # before the artifacts are opened
    segmenter = _segmenter(artifacts, backend, device)
    click.echo(f"backend: {segmenter.backend_name}; {len(found.files)} image(s)")
    done, errors = predict_files(
        segmenter, found.files, out, *prompts, progress, tiling=tiling, everything=spec
    )
    _report_skipped(found.problems + errors)
    click.echo(f"wrote masks, overlays and results.jsonl for {done} image(s) to {out}")
    if found.problems or errors:
        click.echo(f"naslora-deploy predict: error: {_failed(found.problems + errors)}", err=True)
        raise click.exceptions.Exit(1)


def _everything(everything: bool, options: Dict[str, object], prompted: bool):
    """``--everything`` and its settings as an ``EverythingSpec`` (None without the flag), or one line."""
    from naslora_deploy.runtime.predict import EVERYTHING_ALONE

    spec = EverythingSpec(**fields_of(EverythingSpec, options))
    if not everything:
        if spec != EverythingSpec():
            changed = next(f for f in EVERYTHING_OPTIONS if getattr(spec, f) != getattr(EverythingSpec(), f))
            raise ValueError(f"--{changed.replace('_', '-')} sets everything mode: add --everything")
        return None
    if prompted:
        raise ValueError(EVERYTHING_ALONE)
    return spec


def _report_skipped(problems: List[str]) -> None:
    for problem in problems:
        click.echo(f"naslora-deploy predict: skipped {problem}", err=True)


def _failed(problems: List[str]) -> str:
    """One line for the inputs that could not be used: the problem itself, or how many (listed above)."""
    return problems[0] if len(problems) == 1 else f"{len(problems)} inputs could not be used (listed above)"


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--batch-sizes", default="1", show_default=True, callback=_batch_sizes, help="comma-separated batch sizes"
)
@click.option(
    "--prompts",
    metavar="COUNTS",
    callback=lambda ctx, param, value: None if value is None else _batch_sizes(ctx, param, value),
    help="also time the predictor: one embedding, then N box prompts in one call (comma-separated N)",
)
@click.option("--runs", type=Bounded(int, 1), default=20, show_default=True)
@click.option("--warmup", type=Bounded(int, 0), default=3, show_default=True)
@runtime_options
@json_option
def bench(artifacts, batch_sizes, prompts, runs, warmup, backend, device, json_target) -> None:
    """Latency, throughput and memory; two artifact directories alternate run by run (A B).

    ``--prompts N,M``: also the predictor path (one embedding, N box prompts in one
    decoder call) against N one-shot calls; its rows (key ``prompts``) follow the batch rows.
    """
    from naslora_deploy.runtime.bench import bench as run_bench
    from naslora_deploy.runtime.bench import bench_prompts, format_prompt_rows, format_rows

    if len(artifacts) > 2:
        raise ValueError("bench compares at most two artifact directories (A B)")
    segmenters = [_segmenter(a, backend, device) for a in artifacts]
    if prompts and any(s.point_slots is None for s in segmenters):
        raise ValueError("--prompts times the prompt decoder: export the artifacts with --prompts")
    rows = run_bench(segmenters, batch_sizes, runs, warmup)
    say(json_target, format_rows(rows))
    if prompts:
        prompt_rows = bench_prompts(segmenters, prompts, runs, warmup)
        say(json_target, format_prompt_rows(prompt_rows))
        rows = rows + prompt_rows
    emit_json(json_target, rows)


@cli.command()
@options_from(DemoConfig)
@progress_option
def demo(**options) -> None:
    """Synthetic data -> train vit_tiny (NAS-PC-LoRA) -> evaluate -> merge both ways, in 1-2 CPU minutes."""
    from naslora_deploy.training.demo import run_demo

    run_demo(DemoConfig(**fields_of(DemoConfig, options)))


def _command_name(argv: Sequence[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: run a command; user errors become one line and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prefix = f"naslora-deploy {_command_name(argv)}".rstrip()
    previous_format = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        code = cli.main(
            args=argv, prog_name="naslora-deploy", standalone_mode=False
        )  # Exit(n) comes back as n
        return code if isinstance(code, int) else 0
    except click.ClickException as exc:  # usage errors: click's own message and exit code (2)
        exc.show()
        return exc.exit_code
    except (NasloraError, ValueError) as exc:
        click.echo(f"{prefix}: error: {exc}", err=True)
        return 2
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo(f"{prefix}: interrupted", err=True)
        return 130
    finally:
        warnings.formatwarning = previous_format


if __name__ == "__main__":
    sys.exit(main())
