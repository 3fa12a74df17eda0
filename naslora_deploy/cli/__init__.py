"""The ``naslora-deploy`` command line: train, eval, inspect, merge, export, verify, predict, bench, demo.

One thin module per group of commands (``train``, ``deploy``, ``run``); each command only reads
its options and calls the room that does the work. Options that set a dataclass
(``TrainConfig``, ``DemoConfig``, ``ExportSpec``, ``MergeSpec``, ``EngineSpec``) are generated
from its fields (``options``). Only torch-free modules are imported at module level, here and
in ``options`` and ``run`` (the architecture test checks it): ``predict`` and ``bench`` run where
torch is absent.
"""

from __future__ import annotations

import sys
import warnings
from typing import List, Optional, Sequence

import click

from naslora_deploy import __version__
from naslora_deploy.cli import deploy, device, run, train
from naslora_deploy.cli.options import export_spec_from, fields_of
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import ERRNO_KINDS, describe_command, release_outputs
from naslora_deploy.common.lazy import missing_train_extra
from naslora_deploy.training.config import DemoConfig, TrainConfig

__all__ = ["cli", "main", "export_spec_from", "fields_of", "TrainConfig", "DemoConfig"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="naslora-deploy")
def cli() -> None:
    """Fine-tune SAM with NAS-LoRA, merge the adapters, export to ONNX/TensorRT and run it."""


for command in (
    train.train,
    train.evaluate,
    train.inspect,
    deploy.merge,
    deploy.export,
    deploy.verify,
    run.predict,
    run.bench,
    device.build_engines,
    train.demo,
):
    cli.add_command(command)


def _command_name(argv: Sequence[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: run a command; user errors (and a full, read-only or closed file system
    met outside the writers that name it themselves) become one line and exit code 2.
    The outputs the command locked are released when it ends."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prefix = f"naslora-deploy {_command_name(argv)}".rstrip()
    describe_command(" ".join(["naslora-deploy", *argv]))
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
    except ModuleNotFoundError as exc:  # a runtime-only install: torch & co. come with the [train] extra
        if missing_train_extra(exc) is None:
            raise
        click.echo(f"{prefix}: error: {missing_train_extra(exc)}", err=True)
        return 2
    except OSError as exc:
        if exc.errno not in ERRNO_KINDS:  # a full, read-only or closed disk: a path to change, not a bug
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(
            f"{prefix}: error: {where}{exc.strerror}; give a path on a writable disk with room", err=True
        )
        return 2
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo(f"{prefix}: interrupted", err=True)
        return 130
    finally:
        warnings.formatwarning = previous_format
        release_outputs()
