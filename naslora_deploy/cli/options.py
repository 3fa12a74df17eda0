"""The command line's options, declared once: generated from dataclass fields (``options_from``)
or shared by several commands (``--device``, ``--progress``, ``--json``, ``--overwrite``,
``--checkpoint``, ``--backend``).

One vocabulary, the same in every command (decided in issue 28):

  meaning                    name                           old spelling (hidden, warned, one release)
  -------------------------  -----------------------------  -------------------------------------------
  base SAM weights           --checkpoint                   --base (train, eval, merge, export)
  replace an earlier output  --overwrite                    --force (wherever --overwrite is)
  a count (a number)         --count, --test-count          demo --images, demo --test-images
                             --prompt-counts                bench --prompts
  repetitions of a timing    --repeats                      bench --runs
  a folder or file           --data (a data set),           -
                             --images (an image folder),
                             --calibration, --out
  results as JSON            --json FILE ('-': stdout)      -  (every command that produces a result)
  a part to add              export --prompts (a flag)      -

An old spelling still works and prints one line, ``warning: --runs is deprecated; use --repeats``
(``CliOption``). ``train --help`` lists its options in sections (``SectionedCommand``) named by
each declaration's ``group`` (``training.config.grouped``), help texts coming from the same declarations.

Torch-free (``tests/test_architecture.py``): ``predict`` and ``bench`` import it where torch is absent.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import click
from click.core import ParameterSource

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
OLD_SPELLINGS = {"--overwrite": ("--force",), "--checkpoint": ("--base",)}  # of every option of these names
TYPED = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)  # given by the user, not defaulted
OLD_TYPED = "naslora_deploy.old_spellings"  # ctx.meta: {option name: the old spelling typed}


class CliOption(click.Option):
    """A click option with a ``--help`` section (``group``) and old spellings (``old``).

    An old spelling is parsed as a hidden option of its own that hands its value to this one
    and prints one deprecation line; it never appears in ``--help``. Giving both spellings is
    a usage error.
    """

    def __init__(self, *args, group: Optional[str] = None, old: Sequence[str] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.group, self.old = group, tuple(old)

    def _old_dest(self, spelling: str) -> str:
        return f"{self.name}\0{spelling}"  # the parser's key for the value given under ``spelling``

    def add_to_parser(self, parser, ctx) -> None:
        """Register the option, then each old spelling under a key of its own (same action and value)."""
        super().add_to_parser(parser, ctx)
        names = self.opts, self.secondary_opts, self.name
        for spelling in self.old:
            self.opts, self.secondary_opts, self.name = [spelling], [], self._old_dest(spelling)
            try:
                super().add_to_parser(parser, ctx)
            finally:
                self.opts, self.secondary_opts, self.name = names

    def consume_value(self, ctx, opts):
        """The value given under the new name, or under an old one (with its deprecation line)."""
        typed = [spelling for spelling in self.old if self._old_dest(spelling) in opts]
        if typed:
            new = self.opts[0]
            if self.name in opts or len(typed) > 1:
                raise click.BadOptionUsage(
                    typed[0], f"{typed[0]} is the old spelling of {new}: give {new} once"
                )
            click.echo(f"warning: {typed[0]} is deprecated; use {new}", err=True)
            ctx.meta.setdefault(OLD_TYPED, {})[self.name] = typed[0]
            opts = {**opts, self.name: opts[self._old_dest(typed[0])]}
        return super().consume_value(ctx, opts)

    def get_error_hint(self, ctx) -> str:
        """How a bad value's message names the option: as the user typed it."""
        typed = ctx.meta.get(OLD_TYPED, {}).get(self.name) if ctx is not None else None
        return f"'{typed}' (now {self.opts[0]})" if typed else super().get_error_hint(ctx)


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options in ``sections``, each option in its ``group``'s
    (``CliOption``); ``--help`` itself goes with ``output``, an option of no known group under "Other"."""

    def __init__(self, *args, sections: Sequence[str] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sections = tuple(sections)

    def format_options(self, ctx, formatter) -> None:
        """One help section per group, in ``sections`` order."""
        records: Dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and isinstance(param, click.Option):
                is_help = param is self.get_help_option(ctx)
                group = getattr(param, "group", None) or ("output" if is_help else None)
                records.setdefault(group if group in self.sections else "other", []).append(record)
        for group in (*self.sections, "other"):
            if group in records:
                with formatter.section(f"{group.capitalize()} options"):
                    formatter.write_dl(records[group])


def typed_options(ctx: click.Context, options: Dict[str, object]) -> Dict[str, object]:
    """The options the user gave (command line or environment), leaving out those left at their default."""
    return {name: value for name, value in options.items() if ctx.get_parameter_source(name) in TYPED}


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
    shared = {  # the declaration's help section and old spellings (``CliOption``)
        "cls": CliOption,
        "group": field.metadata.get("group"),
        "old": tuple(field.metadata.get("old", ())) + OLD_SPELLINGS.get(flag, ()),
        "help": meta["help"],
    }
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    args = typing.get_args(hint)
    kind = next(a for a in args if a is not type(None)) if type(None) in args else hint
    if kind is bool:
        if field.default is not False:  # None (decide later) or True: a --x/--no-x pair
            return click.option(f"{flag}/--no-{flag[2:]}", field.name, default=None, **shared)
        return click.option(flag, field.name, is_flag=True, default=field.default, **shared)
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
        default = (
            {}
            if required
            else {"default": field.default, "show_default": meta["shown"] or field.default is not None}
        )
        typed = {"type": click_type, "required": required, **default}
    if unset:  # this command decides the value itself when the option is not given (or needs it itself)
        typed.update(default=None, show_default=False, required=False)
    return click.option(flag, field.name, metavar=meta["metavar"], **shared, **typed)


def options_from(
    cls,
    only: Optional[Sequence[str]] = None,
    helps: Optional[Dict[str, str]] = None,
    unset: Sequence[str] = (),
) -> Callable:
    """Decorator: one click option per field of ``cls`` that carries ``common.options.option`` metadata.

    ``only``: just these fields. ``helps``: another command's wording of a field's help (its type,
    choices and bounds stay the declaration's). ``unset``: fields whose option defaults to None
    here and is never required (the command decides, e.g. ``eval --prompt``: as the run was trained).
    A field's metadata may also name its ``--help`` section (``"group"``) and its old spellings
    (``"old"``: hidden, each use warned, ``CliOption``).
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
    cls=CliOption,
    group="output",
    help="progress bars (default: on a terminal only; logs get one line per event)",
)
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    callback=lambda ctx, param, value: check_device(value),
    cls=CliOption,
    group="hardware",
    help="auto, cpu, cuda, cuda:N or mps",
)
json_option = click.option(
    "--json",
    "json_target",
    metavar="FILE",
    cls=CliOption,
    group="output",
    help="write the results as JSON to FILE ('-': stdout); an existing FILE needs --overwrite, a folder "
    "is refused",
)


def overwrite_option(what: str) -> Callable:
    """``--overwrite`` (old spelling ``--force``): replace ``what``, an earlier output of this command."""
    return click.option(
        "--overwrite", "overwrite", is_flag=True, cls=CliOption, old=OLD_SPELLINGS["--overwrite"], help=what
    )


adapter_argument = click.argument("adapter", type=click.Path(path_type=Path))
base_options = _compose(
    click.option(
        "--checkpoint",
        "base",
        cls=CliOption,
        old=OLD_SPELLINGS["--checkpoint"],
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
