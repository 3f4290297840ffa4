"""YOLO txt labels as a source and target: one ``class cx cy w h`` line per object, normalised
to the image size, in ``labels/...`` files that mirror ``images/...``.

An image's label file is its path with the last ``images`` folder replaced by ``labels`` and the
suffix by ``.txt`` (next to the image when the path has no ``images`` folder); a missing label
file is an image without objects. The image size, which the labels are relative to, is read
from the image header. Class names come from a data YAML (``names:`` as a list or an
``{id: name}`` mapping), a ``classes.txt`` (one per line) in the dataset or its ``labels/``
folder, or the caller (``--classes``). Polygon lines (``class x1 y1 x2 y2 ...``, segmentation
labels) are read as their bounding boxes.

Coordinates are written as Python's shortest exact float repr and read back in float64, then
stored as float32 like every box: the float64 error of dividing by the image size and
multiplying back (about 1e-13 pixel) is far below float32's spacing, so our own files give back
the same float32 boxes (exactly for coordinates that are 0 or at least 1e-5 pixel, in images up
to 8192 pixels; within 1e-9 pixel for the rest). YOLO has no difficult flag.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from data.label_io import (
    LabelFormatError,
    LabelSet,
    WriteReport,
    annotation,
    check_names_file,
    check_split_name,
    continuous_box,
    continuous_edges,
    known_size,
    output_image_names,
    placed_or_reported,
    read_image_size,
    remap_classes,
)
from data.voc import Annotation, FileIssue
from utils.classes import read_class_names
from utils.paths import write_text_atomic
from utils.sources import ImageReadError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
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

    Raises:
        LabelFormatError: unreadable YAML, or fields of the wrong kind (named).
    """
    path = Path(path)
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise LabelFormatError(f"{path}: data YAML cannot be read ({err})") from None
    if not isinstance(payload, dict):
        raise LabelFormatError(f"{path}: a data YAML is a mapping (path:, train:, val:, names:)")
    root = payload.get("path") or "."
    if not isinstance(root, str):
        raise LabelFormatError(f"{path}: 'path' is not a folder name")
    splits = {}
    for key in SPLIT_KEYS:
        value = payload.get(key)
        entries = [value] if isinstance(value, str) else value
        if value is None or value == "":
            continue
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise LabelFormatError(f"{path}: '{key}' is not a folder, a list file or a list")
        splits[key] = entries
    return DataYaml(path, path.parent / root, splits, _yaml_names(path, payload))


def _yaml_names(path: Path, payload: dict) -> list[str] | None:
    names = payload.get("names")
    if names is None:
        return None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise LabelFormatError(f"{path}: 'names' ids must be 0..{len(names) - 1}")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names:
        raise LabelFormatError(f"{path}: 'names' is not a list or an {{id: name}} mapping")
    nc = payload.get("nc")
    if nc is not None and nc != len(names):
        raise LabelFormatError(f"{path}: nc is {nc} but 'names' has {len(names)}")
    return [str(n) for n in names]


def yolo_splits(path: Path) -> list[str]:
    """The splits a YOLO source offers: a data YAML's keys, a folder's ``images/`` subfolders."""
    if path.suffix in (".yaml", ".yml"):
        return list(read_data_yaml(path).splits)
    if path.is_dir() and (path / "images").is_dir():
        return sorted(p.name for p in (path / "images").iterdir() if p.is_dir())
    return []


def _list_images(entry: Path, source: str) -> list[Path]:
    """Images of a folder (recursively, sorted), of a list file (relative lines are relative
    to its folder), or the one image named."""
    if entry.is_dir():
        return sorted(
            p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
    if entry.suffix.lower() in IMAGE_EXTENSIONS:
        return [entry]
    if entry.is_file():
        try:
            lines = entry.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise LabelFormatError(f"{entry}: image list cannot be read ({err})") from None
        paths = [line.strip() for line in lines if line.strip()]
        for n, line in enumerate(paths, 1):
            if Path(line).suffix.lower() not in IMAGE_EXTENSIONS:
                raise LabelFormatError(
                    f"{entry}: not a YOLO image list (a folder, data YAML or .txt of image "
                    f"paths): entry {n}, {line[:60]!r}, is not an image path"
                )
        return [entry.parent / line for line in paths]
    raise LabelFormatError(f"{entry}: no such images folder or list (named by {source})")


def _own_names(folders: Sequence[Path]) -> list[str] | None:
    """Names from a ``data.yaml`` or a ``classes.txt`` in ``folders`` (or their ``labels/``)."""
    for folder in folders:
        if (folder / DATA_YAML).is_file():
            names = read_data_yaml(folder / DATA_YAML).names
            if names:
                return names
        for place in (folder, folder / "labels"):
            if (place / NAMES_FILE).is_file():
                return read_class_names(place / NAMES_FILE)
    return None


def _select(path: Path, split: str | None) -> tuple[list[Path], list[str] | None, str | None]:
    """The images ``path`` (and ``split``) name, the source's own class names, the split."""
    if path.suffix in (".yaml", ".yml"):
        data = read_data_yaml(path)
        if split is not None and split not in data.splits:
            have = ", ".join(data.splits) or "none"
            raise LabelFormatError(f"{path}: no split {split!r} (it has: {have})")
        keys = [split] if split else list(data.splits)
        images = [
            p for k in keys for e in data.splits[k] for p in _list_images(data.root / e, str(path))
        ]
        return list(dict.fromkeys(images)), data.names or _own_names([data.root]), split
    if path.is_file():  # a list of image paths
        return _list_images(path, str(path)), _own_names([path.parent]), path.stem
    if not path.is_dir():
        raise LabelFormatError(f"{path}: no such YOLO folder, data YAML or image list")
    root = yolo_root(path)
    names = _own_names(list(dict.fromkeys([root, path])))
    if (path / "images").is_dir():
        folder = path / "images" / split if split else path / "images"
        if not folder.is_dir():
            have = ", ".join(yolo_splits(path)) or "none"
            raise LabelFormatError(f"{folder}: no split {split!r} (this folder has: {have})")
        return _list_images(folder, str(path)), names, split
    return _list_images(path, str(path)), names, (path.name if root != path else None)


def read_yolo(
    path: str | os.PathLike, *, split: str | None = None, class_names: Sequence[str] | None = None
) -> LabelSet:
    """Reads a YOLO dataset folder (``images/`` + ``labels/``, or one ``images/<split>``
    folder), a data YAML or a text file listing image paths.

    Args:
        split: a data YAML key or an ``images/<split>`` folder (default: every image).
        class_names: the names file's names when the source has none of its own; otherwise
            the order to map the source's names into, by name.

    Raises:
        LabelFormatError: no such source or split, no class names, an unreadable YAML/list.
    """
    path = Path(path)
    images, own, split_name = _select(path, split)
    names = own if own is not None else (list(class_names) if class_names is not None else None)
    if names is None:
        where = yolo_root(path if path.is_dir() else path.parent)
        raise LabelFormatError(
            f"{path}: no class names: give a names file (one per line, --classes), or put "
            f"{NAMES_FILE} or a {DATA_YAML} with names: in {where}"
        )
    issues: list[FileIssue] = []
    annotations = [a for image in images if (a := _read_image(image, len(names), issues))]
    labels = LabelSet(annotations, issues, names, str(path), "yolo", split_name)
    if own is not None and class_names is not None:
        return remap_classes(labels, class_names)
    return labels


def _read_image(image: Path, num_classes: int, issues: list[FileIssue]) -> Annotation | None:
    try:
        size = read_image_size(image)
    except ImageReadError as err:
        issues.append(FileIssue(str(image), str(err).removeprefix(f"{image}: "), "image skipped"))
        return None
    path = label_path(image)
    if not path.is_file():
        return annotation(str(image), image.stem, [], size)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        issues.append(FileIssue(str(path), f"label file cannot be read ({err})", "image skipped"))
        return None
    rows, polygons = [], 0
    width, height = size
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            values = [float(t) for t in line.split()]
        except ValueError:
            values = []
        if len(values) == 5:
            cls, cx, cy, w, h = values
            edges = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        elif len(values) >= 7 and len(values) % 2:
            cls, xs, ys = values[0], values[1::2], values[2::2]
            edges = (min(xs), min(ys), max(xs), max(ys))
            polygons += 1
        else:
            issues.append(
                FileIssue(
                    where,
                    f"malformed line {line.strip()!r} (expected: class cx cy w h)",
                    "box dropped",
                )
            )
            continue
        if not all(abs(v) < float("inf") for v in values):
            issues.append(FileIssue(where, f"non-finite number in {line.strip()!r}", "box dropped"))
            continue
        if cls != int(cls) or not 0 <= cls < num_classes:
            issues.append(
                FileIssue(
                    where,
                    f"class id {line.split()[0]} is not one of the {num_classes} "
                    f"classes (0..{num_classes - 1})",
                    "box dropped",
                )
            )
            continue
        scale = (width, height, width, height)
        x1, y1, x2, y2 = (v * s for v, s in zip(edges, scale))
        box, problem, action = continuous_box(x1, y1, x2, y2, size)
        if problem is not None:
            issues.append(FileIssue(where, f"box {line.strip()!r} {problem}", action))
        if box is not None:
            rows.append((box, int(cls), False))
    if polygons:
        issues.append(FileIssue(str(path), f"{polygons} polygons", "read as their boxes"))
    return annotation(str(image), image.stem, rows, size)


def write_yolo(labels: LabelSet, out: str | os.PathLike, split: str) -> WriteReport:
    """Writes ``out/images/<split>/`` (hard links or copies), ``out/labels/<split>/<id>.txt``
    (an empty file for an image without objects), ``out/classes.txt`` and ``out/data.yaml``
    (``names:`` and, for a ``train``/``val``/``test`` split, its key; keys written for other
    splits before are kept).

    Raises:
        LabelFormatError: ``out/classes.txt`` or ``out/data.yaml`` lists other classes.
        OutputPathError: a file cannot be written.
    """
    out = Path(out)
    check_split_name(split)
    report = WriteReport("yolo", out)
    check_names_file(out / NAMES_FILE, labels.class_names)
    splits: dict[str, list[str]] = {}
    if (out / DATA_YAML).is_file():
        existing = read_data_yaml(out / DATA_YAML)
        if existing.names is not None and existing.names != labels.class_names:
            raise LabelFormatError(f"{out / DATA_YAML} lists other classes: write elsewhere")
        splits = dict(existing.splits)
    difficult = 0
    for ann, filename in output_image_names(labels.annotations, report.issues):
        size = known_size(ann, report.issues)
        if size is None:
            continue
        if not placed_or_reported(ann.image_path, out / "images" / split / filename, report.issues):
            continue
        lines = []
        width, height = size
        for box, label in zip(ann.boxes, ann.labels):
            x1, y1, x2, y2 = continuous_edges(box)
            cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
            w, h = (x2 - x1) / width, (y2 - y1) / height
            lines.append(f"{int(label)} {cx!r} {cy!r} {w!r} {h!r}\n")
        write_text_atomic(out / "labels" / split / f"{ann.image_id}.txt", "".join(lines))
        difficult += int(ann.difficult.sum())
        report.images += 1
        report.label_files += 1
        report.objects += len(lines)
    report.files.append(
        write_text_atomic(out / NAMES_FILE, "".join(f"{n}\n" for n in labels.class_names))
    )
    if split in SPLIT_KEYS:
        splits[split] = [f"images/{split}"]
    else:
        report.notes.append(
            f"split {split!r} is not train/val/test: {DATA_YAML} names no images for it "
            f"(read it as {out} --split {split}, or {out / 'images' / split})"
        )
    payload = {k: (v[0] if len(v) == 1 else v) for k, v in splits.items()}
    payload["nc"] = len(labels.class_names)
    payload["names"] = dict(enumerate(labels.class_names))
    text = yaml.safe_dump(payload, sort_keys=False, allow_unicode=True)
    report.files.append(write_text_atomic(out / DATA_YAML, text))
    if difficult:
        report.notes.append(
            f"{difficult} difficult objects written as ordinary ones: YOLO has no difficult flag"
        )
    return report
