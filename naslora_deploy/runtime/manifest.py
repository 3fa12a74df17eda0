"""Reading an artifact directory's ``manifest.json`` (torch-free): one schema, one safe path rule.

``read_manifest`` reads the file, checks it against ``SCHEMA`` (types, required
keys, allowed values) and checks every listed file: a plain file name inside the
artifact directory (no ``/``, no ``..``, no absolute path), a regular file (no
symbolic link, device or directory) and, unless ``check_files`` is False, its
sha256. Backends open files only through ``artifact_file``, which refuses any
name the manifest does not list: what runs is what was hashed. Every problem is
one ``NasloraError`` line that names the file and says what to do.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

from naslora_deploy.common import contract as names
from naslora_deploy.common.contract import MANIFEST_FORMAT, MANIFEST_NAME
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import NORMALIZATIONS, InputMapping
from naslora_deploy.common.io import sha256_of

MAX_MANIFEST_BYTES = 16 << 20  # real manifests are a few kB
SHA256 = re.compile(r"^[0-9a-f]{64}$")
AGAIN = "export the artifacts again"


def _kind(*types):
    """A type check that does not take ``True`` for an int."""
    return lambda value: isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _positive_int(value) -> bool:
    return _kind(int)(value) and value > 0


def _slots(value) -> bool:
    return value is None or (_kind(int)(value) and value >= 2)


def _sha256(value) -> bool:
    return isinstance(value, str) and bool(SHA256.match(value))


def _input_mapping(value) -> bool:
    try:
        InputMapping.from_dict(value)
    except (TypeError, ValueError):
        return False
    return True


def _names(value) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(n, str) for n in value))


# key -> (required, check, what it must be); nested dicts have their own tables
EXTERNAL_SCHEMA = {
    "file": (True, _kind(str), "a file name"),
    "sha256": (True, _sha256, "64 hex digits"),
    "bytes": (False, _kind(int), "an integer"),
}
FILE_SCHEMA = {
    "sha256": (True, _sha256, "64 hex digits"),
    "bytes": (False, _kind(int), "an integer"),
    "inputs": (False, _kind(list), "a list"),
    "outputs": (False, _kind(list), "a list"),
    "external_data": (False, _kind(dict), "an object"),
}
CLASSES_SCHEMA = {
    "num_classes": (False, _positive_int, "a positive integer"),
    "names": (False, _names, "a list of strings"),
}
SOURCE_SCHEMA = {
    "kind": (True, lambda v: v in ("adapter", "sam_checkpoint"), "adapter or sam_checkpoint"),
    "path": (True, _kind(str), "a path"),
    "sha256": (False, _sha256, "64 hex digits"),
}
SCHEMA = {
    "format": (True, lambda v: v == MANIFEST_FORMAT, MANIFEST_FORMAT),
    "variant": (True, _kind(str), "a model variant name"),
    "image_size": (True, _positive_int, "a positive integer"),
    "head": (True, lambda v: v in ("binary", "multiclass"), "binary or multiclass"),
    "files": (True, _kind(dict), "an object of file name -> entry"),
    "precision": (True, _kind(str), "a precision name"),
    "onnx_precision": (True, _kind(str), "a precision name"),
    "merge": (True, _kind(dict), "an object"),
    "export": (True, _kind(dict), "an object"),
    "source": (True, _kind(dict), "an object"),
    "normalization": (False, lambda v: v in NORMALIZATIONS, " or ".join(NORMALIZATIONS)),
    "classes": (False, _kind(dict), "an object"),
    "num_queries": (False, _kind(int), "an integer"),
    "opset": (False, _kind(int), "an integer"),
    "prompt_point_slots": (False, _slots, "null or an integer >= 2"),
    "trtexec": (False, _kind(dict), "an object"),
    "input_mapping": (False, _input_mapping, "null or {bands, stretch} (imaging.InputMapping)"),
}
REQUIRED_FILES = (names.onnx_file(names.IMAGE_ENCODER), names.onnx_file(names.MASK_DECODER))


def _check_table(data: dict, schema: dict, where: str, path: Path) -> None:
    for key, (required, check, expected) in schema.items():
        if key not in data:
            if required:
                raise NasloraError(f"{path} is damaged: {where}{key!r} is missing; {AGAIN}")
        elif not check(data[key]):
            raise NasloraError(
                f"{path} is damaged: {where}{key!r} is {json.dumps(data[key])[:60]}, "
                f"expected {expected}; {AGAIN}"
            )


def validate_manifest(data, path: Path) -> dict:
    """Check a parsed manifest against ``SCHEMA`` (types, required keys, listed graphs); returns it."""
    if not isinstance(data, dict):
        raise NasloraError(
            f"{path} is damaged: it holds a JSON {type(data).__name__}, not an object; {AGAIN}"
        )
    if data.get("format") != MANIFEST_FORMAT:
        raise NasloraError(
            f"{path} is not a naslora-deploy artifact manifest (format {data.get('format')!r})"
        )
    _check_table(data, SCHEMA, "", path)
    for name, entry in data["files"].items():
        if not isinstance(entry, dict):
            raise NasloraError(f"{path} is damaged: files[{name!r}] is not an object; {AGAIN}")
        _check_table(entry, FILE_SCHEMA, f"files[{name!r}].", path)
        if "external_data" in entry:
            _check_table(entry["external_data"], EXTERNAL_SCHEMA, f"files[{name!r}].external_data.", path)
    _check_table(data.get("classes") or {}, CLASSES_SCHEMA, "classes.", path)
    _check_table(data["source"], SOURCE_SCHEMA, "source.", path)
    required = REQUIRED_FILES + (
        (names.onnx_file(names.PROMPT_DECODER),) if data.get("prompt_point_slots") else ()
    )
    missing = [name for name in required if name not in data["files"]]
    if missing:
        raise NasloraError(
            f"{path} does not list {missing[0]} under 'files', so it cannot be checked; {AGAIN}"
        )
    return data


def member(directory: Path, name) -> Path:
    """``directory / name`` where ``name`` is a plain file name of a regular file in ``directory``.

    The one path rule of the runtime: no separators, no ``..``, no absolute path,
    no symbolic link and nothing but a regular file, so nothing outside the
    artifact directory (``/etc/passwd``, ``/proc/self/mem``) is ever opened.
    """
    directory = Path(directory)
    plain = isinstance(name, str) and name not in ("", ".", "..") and not re.search(r"[/\\\x00]", name)
    if not plain:
        raise NasloraError(
            f"{directory / MANIFEST_NAME} names {str(name)!r}, which is not a plain file name inside the "
            f"artifact directory; {AGAIN}"
        )
    path = directory / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise NasloraError(f"{path} is missing; {AGAIN}") from None
    except OSError as exc:
        raise NasloraError(f"cannot read {path} ({exc.strerror}); {AGAIN}") from None
    if stat.S_ISLNK(mode):
        raise NasloraError(
            f"{path} is a symbolic link; an artifact holds only its own regular files; {AGAIN}"
        )
    if not stat.S_ISREG(mode):
        raise NasloraError(f"{path} is not a regular file; {AGAIN}")
    return path


def listed_files(manifest: dict) -> Iterator[Tuple[str, str]]:
    """(file name, sha256) of every file the manifest lists, external data included."""
    for name, entry in manifest["files"].items():
        yield name, entry["sha256"]
        external = entry.get("external_data")
        if external:
            yield external["file"], external["sha256"]


def is_listed(manifest: dict, name: str) -> bool:
    """Whether ``name`` is one of the manifest's files (or their external data)."""
    return any(name == listed for listed, _ in listed_files(manifest))


def artifact_file(directory, manifest: dict, name: str) -> Path:
    """The path of a listed file, checked by ``member``; an unlisted name is refused (it was never hashed)."""
    directory = Path(directory)
    if not is_listed(manifest, name):
        raise NasloraError(
            f"{directory / name} is not listed in {MANIFEST_NAME}, so its integrity cannot be checked; "
            f"{AGAIN}"
        )
    return member(directory, name)


def _read_json(directory: Path) -> object:
    path = directory / MANIFEST_NAME
    if directory.exists() and not directory.is_dir():
        raise NasloraError(
            f"{directory} is not an artifact directory; pass a directory written by naslora-deploy export"
        )
    if not os.path.lexists(path):
        raise NasloraError(f"{path} not found; pass a directory written by naslora-deploy export")
    member(directory, MANIFEST_NAME)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise NasloraError(f"{path} is {path.stat().st_size} bytes, far too large for a manifest; {AGAIN}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise NasloraError(f"{path} is damaged ({str(exc).splitlines()[0][:120]}); {AGAIN}") from None


def read_manifest(directory, check_files: bool = True) -> dict:
    """Read and validate an artifact manifest; check every listed file's place and (by default) sha256."""
    directory = Path(directory)
    manifest = validate_manifest(_read_json(directory), directory / MANIFEST_NAME)
    for name, sha256 in listed_files(manifest):
        file = member(directory, name)
        if check_files and sha256_of(file) != sha256:
            raise NasloraError(
                f"{file} does not match its sha256 in {MANIFEST_NAME} (changed or truncated); {AGAIN}"
            )
    return manifest


def check_image_input(manifest: dict, file, shape: Optional[Sequence]) -> None:
    """The manifest's ``image_size`` against the encoder graph's input shape (B, 3, S, S)."""
    size = manifest["image_size"]
    if shape is None or len(shape) != 4:
        raise NasloraError(f"{file} does not take (batch, 3, size, size) images; {AGAIN}")
    height, width = shape[2], shape[3]
    if isinstance(height, int) and isinstance(width, int) and (height, width) != (size, size):
        raise NasloraError(
            f"{MANIFEST_NAME} says image_size {size}, but {file} takes {height} x {width} images "
            f"(the manifest was changed); {AGAIN}"
        )
