"""Command line: parameters and GFLOPs per attention type.

Usage: ``python -m tools.model_summary [--phi all|number|name ...] [--num-classes 20]
[--img-size 416]``
"""

from __future__ import annotations

import argparse
import sys

from nets.attention import attention_names, resolve_phi
from nets.summary import (
    summary_rows,
)


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
    sys.exit(main())
