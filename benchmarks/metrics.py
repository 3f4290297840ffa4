"""Benchmark of the VOC evaluator on a seeded random case the size of VOC07 test.

    python -m benchmarks.metrics [--num-images 4952] [--repeats 3] [--reference-images 500]

Detections go through a temporary file in the ``predict.py --json`` format, so the timing
includes reading them back. A straightforward per-detection Python loop port of VOCevaldet.m
runs on the first images and is extrapolated linearly to the full size. Prints numbers only:
speed is measured here, not asserted in tests.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.common import add_synthetic_case_options, check_at_least, start
from utils.config import CommandParser, run_cli
from utils.evaluation.detections_file import read_detections_json
from utils.evaluation.metrics import BoxSet, evaluate_voc
from utils.timing import StageTimer, time_call

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
OLD_EVALUATOR_S = 55.6  # the previous evaluator at this size (4,952 images), on a 2-core CPU
TARGET_S = 2.8  # the target at this size, reading the inputs included


def make_case(
    num_images: int, dets_per_image: int, seed: int
) -> tuple[list[dict], BoxSet, list[str]]:
    """A VOC-like random case: 1-6 GT per image (~10% difficult), ``dets_per_image``
    detections per image, half of them a noisy copy of a GT of the same image (same class),
    the rest random boxes of random classes; random scores.

    Returns:
        (records in the ``predict.py --json`` format, ground truth, image ids)
    """
    rng = np.random.default_rng(seed)
    num_classes = len(VOC_CLASSES)
    image_ids = [f"{i + 1:06d}" for i in range(num_images)]
    width = rng.integers(300, 501, num_images).astype(np.float64)
    height = rng.integers(250, 501, num_images).astype(np.float64)

    def random_boxes(image: np.ndarray) -> np.ndarray:
        w, h = width[image], height[image]
        bw = np.floor(rng.uniform(0.05, 0.8, len(image)) * w)
        bh = np.floor(rng.uniform(0.05, 0.8, len(image)) * h)
        x1 = np.floor(rng.random(len(image)) * (w - bw))
        y1 = np.floor(rng.random(len(image)) * (h - bh))
        return np.column_stack([x1, y1, x1 + bw - 1, y1 + bh - 1])

    gt_count = rng.integers(1, 7, num_images)
    gt_image = np.repeat(np.arange(num_images), gt_count)
    gts = BoxSet(
        gt_image,
        random_boxes(gt_image),
        rng.integers(0, num_classes, len(gt_image)),
        difficult=rng.random(len(gt_image)) < 0.1,
    )

    num_near = dets_per_image // 2
    det_image = np.repeat(np.arange(num_images), dets_per_image)
    near = np.tile(np.arange(dets_per_image) < num_near, num_images)
    starts = np.concatenate([[0], np.cumsum(gt_count)[:-1]])
    source = starts[det_image] + np.floor(rng.random(len(det_image)) * gt_count[det_image])
    source = source.astype(np.int64)
    base = gts.boxes[source]
    size = np.tile(base[:, 2:] - base[:, :2] + 1, 2)
    jittered = base + rng.normal(0, 0.1, base.shape) * size
    boxes = np.where(near[:, None], jittered, random_boxes(det_image))
    limit = np.column_stack([width, height, width, height])[det_image] - 1
    boxes = np.clip(boxes, 0, limit)
    boxes = np.column_stack([boxes[:, :2], np.maximum(boxes[:, 2:], boxes[:, :2])])
    labels = np.where(near, gts.labels[source], rng.integers(0, num_classes, len(det_image)))
    scores = rng.random(len(det_image))

    boxes_list = np.round(boxes, 2).reshape(num_images, dets_per_image, 4).tolist()
    scores_list = np.round(scores, 5).reshape(num_images, dets_per_image).tolist()
    labels_list = labels.reshape(num_images, dets_per_image).tolist()
    records = [
        {
            "image": f"VOCdevkit/VOC2007/JPEGImages/{image_ids[i]}.jpg",
            "image_id": image_ids[i],
            "width": int(width[i]),
            "height": int(height[i]),
            "detections": [
                {"xyxy": b, "score": s, "class_id": c, "class_name": VOC_CLASSES[c]}
                for b, s, c in zip(boxes_list[i], scores_list[i], labels_list[i])
            ],
        }
        for i in range(num_images)
    ]
    return records, gts, image_ids


def reference_evaluate(dets: BoxSet, gts: BoxSet, num_classes: int, iou_thresh: float = 0.5):
    """VOCevaldet.m as a plain per-detection Python loop; returns [(ap07, ap12)] for the
    classes with non-difficult GT (compact copy of the reference in tests/test_metrics.py)."""
    recall_points = [k * 0.1 for k in range(6)] + [1 - k * 0.1 for k in range(4, -1, -1)]
    gt_boxes, gt_image, gt_labels = gts.boxes.tolist(), gts.image.tolist(), gts.labels.tolist()
    gt_diff = gts.difficult.tolist()
    det_boxes, det_image = dets.boxes.tolist(), dets.image.tolist()
    det_labels, det_scores = dets.labels.tolist(), dets.scores.tolist()
    results = []
    for cls in range(num_classes):
        gt: dict[int, list[list]] = {}  # image -> [[box, difficult, matched], ...]
        for box, image, label, diff in zip(gt_boxes, gt_image, gt_labels, gt_diff):
            if label == cls:
                gt.setdefault(image, []).append([box, diff, False])
        npos = sum(not obj[1] for objs in gt.values() for obj in objs)
        if npos == 0:
            continue
        ids = [k for k, label in enumerate(det_labels) if label == cls]
        ids.sort(key=lambda k: -det_scores[k])  # stable
        ctp = cfp = 0
        rec, prec = [], []
        for k in ids:
            bb = det_boxes[k]
            ovmax, best = -math.inf, None
            for obj in gt.get(det_image[k], []):
                g = obj[0]
                iw = min(bb[2], g[2]) - max(bb[0], g[0]) + 1
                ih = min(bb[3], g[3]) - max(bb[1], g[1]) + 1
                if iw > 0 and ih > 0:
                    ua = (
                        (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                        + (g[2] - g[0] + 1) * (g[3] - g[1] + 1)
                        - iw * ih
                    )
                    if iw * ih / ua > ovmax:
                        ovmax, best = iw * ih / ua, obj
            if ovmax >= iou_thresh and best[1]:
                continue  # difficult: neither TP nor FP
            if ovmax >= iou_thresh and not best[2]:
                best[2] = True
                ctp += 1
            else:
                cfp += 1
            rec.append(ctp / npos)
            prec.append(ctp / (ctp + cfp))
        ap07 = sum(
            max([p for r, p in zip(rec, prec) if r >= t], default=0.0) for t in recall_points
        )
        mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        ap12 = sum(
            (mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]
        )
        results.append((ap07 / 11, ap12))
    return results


def _subset(boxes: BoxSet, num_images: int) -> BoxSet:
    keep = boxes.image < num_images
    return BoxSet(
        boxes.image[keep],
        boxes.boxes[keep],
        boxes.labels[keep],
        None if boxes.scores is None else boxes.scores[keep],
        None if boxes.difficult is None else boxes.difficult[keep],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    add_synthetic_case_options(parser, "max_det of eval.py", "seed of the synthetic boxes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is shown")
    parser.add_argument(
        "--reference-images", type=int, default=500, help="images for the reference loop"
    )
    args = parser.parse_args(argv)
    check_at_least(args, num_images=1, dets_per_image=1, repeats=1, reference_images=1)
    num_classes = len(VOC_CLASSES)

    records, gts, image_ids = make_case(args.num_images, args.dets_per_image, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "detections.json"
        path.write_text(json.dumps(records, indent=1))  # as predict_loop.write_json does
        del records
        size_mb = path.stat().st_size / 1e6
        timer = StageTimer()
        for _ in range(args.repeats):
            with timer.stage("read"):
                dets, _ = read_detections_json(path, image_ids)
            with timer.stage("evaluate"):
                out = evaluate_voc(dets, gts, num_classes)
            timer.add_total("total", ("read", "evaluate"))
    medians = timer.summary()
    read_s, eval_s, total_s = (medians[k].median / 1000 for k in ("read", "evaluate", "total"))

    ref_images = min(args.reference_images, args.num_images)
    dets_sub, gts_sub = _subset(dets, ref_images), _subset(gts, ref_images)
    ref_s, ref = time_call(reference_evaluate, dets_sub, gts_sub, num_classes)
    ref_full_s = ref_s * args.num_images / ref_images
    ours_sub = evaluate_voc(dets_sub, gts_sub, num_classes)
    ours_sub_res = [ours_sub["per_class"][c] for c in ours_sub["classes_with_gt"]]
    diff07 = [abs(r.ap_voc07 - a[0]) for r, a in zip(ours_sub_res, ref)]
    diff12 = max(abs(r.ap_voc12 - a[1]) for r, a in zip(ours_sub_res, ref))
    # 11-point: np.linspace's 0.6 and 0.7 are one ulp above MATLAB's 0:0.1:1 values
    at_six_seven = [bool(np.isin(r.recall, [0.6, 0.7]).any()) for r in ours_sub_res]
    differ07 = [d > 1e-12 for d in diff07]

    start(
        f"case: {args.num_images} images, {num_classes} classes, {len(gts)} GT "
        f"({int(gts.difficult.sum())} difficult), {len(dets)} detections, seed {args.seed}; "
        f"detections JSON {size_mb:.1f} MB (predict.py --json format)"
    )
    print(f"median of {args.repeats} runs (time.perf_counter):")
    print(f"  (a) read detections JSON -> BoxSet  {read_s:7.3f} s")
    print(f"  (b) evaluate_voc (VOC07 + VOC12 AP) {eval_s:7.3f} s")
    print(f"  (c) total (a) + (b)                 {total_s:7.3f} s")
    print(
        f"reference per-detection Python loop (VOCevaldet.m port), evaluation only: "
        f"{ref_s:.3f} s on the first {ref_images} images -> {ref_full_s:.2f} s for "
        f"{args.num_images} images (linear extrapolation, not measured)"
    )
    print(
        f"ratio reference (extrapolated) / evaluate_voc: {ref_full_s / eval_s:.1f}x; "
        f"/ total with reading: {ref_full_s / total_s:.1f}x"
    )
    print(
        f"previous evaluator {OLD_EVALUATOR_S} s at this size on a 2-core CPU, target "
        f"< {TARGET_S} s including reading; ours {total_s:.2f} s "
        f"({OLD_EVALUATOR_S / total_s:.0f}x faster than the old evaluator)"
    )
    print(
        f"mAP (IoU >= 0.5, +1 pixel convention, difficult ignored): VOC07 11-point "
        f"{out['voc07_map']:.4f}, VOC2010+ area {out['voc12_map']:.4f}"
    )
    print(
        f"check on the first {ref_images} images, {len(ref)} classes: max |AP evaluate_voc - "
        f"reference| VOC12 {diff12:.1e}, VOC07 {max(diff07):.1e}; VOC07 differs in "
        f"{sum(differ07)} classes, all with a recall of exactly 0.6 or 0.7: "
        f"{all(s for s, d in zip(at_six_seven, differ07) if d)} (linspace vs MATLAB 0:0.1:1)"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
