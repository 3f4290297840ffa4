"""Detection metrics: VOC AP exactly as the devkit defines it, P/R/F1, and COCO AP.

Inputs are flat arrays (one row per box) with an image index column, so that a VOC07-test-sized
evaluation (4,952 images x 100 detections) runs in about a second:

- detections: ``image`` (N,) int, ``boxes`` (N, 4) xyxy 0-based pixels, ``scores`` (N,),
  ``labels`` (N,) int.
- ground truth: ``image`` (M,) int, ``boxes`` (M, 4), ``labels`` (M,), ``difficult`` (M,) bool.

VOC protocol (VOCevaldet.m): per class, detections sorted by decreasing score (stable); each
takes the same-class ground truth of its image with the highest IoU, computed with the +1
pixel convention (w = x2 - x1 + 1). If IoU >= threshold: a difficult box -> ignored (neither
TP nor FP); an unmatched box -> TP; an already matched box -> FP (no fallback to the next
best box). Otherwise FP. npos counts non-difficult boxes. The greedy matching is vectorised:
the best box of a detection never depends on earlier matches, so a detection is a TP exactly
when it is the first (in score order) to claim its box.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from utils.detections import (
    Detections,
    RowProblem,
    count_of,
    list_positions,
    parse_json_rows,
)


@dataclass
class BoxSet:
    """Boxes of many images as flat arrays (see module docstring)."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None  # detections
    difficult: np.ndarray | None = None  # ground truth

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, np.int64).reshape(-1)
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        if self.difficult is not None:
            self.difficult = np.asarray(self.difficult, bool).reshape(-1)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_detections(
        cls, detections: Sequence[Detections], images: Sequence[int] | None = None
    ) -> BoxSet:
        """The detections of many images as one flat set.

        Args:
            detections: per image, boxes xyxy in original 0-based pixels.
            images: the image index of each entry (default: its position).

        Returns:
            A ``BoxSet`` with ``scores``, one row per detection, in the order given.
        """
        if images is None:
            images = range(len(detections))
        counts = [len(d) for d in detections]
        if not detections:
            return cls([], np.zeros((0, 4)), [], scores=[])
        return cls(
            np.repeat(np.asarray(images, np.int64), counts),
            np.concatenate([d.boxes for d in detections]),
            np.concatenate([d.labels for d in detections]),
            scores=np.concatenate([d.scores for d in detections]),
        )

    @classmethod
    def concat(cls, parts: list[BoxSet]) -> BoxSet:
        def cat(name: str):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        return cls(cat("image"), cat("boxes"), cat("labels"), cat("scores"), cat("difficult"))


@dataclass
class ClassResult:
    """Per-class outcome: APs, counts, and the PR curve in score order."""

    ap_voc07: float
    ap_voc12: float
    num_gt: int  # non-difficult ground truth (npos)
    num_det: int
    scores: np.ndarray = field(repr=False)  # sorted decreasing
    tp: np.ndarray = field(repr=False)  # 1 = TP, 0 = FP, for non-ignored detections
    recall: np.ndarray = field(repr=False)
    precision: np.ndarray = field(repr=False)


def ap_voc07(recall: np.ndarray, precision: np.ndarray) -> float:
    """11-point AP: mean over t in 0, 0.1, .., 1 of the max precision at recall >= t."""
    ap = 0.0
    # MATLAB's 0:0.1:1 (the devkit's) builds 0.6 and 0.7 from the far end: exactly 1 - 4 * 0.1
    # and 1 - 3 * 0.1, where linspace gives 0.6000000000000001 (recalls of exactly 0.6 differ)
    for t in np.r_[np.arange(6) * 0.1, 1 - np.arange(4, -1, -1) * 0.1]:
        mask = recall >= t
        ap += (precision[mask].max() if mask.any() else 0.0) / 11
    return float(ap)


def ap_voc12(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone (right-to-left max) precision envelope (VOC2010+)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def _best_gt(
    det_boxes: np.ndarray, det_image: np.ndarray, gt_boxes: np.ndarray, gt_image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each detection: the max IoU (+1 convention) with the GT of its image, and the
    position of that GT in ``gt_*`` (-1 when the image has none). Ties take the first GT."""
    n = len(det_boxes)
    if n == 0 or len(gt_boxes) == 0:
        return np.zeros(n), np.full(n, -1)
    order = np.argsort(gt_image, kind="stable")
    gt_boxes, gt_image = gt_boxes[order], gt_image[order]
    starts = np.searchsorted(gt_image, det_image, "left")
    counts = np.searchsorted(gt_image, det_image, "right") - starts
    width = int(counts.max())
    if width == 0:
        return np.zeros(n), np.full(n, -1)
    slot = np.arange(width)
    valid = slot[None, :] < counts[:, None]  # (N, G)
    index = np.where(valid, starts[:, None] + slot[None, :], 0)
    g = gt_boxes[index]  # (N, G, 4)
    d = det_boxes[:, None, :]
    iw = np.minimum(d[..., 2], g[..., 2]) - np.maximum(d[..., 0], g[..., 0]) + 1
    ih = np.minimum(d[..., 3], g[..., 3]) - np.maximum(d[..., 1], g[..., 1]) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_d = (d[..., 2] - d[..., 0] + 1) * (d[..., 3] - d[..., 1] + 1)
    area_g = (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)
    iou = np.where(valid & (inter > 0), inter / (area_d + area_g - inter), -np.inf)
    best = iou.argmax(1)
    best_iou = iou[np.arange(n), best]
    has = np.isfinite(best_iou)
    return np.where(has, best_iou, 0.0), np.where(has, order[index[np.arange(n), best]], -1)


def evaluate_class(dets: BoxSet, gts: BoxSet, cls: int, iou_thresh: float = 0.5) -> ClassResult:
    """VOC matching and both APs for one class."""
    dm, gm = dets.labels == cls, gts.labels == cls
    d_boxes, d_image, d_scores = dets.boxes[dm], dets.image[dm], dets.scores[dm]
    g_boxes, g_image, g_diff = gts.boxes[gm], gts.image[gm], gts.difficult[gm]
    npos = int((~g_diff).sum())
    order = np.argsort(-d_scores, kind="stable")
    d_boxes, d_image, d_scores = d_boxes[order], d_image[order], d_scores[order]
    best_iou, best = _best_gt(d_boxes, d_image, g_boxes, g_image)
    hit = (best >= 0) & (best_iou >= iou_thresh)
    ignored = hit & np.append(g_diff, False)[best]  # best == -1 picks the appended False
    claim = hit & ~ignored
    first = np.zeros(len(d_scores), bool)
    if claim.any():
        claimed = np.flatnonzero(claim)
        _, first_pos = np.unique(best[claimed], return_index=True)
        first[claimed[first_pos]] = True
    keep = ~ignored
    tp = first[keep].astype(np.float64)
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / max(npos, 1) if npos else np.zeros_like(ctp)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return ClassResult(
        ap_voc07(recall, precision) if npos else 0.0,
        ap_voc12(recall, precision) if npos else 0.0,
        npos,
        int(keep.sum()),
        d_scores[keep],
        tp,
        recall,
        precision,
    )


def evaluate_voc(dets: BoxSet, gts: BoxSet, num_classes: int, iou_thresh: float = 0.5) -> dict:
    """Per-class results and the means over classes that have (non-difficult) ground truth.

    Returns:
        ``{"per_class": [ClassResult], "voc07_map": float, "voc12_map": float,
        "classes_with_gt": [int]}``
    """
    if gts.difficult is None:
        gts.difficult = np.zeros(len(gts), bool)
    per_class = [evaluate_class(dets, gts, c, iou_thresh) for c in range(num_classes)]
    with_gt = [c for c, r in enumerate(per_class) if r.num_gt > 0]
    mean = lambda v: float(np.mean(v)) if v else 0.0  # noqa: E731
    return {
        "per_class": per_class,
        "voc07_map": mean([per_class[c].ap_voc07 for c in with_gt]),
        "voc12_map": mean([per_class[c].ap_voc12 for c in with_gt]),
        "classes_with_gt": with_gt,
    }


def best_f1(per_class: list[ClassResult], classes: list[int], grid: int = 1000) -> dict:
    """Precision, recall and F1 per class at the one score threshold that maximises mean F1.

    Returns ``{"threshold", "precision": (C,), "recall": (C,), "f1": (C,)}`` over ``classes``.
    """
    thresholds = np.linspace(0, 1, grid + 1)
    p = np.zeros((len(classes), len(thresholds)))
    r = np.zeros_like(p)
    for row, c in enumerate(classes):
        res = per_class[c]
        if len(res.scores) == 0:
            continue
        # number of detections with score >= t, for every t (scores are sorted decreasing)
        kept = len(res.scores) - np.searchsorted(res.scores[::-1], thresholds, "left")
        idx = np.clip(kept - 1, 0, None)
        p[row] = np.where(kept > 0, res.precision[idx], 0.0)
        r[row] = np.where(kept > 0, res.recall[idx], 0.0)
    f1 = 2 * p * r / np.maximum(p + r, 1e-16)
    best = int(f1.mean(0).argmax()) if len(classes) else 0
    return {
        "threshold": float(thresholds[best]),
        "precision": p[:, best],
        "recall": r[:, best],
        "f1": f1[:, best],
    }


def to_coco(dets: BoxSet, gts: BoxSet, num_classes: int, image_sizes: np.ndarray | None = None):
    """Builds pycocotools ``COCO`` ground truth and detections from the same arrays.

    Boxes become COCO ``[x, y, w, h]`` without the +1 convention. Difficult objects become
    ``iscrowd=1`` regions, which COCOeval treats as ignore regions (detections matched to them
    count neither way). ``image_sizes`` (I, 2) width, height is optional metadata.
    """
    from pycocotools.coco import COCO

    num_images = int(max(gts.image.max(initial=-1), dets.image.max(initial=-1)) + 1)
    images = [
        {
            "id": i,
            "width": int(image_sizes[i][0]) if image_sizes is not None else 0,
            "height": int(image_sizes[i][1]) if image_sizes is not None else 0,
        }
        for i in range(num_images)
    ]
    difficult = gts.difficult if gts.difficult is not None else np.zeros(len(gts), bool)
    wh = gts.boxes[:, 2:] - gts.boxes[:, :2]
    annotations = [
        {
            "id": k + 1,
            "image_id": int(gts.image[k]),
            "category_id": int(gts.labels[k]),
            "bbox": [
                float(gts.boxes[k, 0]),
                float(gts.boxes[k, 1]),
                float(wh[k, 0]),
                float(wh[k, 1]),
            ],
            "area": float(wh[k, 0] * wh[k, 1]),
            "iscrowd": int(difficult[k]),
        }
        for k in range(len(gts))
    ]
    coco_gt = COCO()
    coco_gt.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in range(num_classes)],
    }
    coco_gt.createIndex()
    if len(dets) == 0:
        return coco_gt, None
    dwh = dets.boxes[:, 2:] - dets.boxes[:, :2]
    rows = np.column_stack([dets.image, dets.boxes[:, :2], dwh, dets.scores, dets.labels])
    coco_dt = coco_gt.loadRes(rows)
    return coco_gt, coco_dt


def evaluate_coco(dets: BoxSet, gts: BoxSet, num_classes: int) -> dict:
    """COCO AP (0.50:0.95), AP50, AP75, AP small/medium/large through pycocotools."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    keys = [
        "coco_map",
        "coco_map50",
        "coco_map75",
        "coco_map_small",
        "coco_map_medium",
        "coco_map_large",
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        coco_gt, coco_dt = to_coco(dets, gts, num_classes)
        if coco_dt is None or len(gts) == 0:
            return dict.fromkeys(keys, 0.0)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: max(0.0, float(v)) for k, v in zip(keys, ev.stats[:6])}


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
          pixels): clipped to the image, as ``predict.py`` writes boxes;
        - every box within [0, 1] x [0, 1]: possibly normalised coordinates, not pixels;
        - a class id written as an integral float (2.0): read as that integer.
    An image's size is its ``image_sizes`` entry, else its record's ``width`` and ``height``;
    for an image of unknown size only the bounds at 0 apply (x2 < 0 or y2 < 0: outside;
    x1 < 0 or y1 < 0: clipped to 0).

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
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not data.strip():
        raise ValueError(f"{path}: empty file; expected a JSON list of per-image records")
    with _gc_paused():
        try:
            records = json.loads(data)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
            ) from None
        except ValueError as err:  # bytes that are not UTF-8/16/32 text
            raise ValueError(f"{path}: not a JSON text ({err})") from None
        try:
            return _read_records(path, records, image_ids, class_names, image_sizes)
        finally:
            del records  # freed here, still without collector passes


def _record_fields(path, records) -> tuple[list[str], list[list]]:
    """Each record's ``image_id`` as text and its ``detections`` list; raises ValueError
    unless ``records`` is a non-empty list of objects with both."""
    if not isinstance(records, list):
        kind = {dict: "an object", str: "a string"}.get(type(records), "a number or constant")
        raise ValueError(f"{path}: expected a JSON list of per-image records, found {kind}")
    if not records:
        raise ValueError(f"{path}: an empty list; expected one record per image")
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
        raise ValueError(
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


def _fit_to_images(boxes: np.ndarray, wh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes clipped to their image ((N, 2) width, height; inf: unknown), and masks of the
    boxes entirely outside it and of those partly outside it (clipped). Boxes are valid
    (x1 <= x2, y1 <= y2) here."""
    x_hi, y_hi = wh[:, 0] - 1, wh[:, 1] - 1  # the last pixel, 0-based
    x1, y1, x2, y2 = boxes.T
    outside = (x2 < 0) | (y2 < 0) | (x1 > x_hi) | (y1 > y_hi)
    partly = ~outside & ((x1 < 0) | (y1 < 0) | (x2 > x_hi) | (y2 > y_hi))
    if partly.any():
        hi = np.column_stack([x_hi, y_hi, x_hi, y_hi])
        boxes = np.where(partly[:, None], np.clip(boxes, 0, hi), boxes)
    return boxes, outside, partly


def _read_records(
    path, records, image_ids: Sequence[str], class_names: Sequence[str], image_sizes
) -> tuple[BoxSet, list[str]]:
    """``read_detections_json`` after json.loads."""
    keys, lists = _record_fields(path, records)
    index = {str(image_id): i for i, image_id in enumerate(image_ids)}
    position = np.fromiter((index.get(key, -1) for key in keys), np.int64, len(keys))
    if not (position >= 0).any():
        split = f"such as {str(image_ids[0])!r}" if len(image_ids) else "none"
        raise ValueError(
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
        boxes, outside, partly = _fit_to_images(boxes, frame[image])
        if outside.any():
            problem = RowProblem("with a box entirely outside its image", np.flatnonzero(outside))
            errors.append(problem.describe(record[outside], "record"))
        if partly.any():
            what = "with a box partly outside its image, clipped to it"
            problem = RowProblem(what, np.flatnonzero(partly), error=False)
            warnings.append(f"{path}: {problem.describe(record[partly], 'record')}")
        if len(boxes) and boxes.max() <= 1 and (frame > 2).any():
            warnings.append(
                f"{path}: every box lies within [0, 1] x [0, 1]: normalised coordinates? "
                "xyxy are read as pixels"
            )
    if errors:
        raise ValueError(f"{path}: " + "; ".join(errors))
    return BoxSet(image, boxes, parsed.labels, scores=parsed.scores), warnings
