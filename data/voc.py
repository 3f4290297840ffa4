"""Pascal VOC annotations: XML trees, the reference implementation's annotation lines, and
the problems found in them.

Boxes come out as float32 xyxy in 0-based pixels: a VOC XML coordinate v becomes v - 1
(VOC pixels are 1-based and inclusive, so x2 is the index of the last pixel; the VOC metric's
+1 convention measures widths as x2 - x1 + 1). ``difficult`` objects are always read and flagged;
whether training uses them is the dataset's choice.

Nothing here raises on one bad file: problems are collected as ``FileIssue`` rows (file, what,
what was done) and the file is skipped or repaired. Only an unusable setup raises (no such
folder, no such image set).

Every XML is read by ``read_xml``, which refuses document type declarations (and with them
every entity declaration, internal or external): an annotation never needs one, and entity
expansion is how a small file becomes gigabytes in memory or reads other files.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from data.xml_safe import ForbiddenXMLError, read_xml
from utils.classes import class_name_problem
from utils.errors import InputError

DEFAULT_TRAIN_SETS: tuple[tuple[str, str], ...] = (("2007", "trainval"), ("2012", "trainval"))
DEFAULT_EVAL_SETS: tuple[tuple[str, str], ...] = (("2007", "test"),)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp")


@dataclass
class Annotation:
    """One image and its objects.

    ``boxes`` (N, 4) float32 xyxy 0-based pixels; ``labels`` (N,) int64; ``difficult`` (N,) bool.
    ``width``/``height`` are the XML's ``<size>`` (0 when absent; the image decides then).
    """

    image_path: str
    image_id: str
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    width: int = 0
    height: int = 0

    @classmethod
    def empty(cls, image_path: str, image_id: str, width: int = 0, height: int = 0) -> Annotation:
        return cls(
            image_path,
            image_id,
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.int64),
            np.zeros(0, bool),
            width,
            height,
        )

    def without_difficult(self) -> Annotation:
        keep = ~self.difficult
        return Annotation(
            self.image_path,
            self.image_id,
            self.boxes[keep],
            self.labels[keep],
            self.difficult[keep],
            self.width,
            self.height,
        )


@dataclass(frozen=True)
class FileIssue:
    """A problem with one input file and what was done about it."""

    path: str
    problem: str
    # "skipped", "box dropped", "box clipped", "object skipped", "converted",
    # "treated as not difficult", "size ignored", "filename ignored"
    action: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem} ({self.action})"


def issue_kind(problem: str) -> str:
    """What kind of problem a ``FileIssue.problem`` is, without what varies from file to file
    (object index and class, quoted names, numbers, details in parentheses):
    ``"object 3 (dog) outside the image"`` -> ``"object outside the image"``."""
    problem = re.sub(r"object \d+( \([^)]*\))?", "object", problem)
    problem = re.sub(r" \(.*\)$", "", re.sub(r" \([^()]*\)", "", problem))
    problem = re.sub(r"""\s*('[^']*'|"[^"]*")""", "", problem)
    problem = re.sub(r"\d+x\d+", "WxH", problem)
    problem = re.sub(r"(?<![\w.])[-+]?\d+(\.\d*)?(e[-+]?\d+)?", "N", problem)
    return re.sub(r"N([ ,]+N)+", "N", problem)  # a box's four numbers are one N


def summarize_issues(
    issues: Sequence[FileIssue], noun: str = "issue", examples: int = 3
) -> list[str]:
    """One line per kind of issue (same action, same ``issue_kind``), most frequent first:
    its count, what was done, the kind, how many files and the first ``examples`` of them.

    ``"12 issues (box clipped): object outside the image; 9 files, e.g. a.xml, b.xml, c.xml"``.
    Lines of one file (``labels.txt:3``, ``labels.txt:7``) count as one file and are shown
    as given.
    """
    groups: dict[tuple[str, str], list[FileIssue]] = {}
    for issue in issues:
        groups.setdefault((issue.action, issue_kind(issue.problem)), []).append(issue)
    lines = []
    for (action, kind), found in sorted(groups.items(), key=lambda g: -len(g[1])):
        places = list(dict.fromkeys(i.path for i in found))
        files = len({re.sub(r":\d+$", "", p) for p in places})
        lead = ", e.g." if len(places) > examples else ":"
        lines.append(
            f"{_counted(len(found), noun)} ({action}): {kind}; {_counted(files, 'file')}{lead} "
            + ", ".join(places[:examples])
        )
    return lines


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


@dataclass
class LoadResult:
    annotations: list[Annotation] = field(default_factory=list)
    issues: list[FileIssue] = field(default_factory=list)

    def extend(self, other: LoadResult) -> None:
        self.annotations += other.annotations
        self.issues += other.issues


class UnknownClassError(InputError):
    """Raised for an unknown class name when unknown classes are errors."""


def unsafe_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be used as one file name inside a dataset folder, or None.

    Refused: the empty name, ``.`` and ``..``, and anything with a path separator (``/`` or
    ``\\`` on every platform), a Windows drive (``C:x``) or a NUL character, since joined to a
    folder such a name could point outside it.
    """
    if not name or name in (".", "..") or "\x00" in name:
        return "is not a file name"
    if PurePosixPath(name).name != name or PureWindowsPath(name).name != name:
        return "is a path, not a file name"
    return None


def parse_sets(text: str) -> list[tuple[str, str]]:
    """``"2007:trainval,2012:trainval"`` -> ``[("2007", "trainval"), ("2012", "trainval")]``."""
    sets = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        year, sep, name = item.partition(":")
        if not sep or not year or not name:
            raise InputError(f"bad image set {item!r}: expected YEAR:SET such as 2007:trainval")
        sets.append((year, name))
    if not sets:
        raise InputError(f"no image sets in {text!r}")
    return sets


def _text(node: ET.Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text else None


def _flag(text: str | None) -> bool | None:
    """A VOC 0/1 flag: False when absent or empty; '0'/'1' also as '0.0'/'1.0' or
    'false'/'true' (any case). None for anything else ('abc', '2', 'nan'...)."""
    if not text:
        return False
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        value = float(text)
    except ValueError:
        return None
    return bool(value) if value in (0.0, 1.0) else None


def parse_voc_xml(
    xml_path: str | os.PathLike,
    class_names: Sequence[str],
    image_path: str | None = None,
    unknown_classes: str = "warn",
    clip_boxes: bool = True,
) -> tuple[Annotation | None, list[FileIssue]]:
    """Parses one VOC XML file.

    Args:
        xml_path: the annotation file.
        class_names: known classes; the label of a name is its index.
        image_path: the image it describes (default: ``<filename>`` next to the XML's folder).
        unknown_classes: ``"warn"`` skips such objects with an issue; ``"error"`` raises.
        clip_boxes: clip boxes to the ``<size>`` (training); False keeps them as written,
            with the same issue, as the VOC devkit scores them (evaluation).

    Returns:
        ``(annotation or None when the file is unusable, issues)``. Boxes are clipped to the
        ``<size>`` when it is given (and ``clip_boxes``); boxes with negative size are dropped
        (x1 == x2 is a one-pixel-wide box). A file that does not parse or has a DTD is
        skipped (None). A ``<difficult>`` other than 0/1 is reported and the object treated
        as not difficult; a ``<size>`` that is not a non-negative number is reported and ignored; a
        ``<filename>`` that is a path (used only when ``image_path`` is None) is reported and
        ``<xml stem>.jpg`` used instead.

    Raises:
        UnknownClassError: an unknown class with ``unknown_classes="error"``.
    """
    xml_path = str(xml_path)
    issues: list[FileIssue] = []
    try:
        root = read_xml(xml_path)
    except ForbiddenXMLError as err:
        return None, [
            FileIssue(xml_path, f"XML has a DTD or entity declaration ({err})", "skipped")
        ]
    except (ET.ParseError, OSError) as err:
        return None, [FileIssue(xml_path, f"XML does not parse ({err})", "skipped")]
    size = root.find("size")
    try:
        width = int(float(_text(size, "width") or 0))
        height = int(float(_text(size, "height") or 0))
        if width < 0 or height < 0:
            raise InputError("negative size")
    except (ValueError, OverflowError):  # OverflowError: int(inf)
        width = height = 0
        issues.append(FileIssue(xml_path, "size is not a non-negative number", "size ignored"))
    image_id = Path(xml_path).stem
    if image_path is None:
        filename = _text(root, "filename") or f"{image_id}.jpg"
        if (problem := unsafe_name_problem(filename)) is not None:
            issues.append(
                FileIssue(xml_path, f"<filename> {problem} ({filename!r})", "filename ignored")
            )
            filename = f"{image_id}.jpg"
        image_path = str(Path(xml_path).parent.parent / "JPEGImages" / filename)
    rows = []
    index = {name: i for i, name in enumerate(class_names)}
    for k, obj in enumerate(root.iter("object")):
        row, problems = _parse_object(
            obj, k, xml_path, index, (width, height), unknown_classes, clip_boxes
        )
        issues += problems
        if row is not None:
            rows.append(row)
    boxes = [r[0] for r in rows]
    labels = [r[1] for r in rows]
    difficult = [r[2] for r in rows]
    ann = Annotation(
        image_path,
        image_id,
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(labels, np.int64),
        np.array(difficult, bool),
        width,
        height,
    )
    return ann, issues


def _parse_object(
    obj: ET.Element,
    k: int,
    xml_path: str,
    index: dict[str, int],
    size: tuple[int, int],
    unknown_classes: str,
    clip_boxes: bool = True,
) -> tuple[tuple | None, list[FileIssue]]:
    """Object ``k`` of an XML as ``((x1, y1, x2, y2), label, difficult)`` in 0-based pixels,
    clipped to ``size`` (width, height) when that is known; None when it is unusable."""
    width, height = size
    name = _text(obj, "name")
    bnd = obj.find("bndbox")
    coords = [_text(bnd, t) for t in ("xmin", "ymin", "xmax", "ymax")]
    if name is None or bnd is None or None in coords:
        return None, [
            FileIssue(xml_path, f"object {k} lacks name or bndbox fields", "object skipped")
        ]
    if name not in index:
        if unknown_classes == "error":
            raise UnknownClassError(f"{xml_path}: unknown class {name!r}")
        return None, [FileIssue(xml_path, f"unknown class {name!r}", "object skipped")]
    try:
        x1, y1, x2, y2 = (float(c) - 1.0 for c in coords)  # 1-based -> 0-based
        if not np.isfinite([x1, y1, x2, y2]).all():
            raise InputError("not finite")
    except ValueError:
        issue = FileIssue(xml_path, f"object {k} has non-numeric coordinates", "object skipped")
        return None, [issue]
    issues = []
    entirely_outside = x2 < 0 or y2 < 0 or x1 > width - 1.0 or y1 > height - 1.0
    if width > 0 and height > 0 and clip_boxes and entirely_outside and x2 >= x1 and y2 >= y1:
        # clipping would leave a one-pixel sliver on the border that no object occupies
        what = f"object {k} ({name}) lies entirely outside the image"
        return None, [FileIssue(xml_path, what, "box dropped")]
    if width > 0 and height > 0:
        cx1, cy1 = min(max(x1, 0.0), width - 1.0), min(max(y1, 0.0), height - 1.0)
        cx2, cy2 = min(max(x2, 0.0), width - 1.0), min(max(y2, 0.0), height - 1.0)
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            action = "box clipped" if clip_boxes else "scored as given"
            issues.append(FileIssue(xml_path, f"object {k} ({name}) outside the image", action))
            if clip_boxes:
                x1, y1, x2, y2 = cx1, cy1, cx2, cy2
    if x2 < x1 or y2 < y1:  # x1 == x2 is a one-pixel-wide box in VOC's inclusive pixels
        issues.append(FileIssue(xml_path, f"object {k} ({name}) has negative size", "box dropped"))
        return None, issues
    difficult_text = _text(obj, "difficult")
    difficult = _flag(difficult_text)
    if difficult is None:
        issues.append(
            FileIssue(
                xml_path,
                f"object {k} ({name}) has a difficult flag that is not 0 or 1 ({difficult_text!r})",
                "treated as not difficult",
            )
        )
        difficult = False
    return ((x1, y1, x2, y2), index[name], difficult), issues


def read_image_set(
    voc_root: str | os.PathLike,
    year: str,
    image_set: str,
    issues: list[FileIssue] | None = None,
) -> list[str]:
    """Image ids of ``VOC<year>/ImageSets/Main/<image_set>.txt`` (first word of each line).

    An id that is not a plain file name (``../x``, ``a/b``, ``C:x``...; see
    ``unsafe_name_problem``) would name a file outside ``Annotations/`` and ``JPEGImages/``:
    it is left out, and reported in ``issues`` (``path:line``, "skipped") when that list is
    given. The other ids are returned, each once (a repeat is reported, see ``repeated_ids``).

    Raises:
        FileNotFoundError: the year folder or the set file does not exist (names both).
        ValueError: the set file cannot be read or is not UTF-8 text (names it).
    """
    folder = Path(voc_root) / f"VOC{year}"
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such VOC folder (under --voc-root {voc_root})")
    path = folder / "ImageSets" / "Main" / f"{image_set}.txt"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: image set file not found")
    try:
        # a leading byte-order mark would become part of the first id
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: image set cannot be read ({err})") from None
    return image_set_ids(lines, path, issues if issues is not None else [])


def image_set_ids(
    lines: Sequence[str], set_file: str | os.PathLike, issues: list[FileIssue]
) -> list[str]:
    """The ids of an image set file's ``lines``: the first word of each. An id that is not a
    plain file name (``unsafe_name_problem``) is reported (``path:line``, "skipped") and left
    out; the others are returned each once (``repeated_ids``)."""
    ids = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        if (problem := unsafe_name_problem(image_id)) is not None:
            issues.append(
                FileIssue(f"{set_file}:{n}", f"image id {problem} ({image_id!r})", "skipped")
            )
            continue
        ids.append(image_id)
    return repeated_ids(ids, set_file, issues)


def repeated_ids(
    ids: Sequence[str], set_file: str | os.PathLike, issues: list[FileIssue]
) -> list[str]:
    """``ids`` with each id once, in first-seen order; an id listed more than once is reported
    with its count ("read once"): reading it twice would count its objects twice."""
    counts = Counter(ids)
    if len(counts) == len(ids):
        return list(ids)
    for image_id, count in counts.items():
        if count > 1:
            issues.append(
                FileIssue(str(set_file), f"image id {image_id!r} listed {count} times", "read once")
            )
    return list(counts)


def _find_image(folder: Path, image_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{image_id}{suffix}"
        if os.path.isfile(candidate):  # (Path.is_file raises for overlong names)
            return candidate
    return None


def load_voc(
    voc_root: str | os.PathLike,
    sets: Iterable[tuple[str, str]],
    class_names: Sequence[str],
    unknown_classes: str = "warn",
    clip_boxes: bool = True,
) -> LoadResult:
    """Reads every image of the given ``(year, image_set)`` pairs (``clip_boxes``: see
    ``parse_voc_xml``).

    A missing XML or image is an issue and the pair is skipped; so is an XML that does not
    parse. Images with no (remaining) objects are kept: they are valid negatives.
    """
    result = LoadResult()
    for year, image_set in sets:
        folder = Path(voc_root) / f"VOC{year}"
        for image_id in read_image_set(voc_root, year, image_set, result.issues):
            xml_path = folder / "Annotations" / f"{image_id}.xml"
            image_path = _find_image(folder / "JPEGImages", image_id)
            if image_path is None:
                problem = (
                    "image missing for annotation" if os.path.isfile(xml_path) else "image missing"
                )
                result.issues.append(
                    FileIssue(str(folder / "JPEGImages" / image_id), problem, "skipped")
                )
                continue
            if not os.path.isfile(xml_path):
                result.issues.append(
                    FileIssue(str(xml_path), "annotation missing for image", "skipped")
                )
                continue
            ann, issues = parse_voc_xml(
                xml_path, class_names, str(image_path), unknown_classes, clip_boxes
            )
            result.issues += issues
            if ann is not None:
                result.annotations.append(ann)
    return result


def discover_classes(voc_root: str | os.PathLike, sets: Iterable[tuple[str, str]]) -> list[str]:
    """Class names used in the XMLs of the given sets, sorted by name.

    Files that ``load_voc`` skips (unreadable XML, ids that are not file names) are ignored;
    ``load_voc`` reports them.
    """
    names: set[str] = set()
    for year, image_set in sets:
        folder = Path(voc_root) / f"VOC{year}" / "Annotations"
        for image_id in read_image_set(voc_root, year, image_set):
            try:
                root = read_xml(folder / f"{image_id}.xml")
            except (ET.ParseError, OSError):
                continue
            # a name that cannot be a class name (a line break would shift every class after
            # it once written one per line) is left out: its objects are reported as unknown
            names.update(
                n
                for o in root.iter("object")
                if (n := _text(o, "name")) and class_name_problem(n) is None
            )
    return sorted(names)


def class_counts(annotations: Iterable[Annotation], class_names: Sequence[str]) -> dict[str, int]:
    """Instances per class (difficult included)."""
    counts = Counter(int(k) for ann in annotations for k in ann.labels)
    return {name: counts.get(i, 0) for i, name in enumerate(class_names)}
