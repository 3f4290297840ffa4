"""Command line: k-means anchors for a data set at a training input size.

Usage: ``python -m tools.anchors --voc-root my_voc --sets 2007:train
--output model_data/my_anchors.txt``
"""

from __future__ import annotations

import argparse
import logging
import sys
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
from data.voc import DEFAULT_TRAIN_SETS, parse_sets
from utils.classes import read_class_names
from utils.config import HelpFormatter
from utils.paths import VOC_ROOT, OutputPathError, check_output_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.anchors",
        formatter_class=HelpFormatter,
        description="Cluster the box shapes of a VOC dataset into anchors (k-means, distance "
        "1 - IoU, median update), compare them with the default anchors and write an anchors "
        "file in the format of model_data/yolo_anchors.txt.",
    )
    parser.add_argument(
        "--voc-root",
        default=VOC_ROOT,
        help="folder holding VOC<year>/ (default: %(default)s)",
    )
    parser.add_argument(
        "--sets",
        default=",".join(f"{y}:{s}" for y, s in DEFAULT_TRAIN_SETS),
        help="comma-separated YEAR:SET image sets to read (default: %(default)s)",
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="class names file; only these classes' boxes count (default: every class in the XMLs)",
    )
    parser.add_argument(
        "--img-size",
        dest="input_size",
        metavar="IMG_SIZE",
        type=int,
        default=DEFAULT_INPUT_SIZE,
        help="training input size the boxes are letterboxed to, as train.py --img-size "
        "(default: %(default)s)",
    )
    parser.add_argument(  # the earlier spelling, kept working but not shown
        "--input-size",
        dest="input_size",
        type=int,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--num-anchors", type=int, default=DEFAULT_NUM_ANCHORS, help="k (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="k-means++ seed (default: %(default)s)"
    )
    parser.add_argument(
        "--include-difficult",
        action="store_true",
        help="also cluster boxes flagged difficult (training leaves them out by default)",
    )
    parser.add_argument(
        "--output", default=DEFAULT_OUTPUT, help="anchors file to write (default: %(default)s)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        check_output_path(args.output)
    except OutputPathError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        class_names = read_class_names(args.classes) if args.classes else None
        report = compute_anchors(
            args.voc_root,
            parse_sets(args.sets),
            class_names,
            input_size=args.input_size,
            num_anchors=args.num_anchors,
            seed=args.seed,
            include_difficult=args.include_difficult,
        )
    except (OSError, ValueError) as err:  # no such data set, sets or classes
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        write_anchors(args.output, report.anchors)
    except OutputPathError as err:  # disk full or permissions changed during the run
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{report.num_boxes} boxes at input size {args.input_size}")
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
    print(f"wrote {args.output}")
    if args.num_anchors == DEFAULT_NUM_ANCHORS:
        print(f"train with it: train.py --anchors {args.output} --img-size {args.input_size}")
    else:
        print(
            f"note: YOLOv4-tiny's heads use {DEFAULT_NUM_ANCHORS} anchors: train.py needs a "
            f"{DEFAULT_NUM_ANCHORS}-anchor file"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
