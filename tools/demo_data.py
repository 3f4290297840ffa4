"""Command line: generate the synthetic demo data set (seconds).

Usage: ``python -m tools.demo_data --out data/demo``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from data.demo import (
    CLASS_NAMES,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_NUM_IMAGES,
    DEMO_ROOT,
    YEAR,
    demo_is_current,
    generate_demo,
)
from data.voc import class_counts, load_voc
from utils.config import CommandParser, run_cli
from utils.paths import OutputRefusedError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The CLI's flags (``argv`` defaults to ``sys.argv[1:]``)."""
    parser = CommandParser(
        prog="python -m tools.demo_data",
        description="Generate a small synthetic shapes dataset in the VOCdevkit layout.",
    )
    parser.add_argument("--out", type=Path, default=DEMO_ROOT, help="output folder")
    parser.add_argument(
        "--num-images", type=int, default=DEFAULT_NUM_IMAGES, help="images to generate"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds every image; a seed gives the same files"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=list(DEFAULT_IMAGE_SIZE),
        metavar=("MIN", "MAX"),
        help="range of the image width and height in pixels",
    )
    parser.add_argument(
        "--force", action="store_true", help="regenerate even when the output is current"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Generates the dataset unless it is current, then prints where it is and its counts.

    Raises:
        InputError: bad arguments (exit 2).
        OutputRefusedError: the output folder holds another dataset (exit 2).
    """
    args = parse_args(argv)
    image_size = (args.image_size[0], args.image_size[1])
    if not args.force and demo_is_current(args.out, args.num_images, args.seed, image_size):
        print(
            f"{args.out}: already generated with these parameters, nothing to do"
            " (--force regenerates)"
        )
    else:
        try:
            generate_demo(args.out, args.num_images, args.seed, image_size)
        except FileExistsError as err:  # another data set there: refused before any write
            raise OutputRefusedError(str(err)) from None
        print(f"wrote {args.num_images} images to {args.out / 'VOCdevkit' / f'VOC{YEAR}'}")
    devkit = args.out / "VOCdevkit"
    for image_set in ("trainval", "test"):
        result = load_voc(devkit, [(YEAR, image_set)], CLASS_NAMES)
        counts = class_counts(result.annotations, CLASS_NAMES)
        difficult = sum(int(a.difficult.sum()) for a in result.annotations)
        per_class = ", ".join(f"{name} {n}" for name, n in counts.items())
        print(
            f"  {image_set}: {len(result.annotations)} images, {per_class} ({difficult} difficult)"
        )
    print(f"  voc root: {devkit}  classes: {args.out / 'classes.txt'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
