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
CORE_ROOMS = ("model", "adapters", "runs", "merging")  # core's sub-rooms, lowest first
CORE = ("core", *(f"core.{sub}" for sub in CORE_ROOMS))  # "core": core/__init__.py itself
# every room may read the package's own version (``from naslora_deploy import __version__``)
ALLOWED = {
    "common": {"root", "common"},
    "core": {"root", "common"},
    **{
        f"core.{sub}": {"root", "common", *(f"core.{below}" for below in CORE_ROOMS[: i + 1])}
        for i, sub in enumerate(CORE_ROOMS)
    },
    "training": {"root", "training", *CORE, "common"},
    "runtime": {"root", "runtime", "common"},
    "exporters": {"root", "exporters", *CORE, "runtime", "common"},
    "cli": {"root", "cli", *ROOMS, *CORE},
    "root": {"root", *ROOMS, *CORE},
}
MAX_LINES = 500
TORCH_FREE = ("common", "runtime")
TORCH_LIBRARIES = ("torch", "torchvision", "segment_anything")


def room_of_module(dotted: str) -> str:
    """``naslora_deploy.core.merging.merge`` -> ``core``; ``cli``, ``__main__`` -> ``cli``; the package:
    ``root``."""
    parts = dotted.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] == "core" and len(parts) > 2 and parts[2] in CORE_ROOMS:
        return f"core.{parts[2]}"
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
    for room in (*ROOMS, *(f"core/{sub}" for sub in CORE_ROOMS)):
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
        "core/runs/checkpoint.py",
        "from naslora_deploy.training.data.classes import ClassSpec\n",
        "core/runs/checkpoint.py:1: core.runs -> training (naslora_deploy.training.data.classes)",
    ),
    (
        "core/model/heads.py",
        "def f():\n    from naslora_deploy.core.adapters.injection import adapted_layers\n",
        "core/model/heads.py:2: core.model -> core.adapters (naslora_deploy.core.adapters.injection)",
    ),
    (
        "core/runs/checkpoint.py",
        "from naslora_deploy.core.merging.merge import merge\n",
        "core/runs/checkpoint.py:1: core.runs -> core.merging (naslora_deploy.core.merging.merge)",
    ),
    (
        "runtime/segmenter.py",
        "from naslora_deploy import merge\n",
        "runtime/segmenter.py:1: runtime -> core.merging (naslora_deploy.core.merging.merge)",
    ),
    ("runtime/predict.py", "def f():\n    import torch\n", "runtime/predict.py:2: runtime -> torch"),
    (
        "common/io.py",
        "import naslora_deploy.core.model.variants\n",
        "common/io.py:1: common -> core.model (naslora_deploy.core.model.variants)",
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


# ----- the whole import graph: no loops, no module past its size ---------------------------------
def module_of_file(path: Path, package: Path) -> str:
    relative = path.relative_to(package).with_suffix("")
    return ".".join((package.name, *relative.parts)).removesuffix(".__init__")


def import_graph(package: Path) -> Dict[str, set]:
    """module -> the package's modules it imports anywhere (function level too); ``from a import b``
    counts as importing the module ``a.b`` where ``b`` is one."""
    files = {module_of_file(path, package): path for path in package.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    inner = f"{node.module}.{alias.name}"
                    targets.add(inner if inner in files else node.module)
        graph[module] = {t for t in targets if t in files and t != package.name}
    return graph


def import_loops(package: Path) -> List[List[str]]:
    """Every set of modules that import each other round a loop (Tarjan's strongly connected
    components of more than one module, or a module importing itself)."""
    graph = import_graph(package)
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    loops = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                component.append(stack.pop())
                if component[-1] == module:
                    break
            if len(component) > 1 or module in graph[module]:
                loops.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return loops


def test_no_import_loops():
    assert import_loops(PACKAGE) == []


def test_the_loop_finder_finds_a_loop(tmp_path):
    package = _fake_package(
        tmp_path,
        {
            "runtime/segmenter.py": "def f():\n    from naslora_deploy.runtime.tiling import tile\n",
            "runtime/tiling.py": "from naslora_deploy.runtime import segmenter\n",
        },
    )
    assert import_loops(package) == [["naslora_deploy.runtime.segmenter", "naslora_deploy.runtime.tiling"]]


def test_no_module_past_its_size():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_core_says_its_sub_rooms_and_their_arrows():
    for sub in CORE_ROOMS:
        doc = ast.get_docstring(ast.parse((PACKAGE / "core" / sub / "__init__.py").read_text()))
        assert doc and "import" in doc, f"core/{sub}/__init__.py needs a docstring saying what it may import"


def test_the_torch_free_variant_names_are_the_registry():
    from naslora_deploy.common.contract import VARIANT_NAMES
    from naslora_deploy.core.model.variants import VARIANTS

    assert tuple(VARIANTS) == VARIANT_NAMES


# ----- the command line's torch-free modules -------------------------------------------------------
# ``predict`` and ``bench`` run where torch is absent: these modules, and everything they import at
# module level (function-level imports run only in the commands that need them), never import torch
TORCH_FREE_CLI = ("naslora_deploy.cli", "naslora_deploy.cli.options", "naslora_deploy.cli.run")


def module_level_imports(tree: ast.AST) -> Iterator[ast.AST]:
    """Import statements that run when the module is imported: not those inside functions."""
    pending = list(ast.iter_child_nodes(tree))
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        pending.extend(ast.iter_child_nodes(node))


def torch_at_import(package: Path, entries: Tuple[str, ...]) -> List[str]:
    """'module -> library' for each module importing torch at module level, among ``entries`` and all
    they import at module level (parent packages included)."""
    files = {module_of_file(path, package): path for path in package.rglob("*.py")}
    seen, pending, found = set(), list(entries), []
    while pending:
        module = pending.pop()
        if module in seen or module not in files:
            continue
        seen.add(module)
        parts = module.split(".")
        pending.extend(".".join(parts[:i]) for i in range(2, len(parts)))  # parent packages run first
        for node in module_level_imports(ast.parse(files[module].read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.module:
                names += [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.split(".")[0] in TORCH_LIBRARIES:
                    found.append(f"{module} -> {name}")
                pending.append(name)
    return sorted(found)


def test_the_command_lines_torch_free_modules_import_no_torch():
    assert torch_at_import(PACKAGE, TORCH_FREE_CLI) == []


def test_the_torch_free_rule_follows_imports(tmp_path):
    package = _fake_package(
        tmp_path,
        {
            "cli.py": "from naslora_deploy.exporters import specs\ndef f():\n    import torch\n",
            "exporters/specs.py": "import torch.nn\n",
        },
    )
    assert torch_at_import(package, ("naslora_deploy.cli",)) == ["naslora_deploy.exporters.specs -> torch.nn"]
