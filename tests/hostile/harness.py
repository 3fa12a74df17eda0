"""The hostile suite's one check: an attack row -> its exit code, one clear line, no traceback.

A row (``Attack``) says how to build the bad input in a fresh temporary folder and what
to run on it: either command-line arguments (``argv``), run in-process through
``naslora_deploy.cli.main`` exactly as the console script does, or a library call
(``call``) that must raise ``NasloraError``. ``after`` checks what must still hold
afterwards (a user's file untouched, no half-written artifact). Each test file under
``tests/hostile/`` holds one table of rows for some of issue 13's items and drives it
through ``check_attack``; ``test_hostile_coverage.py`` counts the rows and the items they cover.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from conftest import train_args

from naslora_deploy.common.errors import NasloraError

USER_ERROR = 2  # the exit code of every user error (cli.main)


@dataclass(frozen=True)
class Attack:
    """One hostile input and the behaviour expected of it.

    ``name``: the test id. ``item``: the issue-13 item (1-12) it belongs to.
    ``argv(tmp, ctx)`` builds the input under ``tmp`` and returns CLI arguments, or
    ``call(tmp, ctx)`` does a library call that must raise ``NasloraError``.
    ``exit_code``: what ``main`` must return (ignored for ``call``). ``phrase``: a
    case-insensitive part of the message (stderr for CLI rows; "" checks nothing).
    ``after(tmp, ctx)``: assertions on the files afterwards.
    ``ctx`` holds the session's fixtures: ``adapter`` (a vit_tiny run directory),
    ``artifacts`` (its exported artifact directory), ``binary_data``, ``multiclass_data``,
    ``photo`` (an (H, W, 3) uint8 array).
    """

    name: str
    item: int
    phrase: str
    argv: Optional[Callable[[Path, dict], List[str]]] = None
    call: Optional[Callable[[Path, dict], object]] = None
    exit_code: int = USER_ERROR
    after: Optional[Callable[[Path, dict], None]] = None

    def __post_init__(self) -> None:
        assert (self.argv is None) != (self.call is None), f"{self.name}: give argv or call, not both"
        assert 1 <= self.item <= 12, f"{self.name}: item {self.item} is not one of issue 13's twelve"


def check_attack(attack: Attack, tmp: Path, ctx: dict, capsys) -> None:
    """Run one row; fail on a traceback, a wrong exit code, a missing phrase or a failed ``after``."""
    from naslora_deploy.cli import main

    capsys.readouterr()
    if attack.call is not None:
        try:
            attack.call(tmp, ctx)
        except NasloraError as exc:
            message = str(exc)
            assert "\n" not in message.strip(), f"{attack.name}: the message is not one line: {message!r}"
            assert attack.phrase.lower() in message.lower(), f"{attack.name}: {message!r}"
        else:
            raise AssertionError(f"{attack.name}: no NasloraError raised")
    else:
        code = main(attack.argv(tmp, ctx))  # an uncaught exception here is the traceback we forbid
        captured = capsys.readouterr()
        output = captured.out + captured.err
        assert "Traceback" not in output, f"{attack.name}: {output}"
        assert code == attack.exit_code, f"{attack.name}: exit {code}, expected {attack.exit_code}: {output}"
        if attack.exit_code != 0:  # one line per problem (predict reports each skipped file on its own)
            assert captured.err.strip(), f"{attack.name}: a non-zero exit without a word on stderr"
        assert attack.phrase.lower() in output.lower(), f"{attack.name}: {attack.phrase!r} not in {output!r}"
    if attack.after is not None:
        attack.after(tmp, ctx)


def copy_into(source: Path, tmp: Path, name: Optional[str] = None) -> Path:
    """A private copy of a fixture directory or file under ``tmp`` (rows may damage it)."""
    target = tmp / (name or Path(source).name)
    if Path(source).is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    return target


def train_argv(ctx: dict, out: Path, *extra: str) -> List[str]:
    """``train`` of vit_tiny on the session's binary data set into ``out``, plus ``extra`` options."""
    return train_args(ctx["binary_data"], out, "--no-progress", *extra)
