"""The conventions every command follows, checked on the source:

- every script ends in ``run_cli(main)``, the one place that turns a user error into a
  one-line ``error:`` message and an exit code (no ``sys.exit(main())``, no bare ``main()``);
- no command prints ``error:`` by hand: it raises a ``utils.errors.UserError``;
- a flag many commands share is declared once (on ``ModelOptions``, ``DataOptions``,
  ``DeviceOptions`` or ``ThreadConfig``) and reused, never written out again;
- the outputs are spelled one way per kind: ``--save-dir``, ``--log-dir``, ``--out``, ``--json``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("nets", "data", "utils", "tools", "benchmarks")
SCRIPTS = ("train.py", "predict.py", "eval.py")
# the flags of more than one command, each with one declaration
SHARED_FLAGS = {
    "--weights",
    "--phi",
    "--attention-plugin",
    "--anchors",
    "--img-size",
    "--data",
    "--voc-root",
    "--sets",
    "--classes",
    "--labels",
    "--label-format",
    "--split",
    "--images",
    "--device",
    "--amp",
    "--threads",
    "--save-dir",
    "--exist-ok",
}
# output flags by kind; any other spelling of an output is a new convention to document first
OUTPUT_FLAGS = {"--save-dir", "--log-dir", "--out", "--json"}
OLD_OUTPUT_SPELLINGS = {"--output", "--out-dir", "--dest"}


def project_files() -> list[Path]:
    files = [ROOT / name for name in SCRIPTS]
    return files + sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def scripts() -> list[Path]:
    """The files with an ``if __name__ == "__main__":`` block."""
    return [p for p in project_files() if _main_block(ast.parse(p.read_text())) is not None]


def _main_block(tree: ast.Module) -> ast.If | None:
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            return node
    return None


def test_the_scan_sees_the_commands() -> None:
    names = {rel(p) for p in scripts()}
    assert {"train.py", "predict.py", "eval.py", "tools/study.py", "benchmarks/train.py"} <= names
    assert not any(n.startswith(("nets/", "data/", "utils/")) for n in names)


@pytest.mark.parametrize("path", scripts(), ids=rel)
def test_every_command_runs_through_run_cli(path: Path) -> None:
    block = _main_block(ast.parse(path.read_text()))
    body = [ast.unparse(node) for node in block.body]
    assert body == ["run_cli(main)"], f"{rel(path)} ends in {body}, not run_cli(main)"


def _hand_printed_errors(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "print" and node.args:
            first = node.args[0]
            text = first.value if isinstance(first, ast.Constant) else None
            if isinstance(first, ast.JoinedStr) and isinstance(first.values[0], ast.Constant):
                text = first.values[0].value
            if isinstance(text, str) and text.startswith("error:"):
                lines.append(node.lineno)
    return lines


def test_no_command_prints_an_error_by_hand() -> None:
    found = {
        f"{rel(p)}:{line}"
        for p in project_files()
        if rel(p) != "utils/config.py"  # run_cli itself
        for line in _hand_printed_errors(p)
    }
    assert not found, f"print('error: ...') instead of raising a UserError: {sorted(found)}"


def _declarations() -> dict[str, list[str]]:
    """Flag -> where it is declared: ``add_argument("--x", ...)`` and ``option(...)`` fields
    (their flag: ``flag=`` or the field name in kebab case). ``shared(...)`` reuses a
    declaration and is not one; hidden aliases (``add_alias``) are not either."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in project_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("add_argument"):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"):
                        found[arg.value].append(f"{rel(path)}:{node.lineno}")
            if isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Call):
                if ast.unparse(node.value.func) != "option":
                    continue
                flag = next(
                    (k.value.value for k in node.value.keywords if k.arg == "flag"),
                    "--" + node.target.id.replace("_", "-"),
                )
                found[flag].append(f"{rel(path)}:{node.lineno}")
    return found


def test_shared_flags_are_declared_once() -> None:
    found = _declarations()
    assert "--img-size" in found and "--phi" in found  # the scan sees both kinds
    repeated = {f: found[f] for f in SHARED_FLAGS if len(found.get(f, [])) > 1}
    assert not repeated, f"declared more than once (reuse the shared one): {repeated}"


def test_outputs_have_one_spelling_per_kind() -> None:
    found = _declarations()
    old = {f: found[f] for f in OLD_OUTPUT_SPELLINGS if f in found}
    assert not old, f"old output spellings declared (keep them as add_alias only): {old}"
    assert set(found) >= OUTPUT_FLAGS
