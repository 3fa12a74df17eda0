"""One vocabulary (issue 28): the old spellings as hidden, warned aliases; --json on every command
that produces a result; ``train --help`` in sections whose texts come from the declarations."""

import json
import re

import click
import pytest
from PIL import Image

from naslora_deploy.cli import cli, main
from naslora_deploy.cli.options import CliOption
from naslora_deploy.training.config import SECTIONS, TrainConfig

# command, the rest of a complete command line, old spelling, its value, new spelling, parameter, parsed
MERGE = ["run", "--mode", "dense", "--out", "m.pth"]
RENAMED = [
    ("bench", ["art"], "--runs", "3", "--repeats", "repeats", 3),
    ("bench", ["art"], "--prompts", "1,4", "--prompt-counts", "prompt_counts", [1, 4]),
    ("demo", [], "--images", "3", "--count", "images", 3),
    ("demo", [], "--test-images", "2", "--test-count", "test_images", 2),
    ("train", ["--data", "d", "--out", "o"], "--force", None, "--overwrite", "overwrite", True),
    ("train", ["--data", "d", "--out", "o"], "--base", "b.pth", "--checkpoint", "checkpoint", "b.pth"),
    ("eval", ["run", "--data", "d"], "--base", "b.pth", "--checkpoint", "base", "b.pth"),
    (
        "merge",
        ["run", "--mode", "dense", "--out", "m.pth"],
        "--force",
        None,
        "--overwrite",
        "overwrite",
        True,
    ),
    (
        "merge",
        ["run", "--mode", "dense", "--out", "m.pth"],
        "--base",
        "b.pth",
        "--checkpoint",
        "base",
        "b.pth",
    ),
    ("export", ["run", "--out", "art"], "--force", None, "--overwrite", "overwrite", True),
    ("export", ["run", "--out", "art"], "--base", "b.pth", "--checkpoint", "base", "b.pth"),
    ("inspect", ["run"], "--force", None, "--overwrite", "overwrite", True),
    ("eval", ["run", "--data", "d"], "--force", None, "--overwrite", "overwrite", True),
    ("verify", ["art"], "--force", None, "--overwrite", "overwrite", True),
    ("bench", ["art"], "--force", None, "--overwrite", "overwrite", True),
    ("predict", ["art", "x.png", "--out", "o"], "--force", None, "--overwrite", "overwrite", True),
    ("demo", [], "--force", None, "--overwrite", "overwrite", True),
    ("build-engines", ["art"], "--force", None, "--overwrite", "overwrite", True),
]
# every command that produces a result writes it with --json FILE
RESULT_COMMANDS = [
    "train",
    "eval",
    "inspect",
    "merge",
    "export",
    "verify",
    "predict",
    "bench",
    "demo",
    "build-engines",
]


def _parse(command, argv):
    return cli.commands[command].make_context(command, list(argv)).params


@pytest.mark.parametrize("command, rest, old, value, new, name, parsed", RENAMED, ids=lambda v: str(v))
def test_an_old_spelling_works_with_one_deprecation_line(
    command, rest, old, value, new, name, parsed, capsys
):
    given = [old] if value is None else [old, value]
    assert _parse(command, [*rest, *given])[name] == parsed
    assert capsys.readouterr().err == f"warning: {old} is deprecated; use {new}\n"
    assert _parse(command, [*rest, new, *given[1:]])[name] == parsed  # the new spelling: silent
    assert capsys.readouterr().err == ""
    with pytest.raises(click.UsageError, match=f"{old} is the old spelling of {new}"):
        _parse(command, [*rest, *given, new, *given[1:]])
    assert main([command, "--help"]) == 0
    shown = capsys.readouterr().out
    assert re.search(rf"^\s+{re.escape(new)}\b", shown, flags=re.M) and old not in shown.split()


def test_every_old_spelling_is_in_the_table_above():
    declared = {
        (name, old)
        for name, command in cli.commands.items()
        for param in command.params
        if isinstance(param, CliOption)
        for old in param.old
    }
    assert declared == {(command, old) for command, _, old, *_ in RENAMED}
    for name, command in cli.commands.items():  # an old spelling never shadows a current option
        flags = {flag for param in command.params for flag in param.opts + param.secondary_opts}
        assert not {old for command_name, old in declared if command_name == name} & flags, name


@pytest.mark.parametrize("command", RESULT_COMMANDS)
def test_every_command_that_produces_a_result_takes_json(command):
    assert command in cli.commands, f"no command {command}"
    flags = [opt for param in cli.commands[command].params for opt in param.opts]
    assert "--json" in flags


def _sections(text):
    """{heading: [option flags listed under it]} of a --help text."""
    sections, current = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = sections.setdefault(line[:-1], [])
        elif current is not None:
            found = re.match(r"^  (?:-\w, )?(--[\w-]+)", line)
            if found:
                current.append(found.group(1))
    return sections


def test_train_help_lists_every_option_once_in_six_sections(capsys):
    assert main(["train", "--help"]) == 0
    sections = _sections(capsys.readouterr().out)
    assert list(sections) == [f"{name.capitalize()} options" for name in SECTIONS]
    listed = [flag for flags in sections.values() for flag in flags]
    params = cli.commands["train"].get_params(click.Context(cli.commands["train"]))
    # each option by its long name: click caches --help's option, "-h, --help" once the group has run
    options = [next(flag for flag in p.opts if flag.startswith("--")) for p in params]
    assert sorted(listed) == sorted(options) and len(listed) == len(set(listed))
    assert "--epochs" in sections["Optimisation options"] and "--arch-lr" in sections["Search options"]


def test_train_help_texts_are_the_declarations():
    from naslora_deploy.cli.train import TRAIN_HELPS

    params = {p.name: p for p in cli.commands["train"].params}
    for field in TrainConfig.__dataclass_fields__.values():
        if "cli" in field.metadata:
            param = params[field.name]
            assert param.help == TRAIN_HELPS.get(field.name, field.metadata["cli"]["help"]), field.name
            assert param.group == field.metadata["group"], field.name


def test_predict_json_holds_this_runs_records(binary_artifacts, photo, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(photo).save(image)
    out = tmp_path / "pred"
    args = ["predict", str(binary_artifacts), str(image), str(tmp_path / "missing.png"), "--out", str(out)]
    assert main([*args, "--json", str(tmp_path / "first.json")]) == 1  # one input could not be used
    capsys.readouterr()
    assert main([*args, "--json", "-"]) == 1  # again: results.jsonl now holds two runs' lines
    result = json.loads(capsys.readouterr().out)  # stdout is exactly the JSON
    assert [r["file"] for r in result["results"]] == [str(image)]
    assert len(result["skipped"]) == 1 and "missing.png" in result["skipped"][0]
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_bench_json_with_the_new_spellings(binary_artifacts, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", str(binary_artifacts), "--repeats", "1", "--warmup", "0", "--prompt-counts", "2"]
    assert main([*args, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert any("prompts" in row for row in rows) and len(rows) >= 2


@pytest.mark.parametrize(
    "command, old, new", [("bench", "--runs", "--repeats"), ("demo", "--images", "--count")]
)
def test_a_bad_value_under_an_old_spelling_names_what_was_typed(command, old, new):
    rest = ["art"] if command == "bench" else []
    with pytest.raises(click.BadParameter) as caught:
        _parse(command, [*rest, old, "0"])
    assert f"'{old}' (now {new})" in caught.value.format_message()


def test_predict_takes_everything_modes_crop_layers_from_their_declaration():
    from naslora_deploy.cli.run import _everything
    from naslora_deploy.runtime.everything import EverythingSpec

    crops = ["--crop-n-layers", "1", "--crop-overlap-ratio", "0.2"]
    params = _parse("predict", ["art", "x.png", "--out", "o", "--everything", *crops])
    spec = _everything(True, params, prompted=False)
    assert spec == EverythingSpec(crop_n_layers=1, crop_overlap_ratio=0.2)
    with pytest.raises(ValueError, match="--crop-n-layers sets everything mode: add --everything"):
        _everything(False, _parse("predict", ["art", "x.png", "--out", "o", "--crop-n-layers", "1"]), False)
