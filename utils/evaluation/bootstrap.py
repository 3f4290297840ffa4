"""Paired bootstrap of VOC mAP over test images, every resample computed at once.

Why a paired bootstrap: checkpoints compared on one split share its images, and most of the
spread of one mAP comes from which images the split happens to hold. Resampling the images
with replacement, the same resample for every checkpoint, and recomputing every mAP on it
measures the spread of the *difference*, which the per-checkpoint spread overstates.

Why weights are exact: VOC matching is per image and per class (a detection's TP / FP /
ignored outcome depends on the boxes of its own image only), so a resample that draws an image
k times counts its detections, TPs, FPs and ground truth k times; nothing is matched again. Per
class the detections are sorted by score once (``MatchTable``); a resample is a vector of image
counts, the cumulative sums of count-weighted TPs and FPs along the sorted order are its
precision-recall curve, and the weighted count of non-difficult ground truth is its ``npos``.
Two reductions keep the arrays small without changing any AP: false positives ranked below a
class's last TP never raise precision at a new recall, so they are dropped, and a run of false
positives between two TPs only matters through its total weight (``np.add.reduceat``). With all
counts 1 the result is ``metrics.evaluate_voc``'s mAP (tested to 1e-12); with other counts it
is ``evaluate_voc`` on the resample written out image by image (``materialize``), except that
copies of one detection stay next to each other where the written-out set would order equal
scores of different images by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utils.errors import InputError
from utils.evaluation.metrics import BoxSet, match_class

# the recall thresholds of metrics.ap_voc07, built the same way (MATLAB's 0:0.1:1)
_VOC07_RECALLS = np.r_[np.arange(6) * 0.1, 1 - np.arange(4, -1, -1) * 0.1]
_EPS = np.finfo(np.float64).eps
_CHUNK = 250  # resamples per array pass: bounds the (resamples x detections) arrays


@dataclass(frozen=True)
class ClassTable:
    """One class's matching, reduced to what a resample of whole images needs."""

    tp_image: np.ndarray  # (T,) image of each TP, in decreasing score order
    fp_image: np.ndarray  # (F,) image of each FP ranked above the last TP, in score order
    fp_starts: np.ndarray  # (R,) start in fp_image of each non-empty run of FPs between TPs
    tp_runs: np.ndarray  # (T,) number of those runs ranked above each TP
    gt_image: np.ndarray  # (npos,) image of each non-difficult ground-truth box

    @classmethod
    def from_flags(cls, image: np.ndarray, tp: np.ndarray, gt_image: np.ndarray) -> ClassTable:
        """From the kept detections' images and TP flags in score order (``ClassMatches``)."""
        tp_pos = np.flatnonzero(tp)
        if len(tp_pos) == 0:  # no TP: AP 0 whatever the weights, the FPs do not matter
            empty = np.zeros(0, np.int64)
            return cls(empty, empty, empty, empty, np.asarray(gt_image, np.int64))
        head = slice(0, tp_pos[-1])
        fp_image = image[head][~tp[head]]
        fp_above = tp_pos - np.arange(len(tp_pos))  # FPs ranked above each TP
        ends = np.unique(fp_above[fp_above > 0])  # cumulative FP counts where runs end
        tp_runs = np.where(fp_above > 0, np.searchsorted(ends, fp_above) + 1, 0)
        return cls(
            np.asarray(image[tp_pos], np.int64),
            np.asarray(fp_image, np.int64),
            np.concatenate([[0], ends[:-1]]).astype(np.int64) if len(ends) else ends,
            tp_runs.astype(np.int64),
            np.asarray(gt_image, np.int64),
        )


@dataclass(frozen=True)
class MatchTable:
    """One checkpoint's VOC matching on one split, per class (see the module docstring).

    ``images`` are the indices of the images that were scored (readable); a resample draws
    from them.
    """

    num_images: int
    images: np.ndarray
    classes: tuple[ClassTable, ...]

    @classmethod
    def from_boxes(
        cls,
        dets: BoxSet,
        gts: BoxSet,
        num_classes: int,
        *,
        num_images: int | None = None,
        images: np.ndarray | None = None,
        iou_thresh: float = 0.5,
    ) -> MatchTable:
        """Matches ``dets`` to ``gts`` (VOC protocol) and keeps per class the TP / FP images.

        Args:
            num_images: image indices run from 0 to this (default: the largest index + 1).
            images: the scored images (default: all ``num_images``).
        """
        if gts.difficult is None:
            gts.difficult = np.zeros(len(gts), bool)
        if num_images is None:
            num_images = int(max(gts.image.max(initial=-1), dets.image.max(initial=-1)) + 1)
        tables = []
        for c in range(num_classes):
            m = match_class(dets, gts, c, iou_thresh)
            tables.append(ClassTable.from_flags(m.image, m.tp, m.gt_image))
        scored = np.arange(num_images) if images is None else np.asarray(images, np.int64)
        return cls(num_images, scored, tuple(tables))

    def ground_truth(self) -> np.ndarray:
        """(classes, images) counts of non-difficult ground truth."""
        return np.stack(
            [np.bincount(t.gt_image, minlength=self.num_images) for t in self.classes]
        ).reshape(len(self.classes), self.num_images)

    def same_split(self, other: MatchTable) -> bool:
        """True when both were scored on the same images against the same ground truth, the
        condition for resampling them together."""
        return (
            self.num_images == other.num_images
            and np.array_equal(self.images, other.images)
            and len(self.classes) == len(other.classes)
            and np.array_equal(self.ground_truth(), other.ground_truth())
        )


def _class_aps(
    table: ClassTable, counts: np.ndarray, npos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """VOC07 and VOC12 AP of one class for every resample: ``counts`` (B, images), ``npos``
    (B,). Arrays are resample-major so that every cumulative sum runs along contiguous memory
    (along the other axis numpy's accumulate strides through memory and is ~5x slower)."""
    b = len(counts)
    if len(table.tp_image) == 0:
        return np.zeros(b), np.zeros(b)
    ctp = np.cumsum(np.take(counts, table.tp_image, axis=1), axis=1, dtype=np.int64)  # (B, T)
    if len(table.fp_starts):
        fp = np.take(counts, table.fp_image, axis=1)
        runs = np.add.reduceat(fp, table.fp_starts, axis=1, dtype=np.int32)
        cum = np.zeros((b, runs.shape[1] + 1), np.int64)
        np.cumsum(runs, axis=1, out=cum[:, 1:])
        cfp = np.take(cum, table.tp_runs, axis=1)
    else:
        cfp = np.zeros_like(ctp)
    recall = ctp / np.maximum(npos, 1)[:, None]
    precision = ctp / np.maximum((ctp + cfp).astype(np.float64), _EPS)
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    ap12 = (np.diff(recall, axis=1, prepend=0.0) * envelope).sum(1)
    # VOC07: the envelope at the first point with recall >= t (0 past the last point)
    padded = np.hstack([envelope, np.zeros((b, 1))])
    first = np.zeros((b, len(_VOC07_RECALLS)), np.int64)  # recall >= 0 holds at point 0
    for k, t in enumerate(_VOC07_RECALLS[1:], 1):  # a (B, T, 11) comparison is 6x slower
        first[:, k] = np.count_nonzero(recall < t, axis=1)
    ap07 = np.take_along_axis(padded, first, axis=1).sum(1) / 11
    return ap07, ap12


def resampled_maps(
    tables: Sequence[MatchTable], counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """VOC07 and VOC12 mAP of every table on every resample.

    Args:
        tables: checkpoints scored on the same split (``MatchTable.same_split``).
        counts: (B, images) how many times each resample draws each image.

    Returns:
        ``(voc07, voc12)``, each (B, len(tables)); a class counts in a resample's mean when the
        resample holds ground truth of it, as ``evaluate_voc`` counts classes.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or (tables and counts.shape[1] != tables[0].num_images):
        raise InputError(f"counts of shape {counts.shape}: expected (resamples, images)")
    small = np.uint8 if counts.max(initial=0) < 256 else np.int64
    num_b = len(counts)
    voc07, voc12 = np.zeros((num_b, len(tables))), np.zeros((num_b, len(tables)))
    ground_truth = [t.ground_truth().T.astype(np.float64) for t in tables]  # (images, classes)
    for lo in range(0, num_b, _CHUNK):
        chunk = np.ascontiguousarray(counts[lo : lo + _CHUNK], dtype=small)  # (b, images)
        for m, table in enumerate(tables):
            npos = chunk.astype(np.float64) @ ground_truth[m]  # (b, classes), exact integers
            aps = [_class_aps(t, chunk, npos[:, c]) for c, t in enumerate(table.classes)]
            ap07 = np.stack([a[0] for a in aps], 1) if aps else np.zeros((len(chunk), 0))
            ap12 = np.stack([a[1] for a in aps], 1) if aps else np.zeros((len(chunk), 0))
            has = npos > 0
            classes = np.maximum(has.sum(1), 1)
            voc07[lo : lo + _CHUNK, m] = np.where(has, ap07, 0.0).sum(1) / classes
            voc12[lo : lo + _CHUNK, m] = np.where(has, ap12, 0.0).sum(1) / classes
    return voc07, voc12


def identity_counts(table: MatchTable) -> np.ndarray:
    """(1, images) counts of the split as it is: each scored image once."""
    counts = np.zeros((1, table.num_images), np.int64)
    counts[0, table.images] = 1
    return counts


def draw_counts(table: MatchTable, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, images) counts: each resample draws as many images as were scored, uniformly
    with replacement among them."""
    n = len(table.images)
    picks = table.images[rng.integers(0, n, size=(resamples, n))]
    offsets = np.arange(resamples)[:, None] * table.num_images
    flat = np.bincount((picks + offsets).ravel(), minlength=resamples * table.num_images)
    return flat.reshape(resamples, table.num_images)


def materialize(boxes: BoxSet, picks: np.ndarray) -> BoxSet:
    """The resample written out: the k-th drawn image (``picks[k]``) becomes image k with a
    copy of its boxes. The definition the weighted computation is checked against, and the
    naive per-resample loop of ``benchmarks.bootstrap``."""
    order = np.argsort(boxes.image, kind="stable")
    per_image = np.bincount(boxes.image, minlength=int(picks.max(initial=-1)) + 1)
    starts = np.concatenate([[0], np.cumsum(per_image)[:-1]])
    lengths = per_image[picks]
    total = int(lengths.sum())
    offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows = order[np.repeat(starts[picks], lengths) + offsets]
    return BoxSet(
        np.repeat(np.arange(len(picks)), lengths),
        boxes.boxes[rows],
        boxes.labels[rows],
        scores=None if boxes.scores is None else boxes.scores[rows],
        difficult=None if boxes.difficult is None else boxes.difficult[rows],
    )


@dataclass(frozen=True)
class PairResult:
    """Group ``b`` against group ``a``: ``difference`` = mean mAP of b - mean mAP of a on the
    split as it is, with the percentile interval of the bootstrap differences.

    ``low``/``high`` is the interval the verdict reads: with the seeds paired when ``paired``,
    else resampled independently, which ``low_independent``/``high_independent`` always hold.
    ``per_seed`` gives, when paired, b - a of the two runs of each seed (seed order), and
    ``unpaired_why`` says why the seeds were not paired.
    """

    a: int
    b: int
    difference: float
    low: float
    high: float
    low_independent: float
    high_independent: float
    paired: bool = False
    per_seed: tuple[tuple[int, float], ...] = ()
    unpaired_why: str = ""

    @property
    def verdict(self) -> str:
        """b "better" or "worse" than a when the interval excludes 0, else "not
        distinguishable"."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "not distinguishable"


def _listed(values: Sequence) -> str:
    return ", ".join(map(str, values))


def seed_pairing(
    groups: Sequence[Sequence[int]],
    seeds: Sequence[int | None] | None,
    settings: Sequence[object] | None = None,
    names: Sequence[str] | None = None,
) -> dict[tuple[int, int], str]:
    """Per pair ``(a, b)`` of groups, ``""`` when their seeds can be resampled jointly, else
    why not.

    Two groups pair when every run of both has a seed, no group holds a seed twice, both hold
    the same set of seeds, and (when ``settings`` is given) every run of both has equal
    settings (dicts: the keys that differ are named; None: unknown, so no pairing).

    Args:
        groups: indices of each group's runs.
        seeds: per run its training seed, None where unknown; None: no run's is known.
        settings: per run its training settings apart from the seed and the block.
        names: the groups' names for the reasons (default: ``group 0``, ...).
    """
    names = list(names) if names is not None else [f"group {g}" for g in range(len(groups))]
    problems = {}
    for g, members in enumerate(groups):
        if seeds is None:
            problems[g] = "training seeds unknown"
            continue
        values = [seeds[k] for k in members]
        if any(v is None for v in values):
            problems[g] = f"a run of {names[g]} has no stored seed"
        elif len(set(values)) < len(values):
            twice = sorted({v for v in values if values.count(v) > 1})
            problems[g] = f"{names[g]} holds seed {_listed(twice)} more than once"
    out = {}
    for a in range(len(groups)):
        for b in range(a + 1, len(groups)):
            if a in problems or b in problems:
                out[a, b] = problems.get(a) or problems[b]
                continue
            seeds_a = sorted(seeds[k] for k in groups[a])
            seeds_b = sorted(seeds[k] for k in groups[b])
            if seeds_a != seeds_b:
                out[a, b] = (
                    f"seeds differ: {names[a]} {_listed(seeds_a)}, {names[b]} {_listed(seeds_b)}"
                )
                continue
            out[a, b] = (
                "" if settings is None else _settings_differ([*groups[a], *groups[b]], settings)
            )
    return out


def _settings_differ(runs: Sequence[int], settings: Sequence[object]) -> str:
    """ "" when every run of ``runs`` has the same known settings, else what differs."""
    values = [settings[k] for k in runs]
    if any(v is None for v in values):
        return "a run's training settings are unknown"
    first = values[0]
    if all(v == first for v in values[1:]):
        return ""
    if all(isinstance(v, dict) for v in values):
        keys = sorted({k for v in values for k in {*v, *first} if v.get(k) != first.get(k)})
        shown = _listed(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        return f"training settings differ ({shown})"
    return "training settings differ"


def compare_groups(
    tables: Sequence[MatchTable],
    groups: Sequence[Sequence[int]],
    *,
    seeds: Sequence[int | None] | None = None,
    settings: Sequence[object] | None = None,
    names: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    metric: str = "voc12",
) -> list[PairResult]:
    """Every pair of groups (attention types, each a list of indices into ``tables``, one per
    training seed), compared by a two-level (hierarchical) paired bootstrap.

    Each replicate draws the test images with replacement, the same draw for every table;
    a group's value is the mean mAP of its drawn seeds on the drawn images. The difference of
    two groups' values over the replicates gives a percentile interval that holds both
    sources of noise: which images the split holds (paired, so shared between the groups) and
    which training run a seed gave.

    The seeds are drawn two ways. Independently: within each group, its own draw. Paired,
    for two groups trained with the same seeds and settings (``seed_pairing``): one draw of
    seed values s1..sn with replacement per replicate, the same for every group holding those
    seeds, each group taking its run of each drawn seed. A seed fixes the data order, the
    augmentation and the initial weights of the layers the blocks share, so runs of one seed
    share much of their luck (common random numbers); the paired draw keeps that shared part
    out of the difference, the independent draw counts it twice. The image draws and the
    independent seed draws are those of the unpaired design, whatever the pairing.

    Resampling seeds keeps one nonparametric percentile interval; adding a between-seed
    variance to it instead would need a normal approximation the per-image part does not
    need. Caveats: with n seeds the resampled seed mean's variance is (n - 1) / n of the usual
    estimate (slightly narrow intervals for 2-3 seeds), and a group with one seed adds no
    training noise at all.

    Args:
        tables: per checkpoint, all scored on the same split (``MatchTable.same_split``).
        groups: indices into ``tables``, one list per group.
        seeds: per table its training seed (None: unknown); None: no pairing of seeds.
        settings: per table its training settings but the seed and the block (compared with
            ``==``; None: unknown); None: not checked (the caller vouches for them).
        names: the groups' names, for ``unpaired_why``.
        resamples: bootstrap replicates.
        seed: the random seed; the same seed gives the same intervals.
        level: the interval's coverage (0.95: the 2.5th and 97.5th percentiles).
        metric: "voc12" (area AP) or "voc07" (11-point AP).

    Returns:
        One ``PairResult`` per pair ``(a, b)`` with ``a < b``, in order.

    Raises:
        ValueError: tables of different splits, an empty group, or a bad setting.
    """
    if metric not in ("voc07", "voc12"):
        raise InputError(f"metric {metric!r}: must be voc07 or voc12")
    if resamples < 1 or not 0 < level < 1:
        raise InputError(f"resamples {resamples}, level {level}: need >= 1 and in (0, 1)")
    if any(len(g) == 0 for g in groups):
        raise InputError("every group needs at least one checkpoint")
    for what, values in (("seeds", seeds), ("settings", settings)):
        if values is not None and len(values) != len(tables):
            raise InputError(f"{len(values)} {what} for {len(tables)} checkpoints")
    if any(not tables[0].same_split(t) for t in tables[1:]):
        raise InputError("checkpoints scored on different images or ground truth cannot be paired")
    # children 0 and 1 are those of the unpaired design: its draws stay as they were
    images_rng, seeds_rng, paired_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    pick = 1 if metric == "voc12" else 0
    exact = resampled_maps(tables, identity_counts(tables[0]))[pick][0]
    maps = np.zeros((resamples, len(tables)))
    for lo in range(0, resamples, 1000):  # bounded memory for the drawn counts
        counts = draw_counts(tables[0], min(1000, resamples - lo), images_rng)
        maps[lo : lo + len(counts)] = resampled_maps(tables, counts)[pick]
    rows = np.arange(resamples)[:, None]
    independent = []
    for members in groups:
        members = np.asarray(members, np.int64)
        drawn = members[seeds_rng.integers(0, len(members), size=(resamples, len(members)))]
        independent.append(maps[rows, drawn].mean(1))
    why = seed_pairing(groups, seeds, settings, names)
    by_seed = {  # a paired group's runs in seed order
        g: np.asarray(sorted(members, key=lambda k: seeds[k]), np.int64)
        for g, members in enumerate(groups)
        if any(not why[p] for p in why if g in p)
    }
    draws: dict[tuple, np.ndarray] = {}  # one seed draw per set of seeds, shared by its groups
    paired = {}
    for g, members in by_seed.items():
        key = tuple(seeds[k] for k in members)
        if key not in draws:
            draws[key] = paired_rng.integers(0, len(key), size=(resamples, len(key)))
        paired[g] = maps[rows, members[draws[key]]].mean(1)
    tail = (1 - level) / 2 * 100
    results = []
    for a in range(len(groups)):
        for b in range(a + 1, len(groups)):
            point = float(exact[list(groups[b])].mean() - exact[list(groups[a])].mean())
            low_i, high_i = (
                float(v) for v in np.percentile(independent[b] - independent[a], [tail, 100 - tail])
            )
            if why[a, b]:
                results.append(
                    PairResult(a, b, point, low_i, high_i, low_i, high_i, unpaired_why=why[a, b])
                )
                continue
            low, high = (float(v) for v in np.percentile(paired[b] - paired[a], [tail, 100 - tail]))
            per_seed = tuple(
                (int(seeds[ka]), float(exact[kb] - exact[ka]))
                for ka, kb in zip(by_seed[a], by_seed[b])
            )
            results.append(
                PairResult(a, b, point, low, high, low_i, high_i, paired=True, per_seed=per_seed)
            )
    return results
