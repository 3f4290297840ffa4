"""Attention blocks selected by ``--phi`` and the registry that names them.

Every block maps ``(B, C, H, W) -> (B, C, H, W)`` and is built as ``cls(channels, **options)``;
its options are the keyword arguments of its constructor, with the published values as
defaults. The numeric aliases are frozen: users' checkpoints and published comparisons depend on
them. A new block is one class decorated with ``@register_attention("name")``; it gets the next
free number. A block registered by a plugin module (``load_attention_plugins``, the
``--attention-plugin`` flag) gets a name only (its phi number is ``PLUGIN_PHI``): checkpoints
store the name, which does not depend on the order plugins are imported in.

``ATTENTION_POINTS`` are the places ``YoloBody`` can apply the block at; ``parse_points`` and
``parse_attention_args`` read the ``--attention-at`` and ``--attention-args`` strings.

Parameter names follow the reference implementation so that its checkpoints load strictly.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}
_PHI_NAMES: list[str] = []  # index == numeric phi
_PLUGIN_NAMES: list[str] = []  # registered while a plugin module was imported: no number
_importing_plugin = False

# the phi number of every plugin block: plugins are known by name only
PLUGIN_PHI = -1


def register_attention(name: str, *, plugin: bool | None = None):
    """Class decorator: registers an attention block under ``name``.

    Args:
        name: the block's name (case-insensitive).
        plugin: True registers the name only (phi number ``PLUGIN_PHI``); False gives it the
            next free number; None (default) means True while ``load_attention_plugins`` is
            importing a module, False otherwise.
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"attention block {key!r} is already registered")
        _REGISTRY[key] = cls
        as_plugin = _importing_plugin if plugin is None else plugin
        (_PLUGIN_NAMES if as_plugin else _PHI_NAMES).append(key)
        return cls

    return decorator


def load_attention_plugins(modules: str | Iterable[str] | None) -> list[str]:
    """Imports plugin modules (a comma-separated string or a list of module names); the blocks
    they register with ``register_attention`` get names, not numbers.

    Returns:
        the names of the blocks registered by this call.

    Raises:
        ValueError: a module cannot be imported (the message names it and says why).
    """
    global _importing_plugin
    if isinstance(modules, str):
        modules = modules.split(",")
    before = list(_PLUGIN_NAMES) + list(_PHI_NAMES)
    for module in (m.strip() for m in modules or ()):
        if not module:
            continue
        _importing_plugin = True
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"--attention-plugin {module}: cannot import it ({err})") from err
        finally:
            _importing_plugin = False
    return [n for n in [*_PHI_NAMES, *_PLUGIN_NAMES] if n not in before]


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
    raise ValueError(f"unknown phi {phi!r}; valid values: {describe_phis()}")


def block_options(phi: int | str) -> dict[str, Any]:
    """The options of ``phi``'s block: its constructor's keyword arguments after ``channels``,
    with their defaults."""
    _, name = resolve_phi(phi)
    params = list(inspect.signature(_REGISTRY[name].__init__).parameters.values())[2:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in params if p.kind in kinds}


def check_attention_args(phi: int | str, options: Mapping[str, Any]) -> None:
    """Raises ValueError naming every option of ``phi``'s block when ``options`` has another."""
    _, name = resolve_phi(phi)
    accepted = block_options(name)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        raise ValueError(
            f"attention block {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options (with defaults): {valid}"
        )


def build_attention(phi: int | str, channels: int, **options: Any) -> nn.Module | None:
    """Builds the block for ``phi`` on ``channels`` channels with ``options`` (constructor
    keyword arguments), or ``None`` for phi 0 (no keys).

    Raises:
        ValueError: an unknown phi, or an option the block does not take (the message lists
            the ones it does).
    """
    _, name = resolve_phi(phi)
    check_attention_args(name, options)
    cls = _REGISTRY[name]
    return None if name == "none" else cls(channels, **options)  # phi 0 adds no module


# where YoloBody can apply the block -> the channels there. feat1/feat2: the backbone's
# outputs (stride 16, 32); upsample: the upsampled P5 before the concat; csp1-3: the output of
# each CSP block of the backbone (after its concat and max-pool: stride 8, 16, 32); head13 and
# head26: the inputs of the stride-32 and stride-16 heads.
ATTENTION_POINTS: dict[str, int] = {
    "feat1": 256,
    "feat2": 512,
    "upsample": 128,
    "csp1": 128,
    "csp2": 256,
    "csp3": 512,
    "head13": 256,
    "head26": 384,
}
DEFAULT_POINTS: tuple[str, ...] = ("feat1", "feat2", "upsample")


def parse_points(points: str | Iterable[str] | None) -> tuple[str, ...]:
    """``--attention-at`` (``"feat1,csp2"``, a list, or None for the default) as a tuple in
    ``ATTENTION_POINTS`` order, without repeats. An empty string is no point at all.

    Raises:
        ValueError: an unknown point; the message lists the valid ones.
    """
    if points is None:
        return DEFAULT_POINTS
    items = points.split(",") if isinstance(points, str) else list(points)
    chosen = {str(p).strip().lower() for p in items} - {""}
    unknown = sorted(chosen - set(ATTENTION_POINTS))
    if unknown:
        raise ValueError(
            f"unknown attention point {', '.join(map(repr, unknown))}; valid points: "
            f"{', '.join(ATTENTION_POINTS)}"
        )
    return tuple(p for p in ATTENTION_POINTS if p in chosen)


def _parse_value(text: str) -> bool | int | float | str:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_attention_args(args: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``--attention-args`` (``"ratio=8,kernel_size=7"``) as a dict; values become bool
    (true/false), int, float or else stay strings. A mapping is copied; None is ``{}``.

    Raises:
        ValueError: an item that is not ``name=value``.
    """
    if args is None:
        return {}
    if isinstance(args, Mapping):
        return dict(args)
    options: dict[str, Any] = {}
    for item in (i.strip() for i in args.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--attention-args item {item!r}: expected name=value")
        options[key.strip()] = _parse_value(value.strip())
    return options


def format_attention_args(args: Mapping[str, Any] | None) -> str:
    """The canonical ``--attention-args`` string of ``args`` (sorted by name; "" for none)."""
    return ",".join(f"{k}={v}" for k, v in sorted((args or {}).items()))


# The built-in blocks register themselves when imported, in phi order.
from nets import blocks as _blocks  # noqa: E402, F401
