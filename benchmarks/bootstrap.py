"""Benchmark of the paired bootstrap behind the comparison table's verdicts, at VOC07 test size.

    python -m benchmarks.bootstrap [--num-images 4952] [--phis 5] [--seeds 3] [--resamples 1000]
                                   [--dets-per-image 100] [--naive-resamples 2]

A seeded synthetic split: ``--num-images`` images (VOC07 test has 4,952), 20 classes, 1-4 objects
per image (~10% difficult, sizes from small to large), and per checkpoint ``--dets-per-image``
detections per image: every object is found with a probability that depends on the phi and
seed (jittered box, a high score), a few duplicates, and the rest low-scored boxes of random
classes, the long tail that the 0.001 evaluation threshold keeps. Times
``bootstrap.compare_groups`` (every phi x seed, all pairs of phis, the seeds paired across
phis, as a study's are, and resampled independently) against the 60 s target on a 2-core CPU.
The named reference is the naive loop: write each resample out (``bootstrap.materialize``)
and rescore it with ``metrics.evaluate_voc``, timed on ``--naive-resamples`` resamples and
extrapolated linearly (its mAPs are checked against the vectorised ones). Prints numbers
only: speed is measured here, not asserted in tests.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from benchmarks.common import add_synthetic_case_options, check_at_least, start
from utils.config import CommandParser, run_cli
from utils.evaluation import bootstrap as paired
from utils.evaluation.metrics import BoxSet, evaluate_voc
from utils.timing import time_call

NUM_CLASSES = 20
TARGET_S = 60.0  # 5 phis x 3 seeds, 1,000 resamples, VOC07 test size, on a 2-core CPU


def make_split(num_images: int, seed: int) -> BoxSet:
    """Ground truth: 1-4 boxes per image in 300-500 pixel images, ~10% difficult."""
    rng = np.random.default_rng(seed)
    per_image = rng.integers(1, 5, num_images)
    image = np.repeat(np.arange(num_images), per_image)
    side = rng.integers(300, 501, (len(image), 2)).astype(np.float64)
    wh = np.floor(side * rng.uniform(0.04, 0.8, (len(image), 2)))
    xy = np.floor(rng.random((len(image), 2)) * (side - wh))
    return BoxSet(
        image,
        np.column_stack([xy, xy + wh - 1]),
        rng.integers(0, NUM_CLASSES, len(image)),
        difficult=rng.random(len(image)) < 0.1,
    )


def make_detections(gts: BoxSet, num_images: int, per_image: int, recall: float, seed: int):
    """One checkpoint's detections: each object found with probability ``recall`` (a copy
    jittered by 10% of its size, which misses IoU 0.5 now and then; score ~ Beta(2.5, 1.2)),
    5% of the found ones twice, and random boxes of random classes up to ``per_image`` per
    image, scored 0.001 + Exp(0.02) (background) or, one in 50, U(0.05, 0.9) (confusions), so
    that TPs and FPs interleave over the whole score range as a real detector's do."""
    rng = np.random.default_rng(seed)
    found = np.flatnonzero(rng.random(len(gts)) < recall)
    found = np.concatenate([found, found[rng.random(len(found)) < 0.05]])
    base = gts.boxes[found]
    size = np.tile(base[:, 2:] - base[:, :2] + 1, 2)
    near = base + rng.normal(0, 0.1, base.shape) * size
    near_image = gts.image[found]
    fill = np.maximum(per_image - np.bincount(near_image, minlength=num_images), 0)
    far_image = np.repeat(np.arange(num_images), fill)
    xy = rng.random((len(far_image), 2)) * 400
    far = np.column_stack([xy, xy + rng.uniform(10, 200, (len(far_image), 2))])
    confused = rng.random(len(far_image)) < 1 / 50
    far_scores = np.where(
        confused,
        rng.uniform(0.05, 0.9, len(far_image)),
        0.001 + rng.exponential(0.02, len(far_image)),
    )
    return BoxSet(
        np.concatenate([near_image, far_image]),
        np.vstack([near, far]),
        np.concatenate([gts.labels[found], rng.integers(0, NUM_CLASSES, len(far_image))]),
        scores=np.concatenate([rng.beta(2.5, 1.2, len(found)), far_scores]),
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = CommandParser(description=__doc__.split("\n\n")[0])
    add_synthetic_case_options(parser, "detections per image", "seed of the synthetic case")
    parser.add_argument("--phis", type=int, default=5, help="attention types compared")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per phi")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument(
        "--naive-resamples", type=int, default=2, help="resamples timed for the naive loop"
    )
    args = parser.parse_args(argv)
    check_at_least(
        args, num_images=1, phis=1, seeds=1, resamples=1, dets_per_image=1, naive_resamples=1
    )
    return args


def make_checkpoints(args: argparse.Namespace) -> tuple[BoxSet, list[BoxSet], list[list[int]]]:
    """The ground truth, every phi x seed checkpoint's detections (recall rising by 2 points
    per phi, 1 per seed: a seed's shift shared by every phi) and the checkpoints' indices
    grouped by phi."""
    gts = make_split(args.num_images, args.seed)
    models = []
    for p in range(args.phis):
        for s in range(args.seeds):
            recall = 0.75 + 0.02 * p + 0.01 * (s - 1)
            seed = 1000 * p + s
            models.append(make_detections(gts, args.num_images, args.dets_per_image, recall, seed))
    groups = [list(range(p * args.seeds, (p + 1) * args.seeds)) for p in range(args.phis)]
    return gts, models, groups


def time_vectorised(args, gts: BoxSet, models: list[BoxSet], groups: list[list[int]]):
    """Matching and the paired bootstrap of every pair of phis, timed.

    Returns:
        (match tables, the pairs' results, matching s, resampling s, CPU s)
    """
    cpu_start = time.process_time()  # CPU seconds: what a shared machine's load does not inflate
    match_s, tables = time_call(
        lambda: [
            paired.MatchTable.from_boxes(d, gts, NUM_CLASSES, num_images=args.num_images)
            for d in models
        ]
    )
    seeds = [s for _ in groups for s in range(args.seeds)]
    boot_s, pairs = time_call(
        lambda: paired.compare_groups(
            tables, groups, seeds=seeds, resamples=args.resamples, seed=args.seed
        )
    )
    return tables, pairs, match_s, boot_s, time.process_time() - cpu_start


def time_naive(args, gts: BoxSet, models: list[BoxSet], tables) -> tuple[float, float]:
    """The naive loop on ``--naive-resamples`` resamples: seconds per resample, and the largest
    mAP difference to the vectorised bootstrap on the same resamples."""
    rng = np.random.default_rng(args.seed + 1)
    counts = paired.draw_counts(tables[0], args.naive_resamples, rng)
    picks = [np.repeat(np.arange(args.num_images), c) for c in counts]

    def naive() -> np.ndarray:
        out = np.zeros((len(picks), len(models)))
        for b, pick in enumerate(picks):
            resampled_gts = paired.materialize(gts, pick)
            for m, dets in enumerate(models):
                resampled = paired.materialize(dets, pick)
                out[b, m] = evaluate_voc(resampled, resampled_gts, NUM_CLASSES)["voc12_map"]
        return out

    naive_s, naive_maps = time_call(naive)
    fast = paired.resampled_maps(tables, counts)[1]
    return naive_s / len(picks), float(np.abs(fast - naive_maps).max())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    gts, models, groups = make_checkpoints(args)
    num_dets = sum(len(d) for d in models)
    start(
        f"case: {args.num_images} images, {NUM_CLASSES} classes, {len(gts)} GT "
        f"({int(gts.difficult.sum())} difficult); {args.phis} phis x {args.seeds} seeds = "
        f"{len(models)} checkpoints, {args.dets_per_image} detections per image each "
        f"({num_dets:,} in all); {args.resamples} resamples"
    )
    tables, pairs, match_s, boot_s, cpu_s = time_vectorised(args, gts, models, groups)
    total_s = match_s + boot_s
    exact = paired.resampled_maps(tables, paired.identity_counts(tables[0]))[1][0]
    tps = sum(len(c.tp_image) for c in tables[0].classes)
    fps = sum(len(c.fp_image) for c in tables[0].classes)
    runs = sum(len(c.fp_starts) for c in tables[0].classes)
    print(
        f"mAP50 (VOC12) per checkpoint {100 * exact.min():.1f}-{100 * exact.max():.1f}; first "
        f"checkpoint: {tps} TPs, {fps} FPs ranked above a TP of their class, in {runs} runs"
    )
    print(
        f"vectorised paired bootstrap: matching {match_s:.1f} s + {args.resamples} resamples "
        f"{boot_s:.1f} s = {total_s:.1f} s for all {len(models)} checkpoints "
        f"({1000 * boot_s / args.resamples:.1f} ms per resample), {cpu_s:.1f} s of CPU time; "
        f"target {TARGET_S:.0f} s on a 2-core CPU: {'met' if total_s <= TARGET_S else 'missed'}"
    )
    per_resample, difference = time_naive(args, gts, models, tables)
    extrapolated = per_resample * args.resamples
    print(
        f"reference, naive loop (materialize + evaluate_voc per resample, all checkpoints): "
        f"{per_resample:.2f} s per resample (mean of {args.naive_resamples} timed) -> "
        f"{extrapolated:.0f} s for {args.resamples} (extrapolated, not measured); "
        f"vectorised {extrapolated / total_s:.0f}x faster"
    )
    print(f"check: max |mAP vectorised - naive| on those resamples {difference:.1e}")
    for r in pairs[: args.phis - 1]:
        print(
            f"  phi {r.b} vs phi {r.a}: {100 * r.difference:+.2f} points, 95% interval "
            f"[{100 * r.low:+.2f}, {100 * r.high:+.2f}] with seeds paired "
            f"([{100 * r.low_independent:+.2f}, {100 * r.high_independent:+.2f}] independent): "
            f"{r.verdict}"
        )
    return 0


if __name__ == "__main__":
    run_cli(main)
