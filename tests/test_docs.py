"""Every naslora-deploy command line in README.md and examples/*.md parses against the real CLI.

Command lines come from ```bash blocks (each line, continuations joined, split at
``&&``, ``|`` and ``;``) and from inline code spans that start with ``naslora-deploy``,
``torchrun``/``python -m naslora_deploy`` or a command name followed by an argument.
Each is parsed by the command's own click parser (option names, value types, choices,
bounds and option callbacks); block commands must be complete (every required option
given) and ``train``, ``export`` and ``demo`` lines must also build a valid
``TrainConfig``, ``ExportSpec`` or ``DemoConfig``, so a renamed flag, a bad value or a
``train --model vit_b`` without weights fails here. Inline spans may be fragments
("`merge --mode dense`"): only what they name is checked.
"""

import re
import shlex
from pathlib import Path
from typing import List, NamedTuple

import click
import pytest

from naslora_deploy.cli import DemoConfig, TrainConfig, cli, export_spec_from, fields_of

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "examples").glob("*.md"))]
SEPARATORS = {"&&", "||", "|", ";", "&"}


class DocCommand(NamedTuple):
    """One documented command line: where it is, its words after the program, whether it is whole."""

    where: str
    argv: List[str]
    complete: bool

    def __str__(self) -> str:
        return f"{self.where}: naslora-deploy {shlex.join(self.argv)}"


def _ours(words: List[str]):
    """The arguments after the program when ``words`` run naslora-deploy, else None."""
    if not words:
        return None
    if Path(words[0]).name == "naslora-deploy":
        return words[1:]
    for i in range(len(words) - 1):  # python -m naslora_deploy ..., torchrun [opts] -m naslora_deploy ...
        if (
            words[i] == "-m"
            and words[i + 1] == "naslora_deploy"
            and Path(words[0]).name.startswith(("python", "torchrun"))
        ):
            return words[i + 2 :]
    return None


def _commands_in(line: str) -> List[List[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    words, found = [], []
    for token in [*lexer, ";"]:
        if token in SEPARATORS:
            argv = _ours(words)
            if argv is not None:
                found.append([w for w in argv if w != "..."])  # "..." marks options left out
            words = []
        else:
            words.append(token)
    return found


def documented_commands() -> List[DocCommand]:
    """Every naslora-deploy command line in the docs, in document order."""
    commands = []
    for doc in DOCS:
        text = doc.read_text()
        name = doc.relative_to(ROOT).as_posix()
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                commands += [DocCommand(name, argv, True) for argv in _commands_in(line)]
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`([^`]+)`", prose):  # a span may wrap onto the next line
            span = " ".join(span.split())
            first = span.split()[0]
            if " " in span and first in cli.commands:  # "train --data coco/ --category person"
                span = "naslora-deploy " + span
            commands += [DocCommand(name, argv, False) for argv in _commands_in(span)]
    return commands


def check_command(command: DocCommand) -> None:
    """Parse ``command`` as the CLI would; raise click's error (or the config's ValueError) if it fails."""
    argv = command.argv
    if argv in (["--help"], ["-h"], ["--version"]):
        return
    if not argv or argv[0] not in cli.commands:
        raise click.UsageError(f"no command {argv[:1]} (commands: {', '.join(cli.commands)})")
    name, sub = argv[0], cli.commands[argv[0]]
    try:
        params = sub.make_context(name, argv[1:]).params
    except click.exceptions.Exit as exc:  # "`train --help`": click printed the help and ended the parse
        if exc.exit_code == 0:
            return
        raise
    except (click.MissingParameter, click.BadOptionUsage) as exc:
        fragment_gap = isinstance(exc, click.MissingParameter) or "requires an argument" in exc.message
        if command.complete or not fragment_gap:
            raise
        return  # a fragment ("`export --out`"): what it names parsed before the gap was found
    if name == "train":
        TrainConfig(**fields_of(TrainConfig, params)).validate()
    elif name == "export":
        export_spec_from(params)
    elif name == "demo":
        DemoConfig(**fields_of(DemoConfig, params))


def check_message(command: DocCommand):
    """What the CLI would say about ``command``, or None where it parses."""
    try:
        check_command(command)
    except (click.ClickException, ValueError) as exc:
        return exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
    return None


COMMANDS = documented_commands()


def test_the_docs_have_commands_from_every_file():
    where = {c.where for c in COMMANDS}
    assert where == {d.relative_to(ROOT).as_posix() for d in DOCS}, where
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where}:{i}" for i, c in enumerate(COMMANDS)])
def test_documented_command_parses_against_the_cli(command):
    message = check_message(command)
    if message is not None:
        pytest.fail(f"{command}\n  -> {message}")


@pytest.mark.parametrize(
    "argv, complete, error",
    [
        (["export", "runs/a", "--out", "x", "--calibraton", "d"], True, "No such option '--calibraton'"),
        (["train", "--data", "d", "--out", "o", "--model", "vit_b"], True, "needs SAM's pretrained weights"),
        (["train", "--data", "d", "--model", "vit_tiny"], True, "Missing option '--out'"),
        (["predict", "--everything", "--tile", "x"], False, "--tile must be a whole number, got 'x'"),
        (["bench", "a", "--runs", "0"], True, "must be >= 1"),
        (["segment", "a"], True, "no command"),
    ],
)
def test_the_check_fails_on_what_a_user_would_hit(argv, complete, error):
    assert error in (check_message(DocCommand("test", argv, complete)) or "it parsed")


def test_shell_lines_are_split_into_commands():
    line = "python3 -m venv .venv && .venv/bin/naslora-deploy demo --out demo-out  # the main job"
    assert _commands_in(line) == [["demo", "--out", "demo-out"]]
    assert _commands_in("torchrun --nproc_per_node 4 -m naslora_deploy train ...") == [["train"]]
    assert _commands_in("cd artifacts; trtexec --onnx=a.onnx | tee log") == []
