"""Convert detection labels between Pascal VOC XML, COCO JSON and YOLO txt.

Examples:
    python -m tools.convert_labels data/coco/annotations/instances_val.json --to yolo --out data/y
    python -m tools.convert_labels data/y --split val --to voc --out data/voc_val
    python -m tools.convert_labels my_voc/VOC2007 --split trainval --to coco --out data/c
    python -m tools.convert_labels 2007_train.txt --to voc --out data/v --classes classes.txt

SRC is read in any format (``data.formats.detect_format``; --from names it when the path does
not tell). OUT is a complete data set: the images are hard-linked (or copied) next to the labels
in the layout each format expects, ready for train.py --train-labels OUT. Boxes, labels,
image sizes and class names carry over exactly; difficult flags too except into YOLO, which has
none (COCO keeps them as iscrowd). Per-file problems are printed with what was done (one line
per kind of problem when there are more than a few); image names that are not plain file names
are written under a safe one (printed). A class list (--classes) that leaves out every object
of SRC is refused.

OUT never is, contains or lies inside SRC, --images, --classes or a folder of the source's
images. OUT may hold other splits (they stay), but a file of this conversion that exists with
other content is replaced only with --force; a conversion that would write no image is an
error, and nothing is written before every check has passed.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Callable

from data.formats import LABEL_FORMATS, WRITE_FORMATS, LabelSource, convert_labels
from data.label_io import LabelSet
from data.options import DataOptions
from data.voc import FileIssue, summarize_issues
from utils.classes import read_class_names
from utils.config import CommandParser, add_options, run_cli
from utils.errors import InputError, UserError
from utils.paths import (
    VOC_CLASSES,
    check_apart,
    check_output_path,
    write_failure,
)


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m tools.convert_labels", description=__doc__)
    p.add_argument("src", metavar="SRC", help="labels to read: a folder, .json, .yaml or .txt")
    p.add_argument("--to", required=True, choices=WRITE_FORMATS, help="format to write (required)")
    p.add_argument("--out", required=True, help="folder to write the data set into (required)")
    p.add_argument(
        "--from",
        dest="fmt",
        default="auto",
        choices=LABEL_FORMATS,
        help="format of SRC (default: detected from the path)",
    )
    add_options(
        p,
        DataOptions,
        include=("images", "classes", "split"),
        helps={
            "images": "images folder of a COCO SRC (default: found next to the JSON, see "
            "train.py --help --train-images)",
            "classes": "class names, one per line: the names of the ids for sources without "
            "names (annotation lines: default VOC's 20; YOLO without classes.txt or data "
            "YAML), else the class order to write, matched by name (default: the source's own)",
            "split": "split to read where SRC has several (a VOC image set, a YOLO "
            "images/<split> folder or data-YAML key; default: all of SRC) and its name in OUT "
            "(default: the source's own split name, else 'all')",
        },
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace files in OUT that this conversion writes with other content (default: "
        "refused, nothing written); never deletes files, never writes into an input",
    )
    return p


# how the readers word an object left out for its class: the name (or id) and the objects
_CLASS_DROPS = (
    re.compile(r"unknown class (?P<name>.+)"),  # VOC XML, per object
    re.compile(r"class (?P<name>.+) is not one of the \d+ classes .*; (?P<count>\d+) objects"),
    re.compile(r"class (?P<name>id \S+) (is not one of|out of range).*"),  # YOLO, lines
)
MAX_ISSUE_LINES = 10  # more issues than this are printed one line per kind


def class_drops(issues: list[FileIssue]) -> Counter[str]:
    """Objects left out because their class is not in the class list, per class name (quoted)
    or class id."""
    counts: Counter[str] = Counter()
    for issue in issues:
        for pattern in _CLASS_DROPS:
            if match := pattern.fullmatch(issue.problem):
                counts[match["name"]] += int(match.groupdict().get("count") or 1)
                break
    return counts


def refuse_all_dropped(classes_file: str) -> Callable[[LabelSet], None]:
    """A check for ``convert_labels``: InputError, before anything is written, when the class
    list leaves out every object of the source (a wrong classes file, not a data set without
    objects); some objects left out are reported, not refused."""

    def check(labels: LabelSet) -> None:
        drops = class_drops(labels.issues)
        if labels.num_objects or not drops:
            return
        shown = ", ".join(f"{name} ({count})" for name, count in drops.most_common(5))
        more = f" and {len(drops) - 5} more" if len(drops) > 5 else ""
        names = labels.class_names
        listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise InputError(
            f"--classes {classes_file}: none of the {sum(drops.values())} objects of "
            f"{labels.source} is of its {len(names)} class{'es' if len(names) != 1 else ''} "
            f"({listed}); found {shown}{more}; nothing was written"
        )

    return check


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_output_path(args.out, folder=True)
    kind = LabelSource(args.src, args.fmt).kind  # an unknown source first: the likelier slip
    check_apart(args.out, [args.src, args.images or "", args.classes or ""], flag="--out")
    names = read_class_names(args.classes) if args.classes else None
    classes_file = args.classes
    if names is None and kind == "lines":
        names, classes_file = read_class_names(VOC_CLASSES), VOC_CLASSES
        print(f"note: annotation lines hold class ids only: using {VOC_CLASSES} (--classes)")
    try:
        labels, report = convert_labels(
            args.src,
            args.to,
            args.out,
            fmt=args.fmt,
            images=args.images,
            class_names=names,
            split=args.split,
            overwrite=args.force,
            check=refuse_all_dropped(classes_file) if names is not None else None,
        )
    except OSError as err:
        if isinstance(err, (UserError, FileNotFoundError)):  # already says what and exits so
            raise
        raise write_failure(err, args.out) from None  # disk full or permissions, mid-write
    print(
        f"read {len(labels.annotations)} images, {labels.num_objects} objects, "
        f"{len(labels.class_names)} classes ({', '.join(labels.class_names)}) from "
        f"{labels.source} ({labels.format})"
    )
    issues = labels.issues + report.issues
    if len(issues) <= MAX_ISSUE_LINES:
        for issue in issues:
            print(f"  {issue}")
    else:
        for line in summarize_issues(issues):
            print(f"  {line}")
    per_image = f", {report.label_files} label files" if report.label_files else ""
    print(
        f"wrote {report.images} images{per_image}, {report.objects} objects as "
        f"{report.format} into {report.out}:"
    )
    for path in report.files:
        print(f"  {path}")
    for note in report.notes:
        print(f"note: {note}")
    if issues:
        print(f"{len(issues)} file issue(s) above: those files were skipped or repaired")
    return 0


if __name__ == "__main__":
    run_cli(main)
