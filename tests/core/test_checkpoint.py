"""Checkpoint directories are swapped in atomically and read back strictly."""

import json

import pytest

from naslora_deploy.common.errors import CheckpointError
from naslora_deploy.common.io import write_directory
from naslora_deploy.core.checkpoint import CONFIG_NAME, RunSpec, read_spec, resolve_checkpoint_dir
from naslora_deploy.core.config import AdapterConfig


def _spec_writer(tag):
    def write(tmp):
        spec = RunSpec("vit_tiny", AdapterConfig(), image_size=256, progress={"tag": tag})
        (tmp / CONFIG_NAME).write_text(json.dumps(spec.to_dict()))

    return write


def test_failed_write_leaves_the_previous_checkpoint(tmp_path):
    write_directory(tmp_path / "last", _spec_writer("first"))

    def broken(tmp):
        (tmp / "partial").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_directory(tmp_path / "last", broken)
    assert read_spec(tmp_path / "last").progress == {"tag": "first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    write_directory(tmp_path / "last", _spec_writer("second"))
    assert read_spec(tmp_path).progress == {"tag": "second"}


def test_a_kill_between_the_renames_is_recovered(tmp_path):
    write_directory(tmp_path / ".last.old", _spec_writer("previous"))  # as left by a kill
    assert resolve_checkpoint_dir(tmp_path) == tmp_path / ".last.old"


def test_foreign_or_damaged_configs(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"format": "peft"}))
    with pytest.raises(CheckpointError, match="not a naslora-deploy adapter config"):
        read_spec(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_spec(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no adapter_config.json"):
        resolve_checkpoint_dir(tmp_path / "empty")
