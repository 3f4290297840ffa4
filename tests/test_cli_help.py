"""Every command line's ``--help`` shows what each option defaults to."""

from __future__ import annotations

import argparse
import ast
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# flags that have no default to show
NO_DEFAULT = {"-h", "--help", "--version"}


def _cli_modules() -> list[str]:
    """The scripts at the root and every module of tools/ and benchmarks/ that runs as a
    command (found, so that a new tool is covered without listing it here)."""
    found = ["train", "predict", "eval"]
    for folder in ("tools", "benchmarks"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if 'if __name__ == "__main__"' in path.read_text():
                found.append(f"{folder}.{path.stem}")
    return found


def option_entries(help_text: str) -> list[tuple[str, str]]:
    """``(flags, help)`` for each option ``--help`` lists: an entry starts at a line indented
    by exactly two spaces and a dash, and its help runs on in the more deeply indented lines
    below it (argparse's layout). The description above the first section is skipped."""
    entries: list[list[str]] = []
    in_sections = False
    for line in help_text.splitlines():
        if re.match(r"^\S.*:$", line):  # "options:", "data:", ...
            in_sections = True
            entries.append([])  # a section header ends the entry before it
            continue
        if not in_sections:
            continue
        if re.match(r"^  -", line):
            entries.append([line.strip()])
        elif line.startswith("   ") and entries and entries[-1]:
            entries[-1].append(line.strip())
        elif entries:
            entries.append([])
    result = []
    for entry in entries:
        if entry:
            flags = re.split(r"\s{2,}", entry[0], maxsplit=1)[0]
            result.append((flags, " ".join(entry)))
    return result


def _shows_default(text: str) -> bool:
    return re.search(r"\((?:default|required)\b", text, re.IGNORECASE) is not None


def test_option_entries_parse_argparse_layout() -> None:
    text = (
        "usage: x [-h]\n\nSome description\n  --not-an-option in the description\n\n"
        "options:\n  -h, --help            show this help message and exit\n"
        "  --a A                 the a thing (default:\n                        3)\n"
        "  --very-long-option-name VERY_LONG_OPTION_NAME\n                        "
        "no default here\n\ngroup:\n  --b                   b\n"
    )
    entries = option_entries(text)
    assert [f for f, _ in entries] == [
        "-h, --help",
        "--a A",
        "--very-long-option-name VERY_LONG_OPTION_NAME",
        "--b",
    ]
    assert [_shows_default(t) for _, t in entries] == [False, True, False, False]


def docstring_examples(module: str) -> list[list[str]]:
    """The example commands of ``module``'s docstring (the text ``--help`` shows above the
    options) that run the module itself, as its argument lists: a line ``python X.py ...`` or
    ``python -m X ...`` (``\\`` continues it), alone or quoted in a line, without a trailing
    ``# comment``, ``| pipe`` or a leading ``make ... &&``. Usage summaries with ``[optional]``
    parts are not commands."""
    path = ROOT / (module.replace(".", "/") + ".py")
    doc = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
    doc = re.sub(r"\\\n\s*", " ", doc)  # continued lines
    heads = {f"python {module.replace('.', '/')}.py", f"python -m {module}"}
    found = []
    for line in doc.splitlines():
        quoted = re.search(r"``(python [^`]*)``", line)  # Usage: ``python -m x ...``
        command = quoted.group(1) if quoted else line
        command = command.split(" # ")[0].split(" | ")[0].split("&&")[-1].strip()
        words = shlex.split(command) if command.startswith("python") else []
        head = " ".join(words[:3] if words[1:2] == ["-m"] else words[:2])
        if head in heads and not any(w.startswith("[") for w in words):
            args = words[len(head.split()) :]
            if args not in found:
                found.append(args)
    return found


class _Parsed(BaseException):
    """Raised by the patched ``parse_args`` once the command line parsed, so that the command
    does no work (a BaseException, so that no ``except Exception`` on the way catches it)."""


EXAMPLES = [(m, args) for m in _cli_modules() for args in docstring_examples(m)]


def test_docstring_examples_are_found() -> None:
    modules = {m for m, _ in EXAMPLES}
    assert {"train", "predict", "eval", "tools.convert_labels"} <= modules
    assert ["--data", "demo", "--img-size", "192", "--epochs", "25"] in [
        args for m, args in EXAMPLES if m == "train"
    ]


@pytest.mark.parametrize(
    ("module", "args"), EXAMPLES, ids=[f"{m}:{' '.join(a)[:40]}" for m, a in EXAMPLES]
)
# running an imported command module again as __main__ is what this test means to do
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_docstring_examples_parse(module, args, monkeypatch) -> None:
    """Every example the ``--help`` text shows is a command line the command accepts: read
    from the docstring that builds the parser, run as ``python -m`` would, and stopped as
    soon as its arguments parsed."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [module, *args])
    with pytest.raises(_Parsed):
        runpy.run_module(module, run_name="__main__", alter_sys=False)


@pytest.mark.slow
@pytest.mark.parametrize("module", _cli_modules())
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_help_shows_every_default(module, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert done.value.code in (0, None)
    entries = option_entries(capsys.readouterr().out)
    assert len(entries) >= 2, f"{module}: no options parsed from --help"
    missing = [
        flags
        for flags, text in entries
        if not NO_DEFAULT & set(re.split(r"[ ,]+", flags)) and not _shows_default(text)
    ]
    assert not missing, f"{module} --help shows no default for: {missing}"


@pytest.mark.slow
def test_output_into_a_closed_pipe_ends_quietly(official_weights, sample_images) -> None:
    """``predict.py ... | head``: the reader is gone before the first line is written."""
    import subprocess

    args = ["predict.py", "--source", str(sample_images[0]), "--benchmark"]
    proc = subprocess.Popen(
        [sys.executable, *args, "--benchmark-runs", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # long before the model has loaded and anything is printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
