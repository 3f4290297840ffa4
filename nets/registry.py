"""The attention registry: block name -> class, the frozen numeric aliases of ``--phi``, plugin
modules, what each block's options accept, and ``build_attention`` to build a block by phi.

A block is one class decorated with ``@register_attention("name")`` and built as
``cls(channels, **options)``; its options are the keyword arguments of its constructor, with the
published values as defaults, and its class attribute ``OPTIONS`` says what each accepts
(``BlockOption``), so that a value that cannot work is refused with the other settings, before
any work. A new block gets the next free number. The numeric aliases are frozen: users'
checkpoints and published comparisons depend on them, so the built-in blocks (``nets.blocks``,
which ``nets.attention`` imports) must be registered before any other; a block outside them
registers through ``nets.attention`` (or after importing it). A block registered by a plugin
module (``load_attention_plugins``, the ``--attention-plugin`` flag) gets a name only (its phi
number is ``PLUGIN_PHI``): checkpoints store the name, which does not depend on the order
plugins are imported in.

This module imports no block: the blocks import it.
"""

from __future__ import annotations

import importlib
import inspect
import math
import traceback
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from utils.errors import InputError

_REGISTRY: dict[str, type[nn.Module]] = {}
_PHI_NAMES: list[str] = []  # index == numeric phi
_PLUGIN_NAMES: list[str] = []  # registered while a plugin module was imported: no number
_importing_plugin = False

# the phi number of every plugin block: plugins are known by name only
PLUGIN_PHI = -1


class BlockSignatureError(InputError):
    """A class registered as an attention block cannot be built as ``cls(channels, **options)``."""


def _check_signature(key: str, cls: type) -> None:
    """Raises ``BlockSignatureError`` unless ``cls(channels, **options)`` can work: the
    constructor's first parameter must take the channel count by position."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # no introspectable signature (a C type): trust it
        return
    first = params[0] if params else None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if first is not None and (
        first.kind is inspect.Parameter.VAR_POSITIONAL
        or (first.kind in positional and first.name == "channels")
    ):
        return
    where = f"{cls.__module__}.{cls.__qualname__}"
    raise BlockSignatureError(
        f"attention block {key!r} (class {where}): its constructor takes "
        f"{inspect.signature(cls)}, but a block is built as {cls.__name__}(channels, **options): "
        f"make the channel count its first parameter, e.g. "
        f"def __init__(self, channels: int, *, option=default)"
    )


def register_attention(name: str, *, plugin: bool | None = None):
    """Class decorator: registers an attention block under ``name``.

    Args:
        name: the block's name (case-insensitive).
        plugin: True registers the name only (phi number ``PLUGIN_PHI``); False gives it the
            next free number; None (default) means True while ``load_attention_plugins`` is
            importing a module, False otherwise.

    Raises:
        ValueError: the name is taken.
        BlockSignatureError: the constructor's first parameter is not ``channels``.
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        key = name.lower()
        if key in _REGISTRY:
            raise InputError(f"attention block {key!r} is already registered")
        _check_signature(key, cls)
        _REGISTRY[key] = cls
        as_plugin = _importing_plugin if plugin is None else plugin
        (_PLUGIN_NAMES if as_plugin else _PHI_NAMES).append(key)
        return cls

    return decorator


def _where(err: BaseException) -> str:
    """`` at FILE:LINE`` of the innermost frame of ``err``'s traceback ("" without one)."""
    frames = traceback.extract_tb(err.__traceback__)
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def load_attention_plugins(modules: str | Iterable[str] | None) -> list[str]:
    """Imports plugin modules (a comma-separated string or a list of module names); the blocks
    they register with ``register_attention`` get names, not numbers.

    Returns:
        the names of the blocks registered by this call.

    Raises:
        ValueError: a module cannot be imported, raises while it is imported, or registers a
            block that cannot be built (one line naming the module and the error). The blocks
            a failed module registered before it failed are unregistered.
    """
    global _importing_plugin
    if isinstance(modules, str):
        modules = modules.split(",")
    before = list(_PLUGIN_NAMES) + list(_PHI_NAMES)
    for module in (m.strip() for m in modules or ()):
        if not module:
            continue
        registered = set(_REGISTRY)
        _importing_plugin = True
        try:
            importlib.import_module(module)
        except ImportError as err:
            _unregister(set(_REGISTRY) - registered)
            raise InputError(f"--attention-plugin {module}: cannot import it ({err})") from err
        except BlockSignatureError as err:
            _unregister(set(_REGISTRY) - registered)
            raise InputError(f"--attention-plugin {module}: {err}") from err
        except Exception as err:  # whatever a user's module raises: one line, not a traceback
            _unregister(set(_REGISTRY) - registered)
            where = "" if isinstance(err, SyntaxError) else _where(err)  # its text has the line
            raise InputError(
                f"--attention-plugin {module}: importing it raised "
                f"{type(err).__name__}: {err}{where}"
            ) from err
        finally:
            _importing_plugin = False
    return [n for n in [*_PHI_NAMES, *_PLUGIN_NAMES] if n not in before]


def _unregister(names: Iterable[str]) -> None:
    """Forgets blocks registered by a plugin module whose import failed (it is not imported,
    so its blocks must not stay half there)."""
    for name in names:
        del _REGISTRY[name]
        for names_list in (_PHI_NAMES, _PLUGIN_NAMES):
            if name in names_list:
                names_list.remove(name)


def plugin_names() -> list[str]:
    """Names of the blocks registered by plugins (they have no phi number)."""
    return list(_PLUGIN_NAMES)


def attention_names() -> list[str]:
    """Registered block names in phi order (``attention_names()[phi]`` is phi's name)."""
    return list(_PHI_NAMES)


def describe_phis() -> str:
    """Every registered block as ``0=none, 1=se, ...`` (for help texts; the registry grows),
    then the plugin blocks by name."""
    return ", ".join([*(f"{n}={name}" for n, name in enumerate(_PHI_NAMES)), *_PLUGIN_NAMES])


def resolve_phi(phi: int | str) -> tuple[int, str]:
    """Turns a phi given as number, numeric string or name (any case) into ``(number, name)``.

    Raises:
        ValueError: for an unknown value; the message lists every valid number and name.
    """
    key = str(phi).strip().lower()
    if key.isdigit() and int(key) < len(_PHI_NAMES):
        return int(key), _PHI_NAMES[int(key)]
    if key in _PLUGIN_NAMES:
        return PLUGIN_PHI, key
    if key in _REGISTRY:
        return _PHI_NAMES.index(key), key
    raise InputError(f"unknown phi {phi!r}; valid values: {describe_phis()}")


@dataclass(frozen=True)
class BlockOption:
    """What one option of an attention block accepts.

    A block declares its options in the class attribute ``OPTIONS`` (option name ->
    ``BlockOption``); an option it does not declare is checked against its constructor's
    annotation, else the type of its default.

    Attributes:
        kind: the value's type: int, float, bool, str or object (any value). A bool is never
            an int or a float; an int is a valid float; any value is a valid str.
        check: a further condition on a value of that type.
        valid: the accepted values in words, for error messages ("an integer >= 1").
        at_most_channels: the value must also be at most the channel count at each point the
            block is applied at (a reduction of the width that must leave a channel).
    """

    kind: type
    check: Callable[[Any], bool] = lambda value: True
    valid: str = ""
    at_most_channels: bool = False


_KIND_WORDS = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    object: "any value",
}


def _is_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return type(value) in (int, float)
    if kind in (str, object):
        return True
    return type(value) is kind  # type(): a bool is an int to isinstance


def _coerce(value: Any, kind: type) -> Any:
    if kind is float:
        return float(value)
    if kind is str and not isinstance(value, str):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return value


def _literal(value: Any) -> str:
    """``value`` as it is written in ``--attention-args``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _declared_kind(cls: type, param: inspect.Parameter) -> type:
    """The type an undeclared option's annotation or default gives (``object``: any)."""
    try:
        hint = typing.get_type_hints(cls.__init__).get(param.name)
    except Exception:  # an annotation that does not resolve: fall back to the default
        hint = None
    if hint in _KIND_WORDS:
        return hint
    if param.default is not inspect.Parameter.empty and type(param.default) in _KIND_WORDS:
        return type(param.default)
    return object


def block_options(phi: int | str) -> dict[str, Any]:
    """The options of ``phi``'s block: its constructor's keyword arguments after ``channels``,
    with their defaults (``inspect.Parameter.empty`` for one that must be given)."""
    _, name = resolve_phi(phi)
    params = list(inspect.signature(_REGISTRY[name]).parameters.values())[1:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in params if p.kind in kinds}


def option_rules(phi: int | str) -> dict[str, BlockOption]:
    """Every option of ``phi``'s block -> what it accepts: the block's ``OPTIONS``, else its
    constructor's annotation or default type (see ``BlockOption``)."""
    _, name = resolve_phi(phi)
    cls = _REGISTRY[name]
    declared = getattr(cls, "OPTIONS", None) or {}
    params = inspect.signature(cls).parameters
    rules = {}
    for key in block_options(name):
        if key in declared:
            rules[key] = declared[key]
        else:
            rules[key] = BlockOption(_declared_kind(cls, params[key]))
    return rules


def _option_problem(
    name: str, key: str, value: Any, rule: BlockOption, channels: Mapping[str, int]
) -> str | None:
    """What is wrong with ``key=value`` for block ``name`` (None: nothing)."""
    must = rule.valid or _KIND_WORDS[rule.kind]
    fewest = min(channels.items(), key=lambda item: item[1]) if channels else None
    if rule.at_most_channels and fewest is not None:
        at = f" at {fewest[0]}" if fewest[0] else ""
        must = f"{must} and at most {fewest[1]}, the block's channel count{at}"
    elif rule.at_most_channels:
        must = f"{must} and at most the block's channel count"
    ok = _is_kind(value, rule.kind)
    if ok:
        typed = _coerce(value, rule.kind)
        try:
            ok = bool(rule.check(typed))
        except (TypeError, ValueError):
            ok = False
        ok = ok and not (isinstance(typed, float) and not math.isfinite(typed))
        if ok and rule.at_most_channels and fewest is not None:
            ok = typed <= fewest[1]
    if ok:
        return None
    return f"attention block {name!r}: option {key}={_literal(value)} is invalid: must be {must}"


def check_attention_args(
    phi: int | str, options: Mapping[str, Any], channels: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Checks ``options`` against what ``phi``'s block accepts (``option_rules``).

    Args:
        phi: the block, number or name.
        options: option name -> value, as ``parse_attention_args`` reads them.
        channels: attention point -> its channel count, for the options bounded by it
            (default: not checked against channels).

    Returns:
        the options as the constructor takes them (an int given for a float option becomes a
        float).

    Raises:
        ValueError: an option the block does not have (the message lists the ones it has), a
            value of the wrong type or out of range (the message names the block, the option,
            the value and the valid values), or a required option left out.
    """
    _, name = resolve_phi(phi)
    accepted = block_options(name)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        raise InputError(
            f"attention block {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options (with defaults): {valid}"
        )
    missing = [k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in options]
    if missing:
        raise InputError(f"attention block {name!r} needs option {', '.join(missing)}")
    rules = option_rules(name)
    for key, value in options.items():
        problem = _option_problem(name, key, value, rules[key], channels or {})
        if problem:
            raise InputError(problem)
    return {key: _coerce(value, rules[key].kind) for key, value in options.items()}


def build_attention(phi: int | str, channels: int, **options: Any) -> nn.Module | None:
    """Builds the block for ``phi`` on ``channels`` channels with ``options`` (constructor
    keyword arguments), or ``None`` for phi 0 (no keys).

    Raises:
        ValueError: an unknown phi, or an option the block does not take (the message lists
            the ones it does) or with a value it does not accept (``check_attention_args``).
    """
    _, name = resolve_phi(phi)
    options = check_attention_args(name, options, {"": channels})
    cls = _REGISTRY[name]
    return None if name == "none" else cls(channels, **options)  # phi 0 adds no module


@contextmanager
def temporary_registrations() -> Iterator[None]:
    """Blocks registered inside the ``with`` block are forgotten on leaving it, and the phi
    numbers are as before (for tests and trial runs). The registry is restored in place, so
    every reference to it sees the restored one."""
    blocks, numbered, plugins = dict(_REGISTRY), list(_PHI_NAMES), list(_PLUGIN_NAMES)
    try:
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(blocks)
        _PHI_NAMES[:] = numbered
        _PLUGIN_NAMES[:] = plugins
