"""Checkpoint directories are swapped in atomically and read back strictly."""

import json

import pytest

from naslora_deploy.common.errors import CheckpointError
from naslora_deploy.common.io import write_directory
from naslora_deploy.core.adapters.config import AdapterConfig
from naslora_deploy.core.runs.checkpoint import CONFIG_NAME, RunSpec, read_spec, resolve_checkpoint_dir


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


def test_source_sha256_follows_the_weights_it_exports(tmp_path):
    """The digest an export records changes with the resolved checkpoint's weights, and only with them."""
    import shutil

    from conftest import make_adapter_dir
    from safetensors.torch import load_file, save_file

    from naslora_deploy.core.runs.checkpoint import WEIGHTS_NAME, source_sha256

    checkpoint = make_adapter_dir(tmp_path / "a")
    first = source_sha256(checkpoint)
    shutil.copytree(checkpoint, tmp_path / "run" / "best")
    assert source_sha256(tmp_path / "run") == first  # a run directory: its best/; content, not location
    state = load_file(str(checkpoint / WEIGHTS_NAME))
    key = sorted(state)[-1]
    state[key] = state[key] * 2 + 1
    save_file(state, str(checkpoint / WEIGHTS_NAME))
    assert source_sha256(checkpoint) != first


def test_training_state_is_checked_before_use(tmp_path):
    import torch

    from naslora_deploy.core.runs.checkpoint import load_training_state

    path = tmp_path / "training_state.pt"
    good = {
        "weight_opt": {},
        "arch_opt": None,
        "epoch": 1,
        "step": 3,
        "torch_rng": torch.get_rng_state(),
        "python_rng": (3, tuple(range(625)), None),
    }
    torch.save(good, path)
    assert load_training_state(path)["step"] == 3
    torch.save({**good, "epoch": "one"}, path)
    with pytest.raises(CheckpointError, match="'epoch' is not an epoch number"):
        load_training_state(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read .* truncated"):
        load_training_state(path)


def test_non_finite_weights_are_named(tmp_path):
    import torch

    from naslora_deploy.core.runs.checkpoint import check_finite

    check_finite({"a": torch.ones(2), "steps": torch.tensor([1, 2])}, "ok")
    with pytest.raises(CheckpointError, match=r"base.pth holds NaN or infinite values \(in b\)"):
        check_finite({"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")])}, "base.pth")
