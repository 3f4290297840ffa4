"""The model flags many commands share, each declared once.

A command adds the ones it takes with ``utils.config.add_options(parser, ModelOptions,
include=(...))``, giving its own default or help where the flag means a little more there
(``defaults=``/``helps=``); a config dataclass reuses one with ``utils.config.shared``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nets.registry import describe_phis
from utils.config import option


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
