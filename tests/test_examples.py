"""The examples run as written, on what the README's main install brings (no extras).

Each runs in a fresh process whose Python cannot import the optional extras (plot,
hf, trt, mobilesam, tensorboard, test tools): a ``sitecustomize`` on PYTHONPATH
refuses them, as on a machine with only ``pip install naslora-deploy``. The shell
script runs in its smoke mode: a small flat data set (images/ + masks/, no splits),
vit_tiny, a few training steps through ``TRAIN_OPTIONS``.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from naslora_deploy.training.data.synthetic import write_synthetic_dataset

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("matplotlib", "transformers", "peft", "polygraphy", "tensorrt", "tritonclient", "tensorboard")


def extras_blocked_env(tmp_path: Path, **extra) -> dict:
    """An environment whose Python processes cannot import ``EXTRAS`` (and find naslora-deploy on PATH)."""
    site = tmp_path / "no_extras"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import sys

            class _Without:
                # finds nothing of the extras: importlib sees them as not installed

                def __init__(self, finder):
                    self.finder = finder

                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in {EXTRAS!r}:
                        return None
                    return self.finder.find_spec(name, path, target)

                def __getattr__(self, attribute):
                    return getattr(self.finder, attribute)

            sys.meta_path[:] = [_Without(finder) for finder in sys.meta_path]
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(site), **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_extras_are_really_blocked(tmp_path):
    env = extras_blocked_env(tmp_path)
    probe = subprocess.run(
        [sys.executable, "-c", "import matplotlib"], env=env, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "No module named 'matplotlib'" in probe.stderr


def _flat_data_set(root: Path) -> Path:
    """images/ + masks/ with no split folders: the layout the script's usage line allows."""
    split = write_synthetic_dataset(root / "split", count=8, with_test=False)
    flat = root / "flat"
    for sub in ("images", "masks"):
        (flat / sub).mkdir(parents=True)
        for part in ("train", "val"):
            for file in (split / part / sub).iterdir():
                shutil.copy(file, flat / sub / file.name)
    return flat


def test_finetune_export_predict_script_runs_as_written(tmp_path):
    data = _flat_data_set(tmp_path)
    env = extras_blocked_env(tmp_path, TRAIN_OPTIONS="--epochs 1 --max-steps 2 --batch-size 2")
    script = ROOT / "examples" / "finetune_export_predict.sh"
    done = subprocess.run(
        ["bash", str(script), str(data), "vit_tiny"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    work = tmp_path / "naslora-example"
    evaluated = json.loads((work / "eval_metrics.json").read_text())
    assert evaluated["split"] == "val" and evaluated["metrics"]["images"] == 1  # what training held out
    assert 0.0 <= evaluated["metrics"]["iou"] <= 1.0
    assert json.loads((work / "architecture.json").read_text())["weights"]
    manifest = json.loads((work / "artifacts" / "manifest.json").read_text())
    assert manifest["merge"]["mode"] == "dense" and "prompt_decoder.onnx" in manifest["files"]
    assert "identical operators True, initializers True, MACs True" in done.stdout
    records = (work / "predictions" / "results.jsonl").read_text().splitlines()
    assert len(records) == len(list((data / "images").iterdir())) == 10
    assert "img/s" in done.stdout


def test_finetune_script_without_data_says_how_to_call_it(tmp_path):
    script = ROOT / "examples" / "finetune_export_predict.sh"
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert (
        done.returncode != 0 and "usage:" in done.stderr and "DATA_DIR [VARIANT] [CHECKPOINT]" in done.stderr
    )


@pytest.mark.parametrize("variant", ["vit_tiny", "litemedsam"])
def test_quickstart_runs_as_written(tmp_path, variant):
    env = extras_blocked_env(tmp_path)
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), variant],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "alpha vectors" in done.stdout and "merge dense" in done.stdout
    report = json.loads((tmp_path / f"sam_{variant}_merged.report.json").read_text())
    assert report["mode"] == "dense" and (tmp_path / f"sam_{variant}_merged.pth").is_file()
