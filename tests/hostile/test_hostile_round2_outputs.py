"""Hostile output locations, round two (issue 27, classes 2, 3 and the outputs part of 7).

Class 2: ``train --overwrite`` clears only a folder that a run marked (``.naslora-run``) and that
holds nothing else; every single-file output (``--json``, ``--plot``) refuses an existing file
without ``--overwrite``, the one flag of every command (``--force`` and ``--base`` are hidden
old spellings). Class 3: one writer per output: a second ``train``/``export`` into a locked
``--out`` is refused naming the holder, and a writer killed with SIGKILL leaves no lock and
nothing that looks complete. Class 7: a full or read-only disk (a real tmpfs in a private
mount namespace, the real CLI in a subprocess) is one line naming the path (and, full, the
space needed), with no half-written output; ``--json``/``--plot`` naming a folder is one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import click
import pytest
from harness import Attack, check_attack, copy_into, train_argv

from naslora_deploy.cli import cli, main
from naslora_deploy.common.io import lock_file
from naslora_deploy.common.outputs import RUN_MARKER, mark_run
from naslora_deploy.runtime.manifest import read_manifest

USER_TEXT = "the user's own notes\n"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# ----- building the inputs ------------------------------------------------------------------------
def user_file(path: Path, text: str = USER_TEXT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def snapshot(root: Path) -> dict:
    """Every entry below ``root`` -> sha256 of a file's content, "dir" for a folder."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def remembered(build: Callable[[Path, dict], List[str]]):
    """``build``'s CLI arguments, with ``tmp``'s content recorded first for ``unchanged``."""

    def argv(tmp: Path, ctx: dict) -> List[str]:
        args = build(tmp, ctx)
        (tmp.parent / f"{tmp.name}.before.json").write_text(json.dumps(snapshot(tmp)))
        return args

    return argv


def unchanged(tmp: Path, ctx: dict) -> None:
    """Every file under ``tmp`` as the row built it, and no lock or temporary file left."""
    assert snapshot(tmp) == json.loads((tmp.parent / f"{tmp.name}.before.json").read_text())
    assert not [p for p in tmp.rglob(".*") if p.name.endswith(".lock") or ".tmp" in p.name]


def lookalike_folder(tmp: Path, ctx: dict) -> Path:
    """A user's folder holding files named like a run's (no marker): theirs, not a run's."""
    folder = tmp / "mine"
    user_file(folder / "train_config.json", '{"my": "settings"}')
    user_file(folder / "metrics.jsonl", '{"my": "measurements"}\n')
    user_file(folder / "best" / "adapter_config.json", '{"my": "adapter"}')
    user_file(folder / "notes.txt")
    return folder


def marked_run_with(*user_files: str):
    """A finished, marked run folder (its checkpoints are the session's adapter) plus user files."""

    def build(tmp: Path, ctx: dict) -> Path:
        run = tmp / "run"
        run.mkdir()
        mark_run(run, created=True)
        copy_into(ctx["adapter"], run, "best")
        user_file(run / "train_config.json", json.dumps({"epochs": 30}))
        for name in user_files:
            user_file(run / name)
        return run

    return build


def train_into(build, *extra: str):
    return remembered(lambda tmp, ctx: train_argv(ctx, build(tmp, ctx), "--max-steps", "1", *extra))


def existing_file(tmp: Path, ctx: dict, name: str = "result.json") -> Path:
    return user_file(tmp / name, '{"my": "earlier results"}')


def a_folder(tmp: Path, ctx: dict, name: str = "result.json") -> Path:
    user_file(tmp / name / "notes.txt")
    return tmp / name


def below_a_file(tmp: Path, ctx: dict, name: str = "result.json") -> Path:
    return existing_file(tmp, ctx, "thesis.txt") / name


FILE_OPTIONS = {  # command -> its CLI arguments for a single output file option
    "eval": lambda ctx, f: ["eval", str(ctx["adapter"]), "--data", str(ctx["binary_data"]), "--json", str(f)],
    "verify": lambda ctx, f: ["verify", str(ctx["artifacts"]), "--count", "1", "--json", str(f)],
    "bench": lambda ctx, f: [
        "bench",
        str(ctx["artifacts"]),
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
        str(f),
    ],
    "inspect --json": lambda ctx, f: ["inspect", str(ctx["adapter"]), "--json", str(f)],
    "inspect --plot": lambda ctx, f: ["inspect", str(ctx["adapter"]), "--plot", str(f)],
}


def file_row(name: str, item: int, phrase: str, command: str, target, *extra: str, code: int = 2):
    def argv(tmp: Path, ctx: dict) -> List[str]:
        path = target(tmp, ctx, "result.png" if "plot" in command else "result.json")
        return [*FILE_OPTIONS[command](ctx, path), *extra]

    after = unchanged if code else replaced_the_file
    return Attack(name, item, phrase, argv=remembered(argv), exit_code=code, after=after, issue=27)


def replaced_the_file(tmp: Path, ctx: dict) -> None:
    assert isinstance(json.loads((tmp / "result.json").read_text()), list)  # bench's rows, not the user's


ATTACKS = [
    Attack(
        "r2_train_overwrite_a_folder_named_like_a_run",
        2,
        "no .naslora-run marker",
        argv=train_into(lookalike_folder, "--overwrite"),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "r2_train_overwrite_a_run_holding_a_user_file_in_best",
        2,
        "holds best/notes.txt, which no training run wrote",
        argv=train_into(marked_run_with("best/notes.txt"), "--overwrite"),
        after=unchanged,
        issue=27,
    ),
    Attack(
        "r2_train_resume_into_a_folder_named_like_a_run",
        2,
        "no checkpoint to resume",
        argv=train_into(lookalike_folder, "--resume"),
        after=unchanged,
        issue=27,
    ),
    file_row("r2_bench_json_over_a_file", 2, "already exists; pass --overwrite", "bench", existing_file),
    file_row("r2_bench_json_overwrite_replaces", 2, "wrote", "bench", existing_file, "--overwrite", code=0),
    file_row(
        "r2_inspect_plot_over_a_file", 2, "already exists; pass --overwrite", "inspect --plot", existing_file
    ),
    file_row("r2_inspect_json_over_a_file", 2, "already exists", "inspect --json", existing_file),
    file_row("r2_eval_json_over_a_file", 2, "already exists", "eval", existing_file),
    file_row("r2_verify_json_over_a_file", 2, "already exists", "verify", existing_file),
    file_row("r2_verify_json_names_a_folder", 7, "is a folder", "verify", a_folder, "--overwrite"),
    file_row("r2_eval_json_names_a_folder", 7, "is a folder", "eval", a_folder),
    file_row("r2_bench_json_names_a_folder", 7, "is a folder", "bench", a_folder, "--overwrite"),
    file_row("r2_inspect_plot_names_a_folder", 7, "is a folder", "inspect --plot", a_folder),
    file_row("r2_inspect_json_below_a_file", 7, "which is a file", "inspect --json", below_a_file),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack(attack, hostile_ctx, tmp_path, capsys):
    check_attack(attack, tmp_path, hostile_ctx, capsys)


def test_the_trajectory_plot_beside_plot_is_not_replaced_either(hostile_ctx, tmp_path, capsys):
    """``inspect --plot p.png`` also writes ``p-trajectory.png``: an existing one is refused too."""
    user_file(tmp_path / "p-trajectory.png")
    assert main(["inspect", str(hostile_ctx["adapter"]), "--plot", str(tmp_path / "p.png")]) == 2
    assert "p-trajectory.png already exists" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["p-trajectory.png"]


def test_one_flag_name_everywhere_and_the_old_spellings_still_parse():
    """--overwrite and --checkpoint are the documented names; --force and --base still work, unlisted."""
    for name, command in cli.commands.items():
        shown = command.get_help(click.Context(command, info_name=name))
        assert "--force" not in shown and "--base " not in shown, name
    merge, given = cli.commands["merge"], ["run", "--mode", "fused", "--out", "m.pth"]
    for old, new in ((["--force"], ["--overwrite"]), (["--base", "b.pth"], ["--checkpoint", "b.pth"])):
        assert (
            merge.make_context("merge", given + old).params == merge.make_context("merge", given + new).params
        )
    train = cli.commands["train"].make_context(
        "train", ["--data", "d", "--out", "o", "--force", "--base", "b"]
    )
    assert train.params["overwrite"] is True and train.params["checkpoint"] == "b"


# ----- class 3: one writer per output (real processes) -------------------------------------------
def cli_process(argv: List[str]) -> subprocess.Popen:
    """``naslora-deploy ARGV`` started in a subprocess (its output kept for the assertion messages)."""
    command = [sys.executable, "-m", "naslora_deploy", *map(str, argv)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 240) -> None:
    """Poll until ``condition()`` holds; fails if ``process`` ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the writer ended first: {process.communicate()[0][-2000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def holds_lock(output: Path, process: subprocess.Popen) -> Callable[[], bool]:
    """Whether ``process`` has taken the lock of ``output`` (its lock file names its pid)."""

    def held() -> bool:
        try:
            return json.loads(lock_file(output).read_text())["pid"] == process.pid
        except (OSError, ValueError, KeyError):
            return False

    return held


def finished(process: subprocess.Popen) -> str:
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    return output


def test_a_second_train_into_a_running_trains_out_is_refused(hostile_ctx, tmp_path, capsys):
    run = tmp_path / "run"
    first = cli_process(train_argv(hostile_ctx, run, "--epochs", "2"))
    wait_for(holds_lock(run, first), first)
    assert main(train_argv(hostile_ctx, run, "--epochs", "1", "--overwrite")) == 2
    message = capsys.readouterr().err
    assert f"is being written by another process (pid {first.pid}: naslora-deploy train" in message
    assert len(message.strip().splitlines()) == 1
    finished(first)
    assert json.loads((run / "run_summary.json").read_text())["epoch"] == 2  # the first run, whole
    assert json.loads((run / RUN_MARKER).read_text())["pid"] == first.pid
    assert not lock_file(run).exists()


def test_a_second_export_into_a_running_exports_out_is_refused(hostile_ctx, tmp_path, capsys):
    art = tmp_path / "art"
    first = cli_process(["export", hostile_ctx["adapter"], "--out", art, "--no-progress"])
    wait_for(holds_lock(art, first), first)
    assert main(["export", str(hostile_ctx["adapter"]), "--out", str(art), "--overwrite"]) == 2
    assert (
        f"being written by another process (pid {first.pid}: naslora-deploy export" in capsys.readouterr().err
    )
    finished(first)
    read_manifest(art)  # the first export, complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def killed(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def test_a_train_killed_mid_run_leaves_no_lock_and_the_next_run_proceeds(hostile_ctx, tmp_path, capsys):
    run = tmp_path / "run"
    first = cli_process(train_argv(hostile_ctx, run, "--epochs", "50"))
    wait_for(lambda: (run / "last").is_dir(), first)
    killed(first)
    assert lock_file(run).exists()  # left behind, but no lock: the kernel dropped it with the process
    assert not (run / "run_summary.json").exists()  # not marked finished
    visible = {p.name for p in run.iterdir() if not p.name.startswith(".")}
    assert visible <= {"train_config.json", "base_model.safetensors", "metrics.jsonl", "best", "last"}
    assert main(train_argv(hostile_ctx, run, "--max-steps", "1", "--overwrite")) == 0, capsys.readouterr()
    assert json.loads((run / "run_summary.json").read_text())["finished"] is True
    assert not lock_file(run).exists() and not [p for p in run.rglob(".*") if ".tmp" in p.name]


def test_an_export_killed_mid_write_leaves_nothing_visible_and_the_next_proceeds(hostile_ctx, tmp_path):
    art = tmp_path / "art"
    first = cli_process(["export", hostile_ctx["adapter"], "--out", art, "--no-progress"])
    wait_for(lambda: any(p.name.startswith(".art.tmp-") for p in tmp_path.iterdir()), first)
    killed(first)
    assert not art.exists()  # the half-written artifacts never took the name
    assert main(["export", str(hostile_ctx["adapter"]), "--out", str(art)]) == 0
    read_manifest(art)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # the killed one's temporaries: gone


# ----- class 7: a full or read-only disk (a tmpfs in a private mount namespace) -------------------
def namespace_prefix() -> Optional[List[str]]:
    """How to run a command in a new mount namespace where it may mount a tmpfs; None if it cannot."""
    if shutil.which("unshare") is None:
        return None
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && touch $d/x"
    for prefix in (
        ["unshare", "--mount", "--propagation", "private"],
        ["unshare", "--user", "--map-root-user", "--mount"],
    ):
        if subprocess.run([*prefix, "sh", "-c", probe], capture_output=True).returncode == 0:
            return prefix
    return None


PREFIX = namespace_prefix()
needs_mount = pytest.mark.skipif(
    PREFIX is None,
    reason="no mount namespace: neither root nor unprivileged user namespaces can mount a tmpfs",
)
SCRIPT = """set -e
mount -t tmpfs -o size=$SIZE tmpfs "$DISK"
cp -a "$SEED/." "$DISK/"
if [ "$READ_ONLY" = 1 ]; then mount -o remount,ro "$DISK"; fi
set +e
"$PYTHON" -m naslora_deploy "$@"
echo $? > "$WORK/rc"
cp "$DISK/out/results.jsonl" "$WORK/results.jsonl"
cd "$DISK" && find . -mindepth 1 -type d -printf 'dir  %p\n' > "$WORK/left"
find . -type f -exec sha256sum {} + >> "$WORK/left"
"""


def on_small_disk(tmp: Path, size: str, argv: Callable[[Path], List[str]], read_only: bool = False):
    """Run ``naslora-deploy argv(disk)`` with ``disk`` a fresh tmpfs of ``size`` holding a copy of
    ``tmp/seed`` (read-only after that if asked). Returns (exit code, stderr, what is on the disk
    afterwards: path -> sha256, and what ``seed`` held in the same form)."""
    disk, seed, work = tmp / "disk", tmp / "seed", tmp / "work"
    for folder in (disk, seed, work):
        folder.mkdir(exist_ok=True)
    env = {**ENV, "SIZE": size, "DISK": str(disk), "SEED": str(seed), "WORK": str(work)}
    env.update(READ_ONLY=str(int(read_only)), PYTHON=sys.executable)
    result = subprocess.run(
        [*PREFIX, "sh", "-c", SCRIPT, "sh", *map(str, argv(disk))], env=env, capture_output=True, text=True
    )
    assert (work / "rc").exists(), result.stderr[-2000:]
    left = dict(line.split(None, 1)[::-1] for line in (work / "left").read_text().splitlines())
    earlier = {f"./{k}": v for k, v in snapshot(seed).items()}
    return int((work / "rc").read_text()), result.stderr, {k.strip(): v for k, v in left.items()}, earlier


def one_line(stderr: str, phrase: str) -> None:
    """Exactly one error line, holding ``phrase``, and no traceback."""
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and phrase in errors[0] and "Traceback" not in stderr, stderr[-3000:]


def earlier_results(tmp: Path, ctx: dict) -> None:
    """A predict output folder of an earlier run on the disk: a mask, an overlay and their record."""
    user_file(tmp / "seed" / "out" / "old.png_mask.png", "earlier mask")
    user_file(tmp / "seed" / "out" / "results.jsonl", '{"file": "old.png", "mask": "old.png_mask.png"}\n')
    copy_into(ctx["artifacts"], tmp)
    (tmp / "in").mkdir()
    for index in range(6):
        shutil.copy(ctx["photo_file"], tmp / "in" / f"{index}.png")


@pytest.fixture
def ctx(hostile_ctx, tmp_path_factory):
    """The session's fixtures plus ``photo_file``: the photo as a PNG."""
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(hostile_ctx["photo"]).save(path)
    return {**hostile_ctx, "photo_file": path}


COMMANDS = {  # what each writer is asked to write onto the small disk
    "export": lambda tmp, ctx: (
        lambda disk: ["export", ctx["adapter"], "--out", disk / "art", "--no-progress"]
    ),
    "train": lambda tmp, ctx: lambda disk: train_argv(ctx, disk / "run", "--max-steps", "1"),
    "merge": lambda tmp, ctx: (
        lambda disk: ["merge", ctx["adapter"], "--mode", "fused", "--out", disk / "m.pth"]
    ),
    "predict": lambda tmp, ctx: lambda disk: ["predict", tmp / "art", tmp / "in", "--out", disk / "out"],
}


@needs_mount
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_full_disk_is_one_line_with_the_space_needed_and_no_partial_output(command, ctx, tmp_path):
    earlier_results(tmp_path, ctx)
    size = "300k" if command == "predict" else "1m"  # predict: room for a few images, then full
    code, stderr, left, earlier = on_small_disk(tmp_path, size, COMMANDS[command](tmp_path, ctx))
    assert code == 2, stderr[-3000:]
    one_line(stderr, "no space left on the disk")
    assert " is free: free space or give a path on another disk" in stderr and "it needs " in stderr
    if command in ("export", "merge"):  # they know what they write: the estimate of the whole output
        assert "it needs about " in stderr
    if command != "predict":
        assert left == earlier  # nothing half-written: no temporary file, folder or lock left
        return
    records = [json.loads(line) for line in (tmp_path / "work" / "results.jsonl").read_text().splitlines()]
    assert records[0]["file"] == "old.png" and len(records) > 1  # the earlier record kept, a few added
    new = {k for k in left if k not in earlier and left[k] != "dir"}
    written = {f"./out/{r[key]}" for r in records[1:] for key in ("mask", "overlay")}
    assert new == written  # every image whole, with its record; nothing else
    assert left["./out/old.png_mask.png"] == earlier["./out/old.png_mask.png"]


@needs_mount
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_read_only_disk_is_one_line_and_nothing_changes(command, ctx, tmp_path):
    earlier_results(tmp_path, ctx)
    code, stderr, left, earlier = on_small_disk(
        tmp_path, "8m", COMMANDS[command](tmp_path, ctx), read_only=True
    )
    assert code == 2, stderr[-3000:]
    one_line(stderr, "cannot write there, the file system is read-only")
    assert left == earlier


CLASS_TESTS = {
    "test_the_trajectory_plot_beside_plot_is_not_replaced_either": 2,
    "test_one_flag_name_everywhere_and_the_old_spellings_still_parse": 2,
    "test_a_second_train_into_a_running_trains_out_is_refused": 3,
    "test_a_second_export_into_a_running_exports_out_is_refused": 3,
    "test_a_train_killed_mid_run_leaves_no_lock_and_the_next_run_proceeds": 3,
    "test_an_export_killed_mid_write_leaves_nothing_visible_and_the_next_proceeds": 3,
    "test_a_full_disk_is_one_line_with_the_space_needed_and_no_partial_output": 7,
    "test_a_read_only_disk_is_one_line_and_nothing_changes": 7,
}
