"""Model summary: parameters and GFLOPs per attention type.

The command line is ``python -m tools.model_summary``.

GFLOPs are 2 x multiply-accumulates of convolutions, linear layers and matrix products
(``torch.matmul``, ``torch.bmm`` and ``@``, as in the non-local block's attention): the convention
of the reference implementation's published numbers, which have no matrix products. Element-wise
work (activations, softmax, BN, pooling, sums) is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from nets.attention import format_attention_args
from nets.yolo import YoloBody


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_MATMULS = {torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.bmm, torch.Tensor.__matmul__}


class _MatmulCounter(TorchFunctionMode):
    """Adds up the multiply-accumulates of the matrix products called while it is active:
    per product, output elements x the contracted dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _MATMULS:
            self.macs += out.numel() * args[0].shape[-1]
        return out


def count_flops(model: nn.Module, input_size: int = 416) -> float:
    """FLOPs (2 x MACs) of one forward pass at ``input_size`` x ``input_size``, batch 1:
    convolutions, linear layers and matrix products (see the module docstring)."""
    macs = 0

    def conv_hook(module: nn.Conv2d | nn.Conv1d, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        per_output = module.in_channels // module.groups
        for k in module.kernel_size:
            per_output *= k
        macs += output.numel() * per_output

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        macs += output.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            with _MatmulCounter() as matmuls:
                model(torch.zeros(1, 3, input_size, input_size, device=device))
            macs += matmuls.macs
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return 2.0 * macs


def summary_rows(
    phis: list[int | str],
    num_classes: int,
    input_size: int,
    attention_at: str | Sequence[str] | None = None,
    attention_args: str | Mapping[str, Any] | None = None,
) -> list[dict]:
    """One row per phi: number, name, attention points and options, parameters, GFLOPs.

    Raises:
        ValueError: an unknown phi or point, or an option a block does not take.
    """
    rows = []
    for phi in phis:
        model = YoloBody(num_classes, phi, attention_at=attention_at, attention_args=attention_args)
        rows.append(
            {
                "phi": model.phi,
                "name": model.phi_name,
                "points": ",".join(model.attention_at),
                "options": format_attention_args(model.attention_args),
                "params": count_parameters(model),
                "gflops": count_flops(model, input_size) / 1e9,
            }
        )
    return rows
