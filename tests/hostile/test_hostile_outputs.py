"""Hostile output locations (issue 13, items 1, 2, 4 and 12): a user's files are never lost.

``export`` only writes a new or empty folder or (with ``--overwrite``) an earlier artifact
directory; ``train`` refuses a used ``--out`` without ``--resume``/``--overwrite`` and
only clears a folder that a run marked and that holds nothing else; ``merge`` never replaces a file it did not
write; ``predict`` gives every input its own outputs, appends to ``results.jsonl``,
stays out of the input folders and reports every unusable input. Files are written
with ordinary permissions and killed exports' temporary folders are cleaned up.
Every row runs with the current folder set to its own temporary folder.
"""

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from harness import USER_ERROR, Attack, check_attack, copy_into, train_argv
from PIL import Image

from naslora_deploy.common.outputs import mark_run
from naslora_deploy.runtime.manifest import read_manifest

NO_SUCH_PID = 4194304 + 17  # above Linux's largest pid_max: never a running process
USER_TEXT = "the user's own notes\n"


@pytest.fixture(autouse=True)
def _inside_tmp(tmp_path, monkeypatch):
    """Rows run in their own folder (``--out .`` must never reach the repository)."""
    monkeypatch.chdir(tmp_path)


# ----- building the inputs ------------------------------------------------------------------------
def user_file(path: Path, text: str = USER_TEXT) -> Path:
    """A file of the user's, with known content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def photo(ctx: dict, path: Path) -> Path:
    """The session's photo saved at ``path`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ctx["photo"]).save(path)
    return path


def snapshot(root: Path) -> dict:
    """Every file below ``root`` -> sha256 of its content (links and folders by name only)."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink() or not path.is_file():
            found[key] = "link" if path.is_symlink() else "dir"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def unchanged(name: str):
    """An ``after`` check: ``tmp/<name>`` is exactly as the row built it (see ``remember``)."""

    def after(tmp: Path, ctx: dict) -> None:
        before = json.loads((tmp.parent / f"{tmp.name}.snapshot.json").read_text())
        assert snapshot(tmp / name) == before
        assert_no_temp_dirs(tmp)

    return after


def remember(tmp: Path, name: str) -> None:
    """Record ``tmp/<name>``'s content beside ``tmp`` for ``unchanged``."""
    (tmp.parent / f"{tmp.name}.snapshot.json").write_text(json.dumps(snapshot(tmp / name)))


def assert_no_temp_dirs(tmp: Path) -> None:
    leftovers = [p for p in tmp.rglob(".*") if ".tmp-" in p.name or p.name.endswith(".old")]
    assert not leftovers, leftovers


def assert_ordinary_modes(root: Path) -> None:
    """Every file below ``root`` is 0666 less the umask (0644 usually), none 0600."""
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else [root]
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, (path, oct(path.stat().st_mode))


def palette_image() -> np.ndarray:
    """A small 8-bit image for a GIF."""
    return (np.arange(64 * 64, dtype=np.uint8) % 7).reshape(64, 64)


def results(out: Path) -> list:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


# ----- the rows' shared parts ---------------------------------------------------------------------
def after_building(build, command):
    """CLI arguments ``command(tmp, ctx, target)`` for what ``build(tmp, ctx)`` made, ``tmp`` remembered."""

    def argv(tmp: Path, ctx: dict):
        target = build(tmp, ctx)
        remember(tmp, "")
        return command(tmp, ctx, target)

    return argv


def table_rows(item: int, into, rows, exit_code=USER_ERROR, after=unchanged("")) -> list:
    """One table's rows, each ``(name, phrase, build, *options)`` run as ``into(build, *options)``.

    Each must exit with ``exit_code`` saying ``phrase``; ``after`` checks the files (by default:
    every one exactly as the row built it).
    """
    return [
        Attack(name, item, phrase, argv=into(build, *options), exit_code=exit_code, after=after)
        for name, phrase, build, *options in rows
    ]


# ----- export (item 1, and 12) --------------------------------------------------------------------
def export_into(build, *extra):
    """``export ADAPTER --out <build(tmp, ctx)>``, after ``build`` made the target."""
    return after_building(
        build, lambda tmp, ctx, out: ["export", str(ctx["adapter"]), "--out", str(out), *extra]
    )


def user_folder(tmp: Path, ctx: dict) -> Path:
    user_file(tmp / "mine" / "notes.txt")
    user_file(tmp / "mine" / "sub" / "data.csv", "1,2\n")
    return tmp / "mine"


def a_file(tmp: Path, ctx: dict) -> Path:
    return user_file(tmp / "thesis.txt")


def an_artifact(tmp: Path, ctx: dict) -> Path:
    return copy_into(ctx["artifacts"], tmp, "art")


def an_artifact_with_user_file(tmp: Path, ctx: dict) -> Path:
    user_file(an_artifact(tmp, ctx) / "notes.txt")
    return tmp / "art"


def a_link_loop(tmp: Path, ctx: dict) -> Path:
    os.symlink("loop", tmp / "loop")
    return tmp / "loop"


def here_with_a_user_file(tmp: Path, ctx: dict) -> str:
    user_file(tmp / "notes.txt")
    return "."


def stale_and_live_temp_dirs(tmp: Path, ctx: dict) -> Path:
    user_file(tmp / f".art.tmp-{NO_SUCH_PID}" / "image_encoder.onnx", "half written")
    user_file(tmp / f".art.tmp-{os.getppid()}" / "x", "another writer at work")
    return tmp / "art"


def exported_cleanly(tmp: Path, ctx: dict) -> None:
    read_manifest(tmp / "art")  # complete: every listed file there with its sha256
    assert_ordinary_modes(tmp / "art")
    assert not (tmp / f".art.tmp-{NO_SUCH_PID}").exists()  # a killed export's leftover: cleaned
    assert (tmp / f".art.tmp-{os.getppid()}" / "x").is_file()  # a running one's: left alone
    assert not (tmp / ".art.old").exists()


def replaced_the_artifact(tmp: Path, ctx: dict) -> None:
    read_manifest(tmp / "art")
    assert_ordinary_modes(tmp / "art")
    assert_no_temp_dirs(tmp)


EXPORT_REFUSALS = [  # (name, phrase, target, *options): refused, every file as it was
    ("export_into_a_user_folder", "holds no naslora-deploy artifact", user_folder),
    (
        "export_into_a_user_folder_with_overwrite",
        "never replaced, not even with --overwrite",
        user_folder,
        "--overwrite",
    ),
    ("export_over_a_file", "is a file", a_file),
    ("export_over_a_file_with_overwrite", "is a file", a_file, "--overwrite"),
    ("export_below_a_file", "which is a file", lambda tmp, ctx: a_file(tmp, ctx) / "art"),
    ("export_into_a_link_loop", "broken link", a_link_loop),
    ("export_into_the_current_folder", "current folder", here_with_a_user_file, "--overwrite"),
    ("export_over_an_artifact_without_overwrite", "pass --overwrite", an_artifact),
    (
        "export_over_an_artifact_holding_a_user_file",
        "no export wrote (notes.txt)",
        an_artifact_with_user_file,
        "--overwrite",
    ),
    (
        "export_triton_into_a_user_folder",
        "holds no triton export",
        user_folder,
        "--format",
        "triton",
        "--overwrite",
    ),
]

EXPORT_ROWS = table_rows(1, export_into, EXPORT_REFUSALS) + [
    Attack(
        "export_over_an_artifact_with_overwrite",
        1,
        "manifest",
        export_into(an_artifact, "--overwrite"),
        exit_code=0,
        after=replaced_the_artifact,
    ),
    Attack(
        "export_after_a_killed_export",
        12,
        "manifest",
        export_into(stale_and_live_temp_dirs),
        exit_code=0,
        after=exported_cleanly,
    ),
]


# ----- merge (item 1, and 12) ---------------------------------------------------------------------
def merge_into(build, *extra):
    return after_building(
        build,
        lambda tmp, ctx, out: ["merge", str(ctx["adapter"]), "--mode", "fused", "--out", str(out), *extra],
    )


def earlier_merge(tmp: Path, ctx: dict) -> Path:
    user_file(tmp / "m.safetensors", "weights of an earlier merge")
    user_file(tmp / "m.report.json", json.dumps({"checkpoint": "m.safetensors"}))
    return tmp / "m.safetensors"


def a_user_report(tmp: Path, ctx: dict) -> Path:
    user_file(tmp / "m.report.json", "{}")
    return tmp / "m.safetensors"


def a_sam_checkpoint(tmp: Path, ctx: dict) -> Path:
    return user_file(tmp / "sam_vit_b.pth", "the original SAM")


def merged_with_ordinary_modes(tmp: Path, ctx: dict) -> None:
    assert_ordinary_modes(tmp / "new" / "m.safetensors")
    assert json.loads((tmp / "new" / "m.report.json").read_text())["checkpoint"] == "m.safetensors"


MERGE_REFUSALS = [  # (name, phrase, target, *options): refused, every file as it was
    ("merge_over_a_sam_checkpoint", "is no merged checkpoint", a_sam_checkpoint),
    ("merge_over_a_sam_checkpoint_with_overwrite", "never replaced", a_sam_checkpoint, "--overwrite"),
    ("merge_over_a_user_report", "m.report.json exists", a_user_report),
    ("merge_into_a_folder", "is a folder", user_folder),
    ("merge_over_an_earlier_merge", "pass --overwrite", earlier_merge),
]

MERGE_ROWS = table_rows(1, merge_into, MERGE_REFUSALS) + [
    Attack(
        "merge_safetensors_mode",
        12,
        "wrote",
        merge_into(lambda tmp, ctx: tmp / "new" / "m.safetensors"),
        exit_code=0,
        after=merged_with_ordinary_modes,
    ),
]


# ----- train (item 2, and 12) ---------------------------------------------------------------------
def train_into(build, *extra):
    return after_building(
        build, lambda tmp, ctx, out: train_argv(ctx, out, "--epochs", "1", "--max-steps", "1", *extra)
    )


def finished_run(tmp: Path, ctx: dict) -> Path:
    """A run folder as training leaves it, marked (its checkpoint is the session's adapter)."""
    run = tmp / "run"
    run.mkdir()
    mark_run(run, created=True)
    copy_into(ctx["adapter"], run, "best")
    copy_into(ctx["adapter"], run, "last")
    user_file(run / "train_config.json", json.dumps({"epochs": 30}))
    user_file(run / "metrics.jsonl", json.dumps({"epoch": 0, "old": True}) + "\n")
    user_file(run / "run_summary.json", json.dumps({"finished": True, "step": 999}))
    return run


def run_with_user_files(tmp: Path, ctx: dict) -> Path:
    user_file(finished_run(tmp, ctx) / "notes.txt")
    user_file(tmp / "run" / "plots" / "loss.csv", "1,2\n")
    return tmp / "run"


def user_folder_with_best(tmp: Path, ctx: dict) -> Path:
    user_file(tmp / "mine" / "best" / "holiday.jpg", "my best photo")
    user_file(tmp / "mine" / "notes.txt")
    return tmp / "mine"


def replaced_the_run(tmp: Path, ctx: dict) -> None:
    run = tmp / "run"
    assert json.loads((run / "run_summary.json").read_text())["step"] == 1
    assert all("old" not in record for record in results_of(run / "metrics.jsonl"))
    assert (run / "last" / "training_state.pt").is_file()
    assert_ordinary_modes(run / "last")
    assert_ordinary_modes(run / "base_model.safetensors")
    assert_no_temp_dirs(tmp)


def results_of(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def nothing_new(tmp: Path, ctx: dict) -> None:
    assert not (tmp / "new").exists(), sorted((tmp / "new").rglob("*"))


def new_run_with_ordinary_modes(tmp: Path, ctx: dict) -> None:
    assert (tmp / "new" / "last" / "adapter_model.safetensors").is_file()
    assert_ordinary_modes(tmp / "new")


def a_new_folder(tmp: Path, ctx: dict) -> Path:
    return tmp / "new"


TRAIN_REFUSALS = [  # (name, phrase, target, *options): refused, every file as it was
    ("train_into_a_finished_run", "holds a training run", finished_run),
    ("train_into_a_finished_run_keeps_it", "--overwrite to replace it", run_with_user_files),
    ("train_into_a_user_folder", "is not empty", user_folder),
    (
        "train_overwrite_a_user_best_folder",
        "which no training run wrote",
        user_folder_with_best,
        "--overwrite",
    ),
    ("train_out_is_a_file", "is a file", a_file),
    ("train_resume_and_overwrite", "--overwrite", finished_run, "--resume", "--overwrite"),
    (
        "train_overwrite_a_run_holding_user_files",
        "holds notes.txt, which no training run wrote",
        run_with_user_files,
        "--overwrite",
    ),
]

TRAIN_ROWS = table_rows(2, train_into, TRAIN_REFUSALS) + [
    Attack(
        "train_resume_nothing", 2, "no run to resume", train_into(a_new_folder, "--resume"), after=nothing_new
    ),
    Attack(
        "train_overwrite_replaces_the_run",
        2,
        "run directory",
        train_into(finished_run, "--overwrite"),
        exit_code=0,
        after=replaced_the_run,
    ),
    Attack(
        "train_safetensors_mode",
        12,
        "run directory",
        train_into(a_new_folder),
        exit_code=0,
        after=new_run_with_ordinary_modes,
    ),
]


# ----- predict (item 4) ---------------------------------------------------------------------------
def predict_on(build, out="out", *extra):
    """``predict ARTIFACTS <inputs from build(tmp, ctx)> --out tmp/<out>``."""
    return after_building(
        build,
        lambda tmp, ctx, inputs: [
            "predict",
            str(ctx["artifacts"]),
            *map(str, inputs),
            "--out",
            str(tmp / out),
            *extra,
        ],
    )


def same_stem(tmp: Path, ctx: dict) -> list:
    photo(ctx, tmp / "in" / "x.png")
    Image.fromarray(255 - ctx["photo"]).save(tmp / "in" / "x.jpg")
    return [tmp / "in"]


def two_folders_same_names(tmp: Path, ctx: dict) -> list:
    photo(ctx, tmp / "a" / "imgs" / "x.png")
    (tmp / "b" / "imgs").mkdir(parents=True)
    Image.fromarray(ctx["photo"][:, ::-1].copy()).save(tmp / "b" / "imgs" / "x.png")
    return [tmp / "a" / "imgs", tmp / "b" / "imgs"]


def glob_matching_a_folder(tmp: Path, ctx: dict) -> list:
    photo(ctx, tmp / "in" / "a.png")
    (tmp / "in" / "d").mkdir()
    return [tmp / "in" / "*"]


def empty_folder(tmp: Path, ctx: dict) -> list:
    (tmp / "empty").mkdir()
    return [tmp / "empty"]


def one_folder(tmp: Path, ctx: dict) -> list:
    photo(ctx, tmp / "in" / "a.png")
    return [tmp / "in"]


def folder_with(extra_entry):
    def build(tmp: Path, ctx: dict) -> list:
        photo(ctx, tmp / "in" / "a.png")
        extra_entry(tmp / "in")
        return [tmp / "in"]

    return build


def earlier_results(text: str):
    def build(tmp: Path, ctx: dict) -> list:
        user_file(tmp / "out" / "results.jsonl", text)
        return one_folder(tmp, ctx)

    return build


def distinct_outputs(*masks):
    def after(tmp: Path, ctx: dict) -> None:
        records = results(tmp / "out")
        assert sorted(r["mask"] for r in records) == sorted(masks)
        for mask in masks:
            assert (tmp / "out" / mask).is_file() and (
                tmp / "out" / mask.replace("_mask", "_overlay")
            ).is_file()
        assert_ordinary_modes(tmp / "out")

    return after


def kept_earlier_records(first_line: str):
    def after(tmp: Path, ctx: dict) -> None:
        lines = (tmp / "out" / "results.jsonl").read_text().splitlines()
        assert lines[0] == first_line and len(lines) == 2
        assert json.loads(lines[1])["mask"] == "a.png_mask.png"

    return after


def inputs_untouched_and_segmented(tmp: Path, ctx: dict) -> None:
    assert (tmp / "out" / "a.png_mask.png").is_file()
    assert [r["file"] for r in results(tmp / "out")] == [str(tmp / "in" / "a.png")]


def only_the_inputs_there(tmp: Path, ctx: dict) -> None:
    unchanged("")(tmp, ctx)
    assert not (tmp / "out").exists()


PREDICT_REFUSALS = [  # (name, phrase, inputs, out): refused, every file as it was
    ("predict_out_is_the_input_folder", "input folder", one_folder, "in"),
    (
        "predict_out_is_the_folder_of_an_input_file",
        "holds input images",
        lambda tmp, ctx: [photo(ctx, tmp / "in" / "a.png")],
        "in",
    ),
    ("predict_out_holds_the_input_folders", "holds input images", two_folders_same_names, "."),
    ("predict_out_is_a_file", "is a file", lambda tmp, ctx: [*one_folder(tmp, ctx), user_file(tmp / "out")]),
]

PREDICT_NO_OUT = [  # (name, phrase, inputs, out): refused, no output folder made
    ("predict_out_inside_the_input_folder", "input folder", one_folder, "in/masks"),
    ("predict_link_loop_given", "link loop", lambda tmp, ctx: [a_link_loop(tmp, ctx)]),
    ("predict_empty_folder", "no images in this folder", empty_folder),
    ("predict_missing_input", "no such file", lambda tmp, ctx: [tmp / "nowhere.png"]),
]

PREDICT_SKIPS = [  # (name, phrase, inputs): exit 1 naming the bad input, the good one segmented
    (
        "predict_gif_in_a_folder",
        "b.gif: not a supported image type",
        folder_with(lambda d: Image.fromarray(palette_image()).save(d / "b.gif")),
    ),
    ("predict_subfolder_in_a_folder", "a folder, not an image", folder_with(lambda d: (d / "more").mkdir())),
    ("predict_link_loop_in_a_folder", "link loop", folder_with(lambda d: os.symlink("loop", d / "loop"))),
    ("predict_glob_matching_a_folder", "a folder, not an image", glob_matching_a_folder),
]

PREDICT_WRITES = [  # (name, inputs, masks): exit 0, each input's mask and overlay under its own name
    ("predict_same_stem_two_suffixes", same_stem, ["x.png_mask.png", "x.jpg_mask.png"]),
    (
        "predict_two_folders_same_names",
        two_folders_same_names,
        ["a/imgs/x.png_mask.png", "b/imgs/x.png_mask.png"],
    ),
]

EARLIER = '{"file": "earlier.png"}'

PREDICT_APPENDS = [  # (name, phrase, inputs): exit 0, the earlier record kept and the new one after it
    ("predict_rerun_appends_to_results", "1 image(s)", earlier_results(EARLIER + "\n")),
    ("predict_after_a_killed_run", "1 image(s)", earlier_results(EARLIER)),  # its newline never written
]

PREDICT_ROWS = [
    *(
        Attack(name, 4, "2 image(s)", argv=predict_on(inputs), exit_code=0, after=distinct_outputs(*masks))
        for name, inputs, masks in PREDICT_WRITES
    ),
    *table_rows(4, predict_on, PREDICT_APPENDS, exit_code=0, after=kept_earlier_records(EARLIER)),
    *table_rows(4, predict_on, PREDICT_REFUSALS),
    *table_rows(4, predict_on, PREDICT_NO_OUT, after=only_the_inputs_there),
    *table_rows(4, predict_on, PREDICT_SKIPS, exit_code=1, after=inputs_untouched_and_segmented),
]


ATTACKS = EXPORT_ROWS + MERGE_ROWS + TRAIN_ROWS + PREDICT_ROWS


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack(attack, hostile_ctx, tmp_path, capsys):
    check_attack(attack, tmp_path, hostile_ctx, capsys)


def test_two_concurrent_predict_runs_into_one_folder_lose_nothing(hostile_ctx, tmp_path):
    """Two processes append to one results.jsonl at once: every record arrives, each on its line."""
    per_run = 30
    for run in ("a", "b"):
        for index in range(per_run):
            photo(hostile_ctx, tmp_path / run / f"{run}{index}.png")
    command = [sys.executable, "-m", "naslora_deploy", "predict", str(hostile_ctx["artifacts"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(
            [*command, str(tmp_path / run), "--out", str(tmp_path / "out"), "--no-progress"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for run in ("a", "b")
    ]
    for process in runs:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    records = results(tmp_path / "out")
    assert len(records) == 2 * per_run
    assert sorted(Path(r["file"]).name for r in records) == sorted(
        f"{run}{index}.png" for run in ("a", "b") for index in range(per_run)
    )
    assert all((tmp_path / "out" / r["mask"]).is_file() for r in records)
