"""Reading a ``predict.py --json`` file for scoring (``eval.py --detections``): every record
checked, the detections gathered into one ``BoxSet``."""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import Sequence
from itertools import chain
from pathlib import Path

import numpy as np

from utils.detections import (
    RowProblem,
    count_of,
    list_positions,
    parse_json_rows,
)
from utils.errors import InputError
from utils.evaluation.metrics import BoxSet


@contextlib.contextmanager
def _gc_paused():
    """Pauses the cyclic garbage collector: parsing half a million detection dicts otherwise
    triggers collector passes that cost about twice the parse itself (JSON makes no cycles)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_detections_json(
    path: str | os.PathLike,
    image_ids: Sequence[str],
    *,
    class_names: Sequence[str] = (),
    image_sizes: np.ndarray | Sequence[tuple[int, int]] | None = None,
) -> tuple[BoxSet, list[str]]:
    """Reads a ``predict.py --json`` file into a detections ``BoxSet``, refusing what would
    score wrong and reporting, with counts, what it reads in a way the file does not say.

    The rule: an error where the file as written would be scored wrong and no one reading of
    it is clearly the intended one; a warning where one reading is (it is applied, and said).
    All rows of the file are read and checked at once by ``utils.detections.parse_json_rows``
    (its docstring lists the per-detection errors and warnings), then against the images:

    Errors (``ValueError`` naming the file; every error found is listed, each with its count
    and first record indices, 0-based positions in the file's list):
        - the file cannot be read, is empty, is not JSON, or is not a non-empty list of
          objects with an ``image_id`` and a ``detections`` list;
        - no record is of an image in ``image_ids`` (wrong split, or ids written otherwise);
        - two records of one image with different detections (which one is right?);
        - a record whose ``width`` x ``height`` differs from its image's size in
          ``image_sizes`` (its boxes are in another pixel frame, e.g. an EXIF-rotated copy);
        - a box that lies entirely outside its image (another frame, such as the network
          input's, or a wrong image).
    Warnings (returned; the file is scored as described):
        - records of images not in ``image_ids``: left out;
        - images of ``image_ids`` without a record: scored as having no detections;
        - a record repeated with the same detections: read once;
        - a box partly outside its image (a coordinate below 0 or above W-1 / H-1 in 0-based
          pixels): scored as given, as the VOC devkit and pycocotools score it (clipping would
          shrink the union, raise the IoU and change the AP);
        - every box within [0, 1] x [0, 1]: possibly normalised coordinates, not pixels;
        - a class id written as an integral float (2.0): read as that integer.
    An image's size is its ``image_sizes`` entry, else its record's ``width`` and ``height``;
    for an image of unknown size only the bounds at 0 apply (x2 < 0 or y2 < 0: outside;
    x1 < 0 or y1 < 0: partly outside).

    Args:
        path: a JSON list of per-image records ``{"image", "image_id", "width", "height",
            "detections": [{"xyxy", "score", "class_id", "class_name"}]}``; xyxy in original
            0-based pixels.
        image_ids: the evaluated images in ground-truth order; a record's ``image_id`` (as
            text) becomes its position here (``BoxSet.image``).
        class_names: the classes file's names; when given, class ids must index them and a
            ``class_name`` must be the name of its id (empty: ids only need to be >= 0).
        image_sizes: (I, 2) width, height of each of ``image_ids`` (0: unknown).

    Returns:
        The detections, in file order, and the warnings (each a line starting with ``path``).

    Raises:
        ValueError: the errors above, in one message starting with ``path``.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not data.strip():
        raise InputError(f"{path}: empty file; expected a JSON list of per-image records")
    with _gc_paused():
        try:
            records = json.loads(data)
        except json.JSONDecodeError as err:
            raise InputError(
                f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
            ) from None
        except ValueError as err:  # bytes that are not UTF-8/16/32 text
            raise InputError(f"{path}: not a JSON text ({err})") from None
        try:
            return _read_records(path, records, image_ids, class_names, image_sizes)
        finally:
            del records  # freed here, still without collector passes


def _record_fields(path, records) -> tuple[list[str], list[list]]:
    """Each record's ``image_id`` as text and its ``detections`` list; raises ValueError
    unless ``records`` is a non-empty list of objects with both."""
    if not isinstance(records, list):
        kind = {dict: "an object", str: "a string"}.get(type(records), "a number or constant")
        raise InputError(f"{path}: expected a JSON list of per-image records, found {kind}")
    if not records:
        raise InputError(f"{path}: an empty list; expected one record per image")
    try:
        ids = [r["image_id"] for r in records]
        lists = [r["detections"] for r in records]
        ok = set(map(type, records)) <= {dict} and set(map(type, lists)) <= {list}
    except (KeyError, TypeError, IndexError):
        ok = False
    if not ok:
        bad = [
            k
            for k, r in enumerate(records)
            if not (isinstance(r, dict) and "image_id" in r and type(r.get("detections")) is list)
        ]
        raise InputError(
            f"{path}: {count_of(len(bad), 'record')} lacking an image_id or a "
            f"detections list ({list_positions(bad, 'record')})"
        )
    return list(map(str, ids)), lists


def _same_image_records(
    path, records: list[dict], lists: list[list], position: np.ndarray
) -> tuple[np.ndarray, list[str], list[str]]:
    """Records to read (indices into ``records``, file order) after repeated images, with
    the errors (repeats that differ) and warnings (identical repeats, read once)."""
    kept = np.flatnonzero(position >= 0)
    order = np.argsort(position[kept], kind="stable")
    sorted_pos = position[kept][order]
    repeat = np.zeros(len(kept), bool)
    repeat[order[1:]] = sorted_pos[1:] == sorted_pos[:-1]
    if not repeat.any():
        return kept, [], []
    first: dict[int, int] = {}
    same, differ = [], []
    for k in kept.tolist():
        p = int(position[k])
        if p not in first:
            first[p] = k
        else:
            (same if lists[k] == lists[first[p]] else differ).append(k)
    errors, warnings = [], []
    if differ:
        errors.append(
            f"{count_of(len(differ), 'record')} with the image_id of an earlier record but "
            f"other detections ({list_positions(differ, 'record')}; e.g. image_id "
            f"{records[differ[0]]['image_id']!r})"
        )
    if same:
        warnings.append(
            f"{path}: {count_of(len(same), 'record')} with the image_id and detections of an "
            f"earlier record, read once ({list_positions(same, 'record')})"
        )
    return kept[~repeat], errors, warnings


def _image_frames(
    records: list[dict], kept: np.ndarray, position: np.ndarray, image_sizes, num_images: int
) -> tuple[np.ndarray, list[str]]:
    """(I, 2) float width, height of each image (inf where unknown: only the bounds at 0
    hold), and the error for records whose own size contradicts their image's."""
    sizes = [(0.0, 0.0)] * num_images
    if image_sizes is not None:
        sizes = list(map(tuple, np.asarray(image_sizes, np.float64).reshape(-1, 2).tolist()))
    mismatch = []
    for k, p in zip(kept.tolist(), position[kept].tolist()):
        w, h = records[k].get("width"), records[k].get("height")
        if not (type(w) in (int, float) and type(h) in (int, float) and w > 0 and h > 0):
            continue
        if not (sizes[p][0] > 0 and sizes[p][1] > 0):
            sizes[p] = (w, h)
        elif (w, h) != sizes[p]:
            mismatch.append(k)
    frame = np.array(sizes, np.float64).reshape(num_images, 2)
    frame[~(frame > 0).all(1)] = np.inf
    if not mismatch:
        return frame, []
    k = mismatch[0]
    r, (w, h) = records[k], sizes[position[k]]
    return frame, [
        f"{count_of(len(mismatch), 'record')} with a width x height other than the annotation's "
        f"({list_positions(mismatch, 'record')}; e.g. {r['width']}x{r['height']} for the "
        f"{w:g}x{h:g} image {r['image_id']!r}): their boxes are in another pixel frame"
    ]


def _outside_images(boxes: np.ndarray, wh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the boxes entirely outside their image ((N, 2) width, height; inf: unknown)
    and of those partly outside it. The boxes themselves are left as they are: the metric
    scores what it is given. Boxes are valid (x1 <= x2, y1 <= y2) here."""
    x_hi, y_hi = wh[:, 0] - 1, wh[:, 1] - 1  # the last pixel, 0-based
    x1, y1, x2, y2 = boxes.T
    outside = (x2 < 0) | (y2 < 0) | (x1 > x_hi) | (y1 > y_hi)
    partly = ~outside & ((x1 < 0) | (y1 < 0) | (x2 > x_hi) | (y2 > y_hi))
    return outside, partly


def _read_records(
    path, records, image_ids: Sequence[str], class_names: Sequence[str], image_sizes
) -> tuple[BoxSet, list[str]]:
    """``read_detections_json`` after json.loads."""
    keys, lists = _record_fields(path, records)
    index = {str(image_id): i for i, image_id in enumerate(image_ids)}
    position = np.fromiter((index.get(key, -1) for key in keys), np.int64, len(keys))
    if not (position >= 0).any():
        split = f"such as {str(image_ids[0])!r}" if len(image_ids) else "none"
        raise InputError(
            f"{path}: no record is of an image of the split ({count_of(len(keys), 'record')} "
            f"with image_ids such as {keys[0]!r}; the split's are {split})"
        )
    warnings = []
    if not (position >= 0).all():
        unknown = np.flatnonzero(position < 0)
        warnings.append(
            f"{path}: {count_of(len(unknown), 'record')} of an image not in the split, left "
            f"out ({list_positions(unknown, 'record')}; e.g. image_id {keys[unknown[0]]!r})"
        )
    kept, errors, repeated = _same_image_records(path, records, lists, position)
    warnings += repeated
    missing = len(image_ids) - len(kept)
    if missing:
        warnings.append(
            f"{path}: {missing} of the {count_of(len(image_ids), 'image')} of the split "
            "without a record, scored as having no detections"
        )
    frame, size_errors = _image_frames(records, kept, position, image_sizes, len(image_ids))
    errors += size_errors

    counts = np.fromiter((len(lists[k]) for k in kept.tolist()), np.int64, len(kept))
    record = np.repeat(kept, counts)  # each row's record
    parsed = parse_json_rows(list(chain.from_iterable(lists[k] for k in kept)), class_names)
    for p in parsed.problems:
        if p.error:
            errors.append(p.describe(record[p.rows], "record"))
        else:
            warnings.append(f"{path}: {p.describe(record[p.rows], 'record')}")
    image = position[record]
    boxes = parsed.boxes
    if not any(p.error for p in parsed.problems):
        outside, partly = _outside_images(boxes, frame[image])
        if outside.any():
            problem = RowProblem("with a box entirely outside its image", np.flatnonzero(outside))
            errors.append(problem.describe(record[outside], "record"))
        if partly.any():
            what = "with a box partly outside its image, scored as given"
            problem = RowProblem(what, np.flatnonzero(partly), error=False)
            warnings.append(f"{path}: {problem.describe(record[partly], 'record')}")
        if len(boxes) and boxes.max() <= 1 and (frame > 2).any():
            warnings.append(
                f"{path}: every box lies within [0, 1] x [0, 1]: normalised coordinates? "
                "xyxy are read as pixels"
            )
    if errors:
        raise InputError(f"{path}: " + "; ".join(errors))
    return BoxSet(image, boxes, parsed.labels, scores=parsed.scores), warnings
