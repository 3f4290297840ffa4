"""The model flags many commands share, each declared once.

A command adds the ones it takes with ``utils.config.add_options(parser, ModelOptions,
include=(...))``, giving its own default or help where the flag means a little more there
(``defaults=``/``helps=``); a config dataclass reuses one with ``utils.config.shared``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nets.registry import describe_phis
from utils.config import option
from utils.errors import InputError

# 10x the default side: far beyond any use, while one image's activations still fit in memory
MAX_IMG_SIZE = 4096
IMG_SIZE_MUST = f"a positive multiple of 32, at most {MAX_IMG_SIZE}"


def valid_img_size(size: int) -> bool:
    """Whether ``size`` can be a network input side: the model downsamples by 32."""
    return 0 < size <= MAX_IMG_SIZE and size % 32 == 0


def check_img_size(size: int | None, flag: str = "--img-size") -> None:
    """Refuses an input side the network cannot take (None: the model's own).

    Raises:
        InputError: naming the flag and the value.
    """
    if size is not None and not valid_img_size(size):
        raise InputError(f"{flag} {size}: must be {IMG_SIZE_MUST}")


@dataclass(frozen=True)
class ModelOptions:
    """Which model, with which attention block, at which input size."""

    weights: str | None = option(
        None,
        "darknet .weights, our .pth checkpoint, a reference-implementation .pth or an .onnx export",
        group="model",
    )
    phi: str | None = option(
        None,
        lambda: (
            f"attention block, by number or name: {describe_phis()} (default: the "
            "checkpoint's, 0 for darknet)"
        ),
        group="model",
    )
    attention_plugin: str | None = option(
        None,
        "module(s) to import before the model is built, registering attention blocks "
        "(comma-separated)",
        group="model",
        metavar="MODULE",
    )
    anchors: str | None = option(
        None, "anchors file: w,h pairs at the input size (default: the checkpoint's)", group="model"
    )
    img_size: int | None = option(
        None,
        "network input side, a multiple of 32 (default: the checkpoint's; 416 for darknet)",
        group="model",
    )
