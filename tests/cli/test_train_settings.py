"""``train``'s settings: defaults that work offline, --resume and --config reading saved settings,
the pretrained flag recorded as it is, and no folder left by a failed run (issue 28)."""

import json
import subprocess
import sys

import pytest
from conftest import train_args

from naslora_deploy.cli import cli, main
from naslora_deploy.cli.options import typed_options
from naslora_deploy.training.metrics import BinaryMetrics
from naslora_deploy.training.settings import EMPTY_MASKS_HINT, predicts_nothing, train_settings

SHORT = ("--epochs", "1", "--search-start", "1", "--lr", "1e-3", "--no-progress")


def _settings(*argv):
    """The ``TrainConfig`` that ``train ARGV`` would run, as the command builds it."""
    ctx = cli.commands["train"].make_context("train", list(argv))
    options = dict(ctx.params)
    config_file, allow_changed = options.pop("config_file"), options.pop("allow_changed")
    del options["json_target"]
    return train_settings(typed_options(ctx, options), config_file, allow_changed)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "naslora_deploy", *args], capture_output=True, text=True)


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def tiny_run(binary_data, tmp_path_factory):
    """One short vit_tiny run (random weights), with its --json summary."""
    folder = tmp_path_factory.mktemp("tiny")
    run, summary = folder / "run", folder / "summary.json"
    assert main(train_args(binary_data, run, *SHORT, "--json", str(summary))) == 0
    return run, json.loads(summary.read_text())


def test_train_without_model_uses_litemedsam_with_box_prompts():
    config = _settings("--data", "d", "--out", "o")
    assert (config.model, config.prompt, config.pretrained) == ("litemedsam", "box", True)
    config.validate()  # no download, no checkpoint to give: the bundled weights
    assert _settings("--data", "d", "--out", "o", "--model", "vit_tiny").prompt == "none"
    assert _settings("--data", "d", "--out", "o", "--prompt", "none").prompt == "none"  # given: kept


@pytest.mark.parametrize(
    "argv, blocks",
    [
        ((), None),  # every block: adapting two of ten costs test IoU (benchmarks/RESULTS.md, issue 25)
        (("--blocks", "all"), None),
        (("--blocks", "ALL"), None),
        (("--blocks", "4,5"), [4, 5]),
    ],
)
def test_blocks_all_or_indices(argv, blocks):
    assert _settings("--data", "d", "--out", "o", *argv).blocks == blocks


def test_blocks_that_are_not_indices_get_one_line():
    message = _one_line_error(_cli("train", "--data", "d", "--out", "o", "--blocks", "8,x"))
    assert "--blocks" in message and "all" in message


def test_vit_b_without_weights_names_litemedsam(tmp_path):
    out = tmp_path / "run"
    error = _one_line_error(_cli("train", "--data", str(tmp_path), "--out", str(out), "--model", "vit_b"))
    assert "--checkpoint sam_vit_b_01ec64.pth" in error and "--model litemedsam" in error
    assert not out.exists()


def test_the_summary_and_the_record_say_what_ran(tiny_run, binary_data):
    run, summary = tiny_run
    assert summary["run"] == str(run) and summary["finished"] and summary["epoch"] == 1
    assert summary["val"]["iou"] == pytest.approx(summary["best"])  # one epoch: its figure is the best
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["pretrained"] is False  # vit_tiny has no real weights: none were loaded
    recorded = json.loads((run / "last" / "adapter_config.json").read_text())
    assert recorded["training"]["pretrained"] is False and recorded["base_random"] is True
    assert saved["data"] == str(binary_data) and saved["model"] == "vit_tiny"


def test_resume_reads_the_saved_settings_and_refuses_changed_ones(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    metrics = (run / "metrics.jsonl").read_text()
    error = _one_line_error(_cli("train", "--out", str(run), "--resume", "--epochs", "2", "--lr", "1e-3"))
    assert "--epochs 1 -> 2" in error and "--lr" not in error and "--allow-changed" in error
    assert (run / "metrics.jsonl").read_text() == metrics  # refused before anything ran
    # nothing typed but --out: the saved data, model and options continue the run (finished: no step)
    resume = ["train", "--out", str(run), "--resume", "--no-progress"]
    assert main(resume) == 0
    assert (run / "metrics.jsonl").read_text() == metrics
    assert main([*resume, "--epochs", "2", "--allow-changed"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["epochs"] == 2 and saved["model"] == "vit_tiny"  # the change is recorded


def test_resume_without_saved_settings_needs_data(tmp_path):
    error = _one_line_error(_cli("train", "--out", str(tmp_path / "nothing"), "--resume"))
    assert "--data" in error and "train_config.json" in error


def test_config_reads_saved_settings_and_typed_options_override(tiny_run, tmp_path):
    saved = tiny_run[0] / "train_config.json"
    config = _settings("--config", str(saved), "--out", str(tmp_path / "new"), "--seed", "3")
    original = json.loads(saved.read_text())
    assert (config.model, config.data, config.epochs, config.lr) == (
        "vit_tiny",
        original["data"],
        original["epochs"],
        original["lr"],
    )
    assert config.seed == 3 and config.out == str(tmp_path / "new") and not config.resume
    # the saved run's base weights belong to its model: another model starts from its own
    other = _settings("--config", str(saved), "--out", "o", "--model", "litemedsam")
    assert other.pretrained is True and other.prompt == original["prompt"]
    assert _cli("train", "--config", str(saved), "--resume", "--out", "o").returncode == 2
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2]")
    assert "--config" in _one_line_error(_cli("train", "--config", str(broken), "--out", str(tmp_path / "x")))


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "empty-user-folder"])
def test_a_failed_train_leaves_no_folder(binary_data, tmp_path, existing):
    out = tmp_path / "run"
    if existing:
        out.mkdir()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    # fails after --out was prepared and marked, before the first checkpoint
    result = _cli(*train_args(binary_data, out, *SHORT, "--checkpoint", str(bad)))
    assert "bad.pth" in _one_line_error(result)
    assert out.is_dir() == existing and (not existing or list(out.iterdir()) == [])  # the user's stays


def test_empty_prompt_free_masks_are_recognised(binary_data):
    import numpy as np

    target = np.zeros((8, 8), bool)
    target[2:5, 2:5] = True
    empty, wrong = BinaryMetrics(), BinaryMetrics()
    empty.update(np.zeros((8, 8)), target)
    missed = np.zeros((8, 8))
    missed[6:, 6:] = 1.0  # a mask, just in the wrong place
    wrong.update(missed, target)
    assert predicts_nothing(empty.results()) and not predicts_nothing(wrong.results())
    assert "--prompt box" in EMPTY_MASKS_HINT and len(EMPTY_MASKS_HINT.splitlines()) == 1
