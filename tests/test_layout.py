"""The layout rules: the library (nets/, data/, utils/) is apart from the command lines.

- no library module runs as a script (``if __name__ == "__main__"`` lives in tools/,
  benchmarks/ and the three top-level CLIs);
- no library module imports a CLI (train, predict, eval), a tool or a benchmark;
- data/ imports nothing from the rest of the project except the low-level helpers below, and
  those helpers import only each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("nets", "data", "utils")
COMMAND_LINES = ("train", "predict", "eval", "tools", "benchmarks")
# what data/ may use from utils/: image reading, resizing, drawing, class files, paths
DATA_HELPERS = {
    "utils.classes",
    "utils.detections",
    "utils.paths",
    "utils.preprocess",
    "utils.sources",
    "utils.visualize",
}
PROJECT = (*LIBRARY, *COMMAND_LINES)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def library_files() -> list[Path]:
    return sorted(p for folder in LIBRARY for p in (ROOT / folder).rglob("*.py"))


def project_imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at any depth (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from utils import timing" imports utils.timing
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PROJECT and _exists(n)}
    return found


def _exists(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_the_rules_see_the_whole_library() -> None:
    names = {module_name(p) for p in library_files()}
    assert {"nets.yolo", "data.voc", "utils.engine.fit", "utils.inference.predictor"} <= names
    # the import scanner finds both import forms, function-level ones included
    fit = project_imports(ROOT / "utils" / "engine" / "fit.py")
    assert {"utils.engine.loop", "nets.yolo", "data.dataset"} <= fit


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


@pytest.mark.parametrize("path", sorted((ROOT / "data").rglob("*.py")), ids=module_name)
def test_data_uses_only_low_level_helpers(path: Path) -> None:
    outside = {n for n in project_imports(path) if not n.startswith("data")}
    assert outside <= DATA_HELPERS, f"{module_name(path)} imports {sorted(outside - DATA_HELPERS)}"


@pytest.mark.parametrize("helper", sorted(DATA_HELPERS))
def test_low_level_helpers_import_only_each_other(helper: str) -> None:
    path = ROOT.joinpath(*helper.split(".")).with_suffix(".py")
    assert path.is_file(), f"{helper} is listed as a helper but does not exist"
    outside = project_imports(path) - DATA_HELPERS - {"utils"}
    assert not outside, f"{helper} imports {sorted(outside)}"
