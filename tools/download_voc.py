"""Setup step: download, verify and unpack Pascal VOC 2007 trainval/test and 2012 trainval.

Usage: ``python -m tools.download_voc --dest data``
"""

from __future__ import annotations

import argparse
import logging
import sys
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
from utils.config import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.download_voc",
        formatter_class=HelpFormatter,
        description="Download Pascal VOC tarballs, verify their MD5 and extract them into "
        "<dest>/VOCdevkit. Interrupted downloads resume; finished sets are skipped.",
    )
    parser.add_argument(
        "--sets",
        default=",".join(DEFAULT_SETS),
        help=f"comma-separated sets to fetch, from {', '.join(VOC_TARS)} (default: all three)",
    )
    parser.add_argument(
        "--dest",
        default="data",
        help="extraction root: the data lands in DEST/VOCdevkit/VOC<year> (default: data)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where the tarballs are downloaded (default: DEST/VOCdevkit/downloads)",
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
    try:
        sets = parse_voc_sets(args.sets)
        results = prepare_voc(
            sets,
            dest=args.dest,
            cache_dir=args.cache_dir,
            mirror=args.mirror,
            delete_tars=args.delete_tars,
            progress=not args.quiet,
        )
    except (OSError, ValueError, RuntimeError, tarfile.TarError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for result in results:
        print(f"{result.name}: {result.action} ({result.tar_path.name})")
    print(f"VOC data is in {Path(args.dest) / 'VOCdevkit'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
