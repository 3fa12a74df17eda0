"""The output-location policy (common.outputs) and the writers under it (common.io), without a model."""

import json
import multiprocessing
import os
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from naslora_deploy.common.contract import MANIFEST_FORMAT
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import append_line, atomic_write, clean_stale_temp_dirs, write_directory
from naslora_deploy.common.outputs import (
    RUN_MARKER,
    RUN_NAMES,
    artifact_names,
    check_output_files,
    clear_run,
    mark_run,
    prepare_artifact_dir,
    prepare_run_dir,
    prepare_triton_dir,
    prepare_write_folder,
)
from naslora_deploy.runtime.predict import check_out, gather_inputs, output_names

NO_SUCH_PID = 4194304 + 17  # above Linux's largest pid_max


def ordinary() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def fake_artifact(folder: Path, *extra: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "image_encoder.onnx").write_bytes(b"onnx")
    (folder / "image_encoder.onnx.data").write_bytes(b"weights")
    files = {"image_encoder.onnx": {"sha256": "x", "external_data": {"file": "image_encoder.onnx.data"}}}
    (folder / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}))
    for name in extra:
        (folder / name).write_text("mine")
    return folder


def run_config(out, resume=False, overwrite=False):
    return SimpleNamespace(out=str(out), resume=resume, overwrite=overwrite)


# ----- export ---------------------------------------------------------------------------------------
def test_an_artifact_is_recognised_by_its_manifest(tmp_path):
    art = fake_artifact(tmp_path / "art")
    assert artifact_names(art) == {"manifest.json", "image_encoder.onnx", "image_encoder.onnx.data"}
    (art / "manifest.json").write_text(json.dumps({"format": "something else"}))
    assert artifact_names(art) is None
    (art / "manifest.json").write_text("[1, 2]")
    assert artifact_names(art) is None


def test_export_goes_to_a_new_or_empty_folder(tmp_path):
    assert prepare_artifact_dir(tmp_path / "new") == (tmp_path / "new").resolve()
    (tmp_path / "empty").mkdir()
    assert prepare_artifact_dir(tmp_path / "empty") == (tmp_path / "empty").resolve()
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_an_earlier_artifact_is_replaced_only_with_force(tmp_path):
    art = fake_artifact(tmp_path / "art")
    with pytest.raises(NasloraError, match="already holds a naslora-deploy artifact; pass --overwrite"):
        prepare_artifact_dir(art)
    assert prepare_artifact_dir(art, replace=True) == art.resolve()


@pytest.mark.parametrize("replace", [False, True])
def test_a_user_folder_a_file_or_an_artifact_with_user_files_is_never_replaced(tmp_path, replace):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(NasloraError, match="holds no naslora-deploy artifact .*never replaced"):
        prepare_artifact_dir(tmp_path / "mine", replace)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(NasloraError, match="is a file"):
        prepare_artifact_dir(tmp_path / "file", replace)
    with pytest.raises(NasloraError, match="which is a file"):
        prepare_artifact_dir(tmp_path / "file" / "art", replace)
    fake_artifact(tmp_path / "art", "notes.txt")
    with pytest.raises(NasloraError, match=r"no export wrote \(notes.txt\)"):
        prepare_artifact_dir(tmp_path / "art", replace)


def test_the_current_folder_is_never_swapped_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(NasloraError, match="current folder"):
            prepare_artifact_dir(out, replace=True)


def test_a_link_to_a_folder_is_followed_and_a_link_loop_refused(tmp_path):
    art = fake_artifact(tmp_path / "art")
    os.symlink(art, tmp_path / "link")
    assert prepare_artifact_dir(tmp_path / "link", replace=True) == art
    os.symlink("loop", tmp_path / "loop")
    with pytest.raises(NasloraError, match="broken link"):
        prepare_artifact_dir(tmp_path / "loop")


def test_a_triton_export_is_recognised_by_its_artifacts(tmp_path):
    fake_artifact(tmp_path / "tri" / "artifacts")
    (tmp_path / "tri" / "model_repository").mkdir()
    with pytest.raises(NasloraError, match="already holds a Triton export"):
        prepare_triton_dir(tmp_path / "tri")
    assert prepare_triton_dir(tmp_path / "tri", replace=True)
    (tmp_path / "tri" / "notes.txt").write_text("mine")
    with pytest.raises(NasloraError, match="notes.txt"):
        prepare_triton_dir(tmp_path / "tri", replace=True)


# ----- train ----------------------------------------------------------------------------------------
def test_a_new_run_folder_is_created(tmp_path):
    assert prepare_run_dir(run_config(tmp_path / "a" / "run")).is_dir()


def test_a_used_run_folder_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    mark_run(run, created=True)
    (run / "train_config.json").write_text("{}")
    with pytest.raises(NasloraError, match="holds a training run; pass --resume .* --overwrite"):
        prepare_run_dir(run_config(run))
    with pytest.raises(NasloraError, match="no checkpoint to resume .*pass --overwrite"):
        prepare_run_dir(run_config(run, resume=True))
    (run / "last" / "training_state.pt").write_text("state")
    assert prepare_run_dir(run_config(run, resume=True)) == run
    with pytest.raises(NasloraError, match="--resume and --overwrite"):
        prepare_run_dir(run_config(run, resume=True, overwrite=True))
    with pytest.raises(NasloraError, match="no run to resume"):
        prepare_run_dir(run_config(tmp_path / "new", resume=True))


def a_marked_run(run: Path) -> Path:
    """Every name a run writes, in a folder a run marked."""
    for name in RUN_NAMES:
        if "." in name.lstrip("."):
            (run / name).parent.mkdir(parents=True, exist_ok=True)
            (run / name).write_text("old")
        else:
            (run / name).mkdir(parents=True)
            (run / name / "adapter_config.json").write_text("{}")
    (run / f".last.tmp-{NO_SUCH_PID}").mkdir()
    mark_run(run, created=True)
    return run


def test_overwrite_deletes_a_marked_run(tmp_path):
    run = a_marked_run(tmp_path / "run")
    (run / "tensorboard" / "adapter_config.json").rename(run / "tensorboard" / "events.out.tfevents.1.host")
    assert prepare_run_dir(run_config(run, overwrite=True)) == run
    assert sorted(p.name for p in run.iterdir()) == [RUN_MARKER]


@pytest.mark.parametrize("user_file", ["notes.txt", "plots/loss.csv", "best/holiday.jpg"])
def test_overwrite_refuses_a_marked_run_holding_a_user_file(tmp_path, user_file):
    run = a_marked_run(tmp_path / "run")
    (run / user_file).parent.mkdir(exist_ok=True)
    (run / user_file).write_text("mine")
    with pytest.raises(NasloraError, match=f"holds {user_file.split('/')[0]}.*, which no training run wrote"):
        prepare_run_dir(run_config(run, overwrite=True))
    assert (run / user_file).read_text() == "mine" and (run / "train_config.json").read_text() == "old"


def test_overwrite_never_deletes_a_user_best_folder(tmp_path):
    (tmp_path / "mine" / "best").mkdir(parents=True)
    (tmp_path / "mine" / "best" / "photo.jpg").write_text("mine")
    with pytest.raises(NasloraError, match="holds best, which no training run wrote"):
        clear_run(tmp_path / "mine")
    assert (tmp_path / "mine" / "best" / "photo.jpg").read_text() == "mine"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")  # not a run: --overwrite does not apply
    with pytest.raises(NasloraError, match="holds notes.txt, which no training run wrote"):
        prepare_run_dir(run_config(tmp_path / "other", overwrite=True))
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]


def test_an_unmarked_run_is_never_cleared(tmp_path):
    """A run written before runs were marked: resumable, but --overwrite cannot tell it from user files."""
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "adapter_config.json").write_text("{}")
    (run / "train_config.json").write_text("{}")
    for overwrite in (False, True):
        with pytest.raises(NasloraError, match=r"\.naslora-run marker.*for its owner to delete"):
            prepare_run_dir(run_config(run, overwrite=overwrite))
    assert sorted(p.name for p in run.iterdir()) == ["best", "train_config.json"]


def test_a_run_folder_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "run").write_text("mine")
    for config in (run_config(tmp_path / "run"), run_config(tmp_path / "run", overwrite=True)):
        with pytest.raises(NasloraError, match="is a file"):
            prepare_run_dir(config)
    assert (tmp_path / "run").read_text() == "mine"


def test_other_ranks_only_check_the_path(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("rank 0 was first")
    assert prepare_run_dir(run_config(tmp_path / "run"), main=False) == tmp_path / "run"


# ----- merge ----------------------------------------------------------------------------------------
def test_output_files_new_earlier_or_foreign(tmp_path):
    out, report = tmp_path / "m.pth", tmp_path / "m.report.json"
    check_output_files([out, report], kind="merged checkpoint", earlier=False, replace=False)
    out.write_text("x")
    with pytest.raises(NasloraError, match="exists and is no merged checkpoint"):
        check_output_files([out, report], kind="merged checkpoint", earlier=False, replace=True)
    with pytest.raises(NasloraError, match="already holds a merged checkpoint; pass --overwrite"):
        check_output_files([out, report], kind="merged checkpoint", earlier=True, replace=False)
    check_output_files([out, report], kind="merged checkpoint", earlier=True, replace=True)
    with pytest.raises(NasloraError, match="is a folder"):
        check_output_files([tmp_path], kind="merged checkpoint", earlier=True, replace=True)


# ----- predict --------------------------------------------------------------------------------------
def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_output_names_keep_the_suffix_and_the_layout(tmp_path):
    files = [touch(tmp_path / "in" / "x.png"), touch(tmp_path / "in" / "x.jpg")]
    assert list(output_names(files).values()) == ["x.png", "x.jpg"]
    files = [touch(tmp_path / "a" / "imgs" / "x.png"), touch(tmp_path / "b" / "imgs" / "x.png")]
    assert list(output_names(files).values()) == ["a/imgs/x.png", "b/imgs/x.png"]
    assert output_names([tmp_path / "in" / "x.png"]) == {tmp_path / "in" / "x.png": "x.png"}


def test_gather_reports_every_unusable_input(tmp_path):
    touch(tmp_path / "in" / "a.png")
    touch(tmp_path / "in" / "b.gif")
    touch(tmp_path / "in" / ".DS_Store")  # hidden: ignored
    (tmp_path / "in" / "sub").mkdir()
    os.symlink("loop", tmp_path / "in" / "loop")
    (tmp_path / "empty").mkdir()
    found = gather_inputs([str(tmp_path / "in"), str(tmp_path / "empty"), str(tmp_path / "nothing*")])
    assert found.files == [tmp_path / "in" / "a.png"]
    problems = "\n".join(found.problems)
    for phrase in ("b.gif: not a supported image", "sub: a folder", "loop: a broken link", "no images in"):
        assert phrase in problems
    assert "nothing*: no such file" in problems and len(found.problems) == 5


def test_the_same_file_twice_is_segmented_once(tmp_path):
    image = touch(tmp_path / "in" / "a.png")
    os.symlink(image, tmp_path / "link.png")
    assert gather_inputs([str(image), str(tmp_path / "in"), str(tmp_path / "link.png")]).files == [image]


def test_out_stays_outside_the_inputs(tmp_path):
    files = [touch(tmp_path / "in" / "a.png")]
    for out in ("in", "in/masks"):
        with pytest.raises(NasloraError, match="input folder"):
            check_out(tmp_path / out, files, [tmp_path / "in"])
    with pytest.raises(NasloraError, match="holds input images"):
        check_out(tmp_path / "in", files)  # the folder of a file given by name
    two = [touch(tmp_path / "a" / "x.png"), touch(tmp_path / "b" / "x.png")]
    with pytest.raises(NasloraError, match="holds input images"):
        check_out(tmp_path, two)
    assert check_out(tmp_path / "out", two) == tmp_path / "out"
    assert (
        check_out(tmp_path / "in" / "out", files) == tmp_path / "in" / "out"
    )  # a file's folder: below is fine
    with pytest.raises(NasloraError, match="is a file"):
        prepare_write_folder(files[0])


# ----- writers --------------------------------------------------------------------------------------
def test_safetensors_files_get_ordinary_permissions(tmp_path):
    from safetensors.numpy import save_file

    atomic_write(tmp_path / "a.safetensors", lambda tmp: save_file({"x": np.zeros(2)}, str(tmp)))
    assert mode(tmp_path / "a.safetensors") == ordinary()
    write_directory(tmp_path / "ckpt", lambda tmp: save_file({"x": np.zeros(2)}, str(tmp / "w.safetensors")))
    assert mode(tmp_path / "ckpt" / "w.safetensors") == ordinary()


def test_write_directory_cleans_killed_writers_temp_folders_only(tmp_path):
    (tmp_path / f".art.tmp-{NO_SUCH_PID}").mkdir()
    (tmp_path / f".art.tmp-{os.getppid()}").mkdir()  # a running process: another writer
    (tmp_path / ".other.tmp-1").mkdir()
    write_directory(tmp_path / "art", lambda tmp: (tmp / "f").write_text("new"))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["art", f".art.tmp-{os.getppid()}", ".other.tmp-1"])
    assert clean_stale_temp_dirs(tmp_path / "art") == []


def test_write_directory_never_replaces_a_file(tmp_path):
    (tmp_path / "art").write_text("mine")
    with pytest.raises(NasloraError, match="is a file"):
        write_directory(tmp_path / "art", lambda tmp: None)
    assert (tmp_path / "art").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def _append_many(path: str, tag: str, count: int) -> None:
    for index in range(count):
        append_line(path, json.dumps({"tag": tag, "index": index, "pad": "x" * 300}))


def test_concurrent_appends_lose_no_line(tmp_path):
    path = tmp_path / "results.jsonl"
    fork = multiprocessing.get_context("fork")  # forked before any thread starts
    processes = [fork.Process(target=_append_many, args=(str(path), f"p{i}", 100)) for i in range(2)]
    for process in processes:
        process.start()
    threads = [threading.Thread(target=_append_many, args=(str(path), f"t{i}", 100)) for i in range(4)]
    for thread in threads:
        thread.start()
    for worker in threads + processes:
        worker.join(timeout=120)
    assert all(p.exitcode == 0 for p in processes)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 600 and len({(r["tag"], r["index"]) for r in records}) == 600
    assert mode(path) == ordinary()


def test_an_unfinished_last_line_is_ended_before_the_next(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"file": "a"}\n{"file": "b", "ar')  # a writer killed mid-line
    append_line(path, '{"file": "c"}')
    assert path.read_text().splitlines()[-1] == '{"file": "c"}'
