"""Setup step: download, verify and unpack Pascal VOC 2007 trainval/test and 2012 trainval.

Usage: ``python -m tools.download_voc --out data``
"""

from __future__ import annotations

import argparse
import logging
import tarfile
from collections.abc import Sequence
from pathlib import Path

from data.download import (
    DEFAULT_MIRROR,
    DEFAULT_SETS,
    VOC_TARS,
    parse_voc_sets,
    prepare_voc,
)
from data.options import DataOptions
from utils.config import CommandParser, add_alias, add_options, run_cli
from utils.errors import FailedError, UserError
from utils.paths import check_output_path


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="python -m tools.download_voc",
        description="Download Pascal VOC tarballs, verify their MD5 and extract them into "
        "<out>/VOCdevkit. Interrupted downloads resume; finished sets are skipped.",
    )
    add_options(
        parser,
        DataOptions,
        include=("sets",),
        defaults={"sets": ",".join(DEFAULT_SETS)},
        helps={"sets": f"comma-separated sets to fetch, from {', '.join(VOC_TARS)}"},
    )
    parser.add_argument(
        "--out",
        default="data",
        help="extraction root: the data lands in OUT/VOCdevkit/VOC<year> (default: data)",
    )
    add_alias(parser, "--dest", "--out")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where the tarballs are downloaded (default: OUT/VOCdevkit/downloads)",
    )
    parser.add_argument(
        "--mirror",
        default=DEFAULT_MIRROR,
        help=f"URL base holding the official tarball names (default: {DEFAULT_MIRROR})",
    )
    parser.add_argument(
        "--delete-tars",
        action="store_true",
        help="delete each tarball after its verified extraction (saves about 3.6 GB)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sets = parse_voc_sets(args.sets)  # an unknown set: exit 2
    check_output_path(args.out, folder=True)  # before the network: exit 2
    if args.cache_dir is not None:
        check_output_path(args.cache_dir, folder=True)
    try:
        results = prepare_voc(
            sets,
            dest=args.out,
            cache_dir=args.cache_dir,
            mirror=args.mirror,
            delete_tars=args.delete_tars,
            progress=not args.quiet,
        )
    except (OSError, RuntimeError, tarfile.TarError) as err:
        if isinstance(err, UserError):  # a checksum mismatch, an unsafe archive
            raise
        raise FailedError(str(err)) from err  # the network, the disk or a broken tarball
    for result in results:
        print(f"{result.name}: {result.action} ({result.tar_path.name})")
    print(f"VOC data is in {Path(args.out) / 'VOCdevkit'}/")
    return 0


if __name__ == "__main__":
    run_cli(main)
