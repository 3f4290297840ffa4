"""Command line: check a VOC-format dataset file by file, and what training will do about
each problem.

Usage: ``python -m tools.check_data --voc-root data/VOCdevkit --sets 2007:trainval,2012:trainval``
(add ``--classes FILE``; ``--annotations FILE`` for reference-implementation lines instead).
"""

from __future__ import annotations

import argparse
import os
import sys

from data.annotation_lines import load_annotation_lines
from data.check import (
    check_images,
    summarize,
)
from data.voc import (
    LoadResult,
    discover_classes,
    load_voc,
    parse_sets,
)
from utils.classes import read_class_names
from utils.config import HelpFormatter
from utils.paths import VOC_ROOT


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Check a VOC-format dataset file by file", formatter_class=HelpFormatter
    )
    p.add_argument("--voc-root", default=VOC_ROOT, help="folder holding VOC<year>/")
    p.add_argument("--sets", default="2007:trainval,2012:trainval", help="YEAR:SET,...")
    p.add_argument("--classes", default=None, help="classes file (default: discover from XMLs)")
    p.add_argument("--annotations", default=None, help="reference-style annotation lines file")
    p.add_argument("--quick", action="store_true", help="skip decoding the images")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="decoding threads (default: the CPU count)",
    )
    args = p.parse_args(argv)
    try:
        sets = parse_sets(args.sets)
        names = read_class_names(args.classes) if args.classes else None
        if args.annotations:
            if names is None:
                p.error("--annotations needs --classes")
            result = load_annotation_lines(args.annotations, len(names))
        else:
            if names is None:
                names = discover_classes(args.voc_root, sets)
                print(f"classes found in the XMLs ({len(names)}): {', '.join(names)}")
            result: LoadResult = load_voc(args.voc_root, sets, names)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    issues = list(result.issues)
    if not args.quick:
        issues += check_images(result.annotations, args.workers)
    for issue in issues:
        print(issue)
    print(f"{len(result.annotations)} annotated images; " + summarize(issues))
    return 1 if any(i.action == "skipped" for i in issues) else 0


if __name__ == "__main__":
    sys.exit(main())
