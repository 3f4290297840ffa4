"""Model summary: parameters and GFLOPs per attention type.

Usage: ``python -m nets.summary [--phi all|0-4|name ...] [--num-classes 20] [--img-size 416]``

GFLOPs are 2 x multiply-accumulates of convolutions and linear layers (the convention of the
reference implementation's published numbers); element-wise work is not counted.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from nets.attention import attention_names, resolve_phi
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


def main() -> None:
    parser = argparse.ArgumentParser(description="YOLOv4-tiny parameters and GFLOPs per phi")
    parser.add_argument("--phi", nargs="+", default=["all"], help="phis (numbers or names), or all")
    parser.add_argument("--num-classes", type=int, default=20, help="number of classes")
    parser.add_argument("--img-size", type=int, default=416, help="input side, multiple of 32")
    args = parser.parse_args()
    if args.img_size % 32:
        parser.error(f"--img-size {args.img_size} is not a multiple of 32")
    phis = list(range(len(attention_names()))) if args.phi == ["all"] else args.phi
    try:
        phis = [resolve_phi(p)[0] for p in phis]
    except ValueError as err:
        parser.error(str(err))
    print(f"YOLOv4-tiny, {args.num_classes} classes, input {args.img_size}x{args.img_size}")
    print(f"{'phi':>3}  {'attention':<9}{'params':>12}{'GFLOPs':>9}")
    for row in summary_rows(phis, args.num_classes, args.img_size):
        print(f"{row['phi']:>3}  {row['name']:<9}{row['params']:>12,}{row['gflops']:>9.2f}")


if __name__ == "__main__":
    main()
