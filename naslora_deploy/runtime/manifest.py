"""Reading an artifact directory's ``manifest.json`` (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path

from naslora_deploy.common.contract import MANIFEST_FORMAT, MANIFEST_NAME
from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.io import sha256_of


def read_manifest(directory, check_files: bool = True) -> dict:
    """Read an artifact manifest; a missing, foreign or changed file is a one-line error."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise NasloraError(f"{path} not found; pass a directory written by naslora-deploy export") from None
    except NotADirectoryError:
        raise NasloraError(
            f"{directory} is not an artifact directory; pass a directory written by naslora-deploy export"
        ) from None
    except json.JSONDecodeError as exc:
        raise NasloraError(f"{path} is damaged ({exc})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise NasloraError(f"{path} is not a naslora-deploy artifact manifest")
    if check_files:
        for name, entry in manifest["files"].items():
            _check(directory / name, entry["sha256"])
            external = entry.get("external_data")
            if external:
                _check(directory / external["file"], external["sha256"])
    return manifest


def _check(file: Path, sha256: str) -> None:
    if not file.is_file():
        raise NasloraError(f"{file} is missing; export again")
    if sha256_of(file) != sha256:
        raise NasloraError(
            f"{file} does not match its sha256 in {MANIFEST_NAME} (changed or truncated); export again"
        )
