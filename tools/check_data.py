"""Command line: check a dataset file by file, and what training will do about each problem.

Usage: ``python -m tools.check_data --voc-root data/VOCdevkit --sets 2007:trainval,2012:trainval``
(add ``--classes FILE``; ``--annotations FILE`` for reference-implementation lines instead;
``--labels PATH`` for labels in any format train.py reads: a COCO JSON, a YOLO folder or data
YAML, a VOC folder, annotation lines). It prints one line per kind of issue, with its count and
first files; ``--verbose`` lists every issue, one line each.

Exit status: 0 when training reads every file; 1 when it would leave a file or image out, or
would refuse the data set (no images, none readable, no object of its classes); 2 when a path
or file cannot be used at all.
"""

from __future__ import annotations

import argparse
import os

from data.annotation_lines import load_annotation_lines
from data.check import (
    check_images,
    summarize,
)
from data.dataset import quick_check
from data.formats import LabelSource
from data.options import DataOptions
from data.voc import (
    LoadResult,
    discover_classes,
    load_voc,
    parse_sets,
)
from utils.classes import read_class_names
from utils.config import CommandParser, add_options, argument_group, run_cli
from utils.errors import FailedError, InputError


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="python -m tools.check_data",
        description="Check a dataset (VOC, COCO, YOLO or annotation lines) file by file",
    )
    add_options(
        p,
        DataOptions,
        include=("voc_root", "sets", "classes", "labels", "label_format", "split", "images"),
        helps={
            "classes": "classes file (default: the labels' own names; for VOC, those used in "
            "the XMLs)",
            "labels": "labels in any format train.py reads (COCO JSON, YOLO folder or data "
            "YAML, VOC folder, annotation lines), instead of --voc-root/--sets",
            "label_format": "format of --labels",
            "split": "split of --labels to check (default: all)",
            "images": "images folder of COCO --labels (default: found next to the JSON)",
        },
    )
    argument_group(p, "data").add_argument(
        "--annotations", default=None, help="reference-style annotation lines file"
    )
    p.add_argument("--quick", action="store_true", help="skip decoding the images")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="list every issue, one line each (default: one line per kind of issue)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="decoding threads, at least 1 (default: the CPU count)",
    )
    return p


def load_labels(args: argparse.Namespace) -> LoadResult:
    """The labels ``args`` name (``--labels``, ``--annotations`` or VOC image sets), read as
    training reads them; what the readers skipped or repaired is in ``issues``."""
    sets = parse_sets(args.sets)
    if args.annotations and os.path.isdir(args.annotations):
        raise InputError(
            f"--annotations {args.annotations}: is a folder, not an annotation "
            "lines file (--labels reads a labels folder)"
        )
    names = read_class_names(args.classes) if args.classes else None
    if args.labels:
        source = LabelSource(args.labels, args.label_format, args.split, args.images)
        result = source.load(names)
        print(f"{source.describe()}: classes {', '.join(result.class_names)}")
        return result
    if args.annotations:
        if names is None:
            raise InputError("--annotations needs --classes")
        return load_annotation_lines(args.annotations, len(names))
    if names is None:
        names = discover_classes(args.voc_root, sets)
        print(f"classes found in the XMLs ({len(names)}): {', '.join(names)}")
    return load_voc(args.voc_root, sets, names)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:  # the images are decoded in a pool of this many threads
        raise InputError(f"--workers {args.workers}: must be >= 1 decoding thread")
    result = load_labels(args)  # a bad path, format or classes file: exit 2
    issues = list(result.issues)
    if not args.quick:
        issues += check_images(result.annotations, args.workers)
    if args.verbose:
        for issue in issues:
            print(issue)
    print(f"{len(result.annotations)} annotated images; " + summarize(issues))
    # the data sets train.py refuses before it starts fail the check too
    what = args.labels or args.annotations or f"{args.voc_root} {args.sets}"
    if not quick_check(result.annotations)[0]:
        count = len(result.annotations)
        why = f"none of the {count} images can be read" if count else "no images"
        raise FailedError(f"{what}: {why}: train.py would stop")
    if not any(len(a.labels) for a in result.annotations):
        print("no object of these classes in any image: train.py would stop (--classes?)")
        return 1
    if not any((~a.difficult).any() for a in result.annotations):
        print("every object is marked difficult: train.py would stop without --include-difficult")
        return 1
    # 1 when training will leave a file or an image out (not for repaired boxes or objects)
    return 1 if any(i.action in ("skipped", "image skipped") for i in issues) else 0


if __name__ == "__main__":
    run_cli(main)
