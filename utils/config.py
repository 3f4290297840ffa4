"""Command-line options declared once, on the config dataclass they fill.

A config field becomes a flag by being declared with ``option``::

    @dataclass(frozen=True)
    class EvalConfig:
        conf_thresh: float = option(0.001, "score threshold", flag="--conf", group="scoring")

``add_options(parser, EvalConfig)`` then adds ``--conf`` with that default, type and help (the
default is shown by ``--help``), and ``from_args(EvalConfig, args)`` builds the config from the
parsed namespace. Booleans get ``--x/--no-x``; ``X | None`` fields parse as ``X``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from utils.errors import BAD_INPUT, UserError

_NO_DEFAULT = object()


def option(
    default: Any,
    help: str | Callable[[], str],
    *,
    flag: str | None = None,
    group: str | None = None,
    choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    type: Callable[[str], Any] | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        default: the one default (shown by ``--help``).
        help: one line saying what the field holds, or a callable giving it when the parser
            is built (for text that lists a growing registry).
        flag: the flag; default ``--`` + the field name in kebab case.
        group: the ``--help`` section it is listed under.
        choices: the closed set of values, or a callable giving it when the parser is built
            (for sets that grow, such as the attention registry).
        type: parses the command-line string (default: from the annotation).
        metavar: the placeholder shown by ``--help``.
    """
    meta = {"help": help, "flag": flag, "group": group, "choices": choices, "type": type}
    meta["metavar"] = metavar
    return dataclasses.field(default=default, metadata=meta)


_SAME = object()


def shared(
    owner: type,
    name: str,
    default: Any = _SAME,
    help: str | Callable[[], str] | None = None,
    *,
    group: str | None = None,
) -> Any:
    """A field declared by ``owner`` (a shared options class), reused in another config: the
    same flag, type, choices and metavar, with this config's own default, help and group
    where given. A flag many commands take is spelled once this way::

        img_size: int = shared(ModelOptions, "img_size", 416, "training input side")
    """
    base = owner.__dataclass_fields__[name]
    meta = dict(base.metadata)
    if help is not None:
        meta["help"] = help
    if group is not None:
        meta["group"] = group
    return dataclasses.field(default=base.default if default is _SAME else default, metadata=meta)


def _scalar_type(annotation: Any) -> Any:
    """``int | None`` -> int; other annotations unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def option_fields(config_cls: type) -> list[dataclasses.Field]:
    """The fields of ``config_cls`` that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(config_cls) if "help" in f.metadata]


def add_options(
    parser: argparse.ArgumentParser,
    config_cls: type,
    exclude: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
    include: Iterable[str] | None = None,
    helps: dict[str, str] | None = None,
    required: Iterable[str] = (),
    nargs: dict[str, str] | None = None,
) -> None:
    """Adds one flag per ``option`` field of ``config_cls`` to ``parser``.

    Args:
        exclude: field names not to add (a CLI that handles them itself).
        defaults: field name -> a default that replaces the dataclass's for this parser.
        include: only these field names (another command's options shared by this one).
        helps: field name -> the help this parser shows instead (a shared option that means
            less here, such as a training flag on the evaluation CLI).
        required: field names this parser requires (their default is then not shown).
        nargs: field name -> argparse ``nargs`` for this parser (``"+"``: several values).
    """
    hints = typing.get_type_hints(config_cls)
    excluded = set(exclude)
    for f in option_fields(config_cls):
        if f.name in excluded or (include is not None and f.name not in include):
            continue
        meta = f.metadata
        default = (defaults or {}).get(f.name, f.default)
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        help_text = meta["help"]() if callable(meta["help"]) else meta["help"]
        help_text = (helps or {}).get(f.name, help_text)
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
        if f.name in set(required):
            kwargs["required"] = True
        if nargs and f.name in nargs:
            kwargs["nargs"] = nargs[f.name]
        kind = _scalar_type(hints[f.name])
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = meta["type"] or kind
            choices = meta["choices"]
            if choices is not None:
                kwargs["choices"] = list(choices() if callable(choices) else choices)
            if choices is None:  # argparse shows the choices themselves otherwise
                kwargs["metavar"] = meta["metavar"] or flag[2:].replace("-", "_").upper()
        action = argument_group(parser, meta["group"]).add_argument(flag, **kwargs)
        # set afterwards: some Pythons' BooleanOptionalAction add it too
        if default is not None and not action.required:
            action.help = help_text + " (default: %(default)s)"


Rule = tuple[Callable[[Any], bool], str]  # (check, what the value must be)


def add_alias(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Keeps an earlier spelling ``old`` of the flag ``new`` working, not shown by ``--help``
    (the new flag's type and destination; the new one's default stands when neither is given).
    """
    action = next(a for a in parser._actions if new in a.option_strings)
    kwargs: dict[str, Any] = {"dest": action.dest, "default": argparse.SUPPRESS}
    if action.nargs == 0:  # a switch; the alias of "--no-x" of an on/off flag turns it off
        kwargs["action"] = "store_const"
        negative = isinstance(action, argparse.BooleanOptionalAction) and new.startswith("--no-")
        kwargs["const"] = False if negative else action.const if action.const is not None else True
    else:
        kwargs["type"] = action.type
        kwargs["nargs"] = action.nargs
    parser.add_argument(old, help=argparse.SUPPRESS, **kwargs)


def rule_problems(config: Any, rules: dict[str, Rule]) -> list[str]:
    """Every field of the dataclass ``config`` named in ``rules`` whose value fails its check,
    as ``--flag value: must be ...`` with the field's flag (default: ``--`` + the name in
    kebab case). NaN fails every numeric rule; a check that raises TypeError fails."""
    flags = {f.name: f.metadata.get("flag") for f in dataclasses.fields(config)}
    problems = []
    for name, (valid, must) in rules.items():
        value = getattr(config, name)
        try:
            ok = bool(valid(value))
        except TypeError:  # a string where a number belongs (a config edited by hand)
            ok = False
        if not ok:
            flag = flags.get(name) or "--" + name.replace("_", "-")
            problems.append(f"{flag} {value!r}: must be {must}")
    return problems


def argument_group(parser: argparse.ArgumentParser, title: str | None) -> Any:
    """The parser's group called ``title`` (made on first use); the parser itself for None."""
    if title is None:
        return parser
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def from_args(config_cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Builds ``config_cls`` from the parsed options it declares, plus ``overrides``."""
    values = {
        f.name: getattr(args, f.name) for f in option_fields(config_cls) if hasattr(args, f.name)
    }
    return config_cls(**{**values, **overrides})


def given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the options ``argv`` sets explicitly (whatever their values), which
    a default-valued namespace cannot tell apart from options left out."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))


# help text that already says what leaving the option out does: "(default: x)",
# "(default x for y)", "(required unless --y)"
_NAMES_DEFAULT = re.compile(r"\((?:default|required)\b", re.IGNORECASE)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks (its examples), widens the option column, and ends
    each option's help with its default, so that ``--help`` alone says what leaving a flag out
    does: ``(default: off)`` for a switch, ``(default: not set)`` for an option that is unset
    unless given, ``(required)`` for one that must be given. Help that already says so is left
    as written; ``--help`` and ``--version`` (no default) get none."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default is argparse.SUPPRESS
            or "%(default)" in text
            or _NAMES_DEFAULT.search(text)
        ):
            return text
        if action.required:
            return f"{text} (required)"
        if action.nargs == 0 and isinstance(action.default, bool):  # store_true and friends
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.default is None:
            return f"{text} (default: not set)"
        return f"{text} (default: %(default)s)"


class CommandParser(argparse.ArgumentParser):
    """The parser of every command: ``HelpFormatter`` by default, and a usage error (a
    missing value, a bad number) ends as every other error does, in one line on stderr,
    ``error: <flag>: <problem> (see <prog> --help)``, exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def run_cli(main: Callable[[], int | None]) -> None:
    """Runs a command's ``main`` and exits with its code, the one way every command ends.

    - a ``UserError`` (bad input, a refused or failed write, a diverged run) prints one line,
      ``error: <message>``, and exits with the error's code (2 bad input, 1 failed work);
    - a ``FileNotFoundError`` is an input that is not there: one line, exit 2;
    - a ``MemoryError`` (a setting too large for this machine) is one line, exit 1;
    - Ctrl-C prints ``interrupted`` and exits 130;
    - when stdout is a pipe whose reader has gone (``| head``), exits 1 quietly instead of
      printing a ``BrokenPipeError`` traceback;
    - any other exception is a bug and keeps its traceback.
    """
    try:
        try:
            code = main()
        except SystemExit as done:  # argparse's --help and usage errors
            code = done.code
        except UserError as err:
            code = _fail(str(err), err.exit_code)
        except FileNotFoundError as err:
            missing = err.filename
            message = f"{missing}: no such file or folder" if missing else str(err)
            code = _fail(message, BAD_INPUT)
        except MemoryError:  # a setting too large for this machine, not a fault in the code
            code = _fail("out of memory: try a smaller --img-size or --batch-size", 1)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            code = 130
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        code = 1
    sys.exit(code)


def _fail(message: str, code: int) -> int:
    sys.stdout.flush()  # what the command printed before comes first
    print(f"error: {message}", file=sys.stderr)
    return code
