"""Tests for utils.evaluation.metrics against the VOC devkit rules (VOCevaldet.m) and pycocotools.

Expected values are worked out by hand in the comments; a literal loop port of VOCevaldet.m
checks the vectorised evaluator on seeded random cases. Boxes are xyxy, 0-based pixels.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from data.voc import Annotation
from utils.detections import Detections, list_positions
from utils.evaluation.detections_file import read_detections_json
from utils.evaluation.evaluate import read_detections_json as read_split_detections
from utils.evaluation.metrics import (
    BoxSet,
    ap_voc07,
    ap_voc12,
    best_f1,
    evaluate_coco,
    evaluate_voc,
    to_coco,
)

# --------------------------------------------------------------------------------------------
# helpers


def make_dets(rows: list[tuple]) -> BoxSet:
    """rows of (image, x1, y1, x2, y2, score, label)."""
    a = np.asarray(rows, np.float64).reshape(-1, 7)
    return BoxSet(a[:, 0], a[:, 1:5], a[:, 6], scores=a[:, 5])


def make_gts(rows: list[tuple]) -> BoxSet:
    """rows of (image, x1, y1, x2, y2, label, difficult)."""
    a = np.asarray(rows, np.float64).reshape(-1, 7)
    return BoxSet(a[:, 0], a[:, 1:5], a[:, 5], difficult=a[:, 6].astype(bool))


def no_dets() -> BoxSet:
    return BoxSet(np.zeros(0), np.zeros((0, 4)), np.zeros(0), scores=np.zeros(0))


def iou_plus1(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    return inter / (
        (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    )


def iou_plain(a, b) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def voc(dets: BoxSet, gts: BoxSet, num_classes: int = 1, iou_thresh: float = 0.5) -> dict:
    return evaluate_voc(dets, gts, num_classes, iou_thresh)


A = (0, 0, 99, 99)  # a 100x100 box (+1 convention)
FAR = (400, 400, 450, 450)  # overlaps nothing used below


# --------------------------------------------------------------------------------------------
# 1. hand-computed AP


def test_ap_definitions_by_hand():
    # TP/FP in score order 1,0,1,1,0 with npos = 4:
    #   recall    .25 .25  .5   .75  .75
    #   precision 1   1/2  2/3  3/4  3/5
    # 11-point: t = 0, .1, .2 -> max precision over all points = 1 (3 points);
    #   t = .3 .. .7 (5 points) -> max over recall >= t = 3/4; t = .8, .9, 1 -> no point = 0.
    #   AP07 = (3 + 5 * 3/4) / 11 = 6.75 / 11
    # area: envelope 1 on (0, .25], 3/4 on (.25, .75], 0 after: .25 + .5 * .75 = .625
    recall = np.array([0.25, 0.25, 0.5, 0.75, 0.75])
    precision = np.array([1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
    assert ap_voc07(recall, precision) == pytest.approx(6.75 / 11, abs=1e-12)
    assert ap_voc12(recall, precision) == pytest.approx(0.625, abs=1e-12)

    # 0,1,1 with npos = 2: recall 0 .5 1, precision 0 1/2 2/3; envelope 2/3 everywhere.
    recall, precision = np.array([0.0, 0.5, 1.0]), np.array([0.0, 1 / 2, 2 / 3])
    assert ap_voc07(recall, precision) == pytest.approx(2 / 3, abs=1e-12)
    assert ap_voc12(recall, precision) == pytest.approx(2 / 3, abs=1e-12)

    # a precision dip that the envelope fills: recall .5 .5 1, precision 1 1/2 2/3
    # area = .5 * 1 + .5 * 2/3 = 5/6; 11-point = (6 * 1 + 5 * 2/3) / 11 = 28/33
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert ap_voc12(recall, precision) == pytest.approx(5 / 6, abs=1e-12)
    assert ap_voc07(recall, precision) == pytest.approx(28 / 33, abs=1e-12)

    assert ap_voc07(np.zeros(0), np.zeros(0)) == 0.0
    assert ap_voc12(np.zeros(0), np.zeros(0)) == 0.0


def test_ap_voc07_recall_exactly_six_tenths_counts_like_matlab():
    # TP/FP 1,0,1,1,0,1 with npos = 5: recall .2 .2 .4 .6 .6 .8, precision 1 1/2 2/3 3/4 3/5 2/3.
    # MATLAB thresholds: t = 0 .1 .2 -> 1; t = .3 .4 .5 .6 -> 3/4 (the point at recall .6 counts
    # for t = .6); t = .7 .8 -> 2/3; t = .9 1 -> 0. AP = (3 + 3 + 4/3) / 11 = 2/3.
    recall = np.array([1, 1, 2, 3, 3, 4]) / 5
    precision = np.array([1, 1 / 2, 2 / 3, 3 / 4, 3 / 5, 2 / 3])
    assert ap_voc07(recall, precision) == pytest.approx(2 / 3, abs=1e-12)


def test_evaluate_voc_end_to_end_by_hand():
    # image 0: GT a, b; image 1: GT c (one class). Detections in score order:
    #   .9 on a (TP), .8 nowhere on image 1 (FP), .7 on c shifted by 3 px (TP), .6 on a again (FP)
    # tp 1 0 1 0, npos 3: recall 1/3 1/3 2/3 2/3, precision 1 1/2 2/3 1/2
    # 11-point: t = 0 .. .3 -> 1 (4 points); t = .4 .5 .6 -> 2/3 (3 points); rest 0
    #   AP07 = (4 + 3 * 2/3) / 11 = 6/11.  area: 1/3 * 1 + 1/3 * 2/3 = 5/9.
    gts = make_gts([(0, *A, 0, 0), (0, 200, 200, 299, 299, 0, 0), (1, 50, 50, 149, 149, 0, 0)])
    dets = make_dets(  # given out of score order on purpose
        [
            (0, *A, 0.6, 0),
            (1, 53, 50, 152, 149, 0.7, 0),
            (0, *A, 0.9, 0),
            (1, *FAR, 0.8, 0),
        ]
    )
    out = voc(dets, gts)
    res = out["per_class"][0]
    np.testing.assert_array_equal(res.tp, [1, 0, 1, 0])
    np.testing.assert_array_equal(res.scores, [0.9, 0.8, 0.7, 0.6])
    np.testing.assert_allclose(res.recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(res.precision, [1, 1 / 2, 2 / 3, 1 / 2])
    assert (res.num_gt, res.num_det) == (3, 4)
    assert res.ap_voc07 == pytest.approx(6 / 11, abs=1e-12)
    assert res.ap_voc12 == pytest.approx(5 / 9, abs=1e-12)
    assert out["voc07_map"] == pytest.approx(6 / 11, abs=1e-12)
    assert out["voc12_map"] == pytest.approx(5 / 9, abs=1e-12)


def test_mean_over_classes_with_gt_only():
    # class 0 as in the case above without the last FP: tp 1 0 1, npos 3 -> area 1/3 + 1/3*2/3;
    # class 1: one GT, one exact detection -> 1.0; class 2: no GT, no detection -> excluded;
    # class 3: only a difficult GT (npos 0) and a detection on it -> excluded.
    gts = make_gts(
        [
            (0, *A, 0, 0),
            (0, 200, 200, 299, 299, 0, 0),
            (1, 50, 50, 149, 149, 0, 0),
            (1, 10, 10, 59, 59, 1, 0),
            (0, 300, 0, 399, 99, 3, 1),
        ]
    )
    dets = make_dets(
        [
            (0, *A, 0.9, 0),
            (1, *FAR, 0.8, 0),
            (1, 53, 50, 152, 149, 0.7, 0),
            (1, 10, 10, 59, 59, 0.3, 1),
            (0, 300, 0, 399, 99, 0.5, 3),
        ]
    )
    out = voc(dets, gts, num_classes=4)
    assert out["classes_with_gt"] == [0, 1]
    ap0 = 1 / 3 + 1 / 3 * 2 / 3
    assert out["per_class"][0].ap_voc12 == pytest.approx(ap0, abs=1e-12)
    assert out["per_class"][1].ap_voc12 == 1.0
    assert out["voc12_map"] == pytest.approx((ap0 + 1) / 2, abs=1e-12)
    assert out["voc07_map"] == pytest.approx((6 / 11 + 1) / 2, abs=1e-12)


def test_detections_of_a_class_without_gt_are_excluded():
    # class 1 has a detection but no GT at all: its AP is not part of the mean.
    gts = make_gts([(0, *A, 0, 0)])
    dets = make_dets([(0, *A, 0.9, 0), (0, *A, 0.8, 1)])
    out = voc(dets, gts, num_classes=2)
    assert out["classes_with_gt"] == [0]
    assert out["voc07_map"] == pytest.approx(1.0, abs=1e-12)
    assert out["voc12_map"] == 1.0


# --------------------------------------------------------------------------------------------
# 2. perfect and empty detectors


def test_perfect_detector_scores_one():
    rng = np.random.default_rng(7)
    rows = []
    for image in range(5):
        for _ in range(rng.integers(1, 5)):
            x1, y1 = rng.integers(0, 300, 2)
            w, h = rng.integers(10, 150, 2)
            rows.append((image, x1, y1, x1 + w, y1 + h, rng.integers(0, 3), rng.random() < 0.2))
    gts = make_gts(rows)
    dets = make_dets([(r[0], *r[1:5], rng.random(), r[5]) for r in rows])  # any scores
    out = voc(dets, gts, num_classes=3)
    assert out["classes_with_gt"]  # the seed gives every class some non-difficult GT
    for c in out["classes_with_gt"]:  # 11 * (1/11) sums to 1 + 2e-16, as in MATLAB
        assert out["per_class"][c].ap_voc07 == pytest.approx(1.0, abs=1e-12)
        assert out["per_class"][c].ap_voc12 == 1.0
    assert out["voc07_map"] == pytest.approx(1.0, abs=1e-12)
    assert out["voc12_map"] == 1.0


def test_no_detections_give_zero():
    gts = make_gts([(0, *A, 0, 0), (1, *A, 1, 0)])
    out = voc(no_dets(), gts, num_classes=2)
    assert out["classes_with_gt"] == [0, 1]
    assert out["voc07_map"] == 0.0 and out["voc12_map"] == 0.0
    assert all(r.num_det == 0 for r in out["per_class"])


# --------------------------------------------------------------------------------------------
# 3. the VOCevaldet.m rules one by one


def test_detection_on_difficult_gt_is_ignored():
    # GT: a (normal) and d (difficult) on image 0. The .95 detection sits on d: neither TP nor FP.
    # If it were an FP the curve would start at precision 1/2 and AP would drop to 1/2.
    gts = make_gts([(0, *A, 0, 0), (0, 200, 200, 299, 299, 0, 1)])
    with_ignored = make_dets([(0, 200, 200, 299, 299, 0.95, 0), (0, *A, 0.9, 0)])
    without = make_dets([(0, *A, 0.9, 0)])
    r_with, r_without = voc(with_ignored, gts)["per_class"][0], voc(without, gts)["per_class"][0]
    assert r_with.num_det == 1  # the ignored detection is not on the curve
    np.testing.assert_array_equal(r_with.tp, [1])
    assert (r_with.ap_voc07, r_with.ap_voc12) == (r_without.ap_voc07, r_without.ap_voc12)
    assert r_with.ap_voc12 == 1.0  # npos = 1: the difficult GT is not counted


def test_difficult_gt_not_counted_in_npos():
    # two normal GT, three difficult; one exact detection -> recall 1/2, AP (area) 1/2
    gts = make_gts(
        [(0, *A, 0, 0), (1, *A, 0, 0)] + [(2, 10 * k, 0, 10 * k + 50, 50, 0, 1) for k in range(3)]
    )
    res = voc(make_dets([(0, *A, 0.9, 0)]), gts)["per_class"][0]
    assert res.num_gt == 2
    assert res.ap_voc12 == pytest.approx(0.5, abs=1e-12)
    assert res.ap_voc07 == pytest.approx(6 / 11, abs=1e-12)  # t = 0 .. .5


def test_duplicate_detection_is_fp():
    gts = make_gts([(0, *A, 0, 0)])
    dets = make_dets([(0, *A, 0.9, 0), (0, 1, 1, 99, 99, 0.8, 0)])
    res = voc(dets, gts)["per_class"][0]
    np.testing.assert_array_equal(res.tp, [1, 0])
    np.testing.assert_allclose(res.precision, [1, 0.5])


def test_no_fallback_to_second_best_gt():
    # GT a = [0,0,99,99], b = [10,0,109,99]. Detection 1 (.9) == a -> TP on a. Detection 2 (.8)
    # = [2,0,101,99]: IoU with a = 98*100/(20000-9800) = .96, with b = 92*100/(20000-9200) = .85.
    # Its best GT is a (matched) -> FP, even though b is unmatched with IoU >= .5.
    # tp 1 0, npos 2: recall .5 .5, precision 1 .5 -> area .5, 11-point 6/11 (with a fallback
    # both would be 1.0).
    gts = make_gts([(0, *A, 0, 0), (0, 10, 0, 109, 99, 0, 0)])
    det2 = (2, 0, 101, 99)
    assert iou_plus1(det2, (10, 0, 109, 99)) >= 0.5
    assert iou_plus1(det2, A) > iou_plus1(det2, (10, 0, 109, 99))
    res = voc(make_dets([(0, *A, 0.9, 0), (0, *det2, 0.8, 0)]), gts)["per_class"][0]
    np.testing.assert_array_equal(res.tp, [1, 0])
    assert res.ap_voc12 == pytest.approx(0.5, abs=1e-12)
    assert res.ap_voc07 == pytest.approx(6 / 11, abs=1e-12)


def test_no_fallback_from_difficult_best_gt():
    # The best GT of the detection is difficult -> ignored, although a normal GT also overlaps
    # it with IoU >= .5: npos 1, no TP -> AP 0.
    gts = make_gts([(0, *A, 0, 1), (0, 10, 0, 109, 99, 0, 0)])
    res = voc(make_dets([(0, 2, 0, 101, 99, 0.9, 0)]), gts)["per_class"][0]
    assert res.num_det == 0 and res.num_gt == 1
    assert res.ap_voc12 == 0.0 and res.ap_voc07 == 0.0


@pytest.mark.parametrize("difficult_first", [True, False])
def test_iou_tie_takes_first_gt(difficult_first):
    # two identical GT boxes, one difficult: the detection takes the first in input order
    rows = [(0, *A, 0, 1), (0, *A, 0, 0)]
    gts = make_gts(rows if difficult_first else rows[::-1])
    res = voc(make_dets([(0, *A, 0.9, 0)]), gts)["per_class"][0]
    assert res.ap_voc12 == (0.0 if difficult_first else 1.0)


def test_iou_uses_plus_one_convention():
    # GT [0,0,9,9], detection [0,0,4,9]:
    #   +1:      inter 5*10 = 50, union 100 + 50 - 50 = 100 -> IoU 0.5 (exactly, >= .5 -> TP)
    #   plain:   inter 4*9 = 36, union 81 + 36 - 36 = 81   -> IoU 0.444 (FP)
    gt, det = (0, 0, 9, 9), (0, 0, 4, 9)
    assert iou_plus1(det, gt) == 0.5 and iou_plain(det, gt) < 0.45
    gts = make_gts([(0, *gt, 0, 0)])
    res = voc(make_dets([(0, *det, 0.9, 0)]), gts, iou_thresh=0.48)["per_class"][0]
    np.testing.assert_array_equal(res.tp, [1])


def test_iou_threshold_is_inclusive():
    # the pair above has IoU exactly 0.5 with +1: TP at 0.5 (>=), FP just above
    gts = make_gts([(0, 0, 0, 9, 9, 0, 0)])
    dets = make_dets([(0, 0, 0, 4, 9, 0.9, 0)])
    np.testing.assert_array_equal(voc(dets, gts)["per_class"][0].tp, [1])
    np.testing.assert_array_equal(voc(dets, gts, iou_thresh=0.5 + 1e-9)["per_class"][0].tp, [0])


def test_iou_threshold_is_configurable():
    # GT [0,0,99,99], detection [0,0,59,99]: IoU = 60*100 / 10000 = 0.6
    gts = make_gts([(0, *A, 0, 0)])
    dets = make_dets([(0, 0, 0, 59, 99, 0.9, 0)])
    for thresh, tp in [(0.3, 1), (0.5, 1), (0.6, 1), (0.7, 0), (0.9, 0)]:
        res = voc(dets, gts, iou_thresh=thresh)["per_class"][0]
        np.testing.assert_array_equal(res.tp, [tp])
        assert res.ap_voc12 == float(tp)


def test_zero_iou_threshold_detection_without_overlap_is_fp():
    # image 1 has no GT: the .9 detection there is an FP in the devkit whatever the threshold.
    # tp 0 1, npos 1: recall 0 1, precision 0 1/2 -> area 1/2
    gts = make_gts([(0, *A, 0, 0)])
    dets = make_dets([(1, *A, 0.9, 0), (0, *A, 0.8, 0)])
    res = voc(dets, gts, iou_thresh=0.0)["per_class"][0]
    np.testing.assert_array_equal(res.tp, [0, 1])
    assert res.ap_voc12 == pytest.approx(0.5, abs=1e-12)


def test_score_ties_keep_input_order():
    # input alternates scores .9, .5. Within the .9 group (input order), the k-th detection hits
    # its own GT k for even k and nothing for odd k; the .5 ones hit nothing. A stable sort keeps
    # that order: tp = 1 0 1 0 ... (15 TPs), then 30 zeros. numpy's default (unstable) sort
    # reorders this .9 group (0, 2, 6, 4, 12, ... in input positions).
    gt_boxes = [(120 * j, 0, 120 * j + 99, 99) for j in range(30)]
    gts = make_gts([(0, *b, 0, 0) for b in gt_boxes[::2]])
    rows = []
    for k in range(30):
        rows.append((0, *(gt_boxes[k] if k % 2 == 0 else FAR), 0.9, 0))
        rows.append((0, *FAR, 0.5, 0))
    res = voc(make_dets(rows), gts)["per_class"][0]
    np.testing.assert_array_equal(res.tp, [1, 0] * 15 + [0] * 30)


# --------------------------------------------------------------------------------------------
# 4. a literal port of VOCevaldet.m


# MATLAB's 0:0.1:1 is built from both ends: 3*0.1 on the left half, 1 - k*0.1 on the right one.
MATLAB_RECALL_POINTS = [0.0, 0.1, 0.2, 3 * 0.1, 0.4, 0.5, 1 - 4 * 0.1, 1 - 3 * 0.1, 0.8, 0.9, 1.0]


def devkit_class(dets: BoxSet, gts: BoxSet, cls: int, iou_thresh: float) -> dict:
    """VOCevaldet.m for one class, statement by statement, in plain Python."""
    gt: dict[int, list[list]] = {}  # image -> [[BB, diff, det], ...] in input order
    for k in range(len(gts)):
        if gts.labels[k] == cls:
            box = [float(v) for v in gts.boxes[k]]
            gt.setdefault(int(gts.image[k]), []).append([box, bool(gts.difficult[k]), False])
    npos = sum(not diff for objs in gt.values() for _, diff, _ in objs)
    ids = [k for k in range(len(dets)) if dets.labels[k] == cls]
    confidence = [float(dets.scores[k]) for k in ids]
    si = sorted(range(len(ids)), key=lambda j: -confidence[j])  # stable, like MATLAB's sort
    tp, fp = [0] * len(ids), [0] * len(ids)
    kind = [""] * len(ids)  # why, for the coverage check below
    for d, j in enumerate(si):
        i = int(dets.image[ids[j]])
        bb = [float(v) for v in dets.boxes[ids[j]]]
        ovmax, jmax = -math.inf, -1
        for jj, (bbgt, _, _) in enumerate(gt.get(i, [])):
            bi = [
                max(bb[0], bbgt[0]),
                max(bb[1], bbgt[1]),
                min(bb[2], bbgt[2]),
                min(bb[3], bbgt[3]),
            ]
            iw = bi[2] - bi[0] + 1
            ih = bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = (
                    (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                    + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1)
                    - iw * ih
                )
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, jj
        if ovmax >= iou_thresh:
            obj = gt[i][jmax]
            if not obj[1]:
                if not obj[2]:
                    tp[d] = 1
                    obj[2] = True
                    kind[d] = "tp"
                else:
                    fp[d] = 1
                    kind[d] = "duplicate"
            else:
                kind[d] = "ignored"
        else:
            fp[d] = 1
            kind[d] = "miss"
    rec, prec, ctp, cfp = [], [], 0, 0
    for t, f in zip(tp, fp):
        ctp, cfp = ctp + t, cfp + f
        rec.append(ctp / npos if npos else math.nan)
        prec.append(ctp / (ctp + cfp) if ctp + cfp else math.nan)  # 0/0 = NaN in MATLAB
    # MATLAB's max() skips NaN; a NaN-only max (every detection ignored) is taken as 0 here
    ap07 = 0.0
    for t in MATLAB_RECALL_POINTS:
        p = [pr for r, pr in zip(rec, prec) if r >= t and not math.isnan(pr)]
        ap07 += (max(p) if p else 0.0) / 11
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for k in range(len(mpre) - 2, -1, -1):
        mpre[k] = mpre[k + 1] if math.isnan(mpre[k]) else max(mpre[k], mpre[k + 1])
    ap12 = sum(
        (mrec[k] - mrec[k - 1]) * mpre[k] for k in range(1, len(mrec)) if mrec[k] != mrec[k - 1]
    )
    return {"npos": npos, "tp": tp, "fp": fp, "kind": kind, "rec": rec, "ap07": ap07, "ap12": ap12}


def random_case(seed: int) -> tuple[BoxSet, BoxSet, int, float]:
    """A few images and classes; integer or float boxes, difficult objects, duplicate GT,
    detections near GT (right or wrong class) and random ones, scores with ties."""
    rng = np.random.default_rng(seed)
    num_classes, num_images = 3, int(rng.integers(3, 7))
    integer = seed % 2 == 0

    def box(x1, y1, w, h):
        b = np.array([x1, y1, x1 + w, y1 + h], np.float64)
        return np.round(b) if integer else b

    gt_rows = []
    for image in range(num_images):
        for _ in range(rng.integers(1, 7)):
            b = box(*rng.uniform(0, 200, 2), *rng.uniform(5, 120, 2))
            row = (image, *b, int(rng.integers(num_classes)), bool(rng.random() < 0.2))
            gt_rows.append(row)
            if rng.random() < 0.1:  # the same object annotated twice, difficult or not
                gt_rows.append((*row[:6], bool(rng.random() < 0.5)))
    for c in range(num_classes):
        b = box(*rng.uniform(0, 200, 2), *rng.uniform(5, 120, 2))
        gt_rows.append((int(rng.integers(num_images)), *b, c, False))
    gts = make_gts(gt_rows)

    ties = seed % 3 != 0
    det_rows = []

    def score() -> float:
        return float(np.round(rng.random(), 1)) if ties else float(rng.random())

    for image, *b, label, _ in gt_rows:
        for _ in range(rng.integers(0, 4)):
            size = np.array([b[2] - b[0], b[3] - b[1]] * 2) + 1
            near = np.array(b) + rng.normal(0, 0.15, 4) * size
            near = np.concatenate([np.minimum(near[:2], near[2:]), np.maximum(near[:2], near[2:])])
            near = np.round(near) if integer else near
            cls = label if rng.random() < 0.85 else int(rng.integers(num_classes))
            det_rows.append((image, *near, score(), cls))
    for image in range(num_images):
        for _ in range(rng.integers(0, 6)):
            b = box(*rng.uniform(0, 250, 2), *rng.uniform(5, 150, 2))
            det_rows.append((image, *b, score(), int(rng.integers(num_classes))))
    order = rng.permutation(len(det_rows))
    dets = make_dets([det_rows[k] for k in order])
    iou_thresh = [0.5, 0.5, 0.3, 0.7][seed % 4]
    return dets, gts, num_classes, iou_thresh


@pytest.mark.parametrize("seed", range(20))
def test_agrees_with_literal_devkit_port(seed):
    dets, gts, num_classes, iou_thresh = random_case(seed)
    out = evaluate_voc(dets, gts, num_classes, iou_thresh)
    with_gt = []
    for c in range(num_classes):
        ref = devkit_class(dets, gts, c, iou_thresh)
        res = out["per_class"][c]
        assert res.num_gt == ref["npos"]
        if ref["npos"] == 0:
            continue
        with_gt.append(c)
        counted = [t for t, f in zip(ref["tp"], ref["fp"]) if t or f]  # drop ignored ones
        np.testing.assert_array_equal(res.tp, counted)
        assert res.ap_voc12 == pytest.approx(ref["ap12"], abs=1e-9)
        assert res.ap_voc07 == pytest.approx(ref["ap07"], abs=1e-9)
    assert out["classes_with_gt"] == with_gt
    assert sum(len(out["per_class"][c].tp) for c in with_gt) > 10  # the case is not trivial


def test_random_cases_cover_the_rules():
    # the random cases above must reach every branch of the devkit rules, and score ties
    kinds: dict[str, int] = {}
    ties = 0
    for seed in range(20):
        dets, gts, num_classes, iou_thresh = random_case(seed)
        ties += len(dets.scores) - len(np.unique(dets.scores))
        for c in range(num_classes):
            for k in devkit_class(dets, gts, c, iou_thresh)["kind"]:
                kinds[k] = kinds.get(k, 0) + 1
    assert set(kinds) == {"tp", "duplicate", "ignored", "miss"}, kinds
    assert min(kinds.values()) >= 5 and ties > 20, (kinds, ties)


# --------------------------------------------------------------------------------------------
# 5. pycocotools where the protocols coincide


def test_coco_perfect_detector_agrees():
    rng = np.random.default_rng(3)
    rows = [
        (image, x, y, x + 60 + 10 * k, y + 80, k % 2, 0)
        for image in range(3)
        for k, (x, y) in enumerate([(0, 0), (150, 40), (300, 200)])
    ]
    gts = make_gts(rows)
    dets = make_dets([(r[0], *r[1:5], rng.random(), r[5]) for r in rows])
    voc_out = voc(dets, gts, num_classes=2)
    coco = evaluate_coco(dets, gts, num_classes=2)
    assert voc_out["voc12_map"] == 1.0
    assert coco["coco_map50"] == pytest.approx(1.0, abs=1e-9)
    assert coco["coco_map"] == pytest.approx(1.0, abs=1e-9)


def test_coco_step_curve_agrees_with_voc_area():
    # class 0: 4 GT (100x100); TPs at .9 .8 (2 px off), then 3 FPs far away -> envelope 1 up to
    #   recall 1/2, then 0: VOC area 1/2; COCO 101 points: 51 of them (r <= .5) -> 51/101.
    # class 1: 3 GT; 3 TPs then 1 FP -> 1.0 for both. Means: .75 vs (51/101 + 1)/2 = .7525.
    gt_rows = [(k % 2, 120 * k, 0, 120 * k + 99, 99, 0, 0) for k in range(4)]
    gt_rows += [(k, 0, 200, 149, 349, 1, 0) for k in range(3)]
    det_rows = [(0, 2, 0, 101, 99, 0.9, 0), (1, 122, 2, 221, 101, 0.8, 0)]
    det_rows += [(k, 600, 600, 700, 700, 0.5 - 0.1 * k, 0) for k in range(3)]
    det_rows += [(k, 2, 202, 151, 351, 0.9 - 0.1 * k, 1) for k in range(3)]
    det_rows += [(0, 600, 0, 650, 50, 0.1, 1)]
    gts, dets = make_gts(gt_rows), make_dets(det_rows)
    voc_out = voc(dets, gts, num_classes=2)
    assert voc_out["per_class"][0].ap_voc12 == pytest.approx(0.5, abs=1e-12)
    assert voc_out["per_class"][1].ap_voc12 == 1.0
    coco = evaluate_coco(dets, gts, num_classes=2)
    assert coco["coco_map50"] == pytest.approx((51 / 101 + 1) / 2, abs=1e-6)
    assert coco["coco_map50"] == pytest.approx(voc_out["voc12_map"], abs=1e-2)


def test_to_coco_conversion():
    gts = make_gts([(0, 10, 20, 50, 80, 1, 0), (1, 5, 5, 25, 15, 0, 1)])
    dets = make_dets([(1, 4, 6, 24, 16, 0.75, 0)])
    coco_gt, coco_dt = to_coco(dets, gts, num_classes=2)
    anns = sorted(coco_gt.dataset["annotations"], key=lambda a: a["id"])
    assert [a["bbox"] for a in anns] == [[10, 20, 40, 60], [5, 5, 20, 10]]  # x, y, w, h
    assert [a["area"] for a in anns] == [2400, 200]
    assert [a["iscrowd"] for a in anns] == [0, 1]
    assert [a["image_id"] for a in anns] == [0, 1]
    assert [a["category_id"] for a in anns] == [1, 0]
    assert all(a["id"] > 0 for a in anns)  # COCOeval treats gt id 0 as "unmatched"
    assert sorted(coco_gt.getImgIds()) == [0, 1]
    (det,) = coco_dt.dataset["annotations"]
    np.testing.assert_allclose(det["bbox"], [4, 6, 20, 10])
    assert (det["image_id"], det["category_id"], det["score"]) == (1, 0, 0.75)


def test_coco_detection_on_difficult_is_ignored():
    # the .95 detection sits on a difficult (crowd) box: ignored, AP50 stays 1.0 (as an FP
    # ranked first it would halve the AP)
    gts = make_gts([(0, *A, 0, 0), (1, 0, 0, 149, 149, 0, 1)])
    on_a = (0, *A, 0.9, 0)
    with_crowd = evaluate_coco(make_dets([(1, 0, 0, 149, 149, 0.95, 0), on_a]), gts, 1)
    without = evaluate_coco(make_dets([on_a]), gts, 1)
    assert with_crowd["coco_map50"] == without["coco_map50"] == pytest.approx(1.0, abs=1e-9)
    # control: the same detection on a normal box is an FP and lowers AP50
    gts_normal = make_gts([(0, *A, 0, 0), (1, 300, 300, 449, 449, 0, 0)])
    fp_first = evaluate_coco(make_dets([(1, 0, 0, 149, 149, 0.95, 0), on_a]), gts_normal, 1)
    assert fp_first["coco_map50"] < 0.9


def test_coco_no_detections():
    gts = make_gts([(0, *A, 0, 0)])
    assert evaluate_coco(no_dets(), gts, 1)["coco_map50"] == 0.0


# --------------------------------------------------------------------------------------------
# 6. best F1


def test_best_f1_by_hand():
    # class 0: 2 GT; detections .9 TP, .8 FP, .7 TP, .25 FP
    #   threshold in (0, .25]: P 2/4 R 1 F1 2/3; (.25, .7]: P 2/3 R 1 F1 .8;
    #   (.7, .8]: P 1/2 R 1/2 F1 1/2; (.8, .9]: P 1 R 1/2 F1 2/3; above .9: 0
    # class 1: 1 GT; detections .95 FP, .6 TP
    #   (0, .6]: P 1/2 R 1 F1 2/3; (.6, .95]: 0
    # mean F1 is highest on (.25, .6]: (.8 + 2/3) / 2; the first grid point there is .251.
    gts = make_gts([(0, *A, 0, 0), (1, *A, 0, 0), (0, 200, 0, 299, 99, 1, 0)])
    dets = make_dets(
        [
            (0, *A, 0.9, 0),
            (0, *FAR, 0.8, 0),
            (1, *A, 0.7, 0),
            (1, *FAR, 0.25, 0),
            (0, *FAR, 0.95, 1),
            (0, 200, 0, 299, 99, 0.6, 1),
        ]
    )
    out = voc(dets, gts, num_classes=2)
    f1 = best_f1(out["per_class"], [0, 1])
    assert f1["threshold"] == pytest.approx(0.251, abs=1e-9)
    np.testing.assert_allclose(f1["precision"], [2 / 3, 1 / 2])
    np.testing.assert_allclose(f1["recall"], [1, 1])
    np.testing.assert_allclose(f1["f1"], [0.8, 2 / 3])
    # class 0 alone peaks at the same F1 .8 from the same grid point
    alone = best_f1(out["per_class"], [0])
    assert alone["threshold"] == pytest.approx(0.251, abs=1e-9)
    # class 1 alone: F1 2/3 from t = 0 (the first grid point) up to .6
    alone = best_f1(out["per_class"], [1])
    assert alone["threshold"] == 0.0
    np.testing.assert_allclose(alone["f1"], [2 / 3])


# --------------------------------------------------------------------------------------------
# from Detections and from the predict.py --json file


def _dets(boxes: list, scores: list, labels: list) -> Detections:
    return Detections(
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        scores=np.asarray(scores, np.float32),
        labels=np.asarray(labels, np.int64),
    )


def test_boxset_from_detections_flattens_in_order() -> None:
    per_image = [_dets([[0, 0, 9, 9], [5, 5, 20, 20]], [0.9, 0.4], [1, 0]), _dets([], [], [])]
    per_image.append(_dets([[1, 2, 3, 4]], [0.7], [2]))
    flat = BoxSet.from_detections(per_image)
    assert flat.image.tolist() == [0, 0, 2]
    assert flat.labels.tolist() == [1, 0, 2] and flat.scores.dtype == np.float64
    np.testing.assert_array_equal(flat.boxes, [[0, 0, 9, 9], [5, 5, 20, 20], [1, 2, 3, 4]])
    np.testing.assert_allclose(flat.scores, [0.9, 0.4, 0.7], rtol=1e-6)
    moved = BoxSet.from_detections(per_image, [7, 3, 5])
    assert moved.image.tolist() == [7, 7, 5] and flat.difficult is None
    empty = BoxSet.from_detections([])
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.scores.shape == (0,)


def test_read_detections_json_matches_image_ids(tmp_path) -> None:
    first = _dets([[10.5, 20.25, 30, 40]], [0.5], [1])
    second = _dets([[1, 2, 3, 4], [5, 6, 7, 8]], [0.25, 0.125], [0, 2])
    records = [
        {"image": "b.jpg", "image_id": "b", "width": 50, "height": 50,
         "detections": second.to_json()},
        {"image": "x.jpg", "image_id": "x", "width": 50, "height": 50,
         "detections": first.to_json()},
        {"image": "a.jpg", "image_id": "a", "width": 50, "height": 50,
         "detections": first.to_json()},
    ]  # fmt: skip
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(records))
    dets, warnings = read_detections_json(path, ["a", "b", "c"])
    assert warnings == [
        f"{path}: 1 record of an image not in the split, left out (record 1; e.g. image_id 'x')",
        f"{path}: 1 of the 3 images of the split without a record, scored as having no detections",
    ]
    expected = BoxSet.from_detections(
        [Detections.from_json(r["detections"]) for r in (records[0], records[2])], [1, 0]
    )
    for name in ("image", "boxes", "labels", "scores"):
        np.testing.assert_array_equal(getattr(dets, name), getattr(expected, name))
    assert dets.image.tolist() == [1, 1, 0] and dets.boxes[2].tolist() == [10.5, 20.25, 30, 40]
    path.write_text(json.dumps([{"image_id": "a", "detections": [{"xyxy": [1, 2, 3, 4]}]}]))
    with pytest.raises(
        ValueError, match=r"1 detection lacking xyxy, score or class_id \(record 0\)"
    ):
        read_detections_json(path, ["a"])


# --------------------------------------------------------------------------------------------
# eval.py --detections: what cannot be scored is refused (one ValueError naming the file), what
# is read in a way the file does not say is reported with counts (Detected.failures)

SPLIT_CLASSES = ["box", "disc"]
W, H = 100, 80  # every image of the split


def _split() -> list[Annotation]:
    """Images a, b, c; b's second box is difficult."""

    def annotation(image_id, boxes, labels, difficult=None) -> Annotation:
        return Annotation(
            f"{image_id}.jpg",
            image_id,
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int64),
            np.asarray(difficult or [False] * len(labels), bool),
            W,
            H,
        )

    return [
        annotation("a", [[10, 10, 40, 30], [50, 20, 90, 70]], [0, 1]),
        annotation("b", [[0, 0, 20, 20], [60, 40, 99, 79]], [0, 0], [False, True]),
        annotation("c", [[30, 30, 60, 60]], [1]),
    ]


def _det(xyxy: list, score: float, class_id: int) -> dict:
    name = SPLIT_CLASSES[class_id]
    return {"xyxy": xyxy, "score": score, "class_id": class_id, "class_name": name}


# a valid file's detections per image: ints and floats, boxes on the image border, a duplicate
# (FP), a match of a difficult box (ignored), wrong classes (FP)
VALID = {
    "a": [
        _det([11, 10, 40, 31], 0.5, 0),
        _det([50, 22, 88.5, 70], 0.8, 1),
        _det([50, 20, 90, 70], 0.3, 0),
        _det([10, 10, 40, 30], 0.2, 1),
    ],
    "b": [
        _det([0, 0, 21, 19.5], 0.95, 0),
        _det([0, 0, 20, 20], 0.6, 0),
        _det([61, 41, 99, 79], 0.7, 0),
        _det([0, 0, 99, 79], 0.1, 1),
    ],
    "c": [_det([30.5, 29, 60, 61], 0.15, 1), _det([30, 30, 60, 60], 0.85, 0)],
}
# its scores as read before the reader checked its input
VOC07_BEFORE, VOC12_BEFORE = 0.8106060606060604, 0.7916666666666666
COCO_BEFORE, COCO50_BEFORE = 0.7227722772277227, 0.7937293729372936


def _records(detections: dict | None = None) -> list[dict]:
    detections = copy.deepcopy(VALID if detections is None else detections)
    return [
        {"image": f"{k}.jpg", "image_id": k, "width": W, "height": H, "detections": rows}
        for k, rows in detections.items()
    ]


def _with(image: str, index: int, **changes) -> list[dict]:
    """The valid records, with detection ``index`` of ``image`` changed."""
    records = _records()
    records["abc".index(image)]["detections"][index].update(changes)
    return records


def _read(tmp_path, records: list | None = None, text: str | None = None):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(records) if text is None else text)
    return path, read_split_detections(str(path), _split(), SPLIT_CLASSES)


def _refused(tmp_path, records: list | None = None, text: str | None = None) -> str:
    """The one-line message of the ValueError, which starts with the file."""
    with pytest.raises(ValueError) as info:
        _read(tmp_path, records, text)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'dets.json'}: ") and "\n" not in message, message
    return message


def test_detection_file_valid_scores_exactly_as_before(tmp_path) -> None:
    _, detected = _read(tmp_path, _records())
    assert detected.failures == []
    rows = [row for image in VALID.values() for row in image]
    assert detected.dets.image.tolist() == [0] * 4 + [1] * 4 + [2] * 2
    np.testing.assert_array_equal(detected.dets.boxes, [r["xyxy"] for r in rows])
    np.testing.assert_array_equal(detected.dets.scores, [r["score"] for r in rows])
    assert detected.dets.labels.tolist() == [r["class_id"] for r in rows]
    voc = evaluate_voc(detected.dets, detected.gts, 2)
    coco = evaluate_coco(detected.dets, detected.gts, 2)
    # what the reader gave before it checked its input (same arrays, so the same numbers)
    assert (voc["voc07_map"], voc["voc12_map"]) == (VOC07_BEFORE, VOC12_BEFORE)
    assert (coco["coco_map"], coco["coco_map50"]) == (COCO_BEFORE, COCO50_BEFORE)


def test_detection_file_box_needs_exactly_4_coordinates(tmp_path) -> None:
    # before: a 5th number became the next box's x1 and shifted every later box (mAP 0)
    message = _refused(tmp_path, _with("a", 0, xyxy=[11, 10, 40, 31, 2]))
    assert message.endswith(": 1 detection with an xyxy that is not a list of 4 numbers (record 0)")
    message = _refused(tmp_path, _with("c", 1, xyxy=[30, 30, 60]))
    assert message.endswith(": 1 detection with an xyxy that is not a list of 4 numbers (record 2)")


def test_detection_file_nan_or_infinite_coordinate_is_an_error(tmp_path) -> None:
    # before: VOC AP 0 for those boxes, while COCO AP counted them as it saw fit
    records = _records()
    records[0]["detections"][1]["xyxy"][2] = math.nan
    records[1]["detections"][0]["xyxy"][0] = math.nan
    records[1]["detections"][3]["xyxy"][3] = math.inf
    records[2]["detections"][0]["xyxy"][1] = -math.inf
    message = _refused(tmp_path, records)
    path = tmp_path / "dets.json"
    assert message == f"{path}: 4 detections with a NaN or infinite coordinate (records 0, 1, 2)"
    # many places: the first five distinct ones
    assert list_positions([4, 4, 17, 90, 91, 95, 99], "record") == "records 4, 17, 90, 91, 95, ..."


def test_detection_file_score_must_be_a_probability(tmp_path) -> None:
    # before: a NaN score sorted anywhere and dropped mAP from 0.381 to 0.091
    message = _refused(tmp_path, _with("b", 2, score=math.nan))
    assert message.endswith(": 1 detection with a NaN or infinite score (record 1)")
    message = _refused(tmp_path, _with("c", 0, score=1.5))
    assert message.endswith(": 1 detection with a score outside [0, 1] (record 2)")
    message = _refused(tmp_path, _with("a", 3, score=-0.25))
    assert message.endswith(": 1 detection with a score outside [0, 1] (record 0)")


def test_detection_file_inverted_box_is_an_error(tmp_path) -> None:
    message = _refused(tmp_path, _with("a", 0, xyxy=[40, 10, 11, 31]))
    assert message.endswith(": 1 detection with x2 < x1 or y2 < y1 (record 0)")
    message = _refused(tmp_path, _with("c", 1, xyxy=[30, 60, 60, 30]))
    assert message.endswith(": 1 detection with x2 < x1 or y2 < y1 (record 2)")


def test_detection_file_box_outside_its_image(tmp_path) -> None:
    # partly outside (below 0, beyond W-1 or H-1): scored as given, with a warning
    records = _with("a", 0, xyxy=[-3, 10, 40, 31])
    records[1]["detections"][3]["xyxy"] = [0, 0, 100, 80]
    path, detected = _read(tmp_path, records)
    assert detected.failures == [
        f"{path}: 2 detections with a box partly outside its image, scored as given (records 0, 1)"
    ]
    assert detected.dets.boxes[0].tolist() == [-3, 10, 40, 31]
    assert detected.dets.boxes[7].tolist() == [0, 0, 100, 80]
    # entirely outside: boxes of another frame or image, refused
    message = _refused(tmp_path, _with("c", 0, xyxy=[-50, 29, -10, 61]))
    assert message.endswith(": 1 detection with a box entirely outside its image (record 2)")
    # a record of another size than its annotation: its boxes are in another pixel frame
    records = _records()
    records[1]["width"], records[1]["height"] = H, W
    message = _refused(tmp_path, records)
    assert (
        ": 1 record with a width x height other than the annotation's (record 1; e.g. 80x100 "
        "for the 100x80 image 'b')"
    ) in message


def test_detection_file_repeated_image_records(tmp_path) -> None:
    records = _records()
    # one record twice: read once, with a warning (before: its detections counted twice)
    path, detected = _read(tmp_path, [*records, copy.deepcopy(records[1])])
    assert detected.failures == [
        f"{path}: 1 record with the image_id and detections of an earlier record, read once "
        "(record 3)"
    ]
    assert len(detected.dets) == 10
    # two records of one image that differ: which one holds is unknown
    other = {**records[0], "detections": records[0]["detections"][:2]}
    message = _refused(tmp_path, [*records, other])
    assert message.endswith(
        ": 1 record with the image_id of an earlier record but other detections (record 3; "
        "e.g. image_id 'a')"
    )


def test_detection_file_class_name_and_id_must_agree_with_the_classes(tmp_path) -> None:
    message = _refused(tmp_path, _with("a", 0, class_name="cat"))
    assert message.endswith(
        ": 1 detection with a class_name that is not one of the classes (record 0)"
    )
    message = _refused(tmp_path, _with("c", 0, class_name="box"))  # its class_id 1 is disc
    assert message.endswith(": 1 detection with the class_name of another class_id (record 2)")
    message = _refused(tmp_path, _with("b", 3, class_id=2))
    assert message.endswith(": 1 detection with a class_id outside 0..1 (record 1)")
    # the id as text (what predict.py writes without class names) and no name both agree
    records = _with("a", 0, class_name="0")
    del records[2]["detections"][1]["class_name"]
    _, detected = _read(tmp_path, records)
    assert detected.failures == []


def test_detection_file_numbers_are_not_converted(tmp_path) -> None:
    # before: "0.8" was read as 0.8, a class_id of 0.5 as 0, true as 1
    message = _refused(tmp_path, _with("a", 1, score="0.8"))
    assert message.endswith(": 1 detection with a score that is not a number (record 0)")
    message = _refused(tmp_path, _with("b", 1, class_id=0.5))
    assert message.endswith(": 1 detection with a class_id that is not an integer (record 1)")
    for xyxy in ([30, 30, "60", 60], [30, True, 60, 60], [30, 30, None, 60]):
        message = _refused(tmp_path, _with("c", 1, xyxy=xyxy))
        assert message.endswith(": 1 detection with a coordinate that is not a number (record 2)")
    # a class_id of 1.0 names one class: read as 1, with a warning
    path, detected = _read(tmp_path, _with("c", 0, class_id=1.0))
    assert detected.failures == [
        f"{path}: 1 detection with a class_id written as a float (read as the integer it "
        "equals) (record 2)"
    ]
    assert detected.dets.labels.tolist() == [0, 1, 0, 1, 0, 0, 0, 1, 1, 0]


def test_detection_file_that_is_not_a_list_of_records_names_the_file(tmp_path) -> None:
    cut = '[{"image_id": "a", "detections": ['
    not_records = '[{"image_id": "a"}, 3, {"image_id": "b", "detections": {}}]'
    cases = {
        "": "empty file; expected a JSON list of per-image records",
        " \n": "empty file; expected a JSON list of per-image records",
        cut: "not valid JSON (Expecting value at line 1 column 35)",
        "{}": "expected a JSON list of per-image records, found an object",
        '"dets"': "expected a JSON list of per-image records, found a string",
        "[]": "an empty list; expected one record per image",
        not_records: "3 records lacking an image_id or a detections list (records 0, 1, 2)",
    }
    for text, expected in cases.items():
        assert _refused(tmp_path, text=text) == f"{tmp_path / 'dets.json'}: {expected}"
    with pytest.raises(ValueError, match=rf"^{tmp_path}: cannot be read \(Is a directory\)$"):
        read_split_detections(str(tmp_path), _split(), SPLIT_CLASSES)


def test_detection_file_images_outside_the_split(tmp_path) -> None:
    others = [
        {"image": "x.jpg", "image_id": f"x{i}", "width": W, "height": H, "detections": []}
        for i in range(7)
    ]
    # records of other images: left out, one warning with the count (before: one per record)
    path, detected = _read(tmp_path, _records() + others)
    assert detected.failures == [
        f"{path}: 7 records of an image not in the split, left out (records 3, 4, 5, 6, 7, ...; "
        "e.g. image_id 'x0')"
    ]
    assert len(detected.dets) == 10
    # no record of the split: nothing could be scored
    message = _refused(tmp_path, others)
    assert message.endswith(
        ": no record is of an image of the split (7 records with image_ids such as 'x0'; the "
        "split's are such as 'a')"
    )
    # split images without a record: scored as having no detections, with a warning
    path, detected = _read(tmp_path, _records()[:2])
    assert detected.failures == [
        f"{path}: 1 of the 3 images of the split without a record, scored as having no detections"
    ]
