"""The command line: the demo job and one-line errors."""

import json
import subprocess
import sys

from naslora_deploy.cli import main


def test_demo_writes_merged_checkpoints_and_reports(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "merge fused" in out and "merge dense" in out and "least squares" in out
    report = json.loads((tmp_path / "vit_tiny_dense.report.json").read_text())
    assert report["mode"] == "dense" and report["max_branch_rel_error"] > 0
    fused = json.loads((tmp_path / "vit_tiny_fused.report.json").read_text())
    assert fused["embedding_rel_error"] <= 1e-5
    assert (tmp_path / "vit_tiny_dense.pth").stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_console_script_reports_user_errors_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "naslora_deploy", "demo", "--method", "conv_lora"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "invalid choice: 'conv_lora'" in result.stderr
    assert "Traceback" not in result.stderr
