"""The one error path of every command (``utils.config.run_cli`` and ``utils.errors``) and the
option helpers the commands share: ``shared``, ``add_alias`` and ``add_options``'s
``required``/``nargs``."""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from data.options import DataOptions
from nets.options import ModelOptions
from utils.config import HelpFormatter, add_alias, add_options, option, run_cli, shared
from utils.errors import FailedError, InputError, UserError, WriteError
from utils.paths import OutputPathError, OutputRefusedError

ROOT = Path(__file__).resolve().parents[1]


def _exit(main, capsys) -> tuple[int | str | None, str, str]:
    """``run_cli(main)`` in this process: its exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as done:
        run_cli(main)
    out, err = capsys.readouterr()
    return done.value.code, out, err


def _raising(exc: BaseException):
    def main() -> int:
        print("working")
        raise exc

    return main


# --------------------------------------------------------------------------- run_cli


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InputError("--conf 2.0: must be in [0, 1]"), 2),
        (UserError("--conf 2.0: must be in [0, 1]"), 2),
        (FailedError("--conf 2.0: must be in [0, 1]"), 1),
        (WriteError("--conf 2.0: must be in [0, 1]"), 1),
        (OutputPathError("--conf 2.0: must be in [0, 1]"), 1),  # a write that failed midway
        (OutputRefusedError("--conf 2.0: must be in [0, 1]"), 2),  # refused before any work
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_user_error_is_one_line_and_its_exit_code(exc, code, capsys) -> None:
    status, out, err = _exit(_raising(exc), capsys)
    assert status == code
    assert out == "working\n"
    assert err == "error: --conf 2.0: must be in [0, 1]\n"


def test_errors_are_also_the_builtins_callers_catch() -> None:
    """Library code that catches ValueError or OSError still catches these."""
    assert issubclass(InputError, ValueError) and issubclass(FailedError, RuntimeError)
    assert issubclass(WriteError, OSError) and issubclass(OutputRefusedError, OSError)
    with pytest.raises(ValueError, match="bad"):
        raise InputError("bad")


def test_missing_file_names_the_file(tmp_path, capsys) -> None:
    missing = tmp_path / "nowhere" / "bus.jpg"

    def main() -> int:
        missing.read_bytes()  # FileNotFoundError with its filename
        return 0

    status, _, err = _exit(main, capsys)
    assert status == 2
    assert err == f"error: {missing}: no such file or folder\n"


def test_missing_file_without_a_name_keeps_its_message(capsys) -> None:
    status, _, err = _exit(_raising(FileNotFoundError("no labels under data/x")), capsys)
    assert (status, err) == (2, "error: no labels under data/x\n")
    named = FileNotFoundError(errno.ENOENT, "No such file or directory", "a.pth")
    assert _exit(_raising(named), capsys)[1:] == (
        "working\n",
        "error: a.pth: no such file or folder\n",
    )


def test_ctrl_c_exits_130(capsys) -> None:
    status, _, err = _exit(_raising(KeyboardInterrupt()), capsys)
    assert (status, err) == (130, "interrupted\n")


@pytest.mark.parametrize(("returned", "code"), [(0, 0), (None, None), (3, 3)])
def test_main_return_value_is_the_exit_code(returned, code, capsys) -> None:
    assert _exit(lambda: returned, capsys) == (code, "", "")


def test_argparse_exits_pass_through(capsys) -> None:
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--n", type=int, default=1)
    status, _, err = _exit(lambda: parser.parse_args(["--n", "x"]) and 0, capsys)
    assert status == 2 and "tool: error: argument --n: invalid int value: 'x'" in err
    assert _exit(lambda: parser.parse_args(["--help"]) and 0, capsys)[0] == 0


@pytest.mark.parametrize("exc", [ZeroDivisionError("division by zero"), KeyError("phi")])
def test_a_bug_is_not_turned_into_a_user_error(exc, capsys) -> None:
    """Anything that is not a user error propagates, so Python prints its traceback."""
    with pytest.raises(type(exc)):
        run_cli(_raising(exc))
    assert "error:" not in capsys.readouterr().err


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "cmd.py"
    path.write_text(
        "from utils.config import run_cli\n"
        "from utils.errors import InputError\n\n"
        f"def main():\n{textwrap.indent(textwrap.dedent(body), '    ')}\n\n"
        'if __name__ == "__main__":\n    run_cli(main)\n'
    )
    return [sys.executable, str(path)]


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.mark.slow
def test_real_process_user_error_and_bug(tmp_path) -> None:
    """As a shell sees it: the output printed before the error comes first and the error is
    the last and only stderr line; a bug exits 1 with Python's traceback."""
    proc = _run(_script(tmp_path, 'print("partial")\nraise InputError("--x: must be > 0")'))
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2,
        "partial\n",
        "error: --x: must be > 0\n",
    )

    proc = _run(_script(tmp_path, "return 1 // 0"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback") and "ZeroDivisionError" in proc.stderr
    assert "error:" not in proc.stderr


@pytest.mark.slow
def test_real_process_closed_pipe_is_quiet(tmp_path) -> None:
    """``cmd | head``: the reader is gone; the command ends with 1 and no traceback."""
    argv = _script(tmp_path, 'for i in range(200_000):\n    print("line", i)\nreturn 0')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err == ""


# --------------------------------------------------------------------------- shared


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be > 0")
    return value


@dataclass(frozen=True)
class _Owner:
    conf_thresh: float = option(
        0.25, "score threshold", flag="--conf", group="scoring", type=_positive, metavar="P"
    )
    mode: str = option("fast", "how hard to try", choices=("fast", "exact"), group="scoring")


@dataclass(frozen=True)
class _Reuser:
    conf_thresh: float = shared(_Owner, "conf_thresh", 0.001, "threshold for the AP curve")
    mode: str = shared(_Owner, "mode", group="evaluation")  # the owner's default and help
    data: str = shared(DataOptions, "data", "demo")
    img_size: int = shared(ModelOptions, "img_size", 320, "training input side")


def _parser(config_cls: type, **kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool", formatter_class=HelpFormatter)
    add_options(parser, config_cls, **kwargs)
    return parser


def test_shared_keeps_flag_type_choices_and_takes_default_and_help() -> None:
    parser = _parser(_Reuser)
    args = parser.parse_args([])
    assert (args.conf_thresh, args.mode, args.data, args.img_size) == (0.001, "fast", "demo", 320)
    args = parser.parse_args(["--conf", "0.5", "--mode", "exact", "--img-size", "224"])
    assert (args.conf_thresh, args.mode, args.img_size) == (0.5, "exact", 224)
    assert _Reuser().conf_thresh == 0.001 and _Owner().conf_thresh == 0.25  # owner unchanged
    assert ModelOptions().img_size is None
    help_text = " ".join(parser.format_help().split())
    assert "--conf P threshold for the AP curve (default: 0.001)" in help_text
    assert "how hard to try (default: fast)" in help_text
    assert "training input side (default: 320)" in help_text
    assert "VOC or the generated demo set (default: demo)" in help_text
    assert "evaluation:" in parser.format_help()  # the group given to shared
    for bad in (["--conf", "-1"], ["--mode", "slow"], ["--data", "coco2"], ["--img-size", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


# --------------------------------------------------------------------------- add_alias


def test_alias_is_hidden_and_sets_the_same_destination(capsys) -> None:
    parser = argparse.ArgumentParser(prog="tool", formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs"), help="results folder")
    parser.add_argument("--decode", action="store_true", help="decode in the graph")
    parser.add_argument("--n", type=int, nargs="+", default=[1], help="counts")
    add_alias(parser, "--output", "--out")
    add_alias(parser, "--onnx-decode", "--decode")
    add_alias(parser, "--count", "--n")

    help_text = parser.format_help()
    assert "--out OUT" in help_text and "--decode" in help_text
    assert "--output" not in help_text and "--onnx-decode" not in help_text
    assert "--count" not in help_text
    assert vars(parser.parse_args([])) == {"out": Path("runs"), "decode": False, "n": [1]}
    args = parser.parse_args(["--output", "a", "--onnx-decode", "--count", "2", "3"])
    assert vars(args) == {"out": Path("a"), "decode": True, "n": [2, 3]}
    assert parser.parse_args(["--out", "b"]).out == Path("b")
    with pytest.raises(SystemExit):
        parser.parse_args(["--count", "x"])  # the new flag's type
    assert "--count: invalid int value" in capsys.readouterr().err


def test_aliases_of_an_on_off_flag_keep_their_sense() -> None:
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--save", action=argparse.BooleanOptionalAction, default=True)
    add_alias(parser, "--nosave", "--no-save")
    add_alias(parser, "--keep", "--save")
    assert parser.parse_args(["--nosave"]).save is False
    assert parser.parse_args(["--no-save", "--keep"]).save is True
    assert parser.parse_args([]).save is True


# --------------------------------------------------------------------------- add_options


def test_required_and_nargs_per_parser(capsys) -> None:
    parser = _parser(
        ModelOptions, include=("weights", "img_size"), required=("weights",), nargs={"weights": "+"}
    )
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--img-size", "320"])
    assert done.value.code == 2
    assert "the following arguments are required: --weights" in capsys.readouterr().err
    args = parser.parse_args(["--weights", "a.pth", "b.onnx", "--img-size", "320"])
    assert (args.weights, args.img_size) == (["a.pth", "b.onnx"], 320)
    help_text = " ".join(parser.format_help().split())
    assert "--weights WEIGHTS [WEIGHTS ...]" in help_text
    assert "(required)" in help_text and "--phi" not in help_text

    plain = _parser(ModelOptions, include=("weights",))  # another parser: neither applies
    assert plain.parse_args([]).weights is None
    assert plain.parse_args(["--weights", "a.pth"]).weights == "a.pth"
