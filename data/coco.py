"""COCO object-detection JSON as a labels source and target.

Categories become labels 0..N-1 in category-id order, named by the categories. ``bbox`` is
continuous ``[x, y, w, h]`` (see ``data.label_io`` for the pixel convention). ``iscrowd``
objects are read as difficult: both are regions that evaluation ignores (the VOC metric skips
difficult objects, COCOeval crowd regions), and difficult objects are written back as
``iscrowd: 1``. Images without annotations are kept as negatives; image sizes are the
records' ``width``/``height``.

One JSON holds a whole split, so a file that is not JSON or not a COCO file is an error naming
it, and so are a key given twice in one object (JSON readers keep the last) and categories
that would not read back as the same classes (a record without an integer id or a string
name, whose omission would shift the labels after it; a repeated id or name; a blank name or
one with a line break); every other problem (a record or field of the wrong
type, an unknown category or image, a box without area or outside its image, a missing image
file) is reported per record and that record skipped.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from data.label_io import (
    LabelFormatError,
    LabelSet,
    OutputFile,
    WriteReport,
    annotation,
    begin_write,
    brief,
    check_unique_ids,
    commit_files,
    continuous_box,
    continuous_edges,
    finite_numbers,
    json_number,
    place_images,
    read_image_size,
    read_user_text,
    relative_path_problem,
    remap_classes,
)
from data.voc import Annotation, FileIssue
from utils.classes import class_name_problem
from utils.sources import ImageReadError


def coco_split_name(json_path: str | os.PathLike) -> str:
    """``instances_val2017.json`` -> ``val2017``; ``train.json`` -> ``train``."""
    return Path(json_path).stem.removeprefix("instances_") or Path(json_path).stem


def image_folder_candidates(json_path: str | os.PathLike) -> list[Path]:
    """Where a COCO file's images are looked for, in order, when no folder is given:
    ``<root>/images/<split>``, ``<root>/<split>``, ``<root>/images`` (``<root>`` being the
    folder above the JSON's, as in ``coco/annotations/instances_val2017.json`` next to
    ``coco/val2017/``) and the JSON's own folder (exports that put both together)."""
    json_path = Path(json_path)
    folder, split = json_path.parent, coco_split_name(json_path)
    root = folder.parent
    return [root / "images" / split, root / split, root / "images", folder]


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _object(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object that refuses a key given twice: JSON readers keep the last one, so a
    second ``"images"`` (or ``"category_id"`` in one record) would silently replace the first."""
    obj = dict(pairs)
    if len(obj) != len(pairs):  # only then can a key be repeated
        seen: set[str] = set()
        raise _RepeatedKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _load(json_path: Path) -> dict:
    text = read_user_text(json_path, "COCO file")
    try:
        payload = json.loads(text, object_pairs_hook=_object)
    except _RepeatedKey as err:
        raise LabelFormatError(
            f"{json_path}: key {brief(err.key)} given twice in one JSON object: which one is meant?"
        ) from None
    except json.JSONDecodeError as err:
        raise LabelFormatError(
            f"{json_path}: not valid JSON (line {err.lineno} column {err.colno}: {err.msg})"
        ) from None
    except RecursionError:
        raise LabelFormatError(f"{json_path}: JSON nested too deeply for a COCO file") from None
    except ValueError:  # the only other failure: Python's limit on the digits of an integer
        raise LabelFormatError(
            f"{json_path}: not valid JSON for this reader (an integer of more than "
            f"{sys.get_int_max_str_digits()} digits)"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise LabelFormatError(f"{json_path}: not a COCO annotation file (no 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(payload.get(key, []), list):
            raise LabelFormatError(f"{json_path}: '{key}' is not a list")
    return payload


def _categories(records: list, json_path: str) -> tuple[list[str], dict[int, int]]:
    """Class names in category-id order and category id -> label.

    Raises:
        LabelFormatError: a record that is not an object, an id that is not an integer, a
            name that is not a string (leaving such a record out would shift the labels of
            every category after it), a repeated category id, a repeated name, or a name that
            cannot be a class name (blank, a line break: it would read back as other classes
            once written one per line).
    """
    valid: dict[int, str] = {}
    for k, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise LabelFormatError(f"{json_path}: category record {k} is not an object")
        cid, name = rec.get("id"), rec.get("name")
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise LabelFormatError(
                f"{json_path}: category record {k}: id {brief(cid)} is not an integer"
            )
        if not isinstance(name, str):
            raise LabelFormatError(
                f"{json_path}: category record {k}: name {brief(name)} is not a string"
            )
        if cid in valid:
            raise LabelFormatError(f"{json_path}: category id {brief(cid)} repeated (record {k})")
        if (problem := class_name_problem(name.strip() or name)) is not None:
            raise LabelFormatError(
                f"{json_path}: category id {brief(cid)} (record {k}): name {brief(name)} {problem}"
            )
        valid[cid] = name.strip()
    names: list[str] = []
    label_of: dict[int, int] = {}
    for cid in sorted(valid):
        name = valid[cid]
        if name in names:
            first = next(c for c in sorted(valid) if valid[c] == name)
            raise LabelFormatError(
                f"{json_path}: category id {brief(cid)} repeats the name {brief(name)} of "
                f"category id {brief(first)}"
            )
        label_of[cid] = len(names)
        names.append(name)
    return names, label_of


def _image_folder(json_path: Path, images: list, given: str | os.PathLike | None) -> Path:
    if given is not None:
        if not os.path.isdir(given):
            raise LabelFormatError(f"{given}: images folder not found (for {json_path})")
        return Path(given)
    first = next(
        (
            r["file_name"]
            for r in images
            if isinstance(r, dict)
            and isinstance(r.get("file_name"), str)
            and relative_path_problem(r["file_name"]) is None
        ),
        None,
    )
    candidates = image_folder_candidates(json_path)
    if first is None:
        return json_path.parent
    for folder in candidates:
        if os.path.isfile(folder / first):
            return folder
    tried = ", ".join(str(c) for c in candidates)
    raise LabelFormatError(
        f"{json_path}: its images (first: {first}) are in none of {tried}; give the images "
        "folder (--images, --train-images or --val-images)"
    )


def _field_problem(rec: dict) -> str | None:
    """What is of the wrong type in an annotation record (the field and its value), or None:
    an id that is a list or an object cannot be looked up, and guessing would score the box
    against another image or class."""
    iid, cid = rec.get("image_id"), rec.get("category_id")
    if not isinstance(iid, (int, str)) or isinstance(iid, bool):
        return f"image_id {brief(iid)} is not an integer or a string"
    if not isinstance(cid, int) or isinstance(cid, bool):
        return f"category_id {brief(cid)} is not an integer"
    return None


def _size(rec: dict) -> tuple[int, int] | None:
    w, h = rec.get("width"), rec.get("height")
    values = finite_numbers([w, h]) if w is not None and h is not None else None
    if values is None or not all(v > 0 and v == int(v) for v in values):
        return None
    return int(values[0]), int(values[1])


def read_coco(
    json_path: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    clip_boxes: bool = True,
) -> LabelSet:
    """Reads a COCO file; ``images`` is the folder its ``file_name``s are relative to (default:
    the first of ``image_folder_candidates`` holding the first image). With ``class_names``,
    labels index that list, matched by category name; ``clip_boxes``: see
    ``data.label_io.continuous_box``.

    Raises:
        FileNotFoundError: no such file.
        LabelFormatError: the file cannot be read, is not UTF-8 JSON (or nested too deeply)
            or not COCO, its categories repeat an id or a name or have a name that cannot
            be a class name, two images have one id (file name stem), or its images folder
            cannot be found.
    """
    json_path = Path(json_path)
    source = str(json_path)
    payload = _load(json_path)
    issues: list[FileIssue] = []
    names, label_of = _categories(payload.get("categories", []), source)
    folder = _image_folder(json_path, payload["images"], images)
    records, seen = _read_images(payload["images"], folder, source, issues)
    rows: dict[object, list] = {iid: [] for iid in records}
    for k, rec in enumerate(payload.get("annotations", [])):
        iid, row = _read_object(k, rec, records, seen, label_of, source, issues, clip_boxes)
        if row is not None:
            rows[iid].append(row)
    annotations = [annotation(p, i, rows[iid], s) for iid, (p, i, s) in records.items()]
    check_unique_ids(annotations, source)
    labels = LabelSet(annotations, issues, names, source, "coco", coco_split_name(json_path))
    return remap_classes(labels, class_names) if class_names is not None else labels


# an image record as read: id -> (image path, image id (file name stem), size)
_Images = dict[object, tuple[str, str, tuple[int, int]]]


def _read_images(
    records: list, folder: Path, source: str, issues: list[FileIssue]
) -> tuple[_Images, set[object]]:
    """The usable image records, and the ids of all image records, usable or not (the
    annotations of a skipped image are not reported again)."""
    images: _Images = {}
    seen: set[object] = set()
    for k, rec in enumerate(records):
        iid = rec.get("id") if isinstance(rec, dict) else None
        name = rec.get("file_name") if isinstance(rec, dict) else None
        if not isinstance(iid, (int, str)) or isinstance(iid, bool) or not isinstance(name, str):
            issue = FileIssue(
                source, f"image record {k} lacks an id or a file_name", "image skipped"
            )
            issues.append(issue)
            continue
        if iid in seen:
            issues.append(FileIssue(source, f"image id {brief(iid)} repeated", "image skipped"))
            continue
        seen.add(iid)
        if (problem := relative_path_problem(name)) is not None:
            issues.append(
                FileIssue(
                    source,
                    f"image {brief(iid)}: file_name {brief(name)} {problem}",
                    "image skipped",
                )
            )
            continue
        size = _image_size(rec, iid, folder / name, source, issues)
        if size is not None:
            images[iid] = (str(folder / name), Path(name).stem, size)
    return images, seen


def _image_size(
    rec: dict, iid: object, path: Path, source: str, issues: list[FileIssue]
) -> tuple[int, int] | None:
    """The record's size (read from the image, and reported, when the record has no valid
    one); None, reported, when the image is missing or cannot be read."""
    name = rec["file_name"]
    size = _size(rec)
    try:
        if size is None:
            size = read_image_size(path)
            issues.append(
                FileIssue(
                    source,
                    f"image {brief(iid)} ({brief(name)}) has no valid width/height",
                    "size read from the image",
                )
            )
        elif not os.path.isfile(path):
            raise ImageReadError(f"{path}: image missing")
    except ImageReadError as err:
        problem = str(err).removeprefix(f"{path}: ")
        issues.append(
            FileIssue(str(path), f"{problem} (image {brief(iid)} of {source})", "image skipped")
        )
        return None
    return size


def _read_object(
    k: int,
    rec: object,
    images: _Images,
    seen: set[object],
    label_of: dict[int, int],
    source: str,
    issues: list[FileIssue],
    clip_boxes: bool,
) -> tuple[object, tuple | None]:
    """Annotation record ``k`` as its image id and ``(box, label, crowd)`` row; the row is
    None, with the problem in ``issues``, when the box is dropped."""
    if not isinstance(rec, dict):
        issues.append(FileIssue(source, f"annotation record {k} is not an object", "box dropped"))
        return None, None
    what = f"annotation {brief(rec['id']) if 'id' in rec else f'record {k}'}"
    iid, cid, bbox = rec.get("image_id"), rec.get("category_id"), rec.get("bbox")
    if (problem := _field_problem(rec)) is not None:
        issues.append(FileIssue(source, f"annotation record {k}: {problem}", "box dropped"))
        return iid, None
    if iid not in images:
        if iid not in seen:  # a skipped image was reported already
            issues.append(
                FileIssue(source, f"{what}: unknown image id {brief(iid)}", "box dropped")
            )
        return iid, None
    if cid not in label_of:
        issues.append(FileIssue(source, f"{what}: unknown category id {brief(cid)}", "box dropped"))
        return iid, None
    values = finite_numbers(bbox) if isinstance(bbox, list) and len(bbox) == 4 else None
    if values is None:
        issues.append(
            FileIssue(source, f"{what}: bbox {brief(bbox)} is not 4 numbers", "box dropped")
        )
        return iid, None
    x, y, w, h = values
    box, problem, action = continuous_box(x, y, x + w, y + h, images[iid][2], clip_boxes=clip_boxes)
    if problem is not None:
        issues.append(FileIssue(source, f"{what}: bbox {bbox} {problem}", action))
    if box is None:
        return iid, None
    return iid, (box, label_of[cid], _crowd(rec, k, source, issues))


def _crowd(rec: dict, k: int, source: str, issues: list[FileIssue]) -> bool:
    """``iscrowd`` as a flag; a value other than 0 or 1 is reported and read as 0."""
    crowd = rec.get("iscrowd", 0)
    if crowd not in (0, 1):  # JSON values compare with ints safely
        issues.append(
            FileIssue(
                source,
                f"annotation record {k}: iscrowd {brief(crowd)} is not 0 or 1",
                "treated as not crowd",
            )
        )
        return False
    return crowd == 1


def write_coco(
    labels: LabelSet, out: str | os.PathLike, split: str, *, overwrite: bool = False
) -> WriteReport:
    """Writes ``out/annotations/instances_<split>.json`` and the images into
    ``out/images/<split>/`` (hard-linked or copied), where ``read_coco`` finds them.

    Categories get ids 1..N in label order; images and annotations ids 1, 2, ... in order.
    ``bbox`` values are the exact floats (integers when on the pixel grid). ``file_name``s
    are made by ``output_image_names``; everything is checked before the first write
    (``commit_files``: no existing file changes without ``overwrite``).

    Raises:
        LabelFormatError: a split name or class names that cannot be written, no image to
            write.
        OutputRefusedError: a file exists with other content (without ``overwrite``).
        OutputPathError: a file cannot be written.
    """
    out = Path(out)
    report = begin_write(labels, out, split, "coco")
    placed = place_images(labels, report, out / "images" / split)
    images, objects = [], []
    for image_id, image in enumerate(placed, 1):
        width, height = image.size
        images.append(
            {"id": image_id, "file_name": image.filename, "width": width, "height": height}
        )
        objects += _coco_objects(image.ann, image_id, first_id=len(objects) + 1)
    report.objects = len(objects)
    # a source path with undecodable bytes cannot go into UTF-8 as it is
    source = labels.source.encode("utf-8", "replace").decode("utf-8")
    payload = {
        "info": {"description": f"{source} ({labels.format}), converted"},
        "licenses": [],
        "images": images,
        "annotations": objects,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "none"}
            for k, name in enumerate(labels.class_names)
        ],
    }
    path = out / "annotations" / f"instances_{split}.json"
    index = OutputFile(path, json.dumps(payload, ensure_ascii=False))
    commit_files(out, [*(p.file for p in placed), index], overwrite=overwrite)
    report.files.append(path)
    if crowd := sum(int(p.ann.difficult.sum()) for p in placed):
        report.notes.append(
            f"{crowd} difficult objects written as iscrowd=1 (ignored by COCO evaluation, "
            "as VOC ignores difficult ones; COCO trainers usually skip them too)"
        )
    return report


def _coco_objects(ann: Annotation, image_id: int, first_id: int) -> list[dict]:
    """The annotation records of one image's boxes, numbered from ``first_id``."""
    objects = []
    for k, (box, label, difficult) in enumerate(zip(ann.boxes, ann.labels, ann.difficult)):
        x1, y1, x2, y2 = continuous_edges(box)
        w, h = x2 - x1, y2 - y1
        objects.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": int(label) + 1,
                "bbox": [json_number(x1), json_number(y1), json_number(w), json_number(h)],
                "area": json_number(w * h),
                "iscrowd": int(difficult),
                "segmentation": [],
            }
        )
    return objects
