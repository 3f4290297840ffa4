"""Labels in the formats people label in, behind one interface: Pascal VOC XML, COCO JSON,
YOLO txt and the reference implementation's annotation lines.

``LabelSource(path, format="auto")`` names labels (the format detected from the path when
unambiguous, see ``detect_format``); ``.load(class_names)`` reads them into ``data.voc``
``Annotation`` rows, the class names and the per-file ``FileIssue`` rows, with the guarantees
of the VOC reader: one bad file, record or line is reported (file and line or record, and what
was done) and skipped or repaired, never an exception; only an unusable source (not found,
unknown format, an annotation file that does not parse at all) raises ``LabelFormatError`` or
``FileNotFoundError`` naming it. ``convert_labels`` reads one format and writes another
(``write_labels``: VOC, COCO or YOLO) so that boxes, labels, image sizes, class names and,
where the format holds them, difficult flags survive (the modules say how: ``data.voc_folder``,
``data.coco``, ``data.yolo_txt``; the pixel convention is in ``data.label_io``).

What each format cannot hold: YOLO has no difficult flag (written as ordinary objects) and no
image size (read from the image); COCO keeps difficult as ``iscrowd``; annotation lines hold
neither names, sizes nor difficult flags (and are read, not written).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from data.annotation_lines import load_annotation_lines
from data.coco import read_coco, write_coco
from data.label_io import (
    LabelFormatError,
    LabelSet,
    WriteReport,
    check_split_name,
    read_image_size,
)
from data.voc import FileIssue
from data.voc_folder import (
    devkit_years,
    is_image_set_file,
    is_voc_folder,
    read_voc_folder,
    voc_splits,
    write_voc,
)
from data.yolo_txt import (
    IMAGE_EXTENSIONS,
    is_yolo_folder,
    label_path,
    read_data_yaml,
    read_yolo,
    write_yolo,
    yolo_root,
    yolo_splits,
)
from utils.errors import InputError
from utils.paths import check_apart, safe_component
from utils.sources import ImageReadError

FORMATS = ("voc", "coco", "yolo", "lines")
LABEL_FORMATS = ("auto", *FORMATS)
WRITE_FORMATS = ("voc", "coco", "yolo")
FORMAT_GUIDE = (
    "voc: a folder with Annotations/ and JPEGImages/ (or a VOCdevkit with one VOC<year>, or "
    "its ImageSets/Main/<split>.txt); coco: a .json; yolo: a folder with images/ and labels/, "
    "a data .yaml or a .txt listing image paths; lines: a .txt of 'path x1,y1,x2,y2,cls ...'"
)
OVERRIDE = (
    "Name the format with --label-format (train.py, eval.py) or --from (tools.convert_labels)"
)
_BOX = re.compile(r"^[-+\d.eE]+(,[-+\d.eE]+){4}$")
_SNIFF_LINES = 200


def _unknown(path: Path, why: str) -> LabelFormatError:
    return LabelFormatError(f"{path}: {why}. Formats: {FORMAT_GUIDE}. {OVERRIDE}")


def detect_format(path: str | os.PathLike) -> str:
    """The format of a labels path, by the rules of ``FORMAT_GUIDE``; a ``.txt`` is told
    apart by its lines (boxes: lines; image paths: a YOLO list).

    Raises:
        FileNotFoundError: no such path.
        LabelFormatError: ambiguous or unknown (the message lists the formats and the flag
            that names one).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: labels path not found")
    if path.is_dir():
        voc, yolo = is_voc_folder(path) or bool(devkit_years(path)), is_yolo_folder(path)
        if voc and yolo:
            raise _unknown(path, "ambiguous: both VOC (Annotations/) and YOLO (labels/) here")
        if voc or yolo:
            return "voc" if voc else "yolo"
        raise _unknown(path, "unknown: neither Annotations/ + JPEGImages/ nor images/ + labels/")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "coco"
    if suffix in (".yaml", ".yml"):
        return "yolo"
    if suffix == ".txt":
        return "voc" if is_image_set_file(path) else _sniff_txt(path)
    raise _unknown(path, f"unknown: a {suffix or 'suffixless'} file")


def _sniff_txt(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [line.strip() for _, line in zip(range(_SNIFF_LINES * 4), f) if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise LabelFormatError(f"{path}: cannot be read ({err})") from None
    lines = lines[:_SNIFF_LINES]
    if not lines:
        raise _unknown(path, "ambiguous: the file is empty")
    if any(_BOX.match(t) for line in lines for t in line.split()[1:]):
        return "lines"
    if all(Path(line).suffix.lower() in IMAGE_EXTENSIONS for line in lines):
        return "yolo"
    if all(re.fullmatch(r"[-+\d.eE\s]+", line) for line in lines):
        raise _unknown(path, "one YOLO label file: give the dataset folder, data YAML or list")
    raise _unknown(path, "unknown: lines are neither image paths nor 'path x1,y1,x2,y2,cls'")


@dataclass(frozen=True)
class LabelSource:
    """A labels path, its format (``auto``: detected), the split to read where it has several
    (VOC image sets, YOLO ``images/<split>`` or data-YAML keys; None: all of it) and, for
    COCO, the images folder (None: found next to the JSON, see ``data.coco``)."""

    path: str
    format: str = "auto"
    split: str | None = None
    images: str | None = None

    def __post_init__(self) -> None:
        if self.format not in LABEL_FORMATS:
            raise InputError(f"unknown label format {self.format!r}: one of {LABEL_FORMATS}")

    @property
    def kind(self) -> str:
        """The format, detected when ``auto``."""
        return detect_format(self.path) if self.format == "auto" else self.format

    def splits(self) -> list[str]:
        """The splits the source offers (empty: one split)."""
        kind, path = self.kind, Path(self.path)
        if kind == "voc":
            return voc_splits(path)
        if kind == "yolo":
            return yolo_splits(path)
        return []

    def describe(self) -> str:
        split = f" [{self.split}]" if self.split else ""
        return f"{self.path}{split} ({self.kind})"

    def load(
        self, class_names: Sequence[str] | None = None, *, clip_boxes: bool = True
    ) -> LabelSet:
        """Reads the labels.

        Args:
            class_names: the order labels index, matched by name; for sources without names
                (annotation lines, YOLO without a names file) the names of the ids. None:
                the source's own names.
            clip_boxes: clip boxes that reach outside their image (training); False keeps
                them as written and reports them, as scoring needs (the official evaluators
                score ground truth as given).

        Raises:
            FileNotFoundError, LabelFormatError: the source cannot be used at all.
        """
        kind = self.kind
        if self.images is not None and kind != "coco":
            raise LabelFormatError(
                f"{self.path}: an images folder goes with COCO labels only ({kind} labels name "
                "their images themselves)"
            )
        clip = {"clip_boxes": clip_boxes}
        if kind == "voc":
            return read_voc_folder(self.path, split=self.split, class_names=class_names, **clip)
        if kind == "coco":
            return read_coco(self.path, images=self.images, class_names=class_names, **clip)
        if kind == "yolo":
            return read_yolo(self.path, split=self.split, class_names=class_names, **clip)
        return read_lines(self.path, class_names, **clip)


def read_lines(
    path: str | os.PathLike, class_names: Sequence[str] | None, *, clip_boxes: bool = True
) -> LabelSet:
    """The reference implementation's lines (``data.annotation_lines``), checked as the other
    readers check: a missing or unreadable image is skipped, boxes are clipped to the image
    (whose size is read from its header) unless ``clip_boxes`` is False, which keeps them as
    written and reports them (scoring)."""
    if class_names is None:
        raise LabelFormatError(f"{path}: annotation lines hold class ids only: give --classes")
    try:
        loaded = load_annotation_lines(path, len(class_names))
    except (OSError, UnicodeDecodeError) as err:
        raise LabelFormatError(f"{path}: cannot be read ({err})") from None
    issues, annotations = list(loaded.issues), []
    for ann in loaded.annotations:
        try:
            width, height = read_image_size(ann.image_path)
        except ImageReadError as err:
            problem = str(err).removeprefix(f"{ann.image_path}: ")
            issues.append(FileIssue(ann.image_path, f"{problem} (in {path})", "image skipped"))
            continue
        high = np.array([width - 1, height - 1, width - 1, height - 1], np.float32)
        clipped = np.clip(ann.boxes, 0, high)
        boxes = clipped if clip_boxes else ann.boxes
        keep = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
        moved = int((clipped != ann.boxes).any(axis=1).sum())
        if moved:
            what = "box dropped" if not keep.all() else "box clipped"
            what = what if clip_boxes else "scored as given"
            issues.append(
                FileIssue(ann.image_path, f"{moved} boxes outside the image (in {path})", what)
            )
        annotations.append(
            replace(
                ann,
                boxes=boxes[keep],
                labels=ann.labels[keep],
                difficult=ann.difficult[keep],
                width=width,
                height=height,
            )
        )
    return LabelSet(annotations, issues, list(class_names), str(path), "lines")


# what data sets call their training and validation splits, first match wins (VOC2007 trains
# on "trainval"; Roboflow exports say "valid")
ROLE_NAMES = {"train": ("train", "training", "trainval"), "val": ("val", "valid", "validation")}


def role_source(
    path: str,
    role: str,
    *,
    fmt: str = "auto",
    images: str | None = None,
    required: bool = True,
    split: str | None = None,
) -> LabelSource | None:
    """``path`` as the ``role`` (``train`` or ``val``) split: ``split`` when given, else its
    split of that name (or an alias: ``training``, ``trainval``; ``valid``, ``validation``),
    else the whole source when it has no splits or, when ``required``, only one.

    Returns None when the source has splits but no ``role`` one and ``required`` is False.

    Raises:
        LabelFormatError: ``split`` is not one of the source's splits; a source with several
            splits, none named ``role``, when ``required`` (reading all of it would mix the
            other splits in).
    """
    source = LabelSource(path, fmt, None, images)
    splits = source.splits()
    if split is not None:
        if split not in splits:
            have = ", ".join(splits) or "none"
            raise LabelFormatError(f"{path}: no split {split!r} (it has: {have})")
        return replace(source, split=split)
    for name in ROLE_NAMES.get(role, (role,)):
        if name in splits:
            return replace(source, split=name)
    if not required:
        return None
    if len(splits) == 1:  # one split is the whole source (a converter's "all")
        return replace(source, split=splits[0])
    if splits:
        names = "/".join(ROLE_NAMES.get(role, (role,)))
        raise LabelFormatError(
            f"{path} has the splits {', '.join(splits)} but none named {names}: point at the "
            "one to use (a VOC ImageSets/Main/<split>.txt, a YOLO images/<split> folder; "
            "eval.py --split <split>)"
        )
    return source


def train_val_sources(
    train: str,
    val: str | None = None,
    *,
    fmt: str = "auto",
    train_images: str | None = None,
    val_images: str | None = None,
) -> tuple[LabelSource, LabelSource | None]:
    """The training source and the evaluation one: ``val`` (its ``val`` split where it has
    splits), else the ``val`` split of ``train`` where it has one (a data YAML, a VOC folder
    with ImageSets/Main/val.txt, a YOLO folder with images/val), else None."""
    train_source = role_source(train, "train", fmt=fmt, images=train_images)
    if val is not None:
        return train_source, role_source(val, "val", fmt=fmt, images=val_images)
    return train_source, role_source(train, "val", fmt=fmt, images=val_images, required=False)


def write_labels(
    labels: LabelSet,
    fmt: str,
    out: str | os.PathLike,
    *,
    split: str,
    overwrite: bool = False,
) -> WriteReport:
    """Writes ``labels`` as ``fmt`` (one of ``WRITE_FORMATS``) into the folder ``out``.

    Other splits already in ``out`` stay; a file of this output that exists with other
    content is replaced only with ``overwrite``.

    Raises:
        LabelFormatError: a split name that is not a file name, names that conflict with a
            names file already in ``out``, class names that cannot be written, no image to
            write (nothing is written then).
        OutputPathError: an existing file would change (without ``overwrite``), or a file
            cannot be written.
    """
    writers = {"voc": write_voc, "coco": write_coco, "yolo": write_yolo}
    if fmt not in writers:
        raise InputError(f"cannot write {fmt!r} labels: one of {', '.join(WRITE_FORMATS)}")
    return writers[fmt](labels, out, split, overwrite=overwrite)


def input_paths(source: LabelSource, labels: LabelSet) -> list[str]:
    """Every path a conversion reads: the source, its whole dataset folder (an output inside
    it would join the other splits: a YOLO split's ``images/<split>``, a COCO file's
    ``annotations/``), the images folder, and the folder of each image and YOLO label file
    (``utils.paths.check_apart`` keeps the output away from all of them)."""
    path = Path(source.path)
    paths = {source.path, source.images or ""}
    kind = labels.format
    if kind == "voc":
        paths.add(str(path.parents[2] if is_image_set_file(path) else path))
    elif kind == "yolo" and path.suffix in (".yaml", ".yml"):
        paths.add(str(read_data_yaml(path).root))
    elif kind == "yolo" and os.path.isdir(path):
        paths.add(str(yolo_root(path)))
    elif kind == "coco" and path.parent.name == "annotations":
        paths.add(str(path.parent.parent))
    for ann in labels.annotations:
        paths.add(str(Path(ann.image_path).parent))
        if kind == "yolo":
            paths.add(str(label_path(ann.image_path).parent))
    return sorted(p for p in paths if p)


def convert_labels(
    src: str | os.PathLike,
    to: str,
    out: str | os.PathLike,
    *,
    fmt: str = "auto",
    images: str | None = None,
    class_names: Sequence[str] | None = None,
    split: str | None = None,
    overwrite: bool = False,
    check: Callable[[LabelSet], None] | None = None,
) -> tuple[LabelSet, WriteReport]:
    """Reads ``src`` and writes it as ``to`` into ``out``.

    ``split`` is the split read where the source has several (all of it otherwise) and the
    split's name in ``out``; by default the name is the source's own split name (a COCO file's
    name without ``instances_``, an image set's, an ``images/<split>`` folder's) made a file
    name, else ``all``. ``overwrite``: see ``write_labels``. ``check`` sees the labels read
    before anything is written, and may refuse them by raising.

    Raises:
        OutputPathError: ``out`` is, contains or lies inside anything the conversion reads
            (checked before anything is written), or see ``write_labels``.
        FileNotFoundError, LabelFormatError: the source cannot be used, or see
            ``write_labels``.
    """
    source = LabelSource(str(src), fmt, None, images)
    kind = source.kind  # an unknown source is named before the output is looked at
    check_apart(out, [src, images or ""], flag="--out")
    if split is not None:
        check_split_name(split)
        if kind in ("voc", "yolo"):
            source = replace(source, split=split)
    labels = source.load(class_names)
    check_apart(out, input_paths(source, labels), flag="--out")
    if check is not None:
        check(labels)
    name = split or (safe_component(labels.split) if labels.split else "all")
    report = write_labels(labels, to, out, split=name, overwrite=overwrite)
    return labels, report
