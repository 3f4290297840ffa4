"""Model summary: parameters and GFLOPs per attention type.

The command line is ``python -m tools.model_summary``.

GFLOPs are 2 x multiply-accumulates of convolutions and linear layers (the convention of the
reference implementation's published numbers); element-wise work is not counted.
"""

from __future__ import annotations

import torch
from torch import nn

from nets.yolo import YoloBody


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: int = 416) -> float:
    """FLOPs (2 x MACs) of one forward pass at ``input_size`` x ``input_size``, batch 1."""
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
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return 2.0 * macs


def summary_rows(phis: list[int | str], num_classes: int, input_size: int) -> list[dict]:
    rows = []
    for phi in phis:
        model = YoloBody(num_classes, phi)
        rows.append(
            {
                "phi": model.phi,
                "name": model.phi_name,
                "params": count_parameters(model),
                "gflops": count_flops(model, input_size) / 1e9,
            }
        )
    return rows
