"""Atomic file writes: a reader never sees a half-written checkpoint or report.

Every file written here gets ordinary permissions (``0666`` less the umask, 0644
usually), whatever the writer chose: ``safetensors.save_file`` creates its
files with mode 0600, so the mode is set after ``write`` has run, not before.

A write that fails because of the file system (full, read-only, not writable) removes
its temporary file or folder and becomes one ``OutputError`` line naming the output. A
full disk says what the output needs: the writer's estimate (``expected_bytes``), else
more than what is free once the partial output is gone; and how much had been written.

An output is locked for its writer (``hold_output``): an ``fcntl.flock`` on ``.<name>.lock``
beside it, naming the writer's pid and command; the kernel drops it when the process ends
(``kill -9`` too), so a lock file left behind is no lock.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from naslora_deploy.common.errors import NasloraError, first_line
from naslora_deploy.common.filechecks import check_regular
from naslora_deploy.common.limits import JSON_BYTES

ERRNO_KINDS = {  # what the file system says when a user's disk or folder is in the way
    errno.ENOSPC: "full",
    errno.EDQUOT: "full",
    errno.EROFS: "read-only",
    errno.EACCES: "not allowed",
    errno.EPERM: "not allowed",
}
CANNOT = {
    "read-only": "the file system is read-only; give a path on a writable disk",
    "not allowed": "permission denied; give a path you may write to",
}
FULL_HINTS = ("no space left", "os error 28", "disk quota")
NEARLY_FULL = 64 << 10  # free bytes below which a failed write means a full disk (torch.save hides ENOSPC)


class OutputError(NasloraError):
    """A write failed because of the file system: ``kind`` is "full", "read-only" or "not allowed"."""

    def __init__(self, message: str, kind: str, written: int = 0) -> None:
        super().__init__(message)
        self.kind, self.written = kind, written


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


def human_bytes(count: float) -> str:
    """``count`` bytes for a person: "512 B", "3.4 kB", "12.0 MB", "1.20 GB"."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{int(count)} B"


def free_bytes(path: Union[str, Path]) -> Optional[int]:
    """Bytes free for this user on the file system of ``path`` (its nearest existing folder)."""
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return stats.f_bavail * stats.f_frsize


def tree_bytes(path: Union[str, Path, None]) -> int:
    """Bytes in file ``path``, or in every file below folder ``path`` (0 if it is gone)."""
    if path is None or not os.path.lexists(path):
        return 0
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum(
        os.lstat(os.path.join(folder, name)).st_size for folder, _, files in os.walk(path) for name in files
    )


def failure_kind(exc: BaseException, path: Union[str, Path]) -> Optional[str]:
    """Why a write to ``path`` failed, if the file system is the reason: "full", "read-only",
    "not allowed"; None for anything else. Called before the partial output is removed: a
    writer that hides the errno (``torch.save``) on a disk with (almost) nothing free counts as full.
    """
    if isinstance(exc, OutputError):
        return exc.kind
    if isinstance(exc, NasloraError) or not isinstance(exc, Exception):
        return None
    for cause in (exc, exc.__cause__, exc.__context__):
        if getattr(cause, "errno", None) in ERRNO_KINDS:
            return ERRNO_KINDS[cause.errno]
    if any(hint in str(exc).lower() for hint in FULL_HINTS):
        return "full"
    free = free_bytes(path)
    return "full" if free is not None and free < NEARLY_FULL else None


def output_error(
    kind: str, path: Union[str, Path], written: int = 0, expected: Optional[int] = None
) -> OutputError:
    """The one line for a write of output ``path`` that failed for ``kind`` (see ``failure_kind``).

    Full: how much the output needs (``expected``, the writer's estimate of the whole, when it
    exceeds what is free; else more than what is free now, the partial output removed) and
    how much had been written (``written``) when the disk filled.
    """
    if kind in CANNOT:
        return OutputError(f"{path}: cannot write there, {CANNOT[kind]}", kind)
    free = free_bytes(path) or 0
    needs = (
        f"about {human_bytes(expected)}" if expected and expected > free else f"more than {human_bytes(free)}"
    )
    stopped = f" ({human_bytes(written)} written when it filled, removed again)" if written else ""
    return OutputError(
        f"{path}: no space left on the disk{stopped}; it needs {needs} and {human_bytes(free)} is free: "
        "free space or give a path on another disk",
        kind,
        written,
    )


def atomic_write(
    path: Union[str, Path],
    write: Callable[[Path], None],
    replace: bool = True,
    expected_bytes: Optional[int] = None,
) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it.

    The rename is atomic on one file system, so ``path`` holds either its old
    content or the complete new one, even if the process is killed mid-write.
    ``replace=False``: an existing ``path`` is never replaced, not even one made while
    writing (``FileExistsError``). A full or read-only file system: ``OutputError``
    (``output_error``; ``expected_bytes``: the writer's estimate of the file's size).
    """
    path = Path(path)
    tmp: Optional[Path] = None
    failed: Optional[Tuple[str, int]] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        ordinary_mode(tmp)  # after write: mkstemp made it 0600, and some writers (safetensors) do too
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _rename_new(tmp, path)
    except BaseException as exc:
        kind, written = failure_kind(exc, path.parent), tree_bytes(tmp)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if kind is None:
            raise
        failed = (kind, written)
    if failed:  # out of the handler: the writer's frames (an open file of torch.save's) are gone
        raise output_error(failed[0], path, failed[1], expected_bytes)
    return path


def _rename_new(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists (a hard link fails on an existing name)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: check, then rename
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def atomic_write_text(path: Union[str, Path], text: str, replace: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (``replace=False``: never over an existing file)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text), replace=replace)


@contextlib.contextmanager
def file_system_errors(path: Union[str, Path]) -> Iterator[None]:
    """An ``OSError`` of a full, read-only or closed file system in the block: ``OutputError``."""
    try:
        yield
    except OSError as exc:
        kind = failure_kind(exc, Path(path).parent)
        if kind is None:
            raise
        raise output_error(kind, path) from None


def append_line(path: Union[str, Path], line: str) -> Path:
    """Append one line to ``path`` in a single ``O_APPEND`` write, under an exclusive lock.

    Concurrent writers (two ``predict`` runs into one folder) never lose or
    interleave a line; a line left without its newline by a killed writer is
    ended first, so the next record starts on a line of its own. A full or
    read-only file system: ``OutputError``.
    """
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode()
    with file_system_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
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


def write_directory(
    final: Union[str, Path], write: Callable[[Path], None], expected_bytes: Optional[int] = None
) -> Path:
    """Fill a temporary directory with ``write(tmp)``, then swap it in for ``final``.

    If the process dies between the two renames, ``.<name>.old`` still holds the
    previous complete directory (checkpoint readers look there too). Temporary
    folders of killed writers are removed first; a file at ``final`` is never
    replaced. Whether an existing folder may be replaced is the caller's
    decision (``common.outputs``). A full or read-only file system: ``OutputError``
    (``expected_bytes``: the writer's estimate of the folder's size).
    """
    given, final = Path(final), Path(os.path.abspath(final))  # "." and ".." get a real name
    if final.exists() and not final.is_dir():
        raise NasloraError(f"{final} is a file, not a folder; it is never replaced: give another path")
    tmp = final.parent / temp_dir_name(final, os.getpid())
    made, failed = False, None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_dirs(final)
        tmp.mkdir(parents=True)
        made = True
        write(tmp)
        ordinary_modes(tmp)
    except BaseException as exc:
        kind = failure_kind(exc, final.parent)
        written = (tree_bytes(tmp) if made else 0) + (exc.written if isinstance(exc, OutputError) else 0)
        if made:
            shutil.rmtree(tmp, ignore_errors=True)
        if kind is None:
            raise
        failed = (kind, written)
    if failed:  # out of the handler, as in ``atomic_write``
        raise output_error(failed[0], given, failed[1], expected_bytes)
    old = final.parent / f".{final.name}.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return given


# ----- one writer per output ----------------------------------------------------------------------
_HELD: Dict[str, Tuple[int, Path, List[Path]]] = {}  # output's real path -> (descriptor, lock file, the
# folders made for it, deepest first: removed again if they are still empty when it is released)
_COMMAND = {"line": ""}  # what a lock file says the holder runs (cli.main sets it)


def describe_command(line: str) -> None:
    """Set the command line that this process's lock files name (``naslora-deploy train ...``)."""
    _COMMAND["line"] = " ".join(line.split())[:300]


def lock_file(path: Union[str, Path]) -> Path:
    """The lock file of output ``path``: ``.<name>.lock`` beside it (links resolved)."""
    real = Path(os.path.realpath(path))
    return real.parent / f".{real.name}.lock"


def _held_above(real: str) -> bool:
    return any(real == held or real.startswith(held.rstrip(os.sep) + os.sep) for held in _HELD)


def hold_output(path: Union[str, Path], flag: str = "--out") -> Optional[str]:
    """Lock output ``path`` (file or folder, existing or not) for this process until released or
    until the process ends; returns the key to ``release_output`` with (None: this process
    already holds ``path`` or a folder above it). Held by another process: one line naming it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    real = os.path.realpath(path)
    if _held_above(real):
        return None
    lock = lock_file(path)
    made = [folder for folder in lock.parents if not os.path.lexists(folder)]
    while True:
        try:
            with file_system_errors(path):
                lock.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except (FileExistsError, NotADirectoryError):
            below = next((p for p in lock.parents if os.path.lexists(p) and not p.is_dir()), lock.parent)
            raise NasloraError(
                f"{flag} {path} lies below {below}, which is a file; give another path"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if not isinstance(exc, BlockingIOError):  # no locks on this file system (some NFS): go on
                return None
            raise NasloraError(
                f"{flag} {path} is being written by another process ({holder}); "
                "wait for it to finish or give another path"
            ) from None
        if _same_file(fd, lock):
            break
        os.close(fd)  # its holder removed that lock file as we took it: lock the new one
    _say_holder(fd)
    _HELD[real] = (fd, lock, made)
    return real


def _same_file(fd: int, path: Path) -> bool:
    try:
        named, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _say_holder(fd: int) -> None:
    """Write this process's pid and command into its lock file (a full disk leaves it empty)."""
    text = json.dumps({"pid": os.getpid(), "command": _COMMAND["line"] or " ".join(sys.argv)[:300]})
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)


def _holder(fd: int) -> str:
    """The holder a lock file names ("pid N: COMMAND"), or a plain description if it names none."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        return f"pid {int(record['pid'])}: {' '.join(str(record['command']).split())}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said which"


def release_output(key: Optional[str]) -> None:
    """Release a lock that ``hold_output`` took (None: nothing); its lock file is removed."""
    held = _HELD.pop(key, None) if key is not None else None
    if held is None:
        return
    fd, lock, made = held
    if _same_file(fd, lock):
        with contextlib.suppress(OSError):
            lock.unlink()  # while still locked: a process waiting on it finds it gone and retries
    os.close(fd)
    with contextlib.suppress(OSError):
        for folder in made:  # a writer that failed leaves no empty folder of its own behind
            folder.rmdir()


def release_outputs() -> None:
    """Release every lock this process holds (``cli.main`` does, when its command ends)."""
    for key in list(_HELD):
        release_output(key)


@contextlib.contextmanager
def output_lock(path: Union[str, Path], flag: str = "--out") -> Iterator[None]:
    """``hold_output`` for the block: released at its end unless it was held before."""
    key = hold_output(path, flag)
    try:
        yield
    finally:
        release_output(key)


def sha256_of(path: Union[str, Path]) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Union[str, Path], what: str = "JSON file"):
    """The parsed JSON of ``path``, every failure one ``NasloraError`` line naming the file.

    A FIFO, device or folder is refused unopened; the file's size is checked
    against ``limits.JSON_BYTES`` before it is read;
    nesting too deep for the parser (a ``RecursionError``), bad UTF-8 and bad
    syntax are refused rather than raised. ``what`` names the file's role in the
    message ("COCO annotation file").
    """
    path = Path(path)
    check_regular(path, what)  # a FIFO would block the read, a device never end it
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
