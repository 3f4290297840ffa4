"""Attention blocks in the model: where ``YoloBody`` applies one, and its settings.

``ATTENTION_POINTS`` are the places ``YoloBody`` can apply the block at; ``parse_points`` and
``parse_attention_args`` read the ``--attention-at`` and ``--attention-args`` strings, and
``check_attention_settings`` checks them together with the block; ``check_block_output``
tries a built block once.

The blocks are named in ``nets.registry``; importing this module registers the built-in ones
(``nets.blocks``) in phi order. Plugin modules import ``register_attention`` from here, which
makes sure the built-in blocks hold their frozen numbers first.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

# the built-in blocks register themselves when imported, in phi order
import nets.blocks  # noqa: F401
from nets.registry import check_attention_args, load_attention_plugins, resolve_phi
from nets.registry import register_attention as register_attention  # plugins import it here
from utils.errors import InputError


def check_block_output(block: nn.Module, name: str, point: str, channels: int) -> None:
    """Runs ``block`` once on a small random input of ``channels`` channels and checks that it
    returns a finite tensor of the input's shape, so that a block that does not fit the model
    fails when the model is built, not in the middle of a training step.

    The block runs in eval mode without gradients; its state (parameters, buffers, training
    flag) and the global random state are as before afterwards.

    Raises:
        ValueError: the block raises, or returns something else (names the block, the point
            and both shapes).
    """
    held = next(itertools.chain(block.parameters(), block.buffers()), None)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 4, 4, generator=generator)
    if held is not None:  # where and in what precision the block computes
        x = x.to(held.device, held.dtype if held.is_floating_point() else x.dtype)
    what = f"attention block {name!r} at {point}"
    saved = {k: v.detach().clone() for k, v in block.state_dict().items()}
    was_training = block.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            block.eval()
            out = block(x.clone())
    except Exception as err:  # a user's block: one line naming it, not a traceback
        raise InputError(
            f"{what}: fails on an input of shape {tuple(x.shape)}: {type(err).__name__}: {err}"
        ) from err
    finally:
        block.train(was_training)
        with torch.no_grad():
            for k, v in block.state_dict().items():
                if k in saved and v.shape == saved[k].shape:
                    v.copy_(saved[k])
    if not isinstance(out, torch.Tensor):
        raise InputError(
            f"{what}: returns {type(out).__name__} for an input of shape {tuple(x.shape)}; a "
            "block must return a tensor of its input's shape"
        )
    if out.shape != x.shape:
        raise InputError(
            f"{what}: input shape {tuple(x.shape)} -> output shape {tuple(out.shape)}; a "
            "block must return a tensor of its input's shape (B, C, H, W)"
        )
    if not torch.isfinite(out).all():
        raise InputError(
            f"{what}: returns non-finite values (NaN or inf) for a finite input of shape "
            f"{tuple(x.shape)}"
        )


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
        raise InputError(
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
    Whether a value suits its option is ``check_attention_args``'s part: it needs the block.

    Raises:
        ValueError: an item that is not ``name=value``, or an option given twice.
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
            raise InputError(f"--attention-args item {item!r}: expected name=value")
        if key.strip() in options:  # keeping either value would hide the other
            raise InputError(f"--attention-args: option {key.strip()!r} is given twice")
        options[key.strip()] = _parse_value(value.strip())
    return options


def format_attention_args(args: Mapping[str, Any] | None) -> str:
    """The canonical ``--attention-args`` string of ``args`` (sorted by name; "" for none)."""
    return ",".join(f"{k}={v}" for k, v in sorted((args or {}).items()))


def check_placement(phi: int | str, points: Iterable[str]) -> None:
    """Raises ValueError when ``phi``'s block is not ``none`` but ``points`` is empty: such a
    model is the plain network, and it would be labelled and compared as the block."""
    _, name = resolve_phi(phi)
    if name != "none" and not tuple(points):
        raise InputError(
            f"--attention-at '': attention block {name!r} would be applied at no point (the "
            "plain network under its name); give at least one point, or --phi 0 for none"
        )


def check_attention_settings(
    phi: int | str,
    attention_at: str | Iterable[str] | None,
    attention_args: str | Mapping[str, Any] | None,
    plugins: str | Iterable[str] | None = None,
) -> None:
    """The attention settings of a run or command, checked together before any work: imports
    ``plugins``, then checks that ``phi`` is a registered block, that it is applied at a
    point, and that ``attention_args`` suit it at the channel counts of ``attention_at``.

    Raises:
        ValueError: one line naming the flag and the problem.
    """
    load_attention_plugins(plugins)
    try:
        _, name = resolve_phi(phi)
    except ValueError as err:
        raise InputError(f"--phi {phi!r}: {err}") from None
    points = parse_points(attention_at)
    check_placement(name, points)
    try:
        check_attention_args(
            name, parse_attention_args(attention_args), {p: ATTENTION_POINTS[p] for p in points}
        )
    except ValueError as err:
        text = (
            attention_args
            if isinstance(attention_args, str)
            else format_attention_args(attention_args)
        )
        raise InputError(f"--attention-args {text!r}: {err}") from None
