"""Command line: parameters and GFLOPs per attention type.

Usage: ``python -m tools.model_summary [--phi all|number|name ...] [--num-classes 20]
[--img-size 416] [--attention-at feat1,feat2,upsample] [--attention-args name=value,...]
[--attention-plugin MODULE]``

With ``--attention-args`` and ``--phi all``, the blocks that do not take those options are left
out (and named); asking for such a block by number or name is an error.
"""

from __future__ import annotations

import argparse

from nets.attention import DEFAULT_POINTS, check_placement, parse_attention_args, parse_points
from nets.options import ModelOptions, check_img_size
from nets.registry import (
    attention_names,
    block_options,
    describe_phis,
    load_attention_plugins,
    plugin_names,
    resolve_phi,
)
from nets.summary import (
    summary_rows,
)
from utils.config import CommandParser, add_options, run_cli
from utils.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m tools.model_summary",
        description="YOLOv4-tiny parameters and GFLOPs per phi",
    )
    add_options(
        parser,
        ModelOptions,
        include=("phi", "img_size", "attention_plugin"),
        defaults={"img_size": 416},
        nargs={"phi": "+"},
        helps={
            "phi": f"attention blocks, by number or name ({describe_phis()}), or all "
            "(default: all)",
            "img_size": "network input side, a positive multiple of 32",
        },
    )
    parser.add_argument("--num-classes", type=int, default=20, help="number of classes, at least 1")
    parser.add_argument(
        "--attention-at",
        default=",".join(DEFAULT_POINTS),
        help="comma-separated points the block is applied at (default: %(default)s)",
    )
    parser.add_argument(
        "--attention-args", default="", help="the blocks' options, name=value,... (default: none)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_img_size(args.img_size)  # as train.py: a positive multiple of 32, not too large
    if args.num_classes < 1:
        raise InputError(f"--num-classes {args.num_classes}: must be >= 1")
    load_attention_plugins(args.attention_plugin)
    points = parse_points(args.attention_at)
    options = parse_attention_args(args.attention_args)
    if args.phi in (None, ["all"]):
        names, skipped = [*attention_names(), *plugin_names()], []
        if options:
            skipped = [n for n in names if not _takes(n, options)]
            names = [n for n in names if n not in skipped]
    else:
        names, skipped = [resolve_phi(p)[1] for p in args.phi], []
    for name in names:  # a block at no point is the plain network under its name
        check_placement(name, points)
    rows = summary_rows(names, args.num_classes, args.img_size, points, options)
    print(f"YOLOv4-tiny, {args.num_classes} classes, input {args.img_size}x{args.img_size}")
    print(f"attention at: {','.join(points) or 'no point'}; options: {args.attention_args or '-'}")
    if skipped:
        print(f"left out (no such option): {', '.join(skipped)}")
    print(f"{'phi':>3}  {'attention':<10}{'options':<24}{'params':>12}{'GFLOPs':>9}")
    for row in rows:
        print(
            f"{row['phi']:>3}  {row['name']:<10}{row['options'] or '-':<24}"
            f"{row['params']:>12,}{row['gflops']:>9.2f}"
        )
    return 0


def _takes(name: str, options: dict) -> bool:
    """Whether block ``name`` has every option in ``options`` (their values are checked when
    the model is built: a bad value is an error, not a reason to leave a block out)."""
    return set(options) <= set(block_options(name))


if __name__ == "__main__":
    run_cli(main)
