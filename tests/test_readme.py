"""The README's two set-up commands stay true: CI runs the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(text):
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = _bash_blocks(readme)
    test_commands = [b for b in blocks if "pytest" in b]
    assert len(test_commands) == 1
    assert test_commands[0] in ci.splitlines()


def test_readme_main_job_runs_the_demo():
    blocks = _bash_blocks((ROOT / "README.md").read_text())
    assert any(b.endswith("naslora-deploy demo --out demo-out") for b in blocks)


def _python_blocks(text):
    return [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)]


def test_readme_python_snippets_run_as_written(tmp_path, monkeypatch, binary_artifacts, binary_adapter):
    """Every ```python block of the README, run in a folder that holds the files it names."""
    import shutil

    import numpy as np
    from PIL import Image

    from naslora_deploy.training.data.synthetic import synthetic_sample

    shutil.copytree(binary_artifacts, tmp_path / "artifacts")
    shutil.copytree(binary_adapter, tmp_path / "runs" / "isic")
    photo, _ = synthetic_sample(np.random.default_rng(5), size_range=(480, 640))
    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    Image.fromarray(np.tile(photo, (3, 4, 1))).save(tmp_path / "scene.tif")  # larger than a tile
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 2
    for number, block in enumerate(blocks):
        namespace = {"__name__": f"readme_block_{number}"}
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)  # noqa: S102
    merged, report = namespace["merged"], namespace["report"]  # the API block's last lines
    assert type(merged).__name__ == "SegmentationModel" and report.mode == "dense"
    assert (tmp_path / "sam_merged.pth").is_file() and (tmp_path / "sam_merged.report.json").is_file()
