"""What the label readers and writers of ``data.formats`` share: the ``LabelSet`` they pass
around, the one box convention, image headers, number formatting and image placement.

Boxes inside the project are VOC's (``data.voc``): float32 xyxy 0-based pixel indices, x2 the
index of the last pixel the box covers. COCO and YOLO boxes are continuous: a box from x to
x + w covers w pixels, so x1 = x and x2 = x + w - 1 (the VOC metric's width x2 - x1 + 1 is w
again). A continuous box narrower than one pixel has no last pixel and is dropped. The image
spans [0, W] continuously, [0, W - 1] in pixel indices: one rule both ways, so no coordinate
is lost to the change of convention.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image

from data.voc import Annotation, FileIssue, LoadResult, unsafe_name_problem
from utils.sources import ImageReadError, read_image

# a coordinate this close outside the image is float noise: clipped without a report
EDGE_TOLERANCE = 1e-6


class LabelFormatError(ValueError):
    """A labels path that cannot be used at all: unknown or ambiguous format, an annotation
    file that does not parse, a missing split or class names. The message names the path."""


@dataclass
class LabelSet:
    """Annotations read from one labels path, the class names their labels index, and the
    problems found on the way.

    ``split`` is the split's own name where the source has one (a COCO file's, a YOLO
    ``images/<split>`` folder's, a VOC image set's); writers use it to name theirs.
    """

    annotations: list[Annotation]
    issues: list[FileIssue]
    class_names: list[str]
    source: str
    format: str
    split: str | None = None

    @property
    def result(self) -> LoadResult:
        return LoadResult(self.annotations, self.issues)

    @property
    def num_objects(self) -> int:
        return sum(len(a.labels) for a in self.annotations)


@dataclass
class WriteReport:
    """What a writer wrote: the index files (annotation JSON, image set, names, data YAML),
    how many images and per-image label files, and what the format could not hold."""

    format: str
    out: Path
    files: list[Path] = field(default_factory=list)
    images: int = 0
    objects: int = 0
    label_files: int = 0
    issues: list[FileIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of the stored pixels (no EXIF rotation, as training reads them),
    from the file header where Pillow knows the format, else by decoding it.

    Raises:
        ImageReadError: missing file or not an image (the message names it).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: image missing")
    try:
        with Image.open(path) as image:
            width, height = image.size
        if width > 0 and height > 0:
            return int(width), int(height)
    except (OSError, ValueError, Image.DecompressionBombError):
        pass  # a format Pillow does not know (or a damaged header): decode as training does
    image = read_image(path, apply_exif=False)
    return int(image.shape[1]), int(image.shape[0])


def continuous_box(
    x1: float, y1: float, x2: float, y2: float, size: tuple[int, int]
) -> tuple[tuple[float, float, float, float] | None, str | None, str]:
    """A continuous box (edges x1 < x2 in [0, W]) as pixel indices, checked against the image.

    Returns:
        ``(box or None, problem or None, action)``: a box reaching more than
        ``EDGE_TOLERANCE`` outside the image is clipped and reported ("box clipped"); one with
        no area, or less than one pixel wide or high (after clipping), is dropped.
    """
    width, height = size
    if not (x2 > x1 and y2 > y1):
        return None, "has no area", "box dropped"
    outside = x1 < -EDGE_TOLERANCE or y1 < -EDGE_TOLERANCE
    outside |= x2 > width + EDGE_TOLERANCE or y2 > height + EDGE_TOLERANCE
    x1, x2 = min(max(x1, 0.0), float(width)), min(max(x2, 0.0), float(width))
    y1, y2 = min(max(y1, 0.0), float(height)), min(max(y2, 0.0), float(height))
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        if outside:
            return None, "lies outside the image", "box dropped"
        return None, "is less than one pixel wide or high", "box dropped"
    box = (x1, y1, x2 - 1.0, y2 - 1.0)
    return box, ("reaches outside the image" if outside else None), "box clipped"


def continuous_edges(box: Sequence[float]) -> tuple[float, float, float, float]:
    """Pixel-index box -> continuous edges (float64, exact for float32 input)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1, y1, x2 + 1.0, y2 + 1.0


def annotation(
    image_path: str,
    image_id: str,
    rows: Sequence[tuple[tuple[float, float, float, float], int, bool]],
    size: tuple[int, int],
) -> Annotation:
    """An ``Annotation`` from ``(box, label, difficult)`` rows."""
    return Annotation(
        image_path,
        image_id,
        np.array([r[0] for r in rows], np.float32).reshape(-1, 4),
        np.array([r[1] for r in rows], np.int64),
        np.array([r[2] for r in rows], bool),
        int(size[0]),
        int(size[1]),
    )


def number_text(value: float) -> str:
    """An integer-valued coordinate as an integer, any other as Python's shortest repr, which
    reads back to the same float64 (and so to the same float32)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def json_number(value: float) -> int | float:
    """``number_text`` for JSON: integers stay integers."""
    value = float(value)
    return int(value) if value.is_integer() else value


def finite_numbers(values: Sequence[object]) -> list[float] | None:
    """``values`` as finite floats (bools refused: JSON ``true`` is not a coordinate), or None."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        out.append(float(v))
    return out


def relative_path_problem(name: str) -> str | None:
    """Why ``name`` cannot be a path inside an images folder (absolute, a drive, ``..``,
    empty), or None: an annotation file names images in its dataset, never elsewhere."""
    if not name or "\x00" in name:
        return "is empty"
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        return "is an absolute path"
    if ".." in posix.parts or ".." in windows.parts:
        return "leaves the images folder (..)"
    return None


def remap_classes(labels: LabelSet, class_names: Sequence[str]) -> LabelSet:
    """``labels`` with labels indexing ``class_names``, matched by name; objects of classes not
    in it are left out, reported once per class ("objects skipped")."""
    class_names = list(class_names)
    if labels.class_names == class_names:
        return labels
    index = {name: i for i, name in enumerate(class_names)}
    table = np.array([index.get(n, -1) for n in labels.class_names] + [-1], np.int64)
    dropped = np.zeros(len(labels.class_names) + 1, np.int64)
    annotations = []
    for ann in labels.annotations:
        new = table[ann.labels] if len(ann.labels) else ann.labels
        keep = new >= 0
        np.add.at(dropped, ann.labels[~keep], 1)
        annotations.append(
            replace(ann, boxes=ann.boxes[keep], labels=new[keep], difficult=ann.difficult[keep])
        )
    issues = list(labels.issues)
    for k, count in enumerate(dropped[:-1]):
        if count:
            name = labels.class_names[k]
            issues.append(
                FileIssue(
                    labels.source,
                    f"class {name!r} is not one of the {len(class_names)} classes "
                    f"({', '.join(class_names)}); {count} objects",
                    "objects skipped",
                )
            )
    return replace(labels, annotations=annotations, issues=issues, class_names=class_names)


def place_image(source: str | os.PathLike, target: Path) -> None:
    """Puts ``source`` at ``target``: a hard link (no copy on the same file system), else a
    copy. An older ``target`` is replaced; ``source`` itself is left alone.

    Raises:
        OSError: neither worked (the caller reports the image).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if os.path.samefile(source, target):
            return
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        with contextlib.suppress(OSError):
            target.unlink()
        shutil.copyfile(source, target)


def placed_or_reported(source: str, target: Path, issues: list) -> bool:
    """``place_image``; a failure becomes a ``FileIssue`` in ``issues`` ("image skipped")
    and False, so that a writer goes on with the next image."""
    try:
        place_image(source, target)
    except OSError as err:
        issues.append(FileIssue(source, f"cannot be copied ({err})", "image skipped"))
        return False
    return True


def output_image_names(
    annotations: Sequence[Annotation], issues: list[FileIssue]
) -> list[tuple[Annotation, str]]:
    """Each annotation with the file name its image gets in an output folder: its id plus its
    suffix. Ids that are not file names, and second images of one name, are reported and left
    out ("image skipped")."""
    taken: set[str] = set()
    out = []
    for ann in annotations:
        problem = unsafe_name_problem(ann.image_id)
        if problem is not None:
            issues.append(FileIssue(ann.image_path, f"image id {problem}", "image skipped"))
            continue
        if ann.image_id in taken:
            issues.append(
                FileIssue(
                    ann.image_path,
                    f"another image is already called {ann.image_id!r} in this split",
                    "image skipped",
                )
            )
            continue
        taken.add(ann.image_id)
        out.append((ann, ann.image_id + Path(ann.image_path).suffix))
    return out


def known_size(ann: Annotation, issues: list[FileIssue]) -> tuple[int, int] | None:
    """The annotation's image size, read from the image header when it has none; None (and an
    issue, "image skipped") when the image cannot be read."""
    if ann.width > 0 and ann.height > 0:
        return ann.width, ann.height
    try:
        return read_image_size(ann.image_path)
    except ImageReadError as err:
        issues.append(
            FileIssue(ann.image_path, str(err).removeprefix(f"{ann.image_path}: "), "image skipped")
        )
        return None


def check_split_name(split: str) -> None:
    """A split name becomes a file or folder name in the output.

    Raises:
        LabelFormatError: it is not a plain file name.
    """
    if (problem := unsafe_name_problem(split)) is not None:
        raise LabelFormatError(f"split name {split!r} {problem}")


def check_names_file(path: Path, class_names: Sequence[str]) -> None:
    """Refuses to write over a names file listing other classes: a folder holding two splits
    must index one class list.

    Raises:
        LabelFormatError: ``path`` exists with other names (both lists in the message).
    """
    if not path.is_file():
        return
    existing = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    existing = [n for n in existing if n]
    if existing != list(class_names):
        raise LabelFormatError(
            f"{path} lists other classes ({', '.join(existing)}) than these labels "
            f"({', '.join(class_names)}): write into another folder"
        )
