"""Where a command may write: one output-location policy for train, merge, export and predict.

The rules (torch-free: the runtime room imports this module):

* A user's file or folder is never deleted, emptied or replaced, not even with
  ``--force`` or ``--overwrite``.
* ``export`` replaces its ``--out`` folder whole, so that folder must be new, empty,
  or an artifact directory written by an earlier export (recognised by its
  ``manifest.json``), and replacing one needs ``--force``. An artifact directory
  holding files that no export wrote is refused even with ``--force``.
* ``train`` writes a fixed set of names (``RUN_NAMES``) into its ``--out``: a
  non-empty ``--out`` needs ``--resume`` (continue that run) or ``--overwrite``
  (delete only those names, and only in a folder that a run wrote).
* ``merge`` writes one file and its sidecars: new names, or (with ``--force``) the
  files of an earlier merge to the same name.
* ``predict`` writes into its ``--out`` beside whatever is there (nothing is
  deleted), never into or beside its input images.

Every refusal is one ``NasloraError`` line: what, which path, what to do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Set, Union

from naslora_deploy.common.contract import ADAPTER_CONFIG_NAME, MANIFEST_FORMAT, MANIFEST_NAME
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import clean_stale_temp_dirs

PathLike = Union[str, Path]

# what a training run writes into its --out, and nothing else
RUN_CONFIG, RUN_BASE, RUN_METRICS = "train_config.json", "base_model.safetensors", "metrics.jsonl"
RUN_SUMMARY, RUN_BEST, RUN_LAST, RUN_TENSORBOARD = "run_summary.json", "best", "last", "tensorboard"
RUN_FILES = (RUN_CONFIG, RUN_BASE, RUN_METRICS, RUN_SUMMARY)
RUN_FOLDERS = (RUN_BEST, RUN_LAST, f".{RUN_BEST}.old", f".{RUN_LAST}.old", RUN_TENSORBOARD)
RUN_NAMES = RUN_FILES + RUN_FOLDERS

TRITON_NAMES = ("artifacts", "model_repository")  # what export --format triton writes into its --out
_TEMP = re.compile(r"\..+\.(tmp(-\d+)?|old)")  # write_directory's and atomic_write's temporary names


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
    except (OSError, UnicodeDecodeError, ValueError):
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
    force_flag: str = "--force",
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
            f"holds files that no export wrote ({', '.join(foreign[:3])})",
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


# ----- train: known names inside a folder ---------------------------------------------------------
def is_run_dir(folder: PathLike) -> bool:
    """Whether a training run wrote ``folder`` (its config, its base or one of its checkpoints is there)."""
    folder = Path(folder)
    if (folder / RUN_CONFIG).is_file() or (folder / "base_model.safetensors").is_file():
        return True
    return any((folder / name / ADAPTER_CONFIG_NAME).is_file() for name in RUN_FOLDERS)


def prepare_run_dir(config, main: bool = True) -> Path:
    """Check (and with ``--overwrite`` clear) a training run's ``--out`` before anything is written.

    ``config`` has ``out``, ``resume`` and ``overwrite``. A new or empty folder is
    used as it is; a non-empty one needs ``resume`` (continue the run there) or
    ``overwrite`` (the names a run writes are deleted, nothing else). ``main``: only
    the main process of a data-parallel run looks inside and clears (the others
    would see its first writes). Returns the run folder, created.
    """
    flag = "train --out"
    out = check_folder_path(config.out, flag)
    if config.resume and config.overwrite:
        raise refusal(flag, out, "was given with --resume and --overwrite", "pass one of them")
    if not main:
        return out
    names = entries(out, flag)
    if config.resume and not names:
        raise refusal(flag, out, "holds no run to resume", "drop --resume to start a new run there")
    if names and not config.resume:
        if not config.overwrite:
            what = "holds a training run" if is_run_dir(out) else f"is not empty ({names[0]}, ...)"
            todo = "pass --resume to continue it, --overwrite to replace it, or give a new folder"
            raise refusal(flag, out, what, todo)
        clear_run(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def clear_run(folder: PathLike) -> List[Path]:
    """Delete what an earlier run wrote in ``folder`` (``RUN_NAMES`` only); returns what went.

    Refused when those names are there but no run wrote the folder: a user's own
    ``best/`` is never deleted.
    """
    folder = Path(folder)
    present = [folder / name for name in RUN_NAMES if os.path.lexists(folder / name)]
    if present and not is_run_dir(folder):
        raise refusal(
            "train --out",
            folder,
            f"holds {present[0].name}, which no training run wrote",
            "move it out or give a new folder (--overwrite only replaces a run)",
        )
    for path in present:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for name in ("best", "last"):
        clean_stale_temp_dirs(folder / name)
    return present


# ----- merge: files ---------------------------------------------------------------------------------
def check_output_files(
    paths: Iterable[PathLike],
    *,
    kind: str,
    earlier: bool,
    replace: bool,
    flag: str = "--out",
    force_flag: str = "--force",
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
