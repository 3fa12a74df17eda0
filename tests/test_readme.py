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
