"""One VOC folder as a labels source and target: ``Annotations/*.xml`` and ``JPEGImages/``,
optionally ``ImageSets/Main/<split>.txt`` and a ``classes.txt``, with or without a VOCdevkit
around it (``data.voc`` reads whole VOCdevkit trees by ``YEAR:SET``).

The XMLs are parsed by ``data.voc.parse_voc_xml``, so every guarantee of that reader holds:
1-based pixels become 0-based, boxes are clipped to ``<size>``, DTDs are refused, a bad file is
reported and skipped.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from data.label_io import (
    LabelFormatError,
    LabelSet,
    OutputFile,
    WriteReport,
    begin_write,
    check_names_file,
    commit_files,
    number_text,
    place_images,
    read_user_text,
)
from data.voc import IMAGE_SUFFIXES, Annotation, FileIssue, image_set_ids, parse_voc_xml
from data.xml_safe import read_xml
from utils.classes import class_name_problem, read_class_names

NAMES_FILE = "classes.txt"  # the class order, written next to Annotations/ by ``write_voc``


def is_voc_folder(path: Path) -> bool:
    return (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir()


def is_image_set_file(path: Path) -> bool:
    """``<voc folder>/ImageSets/Main/<name>.txt``."""
    parts = path.parts
    return (
        path.suffix == ".txt"
        and len(parts) >= 4
        and parts[-3:-1] == ("ImageSets", "Main")
        and is_voc_folder(path.parents[2])
    )


def devkit_years(path: Path) -> list[Path]:
    """The ``VOC*`` VOC folders directly under ``path`` (a VOCdevkit root), sorted."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.glob("VOC*") if is_voc_folder(p))


def voc_folder_of(path: Path) -> Path:
    """The VOC folder ``path`` names: itself, or the one ``VOC<year>`` of a VOCdevkit root.

    Raises:
        LabelFormatError: neither, or a VOCdevkit with several years (they are listed).
    """
    if is_voc_folder(path):
        return path
    years = devkit_years(path)
    if len(years) == 1:
        return years[0]
    if years:
        raise LabelFormatError(
            f"{path} holds {len(years)} VOC folders ({', '.join(p.name for p in years)}): "
            "point at one of them (train.py --voc-root/--train-sets reads several)"
        )
    raise LabelFormatError(f"{path}: not a VOC folder (no Annotations/ and JPEGImages/)")


def voc_splits(path: Path) -> list[str]:
    """The image sets of the VOC folder ``path`` names (``ImageSets/Main/*.txt`` stems)."""
    if is_image_set_file(path):
        return []
    try:
        folder = voc_folder_of(path)
    except LabelFormatError:
        return []
    return sorted(p.stem for p in (folder / "ImageSets" / "Main").glob("*.txt"))


def _all_ids(folder: Path, issues: list[FileIssue]) -> list[str]:
    """Every XML of the folder; images without one are reported (VOC lists them in no set)."""
    ids = sorted(p.stem for p in (folder / "Annotations").glob("*.xml"))
    have = set(ids)
    for image in sorted((folder / "JPEGImages").iterdir()):
        if image.suffix in IMAGE_SUFFIXES and image.stem not in have:
            issues.append(FileIssue(str(image), "annotation missing for image", "skipped"))
    return ids


def _discover(folder: Path, ids: Sequence[str]) -> list[str]:
    """Class names used by the XMLs of ``ids``, sorted (unreadable XMLs are left to the
    reader, which reports them)."""
    names: set[str] = set()
    for image_id in ids:
        try:
            root = read_xml(folder / "Annotations" / f"{image_id}.xml")
        except (ET.ParseError, OSError):
            continue
        for obj in root.iter("object"):
            node = obj.find("name")
            # a name that cannot be a class name (a line break would shift every class after
            # it once written one per line) is left out: its objects are reported as unknown
            if node is not None and node.text and class_name_problem(node.text.strip()) is None:
                names.add(node.text.strip())
    return sorted(names)


def read_voc_folder(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
    clip_boxes: bool = True,
) -> LabelSet:
    """Reads a VOC folder: the image set ``split`` (or the set file ``path`` names), else every
    XML in ``Annotations/`` (``clip_boxes``: see ``data.voc.parse_voc_xml``).

    Class names: ``class_names`` when given, else the folder's ``classes.txt``, else the names
    in the XMLs (sorted). An image is found by its id in ``JPEGImages/`` with a usual suffix,
    else by the XML's ``<filename>``. Missing XMLs or images are reported and skipped.

    Raises:
        LabelFormatError: not a VOC folder, no such image set, an unreadable set file.
    """
    path = Path(path)
    issues: list[FileIssue] = []
    if is_image_set_file(path):
        folder, set_file = path.parents[2], path
    else:
        folder = voc_folder_of(path)
        set_file = folder / "ImageSets" / "Main" / f"{split}.txt" if split else None
        if set_file is not None and not os.path.isfile(set_file):
            have = ", ".join(voc_splits(folder)) or "none"
            raise LabelFormatError(f"{set_file}: no image set {split!r} (this folder has: {have})")
    if set_file is not None:
        ids = image_set_ids(read_user_text(set_file, "image set").splitlines(), set_file, issues)
    else:
        ids = _all_ids(folder, issues)
    if class_names is None and os.path.isfile(folder / NAMES_FILE):
        class_names = read_class_names(folder / NAMES_FILE)
    names = list(class_names) if class_names is not None else _discover(folder, ids)
    annotations = []
    for image_id in ids:
        ann = _read_one(folder, image_id, names, clip_boxes, issues)
        if ann is not None:
            annotations.append(ann)
    return LabelSet(
        annotations,
        issues,
        names,
        str(path),
        "voc",
        set_file.stem if set_file else None,
    )


def _read_one(
    folder: Path, image_id: str, names: Sequence[str], clip_boxes: bool, issues: list[FileIssue]
) -> Annotation | None:
    """The annotation of ``image_id``; None, with the problem in ``issues``, when its XML or
    its image is missing or the XML cannot be read."""
    xml_path = folder / "Annotations" / f"{image_id}.xml"
    image = next(
        (
            p
            for s in IMAGE_SUFFIXES
            if os.path.isfile(p := folder / "JPEGImages" / f"{image_id}{s}")
        ),
        None,
    )
    if not os.path.isfile(xml_path):  # (Path.is_file raises for overlong names)
        what = "annotation missing for image" if image else "annotation and image missing"
        issues.append(FileIssue(str(xml_path), what, "skipped"))
        return None
    ann, problems = parse_voc_xml(
        xml_path, names, str(image) if image else None, clip_boxes=clip_boxes
    )
    issues += problems
    if ann is not None and not os.path.isfile(ann.image_path):
        issues.append(FileIssue(ann.image_path, "image missing for annotation", "skipped"))
        return None
    return ann


def _xml(ann: Annotation, filename: str, size: tuple[int, int], names: Sequence[str]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size_node = ET.SubElement(root, "size")
    for tag, value in (("width", size[0]), ("height", size[1]), ("depth", 3)):
        ET.SubElement(size_node, tag).text = str(value)
    for box, label, difficult in zip(ann.boxes, ann.labels, ann.difficult):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = names[int(label)]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = number_text(float(value) + 1.0)  # 1-based
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _strays(folder: Path, planned: set[Path]) -> list[Path]:
    """Images in ``JPEGImages/`` that share an id with a planned image but not its name: the
    reader, finding images by id, could take the old one."""
    stems = {p.stem for p in planned}
    if not folder.is_dir() or not stems:
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.stem in stems and p.suffix in IMAGE_SUFFIXES and p not in planned
    )


def write_voc(
    labels: LabelSet, out: str | os.PathLike, split: str, *, overwrite: bool = False
) -> WriteReport:
    """Writes ``out/Annotations/<id>.xml``, ``out/JPEGImages/<id><suffix>`` (hard-linked or
    copied), ``out/ImageSets/Main/<split>.txt`` and ``out/classes.txt``.

    Coordinates are VOC's 1-based pixels: integers when the box is on the pixel grid (always
    for boxes read from VOC), else the shortest decimal that reads back to the same float32.
    Ids become file names through ``output_image_names`` (white space too: an image set ends
    an id there). Everything is checked before the first write (``commit_files``): other
    splits already in ``out`` stay, but no existing file changes without ``overwrite``.

    Raises:
        LabelFormatError: ``out/classes.txt`` lists other classes; a split name or class
            names that cannot be written, no image to write.
        OutputRefusedError: a file exists with other content (without ``overwrite``).
        OutputPathError: a file cannot be written.
    """
    out = Path(out)
    report = begin_write(labels, out, split, "voc")
    check_names_file(out / NAMES_FILE, labels.class_names)
    placed = place_images(labels, report, out / "JPEGImages", spaces=False)
    xmls = []
    for image in placed:
        xml = _xml(image.ann, image.filename, image.size, labels.class_names)
        xmls.append(OutputFile(out / "Annotations" / f"{image.ann.image_id}.xml", xml))
        report.objects += len(image.ann.labels)
    report.label_files += len(placed)
    set_file = out / "ImageSets" / "Main" / f"{split}.txt"
    names = out / NAMES_FILE
    index = [
        OutputFile(set_file, "".join(f"{p.ann.image_id}\n" for p in placed)),
        OutputFile(names, "".join(f"{n}\n" for n in labels.class_names), merged=True),
    ]
    images = [p.file for p in placed]
    strays = _strays(out / "JPEGImages", {f.path for f in images})
    commit_files(out, images + xmls + index, overwrite=overwrite, strays=strays)
    report.files += [set_file, names]
    if odd_suffixes := sum(Path(p.filename).suffix not in IMAGE_SUFFIXES for p in placed):
        report.notes.append(
            f"{odd_suffixes} images are not {'/'.join(IMAGE_SUFFIXES)}: --train-labels finds "
            "them through <filename>, --voc-root does not"
        )
    return report
