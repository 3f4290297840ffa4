"""YOLO txt labels as a source and target: one ``class cx cy w h`` line per object, normalised
to the image size, in ``labels/...`` files that mirror ``images/...``.

An image's label file is its path with the last ``images`` folder replaced by ``labels`` and the
suffix by ``.txt`` (next to the image when the path has no ``images`` folder); a missing label
file is an image without objects (reported once when no image has one: labels not found), a
label path that is a folder or a broken link is reported and its image skipped. The image
size, which the labels are relative to, is read from the image header. Class names come from
a data YAML (``names:`` as a list or an ``{id: name}`` mapping), a ``classes.txt`` (one per
line) in the dataset or its ``labels/`` folder, or the caller (``--classes``); the first of
these files found is used, and any other that lists other names is reported. Polygon lines
(``class x1 y1 x2 y2 ...``, segmentation labels) are read as their bounding boxes.

Coordinates are written as Python's shortest exact float repr and read back in float64, then
stored as float32 like every box: the float64 error of dividing by the image size and
multiplying back (about 1e-13 pixel) is far below float32's spacing, so our own files give back
the same float32 boxes (exactly for coordinates that are 0 or at least 1e-5 pixel, in images up
to 8192 pixels; within 1e-9 pixel for the rest). YOLO has no difficult flag.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from data.label_io import (
    LabelFormatError,
    LabelSet,
    OutputFile,
    PlacedImage,
    WriteReport,
    annotation,
    begin_write,
    brief,
    check_names_file,
    check_unique_ids,
    commit_files,
    continuous_box,
    continuous_edges,
    place_images,
    read_image_size,
    read_user_text,
    remap_classes,
)
from data.voc import Annotation, FileIssue
from utils.classes import class_name_problem, read_class_names
from utils.sources import ImageReadError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# image formats people keep in image folders that are not read: reported, not passed over
UNREAD_IMAGE_SUFFIXES = frozenset(
    {".gif", ".heic", ".heif", ".avif", ".jxl", ".svg", ".ico", ".jp2", ".jfif", ".psd"}
)
MAX_YAML_BYTES = 4 * 1024 * 1024  # a data YAML names folders and classes: a few KB
SPLIT_KEYS = ("train", "val", "test")  # the data YAML keys that name images
NAMES_FILE = "classes.txt"
DATA_YAML = "data.yaml"


def _images_index(path: Path) -> int | None:
    """Index of the last ``images`` component of ``path`` (not its file name), or None."""
    parts = path.parts
    for k in range(len(parts) - 1, -1, -1):
        if parts[k] == "images":
            return k
    return None


def label_path(image: str | os.PathLike) -> Path:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt``; ``x/b.jpg`` -> ``x/b.txt``."""
    image = Path(image)
    k = _images_index(image.parent)
    if k is None:
        return image.with_suffix(".txt")
    parts = image.parts
    return Path(*parts[:k], "labels", *parts[k + 1 :]).with_suffix(".txt")


def yolo_root(folder: Path) -> Path:
    """The dataset folder holding ``images/`` (where names files are looked for)."""
    if (folder / "images").is_dir():
        return folder
    k = _images_index(folder)
    if k is None:
        return folder
    return Path(*folder.parts[:k]) if k > 0 else Path(".")


def is_yolo_folder(folder: Path) -> bool:
    """``folder`` has ``images/`` and ``labels/``, or lies in an ``images`` folder whose
    sibling is ``labels/``."""
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        return True
    return _images_index(folder) is not None and (yolo_root(folder) / "labels").is_dir()


@dataclass(frozen=True)
class DataYaml:
    """A YOLO data YAML: its dataset root, image entries per split key, and class names."""

    path: Path
    root: Path
    splits: dict[str, list[str]]
    names: list[str] | None


def read_data_yaml(path: str | os.PathLike) -> DataYaml:
    """Reads ``path:`` (relative to the YAML's folder; default that folder), ``train:``,
    ``val:``, ``test:`` (each a folder, a list file or a list of those, relative to ``path:``)
    and ``names:``.

    The file is read as UTF-8 (a leading byte-order mark dropped), at most
    ``MAX_YAML_BYTES``, without aliases (``*name``).

    Raises:
        FileNotFoundError: no such file.
        LabelFormatError: unreadable, too large or not UTF-8, not YAML, aliases, fields of
            the wrong kind, or names that are not class names (see ``_yaml_names``); the
            message names the file and the key.
    """
    path = Path(path)
    text = read_user_text(path, "data YAML", MAX_YAML_BYTES)
    try:
        payload = yaml.load(text, Loader=_DataYamlLoader)
    except yaml.YAMLError as err:
        raise LabelFormatError(f"{path}: data YAML cannot be read ({_one_line(err)})") from None
    except RecursionError:
        raise LabelFormatError(f"{path}: data YAML nested too deeply") from None
    except ValueError as err:  # a date such as 2024-13-01, an integer of 5000 digits...
        raise LabelFormatError(
            f"{path}: data YAML cannot be read (a value that cannot be converted: {str(err)[:80]})"
        ) from None
    if not isinstance(payload, dict):
        raise LabelFormatError(f"{path}: a data YAML is a mapping (path:, train:, val:, names:)")
    root = payload.get("path") or "."
    if not isinstance(root, str) or not _is_text(root):
        raise LabelFormatError(f"{path}: 'path' is not a folder name")
    splits = {}
    for key in SPLIT_KEYS:
        value = payload.get(key)
        entries = [value] if isinstance(value, str) else value
        if value is None or value == "":
            continue
        if not isinstance(entries, list) or not all(
            isinstance(e, str) and _is_text(e) for e in entries
        ):
            raise LabelFormatError(f"{path}: '{key}' is not a folder, a list file or a list")
        splits[key] = entries
    return DataYaml(path, path.parent / root, splits, _yaml_names(path, payload))


def _is_text(value: str) -> bool:
    """False for strings with lone surrogates (YAML escapes such as ``"\\ud800"``): no file
    has such a name, and they cannot even be printed."""
    return not any("\ud800" <= c <= "\udfff" for c in value)


class _DataYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): a data YAML never needs one, and
    aliases of aliases are how a 1 KB file expands into gigabytes. It refuses a key given twice
    in one mapping too: YAML readers keep the last one, so a second ``names:`` would silently
    relabel every object."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        own = list(node.value)  # before merge keys (``<<:``) are flattened into it
        mapping = super().construct_mapping(node, deep=deep)
        if len(mapping) != len(node.value):  # only then can a key be repeated
            first: dict[object, int] = {}
            for key_node, _ in own:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in first:
                    lines = f"lines {first[key]} and {key_node.start_mark.line + 1}"
                    raise yaml.constructor.ConstructorError(
                        problem=f"key {brief(key)} given twice ({lines}): which one is meant?"
                    )
                first[key] = key_node.start_mark.line + 1
        return mapping

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor[:40]} (not allowed here)", event.start_mark
            )
        return super().compose_node(parent, index)


def _one_line(err: yaml.YAMLError) -> str:
    """A YAML error on one line: its problem and where."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())[:200]


def _name_ids(path: Path, names: dict) -> list[object]:
    """The values of an ``{id: name}`` mapping in id order; ids are integers or digit strings
    (``"1"``, as some exporters write them) that are exactly 0..N-1.

    Raises:
        LabelFormatError: another key, a repeated id, or ids that are not 0..N-1.
    """
    by_id: dict[int, object] = {}
    for key, name in names.items():
        if isinstance(key, int) and not isinstance(key, bool):
            k = key
        elif isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 10:
            k = int(key) if str(int(key)) == key else None  # "01" is not how an id is written
        else:
            k = None
        if k is None or k in by_id:
            what = "repeats an id" if k is not None else "is not an id (0, 1, ...)"
            raise LabelFormatError(f"{path}: 'names' key {brief(key)} {what}")
        by_id[k] = name
    if sorted(by_id) != list(range(len(by_id))):
        raise LabelFormatError(f"{path}: 'names' ids must be 0..{len(by_id) - 1}")
    return [by_id[k] for k in range(len(by_id))]


def _yaml_names(path: Path, payload: dict) -> list[str] | None:
    """``names:`` as a list (None when absent), each a non-blank string without line breaks,
    stripped and listed once, as a classes file holds them; ``nc:``, when given, their count.

    Raises:
        LabelFormatError: names (or ``nc``) that are none of these, the key in the message;
            numbers and booleans (``yes``) are not read as names: quoted, they are.
    """
    names = payload.get("names")
    if names is None:
        return None
    if isinstance(names, dict):
        names = _name_ids(path, names)
    if not isinstance(names, list) or not names:
        raise LabelFormatError(f"{path}: 'names' is not a list or an {{id: name}} mapping")
    out: list[str] = []
    for key, name in enumerate(names):
        problem = class_name_problem(name.strip() or name if isinstance(name, str) else name)
        if problem is None and name.strip() in out:
            problem = "is listed twice"
        if problem is not None:
            hint = " (quote it)" if isinstance(name, (bool, int, float)) else ""
            raise LabelFormatError(f"{path}: 'names' {key}: {brief(name)} {problem}{hint}")
        out.append(name.strip())
    nc = payload.get("nc")
    if nc is not None and (type(nc) is not int or nc != len(out)):
        raise LabelFormatError(f"{path}: nc is {brief(nc)} but 'names' has {len(out)}")
    return out


def yolo_splits(path: Path) -> list[str]:
    """The splits a YOLO source offers: a data YAML's keys, a folder's ``images/`` subfolders."""
    if path.suffix in (".yaml", ".yml"):
        return list(read_data_yaml(path).splits)
    if path.is_dir() and (path / "images").is_dir():
        return sorted(p.name for p in (path / "images").iterdir() if p.is_dir())
    return []


def _list_images(entry: Path, source: str, unread: list[Path]) -> list[Path]:
    """Images of a folder (recursively, sorted), of a list file (relative lines are relative
    to its folder), or the one image named. Files of a folder in image formats that are not
    read (``UNREAD_IMAGE_SUFFIXES``) are added to ``unread``."""
    if os.path.isdir(entry):
        try:
            files = [p for p in entry.rglob("*") if p.is_file()]
        except OSError as err:  # a folder below it that cannot be read, such as /proc/1
            raise LabelFormatError(
                f"{entry}: cannot list the images folder named by {source} "
                f"({err.filename or entry}: {err.strerror or err})"
            ) from err
        unread += sorted(p for p in files if p.suffix.lower() in UNREAD_IMAGE_SUFFIXES)
        return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)
    if entry.suffix.lower() in IMAGE_EXTENSIONS:
        return [entry]
    if os.path.isfile(entry):
        lines = read_user_text(entry, "image list").splitlines()
        paths = [line.strip() for line in lines if line.strip()]
        for n, line in enumerate(paths, 1):
            if Path(line).suffix.lower() not in IMAGE_EXTENSIONS:
                raise LabelFormatError(
                    f"{entry}: not a YOLO image list (a folder, data YAML or .txt of image "
                    f"paths): entry {n}, {line[:60]!r}, is not an image path"
                )
        return [entry.parent / line for line in paths]
    raise LabelFormatError(f"{entry}: no such images folder or list (named by {source})")


def _own_names(
    folders: Sequence[Path], issues: list[FileIssue], used: tuple[Path, list[str]] | None = None
) -> list[str] | None:
    """Names from the first ``data.yaml`` or ``classes.txt`` in ``folders`` (or their
    ``labels/``) that has them, or ``used`` (a data YAML's own ``(path, names)``) when given.
    Every other such file that lists other names, or cannot be read, is reported: which list
    is meant is the user's call, and the report says which one is used."""
    places = [
        p for f in folders for p in (f / DATA_YAML, f / NAMES_FILE, f / "labels" / NAMES_FILE)
    ]
    for place in dict.fromkeys(places):
        if not os.path.isfile(place):
            continue
        if used is not None and os.path.realpath(place) == os.path.realpath(used[0]):
            continue
        try:
            names = read_data_yaml(place).names if place.name == DATA_YAML else None
            names = read_class_names(place) if place.name == NAMES_FILE else names
        except ValueError as err:  # the names that are used come from another file
            if used is None:
                raise
            problem = str(err).removeprefix(f"{place}: ")
            issues.append(FileIssue(str(place), problem, f"class names of {used[0]} used"))
            continue
        if names and used is None:
            used = (place, names)
        elif names and names != used[1]:
            issues.append(
                FileIssue(
                    str(place),
                    f"lists other classes ({brief(', '.join(names), 80)}) than {used[0]} "
                    f"({brief(', '.join(used[1]), 80)})",
                    f"class names of {used[0]} used",
                )
            )
    return used[1] if used is not None else None


def _select(
    path: Path, split: str | None, unread: list[Path], issues: list[FileIssue]
) -> tuple[list[Path], list[str] | None, str | None]:
    """The images ``path`` (and ``split``) name, the source's own class names, the split;
    files in image formats that are not read are added to ``unread``, class lists that
    disagree with the one used to ``issues``."""
    if path.suffix in (".yaml", ".yml"):
        data = read_data_yaml(path)
        if split is not None and split not in data.splits:
            have = ", ".join(data.splits) or "none"
            raise LabelFormatError(f"{path}: no split {split!r} (it has: {have})")
        keys = [split] if split else list(data.splits)
        images = [
            p
            for k in keys
            for e in data.splits[k]
            for p in _list_images(data.root / e, str(path), unread)
        ]
        own = (path, data.names) if data.names else None
        return list(dict.fromkeys(images)), _own_names([data.root], issues, own), split
    if os.path.isfile(path):  # a list of image paths
        names = _own_names([path.parent], issues)
        return _list_images(path, str(path), unread), names, path.stem
    if not os.path.isdir(path):
        raise LabelFormatError(f"{path}: no such YOLO folder, data YAML or image list")
    root = yolo_root(path)
    names = _own_names(list(dict.fromkeys([root, path])), issues)
    if (path / "images").is_dir():
        folder = path / "images" / split if split else path / "images"
        if not os.path.isdir(folder):
            have = ", ".join(yolo_splits(path)) or "none"
            raise LabelFormatError(f"{folder}: no split {split!r} (this folder has: {have})")
        return _list_images(folder, str(path), unread), names, split
    return _list_images(path, str(path), unread), names, (path.name if root != path else None)


def _unread_issue(source: str, unread: Sequence[Path]) -> FileIssue:
    """One report for the files in image formats that training does not read."""
    counts = Counter(p.suffix.lower() for p in unread)
    kinds = ", ".join(f"{n} {suffix}" for suffix, n in sorted(counts.items()))
    return FileIssue(
        source,
        f"{len(unread)} files in image formats that are not read ({kinds}; e.g. {unread[0]})",
        "skipped",
    )


def read_yolo(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
    clip_boxes: bool = True,
) -> LabelSet:
    """Reads a YOLO dataset folder (``images/`` + ``labels/``, or one ``images/<split>``
    folder), a data YAML or a text file listing image paths.

    Args:
        split: a data YAML key or an ``images/<split>`` folder (default: every image).
        class_names: the names file's names when the source has none of its own; otherwise
            the order to map the source's names into, by name.
        clip_boxes: clip boxes to the image (training); False keeps them as written, as
            scoring needs (``continuous_box``).

    Raises:
        LabelFormatError: no such source or split, no class names, an unreadable YAML/list,
            two images of one id (file name stem: ``a.jpg`` and ``a.png`` share
            ``labels/a.txt``).
    """
    path = Path(path)
    unread: list[Path] = []
    issues: list[FileIssue] = []
    images, own, split_name = _select(path, split, unread, issues)
    names = own if own is not None else (list(class_names) if class_names is not None else None)
    if names is None:
        where = yolo_root(path if os.path.isdir(path) else path.parent)
        raise LabelFormatError(
            f"{path}: no class names: give a names file (one per line, --classes), or put "
            f"{NAMES_FILE} or a {DATA_YAML} with names: in {where}"
        )
    check_unique_ids([Annotation.empty(str(p), p.stem) for p in images], str(path))
    issues += [_unread_issue(str(path), unread)] if unread else []
    annotations = [
        a for image in images if (a := _read_image(image, len(names), issues, clip_boxes))
    ]
    # (looked for only when no image has an object)
    unlabelled = images and not any(len(a.labels) for a in annotations)
    if unlabelled and not any(os.path.lexists(label_path(image)) for image in images):
        issues.append(
            FileIssue(
                str(path),
                f"no label files found for any image ({len(images)} images; the first would "
                f"be {label_path(images[0])})",
                "images read without objects",
            )
        )
    labels = LabelSet(annotations, issues, names, str(path), "yolo", split_name)
    if own is not None and class_names is not None:
        return remap_classes(labels, class_names)
    return labels


def _read_image(
    image: Path, num_classes: int, issues: list[FileIssue], clip_boxes: bool
) -> Annotation | None:
    try:
        size = read_image_size(image)
    except ImageReadError as err:
        issues.append(FileIssue(str(image), str(err).removeprefix(f"{image}: "), "image skipped"))
        return None
    path = label_path(image)
    if not os.path.isfile(path):
        if os.path.lexists(path):  # a folder, a broken link: the image's labels are unknown
            what = "a folder" if os.path.isdir(path) else "not a readable file"
            issues.append(FileIssue(str(path), f"label file is {what}", "image skipped"))
            return None
        return annotation(str(image), image.stem, [], size)
    try:
        text = read_user_text(path, "label file")
    except (LabelFormatError, FileNotFoundError) as err:
        problem = str(err).removeprefix(f"{path}: ")
        issues.append(FileIssue(str(path), problem, "image skipped"))
        return None
    rows, polygons = [], 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            row, polygon = _label_line(line, f"{path}:{n}", size, num_classes, issues, clip_boxes)
            rows += [row] if row is not None else []
            polygons += polygon
    if polygons:
        issues.append(FileIssue(str(path), f"{polygons} polygons", "read as their boxes"))
    return annotation(str(image), image.stem, rows, size)


def _label_line(
    line: str,
    where: str,
    size: tuple[int, int],
    num_classes: int,
    issues: list[FileIssue],
    clip_boxes: bool,
) -> tuple[tuple | None, bool]:
    """One label line as a ``(box, class, False)`` row (None, with the problem in ``issues``,
    when the box is dropped), and whether it is a polygon."""
    shown = brief(line.strip(), 80)
    try:
        values = [float(t) for t in line.split()]
    except ValueError:
        values = []
    polygon = len(values) >= 7 and len(values) % 2 == 1
    if len(values) == 5:
        cls, cx, cy, w, h = values
        edges = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    elif polygon:
        cls, xs, ys = values[0], values[1::2], values[2::2]
        edges = (min(xs), min(ys), max(xs), max(ys))
    else:
        issues.append(
            FileIssue(where, f"malformed line {shown} (expected: class cx cy w h)", "box dropped")
        )
        return None, False
    if not all(abs(v) < float("inf") for v in values):
        issues.append(FileIssue(where, f"non-finite number in {shown}", "box dropped"))
        return None, polygon
    if cls != int(cls) or not 0 <= cls < num_classes:
        issues.append(
            FileIssue(
                where,
                f"class id {line.split()[0][:40]} is not one of the {num_classes} "
                f"classes (0..{num_classes - 1})",
                "box dropped",
            )
        )
        return None, polygon
    width, height = size
    x1, y1, x2, y2 = (v * s for v, s in zip(edges, (width, height, width, height)))
    box, problem, action = continuous_box(x1, y1, x2, y2, size, clip_boxes=clip_boxes)
    if problem is not None:
        issues.append(FileIssue(where, f"box {shown} {problem}", action))
    return ((box, int(cls), False) if box is not None else None), polygon


def write_yolo(
    labels: LabelSet, out: str | os.PathLike, split: str, *, overwrite: bool = False
) -> WriteReport:
    """Writes ``out/images/<split>/`` (hard links or copies), ``out/labels/<split>/<id>.txt``
    (an empty file for an image without objects), ``out/classes.txt`` and ``out/data.yaml``
    (``names:`` and, for a ``train``/``val``/``test`` split, its key; keys written for other
    splits before are kept).

    Everything is checked before the first write (``commit_files``): no existing file
    changes without ``overwrite``, and images already in ``out/images/<split>/`` that this
    conversion does not write are refused (they would join the split).

    Raises:
        LabelFormatError: ``out/classes.txt`` or ``out/data.yaml`` lists other classes; a
            split name or class names that cannot be written, no image to write.
        OutputRefusedError: a file exists with other content (without ``overwrite``), a
            stray image.
        OutputPathError: a file cannot be written.
    """
    out = Path(out)
    report = begin_write(labels, out, split, "yolo")
    check_names_file(out / NAMES_FILE, labels.class_names)
    splits = _written_splits(out, labels.class_names)
    placed = place_images(labels, report, out / "images" / split)
    label_files = []
    for image in placed:
        lines = _yolo_lines(image.ann, image.size)
        label_file = out / "labels" / split / f"{image.ann.image_id}.txt"
        label_files.append(OutputFile(label_file, "".join(lines)))
        report.objects += len(lines)
    report.label_files += len(placed)
    names_text = "".join(f"{n}\n" for n in labels.class_names)
    index = [OutputFile(out / NAMES_FILE, names_text, merged=True)]
    if split in SPLIT_KEYS:
        splits[split] = [f"images/{split}"]
    else:
        report.notes.append(
            f"split {split!r} is not train/val/test: {DATA_YAML} names no images for it "
            f"(read it as {out} --split {split}, or {out / 'images' / split})"
        )
    yaml_text = _data_yaml_text(splits, labels.class_names)
    index.append(OutputFile(out / DATA_YAML, yaml_text, merged=True))
    images = [p.file for p in placed]
    strays = _stray_images(out / "images" / split, {f.path for f in images})
    commit_files(out, images + label_files + index, overwrite=overwrite, strays=strays)
    report.files += [f.path for f in index]
    report.notes += _write_notes(placed)
    return report


def _written_splits(out: Path, class_names: Sequence[str]) -> dict[str, list[str]]:
    """The splits ``out/data.yaml`` names already (none when there is none).

    Raises:
        LabelFormatError: it lists other classes, or cannot be read.
    """
    if not (out / DATA_YAML).is_file():
        return {}
    existing = read_data_yaml(out / DATA_YAML)
    if existing.names is not None and existing.names != class_names:
        raise LabelFormatError(f"{out / DATA_YAML} lists other classes: write elsewhere")
    return dict(existing.splits)


def _yolo_lines(ann: Annotation, size: tuple[int, int]) -> list[str]:
    """One ``class cx cy w h`` line per box, normalised to the image size."""
    lines = []
    width, height = size
    for box, label in zip(ann.boxes, ann.labels):
        x1, y1, x2, y2 = continuous_edges(box)
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{int(label)} {cx!r} {cy!r} {w!r} {h!r}\n")
    return lines


def _data_yaml_text(splits: dict[str, list[str]], class_names: Sequence[str]) -> str:
    payload: dict[str, object] = {k: (v[0] if len(v) == 1 else v) for k, v in splits.items()}
    payload["nc"] = len(class_names)
    payload["names"] = dict(enumerate(class_names))
    return yaml.safe_dump(payload, sort_keys=False, allow_unicode=True)


def _stray_images(split_folder: Path, planned: set[Path]) -> list[Path]:
    """Images in the split's folder that this conversion does not write: a reader would
    take them into the split."""
    return sorted(
        p
        for p in (split_folder.rglob("*") if split_folder.is_dir() else [])
        if p.suffix.lower() in IMAGE_EXTENSIONS and p not in planned
    )


def _write_notes(placed: Sequence[PlacedImage]) -> list[str]:
    """What YOLO could not hold: difficult flags, images its readers do not list."""
    notes = []
    if difficult := sum(int(p.ann.difficult.sum()) for p in placed):
        notes.append(
            f"{difficult} difficult objects written as ordinary ones: YOLO has no difficult flag"
        )
    if odd_suffixes := sum(Path(p.filename).suffix.lower() not in IMAGE_EXTENSIONS for p in placed):
        notes.append(
            f"{odd_suffixes} images are not {'/'.join(sorted(IMAGE_EXTENSIONS))}: YOLO readers "
            "(this one too) do not list them"
        )
    return notes
