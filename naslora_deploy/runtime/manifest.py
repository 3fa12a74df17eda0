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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

from naslora_deploy.common import contract as names
from naslora_deploy.common.contract import MANIFEST_FORMAT, MANIFEST_NAME
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import NORMALIZATIONS, InputMapping
from naslora_deploy.common.io import read_json, sha256_of

MAX_MANIFEST_BYTES = 16 << 20  # real manifests are a few kB
SHA256 = re.compile(r"^[0-9a-f]{64}$")
AGAIN = "export the artifacts again"
ENGINE_SUFFIXES = (".engine", ".engine.json")  # a TensorRT engine and its sidecar


def rebuild_hint(directory) -> str:
    """What rebuilds and registers an artifact's engines on this machine."""
    return f"rebuild and register them here: naslora-deploy build-engines {directory} --overwrite"


def remedy(directory, name: str) -> str:
    """What to do about a listed file that is wrong: engines are rebuilt on the device, the rest exported."""
    return rebuild_hint(directory) if str(name).endswith(ENGINE_SUFFIXES) else AGAIN


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


SOURCE_KINDS = ("adapter", "merged_checkpoint", "sam_checkpoint")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # exporters.specs.PRECISIONS (the runtime imports no exporter)
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
    # a TensorRT engine's build facts, registered by ``runtime.engine_build.register_engine``
    "precision": (False, lambda v: v in PRECISIONS, " or ".join(PRECISIONS)),
    "tensorrt_version": (False, _kind(str), "a version"),
    "gpu_name": (False, lambda v: v is None or _kind(str)(v), "null or a GPU name"),
    "compute_capability": (False, lambda v: v is None or _kind(str)(v), "null or a compute capability"),
    "build_seconds": (False, _kind(int, float), "a number"),
    "built_at": (False, _kind(str), "a time"),
}
CLASSES_SCHEMA = {
    "num_classes": (False, _positive_int, "a positive integer"),
    "names": (False, _names, "a list of strings"),
}
SOURCE_SCHEMA = {
    "kind": (True, lambda v: v in SOURCE_KINDS, " or ".join(SOURCE_KINDS)),
    "path": (True, _kind(str), "a path"),
    "sha256": (False, _sha256, "64 hex digits"),
    "base": (False, lambda v: v is None or _kind(str)(v), "null or a path"),
    "variant": (False, lambda v: v is None or _kind(str)(v), "a model variant name"),
}
EXPORT_SCHEMA = {  # read back by ``exporters.specs.ExportSpec.from_manifest`` (verify, --backend torch)
    "merge": (False, _kind(dict, str), "an object (older manifests: a merge mode)"),
    "engine": (False, _kind(dict), "an object"),
}
EXPORT_MERGE_SCHEMA = {  # export.merge (a MergeSpec); older manifests hold these keys in export itself
    "mode": (False, _kind(str), "a merge mode"),
    "calibration": (False, lambda v: v is None or _kind(str)(v), "null or a folder"),
}
MERGE_SCHEMA = {
    "mode": (False, _kind(str), "a merge mode"),
    "report": (False, lambda v: v is None or _kind(dict)(v), "null or an object"),
}
SCHEMA = {
    "format": (True, lambda v: v == MANIFEST_FORMAT, MANIFEST_FORMAT),
    "variant": (True, _kind(str), "a model variant name"),
    "image_size": (True, _positive_int, "a positive integer"),
    "head": (True, lambda v: v in ("binary", "multiclass"), "binary or multiclass"),
    "files": (True, _kind(dict), "an object of file name -> entry"),
    "precision": (True, lambda v: v in PRECISIONS, " or ".join(PRECISIONS)),
    "onnx_precision": (True, lambda v: v in PRECISIONS, " or ".join(PRECISIONS)),
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
                f"{path} is damaged: {where}{key!r} is {_shown(data[key])}, expected {expected}; {AGAIN}"
            )


def _shown(value) -> str:
    """A JSON value as a message shows it: its JSON cut short, or its kind when too deep to print."""
    try:
        text = json.dumps(value)
    except (RecursionError, ValueError):
        return f"a deeply nested JSON {'object' if isinstance(value, dict) else 'array'}"
    return text if len(text) <= 60 else text[:57] + "..."


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
    _check_table(data["export"], EXPORT_SCHEMA, "export.", path)
    if isinstance(data["export"].get("merge"), dict):
        _check_table(data["export"]["merge"], EXPORT_MERGE_SCHEMA, "export.merge.", path)
    else:  # an older manifest: the merge's options beside the mode
        _check_table(data["export"], EXPORT_MERGE_SCHEMA, "export.", path)
    _check_table(data["merge"], MERGE_SCHEMA, "merge.", path)
    required = REQUIRED_FILES + (
        (names.onnx_file(names.PROMPT_DECODER),) if data.get("prompt_point_slots") else ()
    )
    missing = [name for name in required if name not in data["files"]]
    if missing:
        raise NasloraError(
            f"{path} does not list {missing[0]} under 'files', so it cannot be checked; {AGAIN}"
        )
    return data


@dataclass
class Manifest:
    """An artifact directory's ``manifest.json``: what the exporter writes and the runtime reads.

    Built by ``exporters.export`` (``to_dict`` is the file), read back by ``read_manifest``
    (``from_dict`` validates against ``SCHEMA`` first). The nested records stay JSON objects:
    ``files`` (name -> sha256, bytes, inputs, outputs, external data), ``merge`` (mode and report),
    ``export`` (the ``ExportSpec``), ``source`` (what was exported), ``classes``, ``trtexec``.
    Read by attribute; ``manifest["key"]`` also reads it, as the JSON it is.
    """

    variant: str
    image_size: int
    head: str  # binary or multiclass
    files: Dict[str, dict]
    precision: str  # --precision: the engines' with --format trt
    onnx_precision: str  # the ONNX files' own
    merge: dict
    export: dict
    source: dict
    normalization: str = "imagenet"  # manifests before the field: SAM's
    classes: dict = field(default_factory=lambda: {"num_classes": 1})
    num_queries: int = 0
    opset: Optional[int] = None
    prompt_point_slots: Optional[int] = None  # points per prompt the prompt decoder takes; None: no prompts
    trtexec: Dict[str, str] = field(default_factory=dict)
    input_mapping: Optional[dict] = None  # the run's --bands / --stretch (imaging.InputMapping)
    naslora_deploy_version: Optional[str] = None
    torch_version: Optional[str] = None
    onnx_version: Optional[str] = None
    format: str = MANIFEST_FORMAT

    @property
    def multiclass(self) -> bool:
        """Whether the mask decoder has the multi-class head."""
        return self.head == "multiclass"

    def __getitem__(self, key: str):
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self._names()

    def get(self, key: str, default=None):
        """``dict.get``, for code that reads the manifest as the JSON it is."""
        return getattr(self, key) if key in self._names() else default

    @classmethod
    def _names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict:
        """The JSON object written as ``manifest.json`` (format and versions first)."""
        first = ("format", "naslora_deploy_version", "torch_version", "onnx_version")
        names = first + tuple(n for n in self._names() if n not in first)
        return {name: getattr(self, name) for name in names}

    @classmethod
    def of(cls, manifest, path: Path = Path(MANIFEST_NAME)) -> "Manifest":
        """``manifest`` as a ``Manifest``: itself, or a parsed ``manifest.json`` (validated)."""
        return manifest if isinstance(manifest, cls) else cls.from_dict(manifest, path)

    @classmethod
    def from_dict(cls, data, path: Path = Path(MANIFEST_NAME)) -> "Manifest":
        """A parsed ``manifest.json``, validated (one ``NasloraError`` line naming ``path``); keys this
        version does not know are ignored, keys it needs are required."""
        validate_manifest(data, path)
        known = cls._names()
        values = {k: v for k, v in data.items() if k in known}
        if values.get("classes") is None:
            values.pop("classes", None)
        return cls(**values)


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


def listed_files(manifest: Manifest) -> Iterator[Tuple[str, str]]:
    """(file name, sha256) of every file the manifest lists, external data included."""
    for name, entry in manifest.files.items():
        yield name, entry["sha256"]
        external = entry.get("external_data")
        if external:
            yield external["file"], external["sha256"]


def is_listed(manifest: Manifest, name: str) -> bool:
    """Whether ``name`` is one of the manifest's files (or their external data)."""
    return any(name == listed for listed, _ in listed_files(manifest))


def artifact_file(directory, manifest: Manifest, name: str) -> Path:
    """The path of a listed file, checked by ``member``; an unlisted name is refused (it was never hashed)."""
    directory = Path(directory)
    if not is_listed(manifest, name):
        raise NasloraError(
            f"{directory / name} is not listed in {MANIFEST_NAME}, so its integrity cannot be checked; "
            f"{remedy(directory, name)}"
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
        return read_json(path, "artifact manifest")  # deep nesting, bad UTF-8, bad syntax: one line
    except NasloraError as exc:
        raise NasloraError(f"{path} is damaged ({str(exc).removeprefix(f'{path}: ')}); {AGAIN}") from None


def read_manifest(directory, check_files: bool = True) -> Manifest:
    """Read and validate an artifact manifest; check every listed file's place and (by default) sha256."""
    directory = Path(directory)
    manifest = Manifest.from_dict(_read_json(directory), directory / MANIFEST_NAME)
    for name, sha256 in listed_files(manifest):
        try:
            file = member(directory, name)
        except NasloraError as exc:
            raise NasloraError(str(exc).replace(AGAIN, remedy(directory, name))) from None
        if check_files and sha256_of(file) != sha256:
            raise NasloraError(
                f"{file} does not match its sha256 in {MANIFEST_NAME} (changed or truncated); "
                f"{remedy(directory, name)}"
            )
    return manifest


def check_image_input(manifest: Manifest, file, shape: Optional[Sequence]) -> None:
    """The manifest's ``image_size`` against the encoder graph's input shape (B, 3, S, S)."""
    size = manifest.image_size
    if shape is None or len(shape) != 4:
        raise NasloraError(f"{file} does not take (batch, 3, size, size) images; {AGAIN}")
    height, width = shape[2], shape[3]
    if isinstance(height, int) and isinstance(width, int) and (height, width) != (size, size):
        raise NasloraError(
            f"{MANIFEST_NAME} says image_size {size}, but {file} takes {height} x {width} images "
            f"(the manifest was changed); {AGAIN}"
        )
