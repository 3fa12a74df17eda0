"""Where a command may write: one output-location policy for train, merge, export and predict.

The rules (torch-free: the runtime room imports this module):

* A user's file or folder is never deleted, emptied or replaced, not even with
  ``--overwrite`` (``--force``, its old spelling, is still accepted).
* One writer per output: ``train``, ``merge`` and ``export`` lock their ``--out``
  (``io.hold_output``); a second writer is refused with one line naming the first.
* ``export`` replaces its ``--out`` folder whole, so that folder must be new, empty,
  or an artifact directory written by an earlier export (recognised by its
  ``manifest.json``), and replacing one needs ``--overwrite``. An artifact directory
  holding files that no export wrote is refused even with ``--overwrite``.
* ``train`` marks each run folder it starts with ``.naslora-run`` (``RUN_MARKER``) and
  writes a fixed set of names (``RUN_NAMES``) into it. A non-empty ``--out`` needs
  ``--resume`` (continue that run) or ``--overwrite`` (delete that run's names), and
  ``--overwrite`` only clears a marked folder that holds nothing else. A run folder
  written before the marker existed is never cleared: it can be resumed, or deleted
  by its owner.
* ``merge`` writes one file and its sidecars: new names, or (with ``--overwrite``) the
  files of an earlier merge to the same name.
* A single output file (``--json``, ``--plot``) is never a folder, and an existing file
  is replaced only with ``--overwrite`` (``check_file_output``).
* ``predict`` writes into its ``--out`` beside whatever is there (nothing is
  deleted), never into or beside its input images.

Every refusal is one ``NasloraError`` line: what, which path, what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Set, Union

from naslora_deploy.common.contract import ADAPTER_CONFIG_NAME, MANIFEST_FORMAT, MANIFEST_NAME
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import atomic_write_text, hold_output, release_output

PathLike = Union[str, Path]
OVERWRITE = "--overwrite"  # the one flag that lets a command replace an earlier output of its own

# what a training run writes into its --out, and nothing else
RUN_CONFIG, RUN_BASE, RUN_METRICS = "train_config.json", "base_model.safetensors", "metrics.jsonl"
RUN_SUMMARY, RUN_BEST, RUN_LAST, RUN_TENSORBOARD = "run_summary.json", "best", "last", "tensorboard"
RUN_FILES = (RUN_CONFIG, RUN_BASE, RUN_METRICS, RUN_SUMMARY)
CHECKPOINT_FOLDERS = (RUN_BEST, RUN_LAST, f".{RUN_BEST}.old", f".{RUN_LAST}.old")
RUN_FOLDERS = CHECKPOINT_FOLDERS + (RUN_TENSORBOARD,)
RUN_NAMES = RUN_FILES + RUN_FOLDERS
CHECKPOINT_FILES = (ADAPTER_CONFIG_NAME, "adapter_model.safetensors", "training_state.pt")
RUN_MARKER, RUN_FORMAT = ".naslora-run", "naslora-deploy-run"  # the marker a run folder is known by

TRITON_NAMES = ("artifacts", "model_repository")  # what export --format triton writes into its --out
_TEMP = re.compile(r"\..+\.(tmp(-\d+)?|old|lock)")  # temporary names (write_directory, atomic_write), locks
_MARKED: Set[str] = set()  # run folders that prepare_run_dir marked inside a ``discarded_on_failure`` block


def refusal(flag: str, path: PathLike, problem: str, todo: str) -> NasloraError:
    """The one-line error of this module: ``<flag> <path> <problem>; <todo>``."""
    return NasloraError(f"{flag} {path} {problem}; {todo}")


def entries(path: PathLike, flag: str = "--out") -> List[str]:
    """The names in folder ``path`` (none if it does not exist), or a one-line error if unreadable."""
    path = Path(path)
    if not path.is_dir():
        return []
    try:
        return sorted(entry.name for entry in path.iterdir())
    except OSError as exc:
        raise refusal(flag, path, f"cannot be read ({exc.strerror or exc})", "give another folder") from None


def check_parents(path: PathLike, flag: str = "--out") -> None:
    """Refuse a path below an existing file (its folder could not be created)."""
    for parent in Path(os.path.abspath(path)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise refusal(flag, path, f"lies below {parent}, which is a file", "give another path")
            return


def check_folder_path(path: PathLike, flag: str = "--out") -> Path:
    """Refuse a file (or a path below one) where a folder is wanted; returns ``path``."""
    path = Path(path)
    check_parents(path, flag)
    if os.path.lexists(path) and not path.is_dir():
        what = "is a broken link" if path.is_symlink() else "is a file, not a folder"
        raise refusal(flag, path, what, "it is never replaced: give a folder")
    return path


def holds_cwd(path: PathLike) -> bool:
    """Whether ``path`` is the current folder or one above it (a folder that cannot be swapped out)."""
    folder, cwd = Path(path).resolve(), Path.cwd().resolve()
    return folder == cwd or folder in cwd.parents


def is_within(path: PathLike, folder: PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (links resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def json_field(path: PathLike, key: str):
    """``data[key]`` of the JSON object in file ``path``; None if it is missing, unreadable or no object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data.get(key) if isinstance(data, dict) else None


# ----- export: a folder replaced whole -----------------------------------------------------------
def artifact_names(folder: PathLike) -> Optional[Set[str]]:
    """The names an export wrote into ``folder`` (its manifest lists them); None if it is no artifact."""
    manifest = Path(folder) / MANIFEST_NAME
    if not manifest.is_file() or json_field(manifest, "format") != MANIFEST_FORMAT:
        return None
    files = json_field(manifest, "files")
    names = {MANIFEST_NAME}
    for name, entry in files.items() if isinstance(files, dict) else []:
        names.add((Path(str(name)).parts or (str(name),))[0])
        external = entry.get("external_data") if isinstance(entry, dict) else None
        if isinstance(external, dict) and isinstance(external.get("file"), str):
            names.add(external["file"])
    return names


def triton_names(folder: PathLike) -> Optional[Set[str]]:
    """The names ``export --format triton`` wrote into ``folder``, or None if it wrote none of it."""
    return set(TRITON_NAMES) if artifact_names(Path(folder) / "artifacts") is not None else None


def prepare_output_dir(
    path: PathLike,
    *,
    kind: str,
    earlier: Callable[[Path], Optional[Set[str]]],
    replace: bool,
    flag: str = "--out",
    force_flag: str = OVERWRITE,
    writer: str = "export",
) -> Path:
    """Check a folder that is about to be written in a temporary folder and swapped in whole.

    Allowed: a new or empty folder; an earlier output of this ``kind`` (``earlier(path)``
    gives the names it wrote, None for a folder that is not one) when ``replace`` is
    set and it holds nothing else. Everything else is refused with one line.
    Returns the folder with links resolved (what ``write_directory`` will replace).
    """
    folder = check_folder_path(path, flag).resolve()
    if holds_cwd(folder):
        raise refusal(flag, path, "is the current folder (or holds it)", f"give a new folder for the {kind}")
    names = entries(folder, flag)
    if not names:
        return folder
    ours = earlier(folder)
    if ours is None:
        raise refusal(
            flag,
            path,
            f"is a folder that holds no {kind} ({names[0]}{', ...' if len(names) > 1 else ''})",
            f"it is never replaced, not even with {force_flag}: give a new or empty folder",
        )
    foreign = [n for n in names if n not in ours and not _TEMP.fullmatch(n)]
    if foreign:
        raise refusal(
            flag,
            path,
            f"holds files that no {writer} wrote ({', '.join(foreign[:3])})",
            "move them out or give a new folder",
        )
    if not replace:
        raise refusal(
            flag, path, f"already holds a {kind}", f"pass {force_flag} to replace it, or give a new folder"
        )
    return folder


def prepare_artifact_dir(path: PathLike, replace: bool = False) -> Path:
    """``prepare_output_dir`` for an artifact directory (``export --out``)."""
    return prepare_output_dir(path, kind="naslora-deploy artifact", earlier=artifact_names, replace=replace)


def prepare_triton_dir(path: PathLike, replace: bool = False) -> Path:
    """``prepare_output_dir`` for ``export --format triton --out`` (artifacts/ and model_repository/)."""
    return prepare_output_dir(path, kind="Triton export", earlier=triton_names, replace=replace)


# ----- train: a marked folder ------------------------------------------------------------------------
def run_marker(folder: PathLike) -> Optional[dict]:
    """The marker a run of this tool left in ``folder`` (its JSON), or None if there is none."""
    marker = Path(folder) / RUN_MARKER
    if not marker.is_file() or marker.is_symlink() or json_field(marker, "format") != RUN_FORMAT:
        return None
    return json.loads(marker.read_text())


def mark_run(folder: PathLike, created: bool) -> Path:
    """Write the run marker into ``folder``: this tool's format, when, by which process, and
    whether that process made the folder (``created``)."""
    record = {
        "format": RUN_FORMAT,
        "version": 1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pid": os.getpid(),
        "created_folder": created,
    }
    return atomic_write_text(Path(folder) / RUN_MARKER, json.dumps(record) + "\n")


def is_run_dir(folder: PathLike) -> bool:
    """Whether a training run wrote ``folder``: its marker, or (a run written before the marker
    existed) its config, its base or one of its checkpoints is there."""
    folder = Path(folder)
    if run_marker(folder) is not None:
        return True
    if (folder / RUN_CONFIG).is_file() or (folder / RUN_BASE).is_file():
        return True
    return any((folder / name / ADAPTER_CONFIG_NAME).is_file() for name in RUN_FOLDERS)


def resumable(folder: PathLike) -> bool:
    """Whether ``folder`` holds a checkpoint with a training state (``last/`` or ``.last.old/``)."""
    return any(
        (Path(folder) / name / CHECKPOINT_FILES[2]).is_file() for name in (RUN_LAST, f".{RUN_LAST}.old")
    )


def prepare_run_dir(config, main: bool = True) -> Path:
    """Check (and with ``--overwrite`` clear) a training run's ``--out`` before anything is written.

    ``config`` has ``out``, ``resume`` and ``overwrite``. The main process locks ``--out``
    (until the process ends, or ``io.release_outputs``). A new or empty folder is used
    and marked; a non-empty one needs ``resume`` (a run with a checkpoint to continue) or
    ``overwrite`` (``clear_run``). ``main``: only the main process of a data-parallel run
    locks, looks inside and clears (the others would see its first writes). Returns the
    run folder, created.
    """
    flag = "train --out"
    out = check_folder_path(config.out, flag)
    if config.resume and config.overwrite:
        raise refusal(flag, out, "was given with --resume and --overwrite", "pass one of them")
    if not main:
        return out
    key = hold_output(out, flag)
    try:
        _check_run_dir(out, config.resume, config.overwrite)
        created = not out.is_dir()
        out.mkdir(parents=True, exist_ok=True)
        if not config.resume:
            mark_run(out, created)
            _MARKED.add(os.path.realpath(out))
    except BaseException:
        release_output(key)
        raise
    return out


def _check_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """``prepare_run_dir``'s refusals; with ``overwrite`` the earlier run is cleared."""
    flag = "train --out"
    names = [n for n in entries(out, flag) if not _TEMP.fullmatch(n)]
    if resume:
        if not names:
            raise refusal(flag, out, "holds no run to resume", "drop --resume to start a new run there")
        if not resumable(out):
            todo = "pass --overwrite to start it again" if run_marker(out) else "give the folder of a run"
            raise refusal(flag, out, "holds no checkpoint to resume (no last/training_state.pt)", todo)
        return
    if not names:
        return
    if not overwrite:
        if run_marker(out) is not None:
            todo = "pass --resume to continue it, --overwrite to replace it, or give a new folder"
            raise refusal(flag, out, "holds a training run", todo)
        if is_run_dir(out):
            raise refusal(flag, out, f"holds a training run without a {RUN_MARKER} marker", _UNMARKED)
        raise refusal(flag, out, f"is not empty ({names[0]}, ...)", "give a new or empty folder")
    clear_run(out)


_UNMARKED = (  # a run folder written before runs were marked, or a user's files named like a run's
    "pass --resume to continue it, or give a new folder (--overwrite only clears a folder that a run "
    "marked; an unmarked old run is for its owner to delete)"
)


def foreign_names(folder: PathLike) -> List[str]:
    """What in run folder ``folder`` no run wrote: names beside the run's, and files in its
    checkpoint and tensorboard folders that no run writes (as ``best/x``)."""
    folder = Path(folder)
    found = []
    for name in entries(folder):
        if _TEMP.fullmatch(name) or name == RUN_MARKER:
            continue
        path = folder / name
        if name not in RUN_NAMES or (name in RUN_FOLDERS) != (path.is_dir() and not path.is_symlink()):
            found.append(name)
        elif name in CHECKPOINT_FOLDERS:
            found += [
                f"{name}/{n}" for n in entries(path) if n not in CHECKPOINT_FILES and not _TEMP.fullmatch(n)
            ]
        elif name == RUN_TENSORBOARD:
            found += [f"{name}/{n}" for n in entries(path) if not n.startswith("events.out.tfevents.")]
    return found


def clear_run(folder: PathLike) -> List[Path]:
    """Delete an earlier run in ``folder`` (its ``RUN_NAMES`` and temporary names); returns what went.

    Only a folder that a run of this tool marked (``RUN_MARKER``) and that holds nothing
    else (``foreign_names``) is cleared; anything else is refused with one line naming
    what is in the way. The marker stays (``prepare_run_dir`` rewrites it).
    """
    folder = Path(folder)
    flag = "train --out"
    if run_marker(folder) is None:
        names = [n for n in entries(folder, flag) if not _TEMP.fullmatch(n)]
        if is_run_dir(folder):
            present = next(n for n in (*RUN_NAMES, *names) if n in names)
            problem = (
                f"holds {present} but no {RUN_MARKER} marker: no run of this tool is known to have written it"
            )
            raise refusal(flag, folder, problem, _UNMARKED)
        raise refusal(
            flag,
            folder,
            f"holds {names[0]}, which no training run wrote" if names else "holds no training run",
            "--overwrite only replaces a run of this tool: give a new or empty folder",
        )
    foreign = foreign_names(folder)
    if foreign:
        raise refusal(
            flag,
            folder,
            f"holds {foreign[0]}, which no training run wrote",
            "move it out or give a new folder (--overwrite only replaces what a run wrote)",
        )
    present = [folder / n for n in entries(folder, flag) if n != RUN_MARKER and not n.endswith(".lock")]
    for path in present:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return present


@contextlib.contextmanager
def discarded_on_failure(folder: PathLike) -> Iterator[None]:
    """Run a training job: if it fails (a full disk, bad data, Ctrl-C) before its first checkpoint,
    the run folder that ``prepare_run_dir`` marked inside this block is removed again
    (``discard_unstarted_run``); a folder it did not mark there is never touched."""
    key = os.path.realpath(folder)
    _MARKED.discard(key)
    try:
        yield
    except BaseException:
        if key in _MARKED:
            with contextlib.suppress(NasloraError, OSError):  # the first failure is the one to report
                discard_unstarted_run(folder)
        raise
    finally:
        _MARKED.discard(key)


def discard_unstarted_run(folder: PathLike) -> bool:
    """Remove a run folder that this process marked and that holds no checkpoint yet; True if it went.

    Only what a run writes goes (``clear_run``); the folder itself only if this process made it.
    """
    folder = Path(folder)
    marker = run_marker(folder)
    if marker is None or marker.get("pid") != os.getpid() or resumable(folder) or foreign_names(folder):
        return False
    clear_run(folder)
    (folder / RUN_MARKER).unlink(missing_ok=True)
    if marker.get("created_folder") and not entries(folder):
        folder.rmdir()
    return True


# ----- merge: files ---------------------------------------------------------------------------------
def check_output_files(
    paths: Iterable[PathLike],
    *,
    kind: str,
    earlier: bool,
    replace: bool,
    flag: str = "--out",
    force_flag: str = OVERWRITE,
) -> None:
    """Check the files a command is about to write (a checkpoint and its sidecars).

    New names are fine. Existing ones are replaced only if they are an earlier output
    of this ``kind`` (``earlier``, decided by the caller) and ``replace`` is set; a
    folder, or a file that no such command wrote, is refused with one line.
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        check_parents(path, flag)
        if path.is_dir():
            raise refusal(flag, path, "is a folder", "give a file name (it is never replaced)")
    existing = [p for p in paths if os.path.lexists(p)]
    if not existing:
        return
    if not earlier:
        raise refusal(
            flag,
            existing[0],
            f"exists and is no {kind}",
            f"it is never replaced, not even with {force_flag}: give a new name",
        )
    if not replace:
        raise refusal(flag, existing[0], f"already holds a {kind}", f"pass {force_flag} to replace it")


# ----- one file: --json, --plot ---------------------------------------------------------------------
def check_file_output(path: Optional[PathLike], replace: bool, flag: str = "--json") -> Optional[Path]:
    """Check a single output file before any work: never a folder (nor below a file), and an
    existing file (or link) only with ``replace`` (``--overwrite``). None and ``-`` (stdout) pass."""
    if path is None or str(path) == "-":
        return None
    path = Path(path)
    check_parents(path, flag)
    if path.is_dir():
        raise refusal(flag, path, "is a folder", "give a file name (a folder is never replaced)")
    if os.path.lexists(path) and not replace:
        raise refusal(flag, path, "already exists", f"pass {OVERWRITE} to replace it, or give a new name")
    return path


# ----- predict: a folder written into -------------------------------------------------------------
def prepare_write_folder(path: PathLike, *, avoid: Iterable[PathLike] = (), flag: str = "--out") -> Path:
    """Check a folder that outputs are added to (nothing in it is deleted).

    Refused: a file, and a folder that is (or lies below) one of ``avoid`` (the input
    folders: outputs there would overwrite inputs and be read as inputs next time).
    """
    path = check_folder_path(path, flag)
    for folder in avoid:
        if is_within(path, folder):
            raise refusal(
                flag,
                path,
                f"is (or lies inside) the input folder {folder}",
                "outputs there would mix with the inputs: give a folder outside the inputs",
            )
    return path


def take_marked_folder(folder: Path, names: Set[str], marker: str, record: dict, flag: str = "--out") -> Path:
    """Lock a checked output folder (``prepare_output_dir``), remove what an earlier run of the same
    writer left there (``names``, no other entry), and mark it: ``marker`` holds ``record`` as JSON."""
    hold_output(folder, flag)
    for name in sorted(names & set(entries(folder, flag))):
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / marker, json.dumps(record) + "\n")
    return folder
