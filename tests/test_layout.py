"""The layout rules: the library (nets/, data/, utils/) is apart from the command lines, and
its layers import one way, each only from those below it:

    utils/*.py                 low-level helpers: paths, errors, options, images, classes, timing
    data/      nets/           label formats and data sets; the model (neither imports the other)
    utils/inference/           running a model: Detector, export, ONNX Runtime
    utils/evaluation/          mAP, the comparison
    utils/training/            TrainConfig, loss, the training loop, the run folder

- no library module runs as a script (``if __name__ == "__main__"`` lives in tools/,
  benchmarks/ and the three top-level CLIs);
- no library module imports a CLI (train, predict, eval), a tool or a benchmark;
- no two library modules import each other, directly or through others (module-level imports:
  the ones that run when a module is imported), and the attention registry, the blocks and
  ``nets.attention`` each import on their own.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("nets", "data", "utils")
COMMAND_LINES = ("train", "predict", "eval", "tools", "benchmarks")
# each layer, and the layers it may import (its own included); function-level imports count
LAYERS = {
    "utils": {"utils"},
    "data": {"utils", "data"},
    "nets": {"utils", "nets"},
    "utils.inference": {"utils", "data", "nets", "utils.inference"},
    "utils.evaluation": {"utils", "data", "nets", "utils.inference", "utils.evaluation"},
    "utils.training": {
        "utils",
        "data",
        "nets",
        "utils.inference",
        "utils.evaluation",
        "utils.training",
    },
}
PROJECT = (*LIBRARY, *COMMAND_LINES)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def library_files() -> list[Path]:
    return sorted(p for folder in LIBRARY for p in (ROOT / folder).rglob("*.py"))


def project_imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at any depth (function-level imports too)."""
    tree = ast.parse(path.read_text(), str(path))
    return {n for node in ast.walk(tree) for n in _imported(node)}


def module_level_imports(path: Path) -> set[str]:
    """The project modules ``path`` imports when it is itself imported: not those inside a
    function, nor those under ``if TYPE_CHECKING:`` (read by type checkers only)."""
    tree = ast.parse(path.read_text(), str(path))
    return {n for node in _run_on_import(tree.body) for n in _imported(node)}


def _run_on_import(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _run_on_import(node.orelse)
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from _run_on_import(getattr(node, field, []))


def _imported(node: ast.AST) -> set[str]:
    """The project modules one import statement names ("" for any other node)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        # "from utils import timing" imports utils.timing
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    else:
        return set()
    return {n for n in names if n.split(".")[0] in PROJECT and _exists(n)}


def _exists(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_the_rules_see_the_whole_library() -> None:
    names = {module_name(p) for p in library_files()}
    assert {"nets.yolo", "data.voc", "utils.training.fit", "utils.inference.predictor"} <= names
    # the import scanner finds both import forms, function-level ones included
    fit = project_imports(ROOT / "utils" / "training" / "fit.py")
    assert {"utils.training.loop", "nets.yolo", "data.dataset"} <= fit


@pytest.mark.parametrize("path", library_files(), ids=module_name)
def test_library_module_is_not_a_script(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name):
            assert node.left.id != "__name__", f"{module_name(path)} has a __main__ block"


@pytest.mark.parametrize("path", library_files(), ids=module_name)
def test_library_never_imports_a_command_line(path: Path) -> None:
    bad = {n for n in project_imports(path) if n.split(".")[0] in COMMAND_LINES}
    assert not bad, f"{module_name(path)} imports {sorted(bad)}"


def layer_of(module: str) -> str:
    """``utils.training.fit`` -> ``utils.training``; ``utils.paths`` -> ``utils``;
    ``data.voc`` -> ``data``."""
    parts = module.split(".")
    if parts[0] == "utils" and len(parts) > 2:
        return ".".join(parts[:2])
    return parts[0]


def test_every_library_folder_has_a_layer() -> None:
    assert {layer_of(module_name(p)) for p in library_files()} == set(LAYERS)
    assert layer_of("utils.training.fit") == "utils.training"
    assert layer_of("utils.paths") == "utils" and layer_of("utils") == "utils"


@pytest.mark.parametrize("path", library_files(), ids=module_name)
def test_layers_import_only_downwards(path: Path) -> None:
    layer = layer_of(module_name(path))
    above = {n for n in project_imports(path) if layer_of(n) not in LAYERS[layer]}
    assert not above, f"{module_name(path)} ({layer}) imports {sorted(above)}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (module -> the modules it imports) as ``[a, b, ..., a]``, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for imported in sorted(graph.get(node, ())):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    return next((c for c in map(visit, sorted(graph)) if c), None)


def library_graph() -> dict[str, set[str]]:
    """Library module -> the library modules it imports at module level (a package by its
    name, not ``__init__``)."""
    graph = {}
    for path in library_files():
        name = module_name(path).removesuffix(".__init__")
        graph[name] = {n for n in module_level_imports(path) if n.split(".")[0] in LIBRARY}
    return graph


def test_cycle_finder_finds_cycles_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    # the graph has the module-level imports, not those inside a function or for type checkers
    graph = library_graph()
    assert "nets.registry" in graph["nets.blocks"] and "nets.blocks" in graph["nets.attention"]
    assert "utils.training.loop" in graph["utils.training.fit"]
    assert "utils.inference.predictor" in project_imports(ROOT / "utils" / "training" / "runlog.py")
    assert "utils.inference.predictor" not in graph["utils.training.runlog"]
    assert "utils.training.loop" in project_imports(ROOT / "utils" / "training" / "state.py")
    assert "utils.training.loop" not in graph["utils.training.state"]


def test_library_has_no_import_cycle() -> None:
    cycle = find_cycle(library_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "check"),
    [
        # the registry imports no block: they import it
        ("nets.registry", "assert 'nets.blocks' not in sys.modules"),
        ("nets.blocks", "assert attention_names()[:5] == ['none', 'se', 'cbam', 'eca', 'ca']"),
        ("nets.attention", "assert len(attention_names()) == 9, attention_names()"),
    ],
)
def test_attention_module_imports_alone(module: str, check: str) -> None:
    code = f"import sys\nimport {module}\nfrom nets.registry import attention_names\n{check}"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"import {module} on its own fails:\n{result.stderr}"
