"""The architecture's guard: every import in the package follows the arrows in its docstring.

Each module's imports are read with ``ast``, function-level imports included,
and ``from naslora_deploy import name`` is resolved through the package's lazy
public names, so no arrow can hide behind the root.
"""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

import naslora_deploy

PACKAGE = Path(naslora_deploy.__file__).resolve().parent
ROOMS = ("common", "core", "training", "exporters", "runtime")
# every room may read the package's own version (``from naslora_deploy import __version__``)
ALLOWED = {
    "common": {"root", "common"},
    "core": {"root", "core", "common"},
    "training": {"root", "training", "core", "common"},
    "runtime": {"root", "runtime", "common"},
    "exporters": {"root", "exporters", "core", "runtime", "common"},
    "cli": {"root", "cli", *ROOMS},
    "root": {"root", *ROOMS},
}
TORCH_FREE = ("common", "runtime")
TORCH_LIBRARIES = ("torch", "torchvision", "segment_anything")


def room_of_module(dotted: str) -> str:
    """``naslora_deploy.core.merging.merge`` -> ``core``; ``cli``, ``__main__`` -> ``cli``; the package:
    ``root``."""
    parts = dotted.split(".")
    if len(parts) == 1:
        return "root"
    return parts[1] if parts[1] in ROOMS else "cli"


def room_of_file(path: Path, package: Path) -> str:
    relative = path.relative_to(package).with_suffix("")
    return room_of_module(".".join((package.name, *relative.parts)).removesuffix(".__init__"))


def imported_modules(tree: ast.AST, lazy_exports: Dict[str, str]) -> Iterator[Tuple[int, str]]:
    """(line, dotted module) of every import anywhere in ``tree``, lazy root names resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(
                    f"line {node.lineno}: relative import; the package uses absolute imports only"
                )
            if node.module == "naslora_deploy":
                for alias in node.names:
                    if alias.name in ROOMS:
                        yield node.lineno, f"naslora_deploy.{alias.name}"
                    else:
                        yield node.lineno, lazy_exports.get(alias.name, "naslora_deploy")
            else:
                yield node.lineno, node.module


def import_violations(package: Path) -> List[str]:
    """Every import in ``package`` that breaks the arrows, as 'file:line: room -> room (module)'."""
    root_tree = ast.parse((package / "__init__.py").read_text())
    lazy_exports = {}
    for node in ast.walk(root_tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            lazy_exports = ast.literal_eval(node.value)
    violations = []
    for path in sorted(package.rglob("*.py")):
        room = room_of_file(path, package)
        where = path.relative_to(package)
        for line, module in imported_modules(ast.parse(path.read_text()), lazy_exports):
            top = module.split(".")[0]
            if top == package.name:
                target = room_of_module(module)
                if target not in ALLOWED[room]:
                    violations.append(f"{where}:{line}: {room} -> {target} ({module})")
            elif room in TORCH_FREE and top in TORCH_LIBRARIES:
                violations.append(f"{where}:{line}: {room} -> {top} (this room never imports torch)")
    return violations


def test_the_package_follows_its_arrows():
    assert import_violations(PACKAGE) == []


def test_every_room_says_what_it_holds_and_may_import():
    for room in ROOMS:
        doc = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text()))
        assert doc and "import" in doc, f"{room}/__init__.py needs a docstring saying what it may import"
    package_doc = naslora_deploy.__doc__
    for arrow in (
        "core      -> common",
        "training  -> core, common",
        "runtime   -> common",
        "exporters -> core, runtime, common",
        "cli       -> everything",
    ):
        assert arrow in package_doc


def _fake_package(root: Path, files: Dict[str, str]) -> Path:
    package = root / "naslora_deploy"
    for room in ROOMS:
        (package / room).mkdir(parents=True)
        (package / room / "__init__.py").write_text('"""room"""\n')
    (package / "__init__.py").write_text('_EXPORTS = {"merge": "naslora_deploy.core.merging.merge"}\n')
    for name, text in files.items():
        (package / name).write_text(text)
    return package


BREAKS = [
    (
        "runtime/backends.py",
        "def torch_backend():\n    from naslora_deploy.exporters.verify import rebuild_source\n",
        "runtime/backends.py:2: runtime -> exporters (naslora_deploy.exporters.verify)",
    ),
    (
        "core/checkpoint.py",
        "from naslora_deploy.training.data.classes import ClassSpec\n",
        "core/checkpoint.py:1: core -> training (naslora_deploy.training.data.classes)",
    ),
    (
        "runtime/segmenter.py",
        "from naslora_deploy import merge\n",
        "runtime/segmenter.py:1: runtime -> core (naslora_deploy.core.merging.merge)",
    ),
    ("runtime/predict.py", "def f():\n    import torch\n", "runtime/predict.py:2: runtime -> torch"),
    (
        "common/io.py",
        "import naslora_deploy.core.model.variants\n",
        "common/io.py:1: common -> core (naslora_deploy.core.model.variants)",
    ),
    (
        "exporters/export.py",
        "from naslora_deploy.training import trainer\n",
        "exporters/export.py:1: exporters -> training (naslora_deploy.training)",
    ),
]


@pytest.mark.parametrize("path, source, expected", BREAKS, ids=[b[0] for b in BREAKS])
def test_the_guard_catches_a_wrong_arrow(tmp_path, path, source, expected):
    """Today's runtime -> exporters circle (and its kin) would fail the guard."""
    package = _fake_package(tmp_path, {path: source})
    violations = import_violations(package)
    assert len(violations) == 1 and violations[0].startswith(expected), violations


def test_the_guard_passes_allowed_arrows(tmp_path):
    package = _fake_package(
        tmp_path,
        {
            "exporters/verify.py": "from naslora_deploy.runtime.backends import ort_session\nimport torch\n",
            "training/trainer.py": "from naslora_deploy.core.merging.merge import merge\n"
            "from naslora_deploy import __version__\n",
            "runtime/backends.py": "import numpy\nfrom naslora_deploy.common.errors import NasloraError\n",
        },
    )
    assert import_violations(package) == []


def test_rooms_of_files():
    assert room_of_file(PACKAGE / "cli.py", PACKAGE) == "cli"
    assert room_of_file(PACKAGE / "__init__.py", PACKAGE) == "root"
    assert room_of_file(PACKAGE / "training" / "data" / "folder.py", PACKAGE) == "training"
