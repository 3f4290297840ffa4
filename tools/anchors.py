"""Command line: k-means anchors for a data set at a training input size.

Usage: ``python -m tools.anchors --voc-root my_voc --sets 2007:train
--out model_data/my_anchors.txt``
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from data.anchor_kmeans import (
    DEFAULT_ANCHORS,
    DEFAULT_INPUT_SIZE,
    DEFAULT_NUM_ANCHORS,
    DEFAULT_OUTPUT,
    DEFAULT_SEED,
    compute_anchors,
    format_anchors,
    write_anchors,
)
from data.options import DataOptions
from data.voc import parse_sets
from nets.options import ModelOptions, check_img_size
from utils.classes import read_class_names
from utils.config import CommandParser, add_alias, add_options, run_cli
from utils.errors import InputError
from utils.paths import check_apart, check_output_path


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m tools.anchors",
        description="Cluster the box shapes of a VOC dataset into anchors (k-means, distance "
        "1 - IoU, median update), compare them with the default anchors and write an anchors "
        "file in the format of model_data/yolo_anchors.txt.",
    )
    add_options(
        parser,
        DataOptions,
        include=("voc_root", "sets", "classes"),
        helps={
            "sets": "comma-separated YEAR:SET image sets to read",
            "classes": "class names file; only these classes' boxes count (default: every "
            "class in the XMLs)",
        },
    )
    add_options(
        parser,
        ModelOptions,
        include=("img_size",),
        defaults={"img_size": DEFAULT_INPUT_SIZE},
        helps={
            "img_size": "training input size the boxes are letterboxed to, as train.py --img-size"
        },
    )
    add_alias(parser, "--input-size", "--img-size")
    parser.add_argument(
        "--num-anchors",
        type=int,
        default=DEFAULT_NUM_ANCHORS,
        help=f"k, at least 1; train.py needs {DEFAULT_NUM_ANCHORS} (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="k-means++ seed, 0 or more (default: %(default)s)",
    )
    parser.add_argument(
        "--include-difficult",
        action="store_true",
        help="also cluster boxes flagged difficult (training leaves them out by default)",
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUTPUT, help="anchors file to write (default: %(default)s)"
    )
    add_alias(parser, "--output", "--out")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refuses, before any data is read, values the clustering or train.py cannot use.

    Raises:
        InputError: naming the flag.
        OutputRefusedError: ``--out`` cannot be written, or would replace one of the inputs
            (a file of the VOC root, the classes file).
    """
    check_img_size(args.img_size)  # as train.py: a positive multiple of 32, not too large
    if args.num_anchors < 1:
        raise InputError(
            f"--num-anchors {args.num_anchors}: must be >= 1 (train.py needs {DEFAULT_NUM_ANCHORS})"
        )
    if args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be >= 0")
    check_output_path(args.out)
    check_apart(args.out, [args.voc_root, args.classes or ""], flag="--out", folder=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    check_args(args)  # before the clustering, which can take a while
    class_names = read_class_names(args.classes) if args.classes else None
    report = compute_anchors(
        args.voc_root,
        parse_sets(args.sets),
        class_names,
        input_size=args.img_size,
        num_anchors=args.num_anchors,
        seed=args.seed,
        include_difficult=args.include_difficult,
    )
    write_anchors(args.out, report.anchors)  # OutputPathError (exit 1) on a full disk
    print(f"{report.num_boxes} boxes at input size {args.img_size}")
    print(f"default anchors: {format_anchors(DEFAULT_ANCHORS)}")
    print(f"  mean best IoU  {report.default_mean_iou:.4f}")
    print(f"new anchors:     {format_anchors(report.anchors)}")
    print(f"  mean best IoU  {report.mean_iou:.4f}")
    shares = " ".join(f"{s:.1%}" for s in report.best_share)
    print(f"  share of boxes per anchor: {shares}")
    if args.num_anchors == DEFAULT_NUM_ANCHORS:
        print(
            f"  note: yolov4-tiny's masks use no anchor 0 ({report.best_share[0]:.1%} of boxes "
            "fit it best and get no positive)"
        )
    print(f"wrote {args.out}")
    if args.num_anchors == DEFAULT_NUM_ANCHORS:
        print(f"train with it: train.py --anchors {args.out} --img-size {args.img_size}")
    else:
        print(
            f"note: YOLOv4-tiny's heads use {DEFAULT_NUM_ANCHORS} anchors: train.py needs a "
            f"{DEFAULT_NUM_ANCHORS}-anchor file"
        )
    return 0


if __name__ == "__main__":
    run_cli(main)
