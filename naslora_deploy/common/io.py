"""Atomic file writes: a reader never sees a half-written checkpoint or report.

Every file written here gets ordinary permissions (``0666`` less the umask, 0644
usually), whatever the writer chose: ``safetensors.save_file`` creates its
files with mode 0600, so the mode is set after ``write`` has run, not before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Union

from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.common.limits import JSON_BYTES


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def ordinary_mode(path: Union[str, Path]) -> None:
    """Give a file ``0666`` less the umask (execute bits kept), a folder ``0777`` less the umask."""
    path = Path(path)
    if path.is_symlink():
        return
    umask, mode = _umask(), path.stat().st_mode
    if path.is_dir():
        os.chmod(path, 0o777 & ~umask)
    else:
        os.chmod(path, (0o666 | (mode & 0o111)) & ~umask)


def ordinary_modes(root: Union[str, Path]) -> None:
    """``ordinary_mode`` for ``root`` and everything below it."""
    root = Path(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            ordinary_mode(Path(folder) / name)
    ordinary_mode(root)


def atomic_write(path: Union[str, Path], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it.

    The rename is atomic on one file system, so ``path`` holds either its old
    content or the complete new one, even if the process is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        ordinary_mode(tmp)  # after write: mkstemp made it 0600, and some writers (safetensors) do too
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def append_line(path: Union[str, Path], line: str) -> Path:
    """Append one line to ``path`` in a single ``O_APPEND`` write, under an exclusive lock.

    Concurrent writers (two ``predict`` runs into one folder) never lose or
    interleave a line; a line left without its newline by a killed writer is
    ended first, so the next record starts on a line of its own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)  # read: its last byte
    try:
        _lock(fd)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)  # closing releases the lock
    return path


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: O_APPEND alone
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def pid_running(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def temp_dir_name(final: Path, pid: Union[int, str]) -> str:
    """The name of ``write_directory``'s temporary folder for ``final`` in process ``pid``."""
    return f".{final.name}.tmp-{pid}"


def clean_stale_temp_dirs(final: Union[str, Path]) -> list:
    """Delete ``.<name>.tmp-<PID>`` folders beside ``final`` left by killed writers; returns them.

    A folder whose process still runs (another writer at work) is left alone;
    this process's own leftover is stale too.
    """
    final = Path(final)
    pattern = re.compile(re.escape(temp_dir_name(final, "")) + r"(\d+)")
    removed = []
    if not final.parent.is_dir():
        return removed
    for entry in final.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            pid = int(match.group(1))
            if pid == os.getpid() or not pid_running(pid):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def write_directory(final: Union[str, Path], write: Callable[[Path], None]) -> Path:
    """Fill a temporary directory with ``write(tmp)``, then swap it in for ``final``.

    If the process dies between the two renames, ``.<name>.old`` still holds the
    previous complete directory (checkpoint readers look there too). Temporary
    folders of killed writers are removed first; a file at ``final`` is never
    replaced. Whether an existing folder may be replaced is the caller's
    decision (``common.outputs``).
    """
    given, final = Path(final), Path(os.path.abspath(final))  # "." and ".." get a real name
    if final.exists() and not final.is_dir():
        raise NasloraError(f"{final} is a file, not a folder; it is never replaced: give another path")
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp_dirs(final)
    tmp = final.parent / temp_dir_name(final, os.getpid())
    old = final.parent / f".{final.name}.old"
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        ordinary_modes(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return given


def sha256_of(path: Union[str, Path]) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Union[str, Path], what: str = "JSON file"):
    """The parsed JSON of ``path``, every failure one ``NasloraError`` line naming the file.

    The file's size is checked against ``limits.JSON_BYTES`` before it is read;
    nesting too deep for the parser (a ``RecursionError``), bad UTF-8 and bad
    syntax are refused rather than raised. ``what`` names the file's role in the
    message ("COCO annotation file").
    """
    path = Path(path)
    try:
        JSON_BYTES.check(path.stat().st_size, path, f"split the {what}")
        text = path.read_text(encoding="utf-8")
        return json.loads(text)
    except RecursionError:
        raise NasloraError(
            f"{path}: the {what} is nested too deeply to be real data (over ~1000 levels); check the file"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NasloraError(f"{path}: cannot read the {what} as JSON ({first_line(exc, 120)})") from None
