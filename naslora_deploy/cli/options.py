"""The command line's options, declared once: generated from dataclass fields (``options_from``)
or shared by several commands (``--device``, ``--progress``, ``--json``, ``--overwrite``,
``--checkpoint``, ``--backend``).

One name per meaning everywhere: ``--overwrite`` replaces an earlier output (``--force``, its
old spelling in merge and export, still works), ``--checkpoint`` names the base SAM checkpoint
(``--base``, its old spelling outside train, still works); the old spellings are hidden aliases.

Torch-free (``tests/test_architecture.py``): ``predict`` and ``bench`` import it where torch is absent.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import click

from naslora_deploy.common.io import atomic_write_text
from naslora_deploy.common.lazy import lazy_import
from naslora_deploy.common.options import bound_error, check_device
from naslora_deploy.common.outputs import check_file_output
from naslora_deploy.core.merging.spec import MergeSpec
from naslora_deploy.exporters.specs import EngineSpec, ExportSpec
from naslora_deploy.runtime import Segmenter
from naslora_deploy.runtime.backends import RUNTIME_BACKENDS
from naslora_deploy.runtime.everything import EverythingSpec

BACKENDS = RUNTIME_BACKENDS + ("torch",)  # torch: built by exporters.torch_backend and handed to the runtime
HIDDEN_ALIASES = {"--overwrite": ("--force",), "--checkpoint": ("--base",)}  # old spellings scripts use


class HiddenAlias(click.Option):
    """An option whose first name is the documented one; its other names (old spellings) are
    accepted but left out of ``--help``."""

    def get_help_record(self, ctx):
        """The help line, naming only the first spelling."""
        names, self.opts = self.opts, self.opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = names


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


def _option_for(field: dataclasses.Field, hint, help: Optional[str] = None, unset: bool = False) -> Callable:
    meta = {**field.metadata["cli"], **({"help": help} if help else {})}
    flag = meta["flag"] or "--" + field.name.replace("_", "-")
    aliases = HIDDEN_ALIASES.get(flag, ())
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    args = typing.get_args(hint)
    kind = next(a for a in args if a is not type(None)) if type(None) in args else hint
    if kind is bool:
        if field.default is not False:  # None (decide later) or True: a --x/--no-x pair
            return click.option(f"{flag}/--no-{flag[2:]}", field.name, default=None, help=meta["help"])
        return click.option(
            flag,
            *aliases,
            field.name,
            is_flag=True,
            default=field.default,
            help=meta["help"],
            cls=HiddenAlias,
        )
    if meta["parse"] is not None:  # a string on the command line, the field's own type after parsing
        parse = meta["parse"]
        typed = {
            "type": str,
            "default": None,
            "show_default": meta["shown"],
            "callback": lambda ctx, param, value: None if value is None else parse(value),
        }
    else:
        click_type = click.Choice(meta["choices"]) if meta["choices"] else kind
        if kind in (int, float) and not meta["choices"]:  # finite, and within the field's declared bounds
            click_type = Bounded(kind, meta["low"], meta["high"], meta["open_low"])
        # a required option gets no default at all: click >= 8.3 takes an explicit None as a given default
        default = {} if required else {"default": field.default, "show_default": field.default is not None}
        typed = {"type": click_type, "required": required, **default}
    if unset:  # this command decides the value itself when the option is not given
        typed.update(default=None, show_default=False)
    return click.option(
        flag, *aliases, field.name, metavar=meta["metavar"], help=meta["help"], cls=HiddenAlias, **typed
    )


def options_from(
    cls,
    only: Optional[Sequence[str]] = None,
    helps: Optional[Dict[str, str]] = None,
    unset: Sequence[str] = (),
) -> Callable:
    """Decorator: one click option per field of ``cls`` that carries ``common.options.option`` metadata.

    ``only``: just these fields. ``helps``: another command's wording of a field's help (its type,
    choices and bounds stay the declaration's). ``unset``: fields whose option defaults to None
    here (the command decides, e.g. ``eval --prompt``: as the run was trained).
    """
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if "cli" in f.metadata and (only is None or f.name in only)]
    helps = helps or {}

    def decorate(func: Callable) -> Callable:
        for field in reversed(fields):
            func = _option_for(field, hints[field.name], helps.get(field.name), field.name in unset)(func)
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
    "--json",
    "json_target",
    metavar="FILE",
    help="write the results as JSON to FILE ('-': stdout); an existing FILE needs --overwrite, a folder "
    "is refused",
)


def overwrite_option(what: str) -> Callable:
    """``--overwrite`` (hidden alias ``--force``): replace ``what``, an earlier output of this command."""
    return click.option("--overwrite", "--force", "overwrite", is_flag=True, cls=HiddenAlias, help=what)


adapter_argument = click.argument("adapter", type=click.Path(path_type=Path))
base_options = _compose(
    click.option(
        "--checkpoint",
        "--base",
        "base",
        cls=HiddenAlias,
        help="the base SAM checkpoint (default: the one recorded at training)",
    ),
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


def check_outputs(overwrite: bool, **files: Optional[Path]) -> None:
    """Before any work: each output file option (``json=...``, ``plot=...``) names no folder, and
    no existing file unless ``--overwrite`` (``common.outputs.check_file_output``)."""
    for option, path in files.items():
        check_file_output(path, overwrite, f"--{option}")


def emit_json(target: Optional[str], data, overwrite: bool = False) -> None:
    """``--json``: write ``data`` to the file ``target`` (an existing one only with ``overwrite``),
    or to stdout for ``-``."""
    if target is None:
        return
    text = json.dumps(data, indent=2)
    if target == "-":
        click.echo(text)
        return
    check_file_output(target, overwrite)  # again: it may have appeared while the command ran
    try:
        atomic_write_text(Path(target), text + "\n", replace=overwrite)
    except FileExistsError:
        check_file_output(target, overwrite)
    click.echo(f"wrote {target}", err=True)


def say(json_target: Optional[str], text: str) -> None:
    """Human-readable output, kept off stdout when stdout carries JSON (``--json -``)."""
    click.echo(text, err=json_target == "-")


def load_run(adapter, base, allow_base_mismatch, device):
    """``load_adapter`` on the device ``--device`` names."""
    from naslora_deploy.core.runs.checkpoint import load_adapter
    from naslora_deploy.training.acceleration import pick_device

    return load_adapter(adapter, base, allow_base_mismatch, device=pick_device(device))


def open_artifacts(artifacts, backend: str, device: str):
    """A ``Segmenter`` on ``--backend``: the runtime's own, or torch (``exporters.torch_backend``, which
    needs torch: imported only for that backend, so the others run where torch is absent)."""
    if backend == "torch":
        lazy_import("torch", "pip:torch", "--backend torch")
        from naslora_deploy.exporters.torch_backend import open_segmenter

        return open_segmenter(artifacts, backend, device)

    return Segmenter.open(artifacts, backend, device)
