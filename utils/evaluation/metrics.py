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
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from utils.detections import (
    Detections,
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


# COCO's object size ranges in original-image pixels (box w x h, no +1), both ends inclusive as
# in COCOeval: an area of exactly 32^2 is small and medium
COCO_AREA_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, float("inf")),
}


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas in COCO's convention (w = x2 - x1, no +1), the one its size ranges are defined in."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


@dataclass
class ClassMatches:
    """One class's VOC matching outcome: the detections that count, in decreasing score order
    (ties in input order), and the ground truth they are measured against."""

    scores: np.ndarray  # (D,) ignored detections left out
    image: np.ndarray  # (D,) image index of each detection
    tp: np.ndarray  # (D,) bool: True = TP, False = FP
    gt_image: np.ndarray  # (npos,) image index of each counted ground-truth box


def match_class(
    dets: BoxSet,
    gts: BoxSet,
    cls: int,
    iou_thresh: float = 0.5,
    area_range: tuple[float, float] | None = None,
) -> ClassMatches:
    """VOC matching of one class (module docstring), optionally restricted to an object size.

    With ``area_range`` (lo, hi), COCOeval's area-range rule on top of the VOC matching: ground
    truth outside [lo, hi] (``box_area``) is ignored like a difficult box (not counted, and a
    detection whose best box it is is neither TP nor FP), and a false positive (no box at the
    IoU threshold, or a duplicate) whose own area is outside [lo, hi] is ignored. Detections are
    still matched against all ground truth of the class, so a detection of a large object is
    not a false positive of the small range. Unlike COCOeval, a detection takes its best-IoU
    box whatever its size and never falls back to a second box.
    """
    dm, gm = dets.labels == cls, gts.labels == cls
    d_boxes, d_image, d_scores = dets.boxes[dm], dets.image[dm], dets.scores[dm]
    g_boxes, g_image, g_ignore = gts.boxes[gm], gts.image[gm], gts.difficult[gm]
    if area_range is not None:
        g_area = box_area(g_boxes)
        g_ignore = g_ignore | (g_area < area_range[0]) | (g_area > area_range[1])
    order = np.argsort(-d_scores, kind="stable")
    d_boxes, d_image, d_scores = d_boxes[order], d_image[order], d_scores[order]
    best_iou, best = _best_gt(d_boxes, d_image, g_boxes, g_image)
    hit = (best >= 0) & (best_iou >= iou_thresh)
    ignored = hit & np.append(g_ignore, False)[best]  # best == -1 picks the appended False
    claim = hit & ~ignored
    first = np.zeros(len(d_scores), bool)
    if claim.any():
        claimed = np.flatnonzero(claim)
        _, first_pos = np.unique(best[claimed], return_index=True)
        first[claimed[first_pos]] = True
    if area_range is not None:
        d_area = box_area(d_boxes)
        ignored |= ~first & ((d_area < area_range[0]) | (d_area > area_range[1]))
    keep = ~ignored
    return ClassMatches(d_scores[keep], d_image[keep], first[keep], g_image[~g_ignore])


def evaluate_class(
    dets: BoxSet,
    gts: BoxSet,
    cls: int,
    iou_thresh: float = 0.5,
    area_range: tuple[float, float] | None = None,
) -> ClassResult:
    """VOC matching and both APs for one class (``area_range``: see ``match_class``)."""
    matches = match_class(dets, gts, cls, iou_thresh, area_range)
    npos = len(matches.gt_image)
    tp = matches.tp.astype(np.float64)
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / max(npos, 1) if npos else np.zeros_like(ctp)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return ClassResult(
        ap_voc07(recall, precision) if npos else 0.0,
        ap_voc12(recall, precision) if npos else 0.0,
        npos,
        len(tp),
        matches.scores,
        tp,
        recall,
        precision,
    )


def evaluate_voc(
    dets: BoxSet,
    gts: BoxSet,
    num_classes: int,
    iou_thresh: float = 0.5,
    area_range: tuple[float, float] | None = None,
) -> dict:
    """Per-class results and the means over classes that have (non-difficult) ground truth;
    with ``area_range``, AP of the objects of that size (``match_class``), averaged over the
    classes with ground truth of that size.

    Returns:
        ``{"per_class": [ClassResult], "voc07_map": float, "voc12_map": float,
        "classes_with_gt": [int]}``
    """
    if gts.difficult is None:
        gts.difficult = np.zeros(len(gts), bool)
    per_class = [evaluate_class(dets, gts, c, iou_thresh, area_range) for c in range(num_classes)]
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


COCO_MAX_DETS = 100  # COCO's protocol scores at most the 100 best detections of an image


def top_per_image(dets: BoxSet, k: int) -> BoxSet:
    """The ``k`` highest-scored detections of every image (ties: the earlier row), in the
    original order."""
    if len(dets) == 0 or np.bincount(dets.image).max() <= k:
        return dets
    order = np.lexsort((np.arange(len(dets)), -dets.scores, dets.image))
    image_sorted = dets.image[order]
    starts = np.searchsorted(image_sorted, image_sorted, side="left")
    rank = np.arange(len(dets)) - starts
    keep = np.sort(order[rank < k])
    return BoxSet(dets.image[keep], dets.boxes[keep], dets.labels[keep], scores=dets.scores[keep])


def evaluate_coco(dets: BoxSet, gts: BoxSet, num_classes: int) -> dict:
    """COCO AP (0.50:0.95), AP50, AP75, AP small/medium/large through pycocotools, on the 100
    best detections of each image (pycocotools' own limit counts per image and class)."""
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
        coco_gt, coco_dt = to_coco(top_per_image(dets, COCO_MAX_DETS), gts, num_classes)
        if coco_dt is None or len(gts) == 0:
            return dict.fromkeys(keys, 0.0)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: max(0.0, float(v)) for k, v in zip(keys, ev.stats[:6])}
