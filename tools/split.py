"""Command line: split a custom VOC-format dataset into train / val / test image sets.

Usage: ``python -m tools.split --folder my_voc/VOC2007 --ratios 0.7,0.1,0.2``
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from data.options import DataOptions
from data.split import (
    DEFAULT_RATIOS,
    DEFAULT_SEED,
    SPLIT_NAMES,
    dataset_folder,
    format_counts,
    ratios_problem,
    split_dataset,
)
from utils.classes import read_class_names
from utils.config import CommandParser, add_options, argument_group, run_cli
from utils.errors import UserError
from utils.paths import OutputRefusedError, write_failure


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.7,0.1,0.2"`` -> ``(0.7, 0.1, 0.2)``; argparse reports (exit code 2) ratios that
    ``data.split.ratios_problem`` refuses: not three finite numbers >= 0 summing to 1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"ratios must be numbers: {text!r}") from err
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST, got {text!r}")
    problem = ratios_problem(values)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: ratios {problem}")
    return values  # type: ignore[return-value]


def parse_seed(text: str) -> int:
    """A permutation seed: an integer >= 0 (what ``numpy.random.default_rng`` accepts)."""
    try:
        seed = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"seed must be an integer: {text!r}") from err
    if seed < 0:
        raise argparse.ArgumentTypeError(f"seed must be >= 0: {text!r}")
    return seed


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m tools.split",
        description="Split a VOC-format dataset into train/val/test and write "
        "ImageSets/Main/{train,val,trainval,test}.txt; print instances per class and split.",
    )
    add_options(
        parser,
        DataOptions,
        include=("voc_root", "classes"),
        helps={
            "voc_root": "folder holding VOC<year>/ used with --year",
            "classes": "class names file, one per line (default: every name found in the XMLs)",
        },
    )
    source = argument_group(parser, "data").add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--year",
        help="split <voc-root>/VOC<year>, e.g. custom for VOCcustom/ (required unless --folder)",
    )
    source.add_argument(
        "--folder",
        help="split this folder, which holds Annotations/ and JPEGImages/ (required unless --year)",
    )
    parser.add_argument(
        "--ratios",
        type=parse_ratios,
        default=DEFAULT_RATIOS,
        help="TRAIN,VAL,TEST fractions, each >= 0, summing to 1 (default: 0.7,0.1,0.2)",
    )
    parser.add_argument(
        "--seed", type=parse_seed, default=DEFAULT_SEED, help="seed of the shuffle (default: 0)"
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite existing ImageSets/Main/*.txt files"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    folder = dataset_folder(args.folder or args.voc_root, None if args.folder else args.year)
    class_names = read_class_names(args.classes) if args.classes else None
    try:
        result = split_dataset(folder, args.ratios, args.seed, class_names, args.force)
    except FileExistsError:  # image-set lists already there, and no --force
        main_dir = folder / "ImageSets" / "Main"
        existing = [main_dir / f"{n}.txt" for n in SPLIT_NAMES if (main_dir / f"{n}.txt").exists()]
        raise OutputRefusedError(
            f"{', '.join(map(str, existing))}: already exist(s); pass --force to replace them"
        ) from None
    except OSError as err:
        if isinstance(err, (UserError, FileNotFoundError)):  # already says what and exits so
            raise
        raise write_failure(err, folder / "ImageSets" / "Main") from None  # permissions, disk
    print(
        f"wrote {folder / 'ImageSets' / 'Main'}/{{{','.join(SPLIT_NAMES)}}}.txt (seed {args.seed})"
    )
    print(format_counts(result))
    if result.issues:
        print(f"{len(result.issues)} file issue(s) logged above")
    return 0


if __name__ == "__main__":
    run_cli(main)
