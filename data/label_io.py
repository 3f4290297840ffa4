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
import filecmp
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image

from data.voc import Annotation, FileIssue, LoadResult, unsafe_name_problem
from utils import textfile
from utils.classes import class_name_problem, read_class_names
from utils.errors import InputError
from utils.paths import (
    OutputRefusedError,
    safe_component,
    unique_components,
    write_failure,
    write_text_atomic,
)
from utils.sources import ImageReadError, read_image

# a coordinate this close outside the image is float noise: clipped without a report
EDGE_TOLERANCE = 1e-6


class LabelFormatError(InputError):
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
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    size: tuple[int, int],
    *,
    clip_boxes: bool = True,
) -> tuple[tuple[float, float, float, float] | None, str | None, str]:
    """A continuous box (edges x1 < x2 in [0, W]) as pixel indices, checked against the image.

    ``clip_boxes=False`` (ground truth for scoring) keeps a box that reaches outside the image
    as written, reported as "scored as given": the official evaluators do not clip, and
    clipping would change IoU and so the metric.

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
    if clip_boxes or not outside:  # within the tolerance: float noise, clipped silently
        x1, x2 = min(max(x1, 0.0), float(width)), min(max(x2, 0.0), float(width))
        y1, y2 = min(max(y1, 0.0), float(height)), min(max(y2, 0.0), float(height))
    # a one-pixel box written as normalised YOLO numbers reads back a hair under one pixel
    if x2 - x1 < 1.0 - EDGE_TOLERANCE or y2 - y1 < 1.0 - EDGE_TOLERANCE:
        if outside:
            return None, "lies outside the image", "box dropped"
        return None, "is less than one pixel wide or high", "box dropped"
    box = (x1, y1, max(x2 - 1.0, x1), max(y2 - 1.0, y1))
    action = "box clipped" if clip_boxes else "scored as given"
    return box, ("reaches outside the image" if outside else None), action


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
    """``values`` as finite floats (bools refused: JSON ``true`` is not a coordinate; integers
    too large for a float too), or None."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        try:
            value = float(v)
        except OverflowError:
            return None
        if not math.isfinite(value):
            return None
        out.append(value)
    return out


def brief(value: object, limit: int = 60) -> str:
    """``value`` for an error message: the repr of a number, string or short flat list, cut to
    ``limit`` characters; "a list of N items" or "an object" for anything bigger or nested (a
    label file's value can be megabytes long or nested a thousand deep)."""
    if isinstance(value, list):
        if len(value) <= 8 and all(
            v is None or isinstance(v, (bool, int, float, str)) for v in value
        ):
            text = "[" + ", ".join(brief(v, limit) for v in value) + "]"
        else:
            return f"a list of {len(value)} items"
    elif isinstance(value, dict):
        return "an object"
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        return "a very large integer"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_user_text(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> str:
    """``utils.textfile.read_user_text`` raising ``LabelFormatError``."""
    return textfile.read_user_text(path, what, max_bytes, error=LabelFormatError)


def check_unique_ids(annotations: Sequence[Annotation], source: str) -> None:
    """Refuses two images with one image id: evaluation and detection files match images by
    id, so the second would be scored against the first one's objects.

    Raises:
        LabelFormatError: the count of such images and the first pair (``source`` named).
    """
    first: dict[str, str] = {}
    clashes: list[tuple[str, str]] = []
    for ann in annotations:
        if ann.image_id in first:
            clashes.append((first[ann.image_id], ann.image_path))
        else:
            first[ann.image_id] = ann.image_path
    if clashes:
        a, b = clashes[0]
        example = f"{a} is listed twice" if a == b else f"e.g. {a} and {b}"
        raise LabelFormatError(
            f"{source}: {len(clashes)} images have the id (file name without suffix) of another "
            f"image ({example}): give them different names"
        )


def relative_path_problem(name: str) -> str | None:
    """Why ``name`` cannot be a path inside an images folder (absolute, a drive, ``..``,
    empty), or None: an annotation file names images in its dataset, never elsewhere."""
    if not name or "\x00" in name:
        return "is empty"
    if any("\ud800" <= c <= "\udfff" for c in name):  # JSON escapes; no file has such a name
        return "is not valid text (a lone surrogate)"
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
    """Puts ``source`` at ``target`` through a temporary name and a rename: a hard link (no
    copy on the same file system), else a copy. An older ``target`` is replaced whole, never
    seen half-copied; ``source`` itself is left alone.

    Raises:
        OSError: neither worked (the temporary file is removed).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and os.path.samefile(source, target):
        return
    tmp = target.with_name(target.name + ".tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# characters no output name keeps, beyond what ``safe_component`` replaces: lone surrogates
# (undecodable bytes of a file name) and the two non-characters, which UTF-8 files, XML and
# YAML cannot hold
_NOT_WRITABLE = re.compile("[\ud800-\udfff\ufffe\uffff]")


def _image_suffix(image_path: str) -> str:
    """The image's suffix when it is a plain one (``.jpg``), else none."""
    suffix = Path(image_path).suffix
    return suffix if suffix[1:].isascii() and suffix[1:].isalnum() and len(suffix) <= 8 else ""


def output_image_names(
    annotations: Sequence[Annotation], issues: list[FileIssue], *, spaces: bool = True
) -> list[tuple[Annotation, str]]:
    """Each annotation with the file name its image gets in an output folder, its
    ``image_id`` replaced by that name's stem.

    The stem is the id made one path component by ``utils.paths.unique_components`` (no
    separators, ``..``, control characters; ids that differ only in case, as ``a.jpg`` and
    ``A.png`` or ``a.jpg`` and ``a.png``, get ``-2``, ``-3``) and the suffix the image's own.
    Each changed id is reported with the name written (the original stays the image's
    path). ``spaces=False`` replaces white space too (VOC image sets end an id at a space).
    """
    wanted = [_NOT_WRITABLE.sub("_", a.image_id) for a in annotations]
    if not spaces:
        wanted = [re.sub(r"\s", "_", w) for w in wanted]
    out = []
    for ann, want, stem in zip(annotations, wanted, unique_components(wanted)):
        if stem != ann.image_id:
            if stem == safe_component(want):
                problem = f"image id {ann.image_id!r} is not a plain file name"
            else:
                problem = f"another image is already called {safe_component(want)!r} in this split"
            issues.append(FileIssue(ann.image_path, problem, f"written as {stem!r}"))
        out.append((replace(ann, image_id=stem), stem + _image_suffix(ann.image_path)))
    return out


def check_writable_class_names(class_names: Sequence[str], source: str) -> None:
    """Refuses class names that would not read back the same: a names file holds one per
    line and readers strip them; XML, JSON and YAML cannot hold every character.

    Raises:
        LabelFormatError: an empty name, white space at either end, a control character or
            line break, a name listed twice (the name and ``source`` in the message).
    """
    seen: set[str] = set()
    for name in class_names:
        problem = class_name_problem(name) or _unwritable_name_problem(name, seen)
        if problem is not None:
            raise LabelFormatError(
                f"class name {name!r} of {source} {problem}: it cannot be written as a class "
                "name (fix the names, or give --classes)"
            )
        seen.add(name)


def _unwritable_name_problem(name: str, seen: set[str]) -> str | None:
    """What keeps a valid class name (``class_name_problem``) from being written and read
    back as itself, or None."""
    if name != name.strip():
        return "starts or ends with white space"
    if _NOT_WRITABLE.search(name):
        return "holds a character UTF-8 text cannot"
    if name in seen:
        return "is listed twice"
    return None


def nothing_to_write(labels: LabelSet, issues: Sequence[FileIssue], out: Path) -> LabelFormatError:
    """The error for a conversion without a single image to write (it writes nothing, so an
    earlier output in ``out`` stays as it was)."""
    if not labels.annotations and not labels.issues:
        why = "holds no images"
    else:
        problems = [*labels.issues, *issues]
        first = f"; first: {problems[0]}" if problems else ""
        why = f"has no image that can be written ({len(problems)} file issues{first})"
    return LabelFormatError(f"{labels.source} {why}; nothing was written to {out}")


@dataclass(frozen=True)
class OutputFile:
    """A file a writer puts into its output folder: ``text`` (UTF-8), or the image
    ``source`` placed there (hard-linked or copied). ``merged``: a file whose new content
    keeps all of the old (a names file checked equal, a data YAML that keeps other splits)."""

    path: Path
    text: str | None = None
    source: str | None = None
    merged: bool = False


def _same_content(item: OutputFile, target: Path) -> bool:
    if item.source is not None:
        return os.path.samefile(item.source, target) or filecmp.cmp(
            item.source, target, shallow=False
        )
    return target.read_bytes() == item.text.encode("utf-8")


def commit_files(
    out: Path, files: Sequence[OutputFile], *, overwrite: bool, strays: Sequence[Path] = ()
) -> None:
    """Writes ``files`` into ``out`` in the order given (writers list the images first and
    the index files that name them last, so an interrupted run leaves the old index), each
    through a temporary name and a rename; files already as they should be are left alone.

    Everything is checked before the first write: each path must resolve inside ``out``
    (also through links already in it), must not be a folder, and without ``overwrite`` no
    existing file may change (a conversion never replaces a user's files unasked, least of
    all with fewer images). ``strays`` are files already in ``out`` that would join this
    output (images in a split folder this conversion does not list): always refused, since
    nothing here deletes files.

    Raises:
        OutputRefusedError: one line naming the first offending file and what to do
            instead; nothing was written then.
        OutputPathError: a write that failed midway (disk full), naming its file.
    """
    root = Path(os.path.realpath(out))
    changed, targets = [], set()
    for item in files:
        target = Path(os.path.realpath(item.path))
        if target != root and root not in target.parents:
            raise OutputRefusedError(f"{item.path}: lies outside the output folder {out}")
        if str(target).casefold() in targets:  # one file would hold two of this output's
            raise OutputRefusedError(f"{item.path}: two files of this output share the name")
        targets.add(str(target).casefold())
        if target.is_dir():
            raise OutputRefusedError(f"{item.path}: is a folder, a file goes there")
        if target.exists() and not item.merged:
            try:
                same = _same_content(item, target)
            except OSError as err:
                raise write_failure(err, item.path) from None
            if not same:
                changed.append(item.path)
    if strays:
        raise OutputRefusedError(
            f"{strays[0]}: already in {out} and would join this output ({len(strays)} such "
            "files); remove them or choose another --out"
        )
    if changed and not overwrite:
        raise OutputRefusedError(
            f"{changed[0]}: already in {out} with other content ({len(changed)} such files); "
            "--force replaces them, or choose another --out"
        )
    for item in files:
        target = Path(item.path)
        try:
            if item.source is not None:
                place_image(item.source, target)
            elif not target.is_file() or not _same_content(item, target):
                write_text_atomic(target, item.text)
        except OSError as err:
            raise write_failure(err, target) from None


def known_size(ann: Annotation, issues: list[FileIssue]) -> tuple[int, int] | None:
    """The image's size for a writer, read from its header (writers place the image, so it
    is read anyway); None, with an issue ("image skipped"), when the image cannot be read or
    its size is not the one the labels give: the boxes were written in the labels' frame or
    the image's, and written out either way they would be wrong in one of them."""
    try:
        size = read_image_size(ann.image_path)
    except ImageReadError as err:
        issues.append(
            FileIssue(ann.image_path, str(err).removeprefix(f"{ann.image_path}: "), "image skipped")
        )
        return None
    if ann.width > 0 and ann.height > 0 and (ann.width, ann.height) != size:
        issues.append(
            FileIssue(
                ann.image_path,
                f"the labels give the size {ann.width}x{ann.height} but the image is "
                f"{size[0]}x{size[1]} (which one the boxes are in is unknown)",
                "image skipped",
            )
        )
        return None
    return size


def begin_write(labels: LabelSet, out: Path, split: str, format: str) -> WriteReport:
    """The checks every writer makes before it looks at an image, and its empty report.

    Raises:
        LabelFormatError: a split name that is not a plain file name (``check_split_name``),
            class names that cannot be written (``check_writable_class_names``).
    """
    check_split_name(split)
    check_writable_class_names(labels.class_names, labels.source)
    return WriteReport(format, out)


@dataclass(frozen=True)
class PlacedImage:
    """An image a writer places: its annotation (``image_id`` made a file name stem), its
    file name, the size read from it, and the image file to place."""

    ann: Annotation
    filename: str
    size: tuple[int, int]
    file: OutputFile


def place_images(
    labels: LabelSet, report: WriteReport, folder: Path, *, spaces: bool = True
) -> list[PlacedImage]:
    """The images a writer puts into ``folder``: each annotation whose image size is known
    (``known_size``), named by ``output_image_names`` (``spaces``: see there). What is left
    out goes to ``report.issues``; ``report.images`` counts the rest.

    Raises:
        LabelFormatError: not one image can be written (``nothing_to_write``).
    """
    placed = []
    for ann, filename in output_image_names(labels.annotations, report.issues, spaces=spaces):
        size = known_size(ann, report.issues)
        if size is not None:
            file = OutputFile(folder / filename, source=ann.image_path)
            placed.append(PlacedImage(ann, filename, size, file))
    if not placed:
        raise nothing_to_write(labels, report.issues, report.out)
    report.images += len(placed)
    return placed


def check_split_name(split: str) -> None:
    """A split name becomes a file or folder name in the output: it must be one that
    ``utils.paths.safe_component`` leaves as it is (refused, not rewritten, so that the user
    sees where the output goes).

    Raises:
        LabelFormatError: it is not a plain file name (or is longer than 200 bytes).
    """
    if (problem := unsafe_name_problem(split)) is not None:
        raise LabelFormatError(f"split name {split!r} {problem}")
    if safe_component(split, fallback="") != split:
        raise LabelFormatError(
            f"split name {split!r} is not a plain file name; e.g. {safe_component(split)!r}"
        )


def check_names_file(path: Path, class_names: Sequence[str]) -> None:
    """Refuses to write over a names file listing other classes: a folder holding two splits
    must index one class list.

    Raises:
        LabelFormatError: ``path`` exists with other names (both lists in the message), or
            cannot be read as a classes file (``utils.classes.read_class_names``).
    """
    if not path.is_file():
        return
    try:
        existing = read_class_names(path)
    except ValueError as err:  # unreadable, or a blank line between names: ids it would shift
        raise LabelFormatError(str(err)) from None
    if existing != list(class_names):
        raise LabelFormatError(
            f"{path} lists other classes ({', '.join(existing)}) than these labels "
            f"({', '.join(class_names)}): write into another folder"
        )
