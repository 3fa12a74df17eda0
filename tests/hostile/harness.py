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

import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from conftest import train_args

from naslora_deploy.common.errors import NasloraError

USER_ERROR = 2  # the exit code of every user error (cli.main)
ITEMS = {13: 12, 27: 8}  # issue -> how many items (issue 13) or defect classes (issue 27) it lists
GUARD_BYTES = 8 << 30  # address space of a guarded subprocess: importing torch alone reserves ~3.3 GB


@dataclass(frozen=True)
class Attack:
    """One hostile input and the behaviour expected of it.

    ``name``: the test id. ``item``: the item it belongs to: one of issue 13's twelve, or with
    ``issue=27`` one of issue 27's eight defect classes.
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
    issue: int = 13

    def __post_init__(self) -> None:
        assert (self.argv is None) != (self.call is None), f"{self.name}: give argv or call, not both"
        assert self.issue in ITEMS, f"{self.name}: issue {self.issue} has no hostile table"
        assert 1 <= self.item <= ITEMS[self.issue], f"{self.name}: no item {self.item} in issue {self.issue}"


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


def run_guarded(
    argv: List[str], address_space: int = GUARD_BYTES, timeout: float = 300, **kwargs
) -> subprocess.CompletedProcess:
    """``naslora-deploy ARGV`` in a subprocess whose address space is capped at ``address_space``.

    For inputs that declare huge sizes: if a regression allocates what the input
    declares, the allocation fails inside the cap (a traceback or a kill, which the
    test then reports) instead of taking the machine down.
    """

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    command = [sys.executable, "-m", "naslora_deploy", *map(str, argv)]
    return subprocess.run(command, preexec_fn=cap, capture_output=True, text=True, timeout=timeout, **kwargs)


def check_guarded(result: subprocess.CompletedProcess, phrase: str, exit_code: int = USER_ERROR) -> None:
    """A guarded run ended with ``exit_code``, one line on stderr holding ``phrase``, no traceback."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "MemoryError" not in output, output[-2000:]
    assert result.returncode == exit_code, f"exit {result.returncode}, expected {exit_code}: {output[-2000:]}"
    if exit_code != 0:
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert errors, f"a non-zero exit without an error line: {result.stderr[-2000:]}"
    assert phrase.lower() in output.lower(), f"{phrase!r} not in {output[-2000:]!r}"
