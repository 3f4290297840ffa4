"""Attention comparison: the paired bootstrap (exactness, verdicts, seed), AP by object size,
grouping by block name, the table outputs, and the whole study."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import exit_code
from voc_factory import CLASSES, make_split, run_with_file_size_limit, tiny_train_config

import eval as eval_cli
from tools.study import run_study
from utils.evaluation.bootstrap import (
    MatchTable,
    compare_groups,
    draw_counts,
    identity_counts,
    materialize,
    resampled_maps,
)
from utils.evaluation.compare import (
    CompareConfig,
    Row,
    group_names,
    pairwise_verdicts,
    size_aps,
    summarize_by_phi,
    table_protocol,
    write_outputs,
)
from utils.evaluation.evaluate import EvalConfig
from utils.evaluation.metrics import (
    COCO_AREA_RANGES,
    BoxSet,
    evaluate_class,
    evaluate_voc,
    to_coco,
)

ROOT = Path(__file__).resolve().parents[1]


def _ground_truth(rng: np.random.Generator, num_images: int, num_classes: int = 3) -> BoxSet:
    """1-3 boxes per image, ~10% difficult, sides 10-200 pixels (all three COCO sizes)."""
    per_image = rng.integers(1, 4, num_images)
    image = np.repeat(np.arange(num_images), per_image)
    wh = rng.integers(10, 200, (len(image), 2)).astype(np.float64)
    xy = np.floor(rng.random((len(image), 2)) * 300)
    boxes = np.column_stack([xy, xy + wh - 1])
    labels = rng.integers(0, num_classes, len(image))
    return BoxSet(image, boxes, labels, difficult=rng.random(len(image)) < 0.1)


def _detections(gts: BoxSet, recall: float, seed: int, num_classes: int = 3) -> BoxSet:
    """Each object found with probability ``recall`` (a jittered copy, high score), 10% of
    them twice, plus 5 random low-scored boxes per image."""
    rng = np.random.default_rng(seed)
    found = np.flatnonzero(rng.random(len(gts)) < recall)
    found = np.concatenate([found, found[rng.random(len(found)) < 0.1]])
    size = np.tile(gts.boxes[found, 2:] - gts.boxes[found, :2] + 1, 2)
    near = gts.boxes[found] + rng.normal(0, 0.08, (len(found), 4)) * size
    num_images = int(gts.image.max()) + 1
    far_image = np.repeat(np.arange(num_images), 5)
    xy = rng.random((len(far_image), 2)) * 400
    far = np.column_stack([xy, xy + rng.uniform(5, 150, (len(far_image), 2))])
    return BoxSet(
        np.concatenate([gts.image[found], far_image]),
        np.vstack([near, far]),
        np.concatenate([gts.labels[found], rng.integers(0, num_classes, len(far_image))]),
        scores=np.concatenate(
            [rng.uniform(0.2, 1, len(found)), rng.uniform(0, 0.3, len(far_image))]
        ),
    )


def _table(dets: BoxSet, gts: BoxSet, num_images: int) -> MatchTable:
    return MatchTable.from_boxes(dets, gts, 3, num_images=num_images)


def _row(name: str, phi: int, phi_name: str, dets: BoxSet, gts: BoxSet, num_images: int) -> Row:
    voc = evaluate_voc(dets, gts, 3)
    sizes = size_aps(dets, gts, 3)
    return Row(
        name, phi, phi_name, 1000 + phi, 1.5, 9.0, voc["voc07_map"], voc["voc12_map"], None,
        cpu_forward_ms=5.0 + phi, ap_small=sizes["small"], ap_medium=sizes["medium"],
        ap_large=sizes["large"], matches=_table(dets, gts, num_images),
    )  # fmt: skip


def test_exports_and_other_input_sizes_are_not_seeds_of_a_block(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    gts = _ground_truth(rng, 40)
    rows = [_row(n, 2, "cbam", _detections(gts, 0.6, k), gts, 40) for k, n in enumerate("abc")]
    for row in rows:
        row.input_size = 192
    rows[2].runtime = "ONNX INT8"  # an export of "a": its own group, not a third seed
    assert [(s.phi_name, s.runs) for s in summarize_by_phi(rows)] == [
        ("cbam", 2), ("cbam, ONNX INT8", 1)
    ]  # fmt: skip
    rows[1].input_size = 96
    assert group_names(rows) == ["cbam, 192 px", "cbam, 96 px", "cbam, ONNX INT8, 192 px"]
    report = SimpleNamespace(protocol="demo 2007:test at 192 | IoU >= 0.5")
    assert (
        table_protocol([report], rows)
        == "demo 2007:test at each checkpoint's own size | IoU >= 0.5"
    )
    paths = write_outputs(rows, "p", tmp_path, CompareConfig(bootstrap_resamples=100))
    assert "| b | 2 cbam, 96 px |" in paths["md"].read_text()
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [(r["runtime"], r["input_size"]) for r in table] == [
        ("PyTorch", "192"), ("PyTorch", "96"), ("ONNX INT8", "192")
    ]  # fmt: skip


def test_identity_resample_is_the_exact_metric() -> None:
    """All counts 1: the vectorised mAPs are evaluate_voc's, with score ties, duplicates,
    difficult objects and a class without ground truth in the case."""
    rng = np.random.default_rng(3)
    gts = _ground_truth(rng, 150)
    gts.labels[gts.labels == 2] = 1  # class 2: detections only
    dets = _detections(gts, 0.7, 1)
    dets.scores = np.round(dets.scores, 2)  # many exact ties
    table = _table(dets, gts, 150)
    voc07, voc12 = resampled_maps([table], identity_counts(table))
    exact = evaluate_voc(dets, gts, 3)
    assert exact["classes_with_gt"] == [0, 1]
    assert abs(voc12[0, 0] - exact["voc12_map"]) < 1e-12
    assert abs(voc07[0, 0] - exact["voc07_map"]) < 1e-12
    assert 0.3 < exact["voc12_map"] < 0.95  # a case where the curve has some shape


def test_resample_is_the_metric_of_the_resample_written_out() -> None:
    """Images drawn k times count k times: the weighted mAPs equal evaluate_voc on the
    resampled set written out image by image (continuous scores: no ties to order)."""
    rng = np.random.default_rng(4)
    gts = _ground_truth(rng, 80)
    tables = [_table(_detections(gts, r, s), gts, 80) for r, s in ((0.5, 1), (0.8, 2))]
    counts = draw_counts(tables[0], 4, np.random.default_rng(0))
    assert counts.sum(1).tolist() == [80] * 4 and counts.max() >= 3  # real duplicates
    voc07, voc12 = resampled_maps(tables, counts)
    for b, count in enumerate(counts):
        picks = np.repeat(np.arange(80), count)
        for m, (r, s) in enumerate(((0.5, 1), (0.8, 2))):
            dets = materialize(_detections(gts, r, s), picks)
            exact = evaluate_voc(dets, materialize(gts, picks), 3)
            assert abs(voc12[b, m] - exact["voc12_map"]) < 1e-12
            assert abs(voc07[b, m] - exact["voc07_map"]) < 1e-12


def test_verdicts_on_cases_with_a_known_answer() -> None:
    rng = np.random.default_rng(5)
    gts = _ground_truth(rng, 200)
    weak, strong = _detections(gts, 0.4, 1), _detections(gts, 0.9, 1)
    tables = [_table(d, gts, 200) for d in (weak, weak, strong)]
    same, better = compare_groups(tables, [[0], [1], [2]], resamples=500)[0:2]
    # the same detections under two names: every replicate's difference is 0
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert same.verdict == "not distinguishable"
    assert better.verdict == "better" and better.low > 0.2
    worse = compare_groups(tables[::-1], [[0], [2]], resamples=500)[0]
    assert worse.verdict == "worse" and worse.high < -0.2
    # two seeds that disagree widely: a replicate that draws one seed twice takes that seed's
    # mAP, so the interval spans about the gap between the two seeds
    split_seeds = [_table(_detections(gts, r, s), gts, 200) for r, s in ((0.3, 2), (0.9, 3))]
    steady = [_table(_detections(gts, 0.62, s), gts, 200) for s in (4, 5)]
    mixed = compare_groups(split_seeds + steady, [[0, 1], [2, 3]], resamples=500)[0]
    steady_only = compare_groups(steady + steady, [[0, 1], [2, 3]], resamples=500)[0]
    seed_gap = np.ptp(resampled_maps(split_seeds, identity_counts(split_seeds[0]))[1])
    assert seed_gap > 0.4 and mixed.verdict == "not distinguishable"
    assert mixed.high - mixed.low > 0.8 * seed_gap
    assert steady_only.high - steady_only.low < 0.5 * seed_gap


def test_bootstrap_is_deterministic_with_its_seed() -> None:
    rng = np.random.default_rng(6)
    gts = _ground_truth(rng, 60)
    tables = [_table(_detections(gts, r, s), gts, 60) for r, s in ((0.5, 1), (0.6, 2), (0.7, 3))]
    groups = [[0], [1, 2]]
    first = compare_groups(tables, groups, resamples=300, seed=7)
    assert compare_groups(tables, groups, resamples=300, seed=7) == first
    other = compare_groups(tables, groups, resamples=300, seed=8)
    assert (other[0].low, other[0].high) != (first[0].low, first[0].high)
    assert other[0].difference == first[0].difference  # the point estimate is not resampled


def _coco_ap50_101(ev, area_index: int) -> float:
    """COCOeval's AP at IoU 0.5 for one area range (maxDets 100), mean over classes."""
    p = ev.eval["precision"][0, :, :, area_index, -1]  # (recall thresholds, classes)
    return float(np.mean([p[:, k].mean() for k in range(p.shape[1]) if (p[:, k] > -1).any()]))


def _ap_101(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO's 101-point interpolation of a precision-recall curve."""
    envelope = np.maximum.accumulate(np.concatenate([precision, [0.0]])[::-1])[::-1]
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(envelope[np.minimum(idx, len(recall))].mean())


def test_size_range_ap_follows_cocoeval() -> None:
    """On a case without matching ambiguity (a detection overlaps one object or none), the
    size-range rule keeps the same detections as COCOeval's area ranges: the 101-point AP of
    our curves equals pycocotools' AP50 for small / medium / large. The published number is
    the area AP of the same curves (VOC2010+), which differs from 101 points only by the
    interpolation."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(7)
    image, boxes, labels = [], [], []
    dets = {"image": [], "boxes": [], "labels": [], "scores": []}
    for i in range(30):  # objects on a 4 x 4 grid of 200-pixel cells, one per cell at most
        for cell in rng.choice(16, 5, replace=False):
            side = rng.choice([14, 20, 50, 70, 130, 180])  # small, medium, large
            x, y = (cell % 4) * 200 + 5, (cell // 4) * 200 + 5
            box = np.array([x, y, x + side, y + side], np.float64)
            image.append(i), boxes.append(box), labels.append(int(rng.integers(0, 2)))
            for _ in range(int(rng.choice([0, 1, 1, 2]))):  # missed, found, found twice
                shift = rng.integers(0, 2, 4)  # IoU > 0.8 with its object, 0 with the rest
                dets["image"].append(i), dets["boxes"].append(box + shift)
                dets["labels"].append(labels[-1]), dets["scores"].append(rng.random())
        for _ in range(3):  # false positives in the empty band right of the grid
            side = rng.choice([10, 60, 150])
            y = rng.integers(0, 600)
            dets["image"].append(i), dets["boxes"].append(np.array([820, y, 820 + side, y + side]))
            dets["labels"].append(int(rng.integers(0, 2))), dets["scores"].append(rng.random())
    gts = BoxSet(image, np.stack(boxes), labels, difficult=np.zeros(len(image), bool))
    found = BoxSet(dets["image"], np.stack(dets["boxes"]), dets["labels"], scores=dets["scores"])
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(*to_coco(found, gts, 2), "bbox")
        ev.evaluate()
        ev.accumulate()
    for area_index, (name, area) in enumerate(COCO_AREA_RANGES.items(), 1):
        per_class = [evaluate_class(found, gts, c, 0.5, area) for c in range(2)]
        ours = np.mean([_ap_101(r.recall, r.precision) for r in per_class if r.num_gt])
        assert all(r.num_gt > 0 for r in per_class), name
        assert abs(ours - _coco_ap50_101(ev, area_index)) < 1e-9, name
        area_ap = evaluate_voc(found, gts, 2, area_range=area)["voc12_map"]
        assert abs(area_ap - ours) < 0.02, name  # interpolation only
    # the whole range is the plain VOC metric
    assert (
        evaluate_voc(found, gts, 2, area_range=(0, np.inf))["voc12_map"]
        == evaluate_voc(found, gts, 2)["voc12_map"]
    )


def test_size_range_ignores_detections_of_other_sizes() -> None:
    """A large object found, a small one missed, a small false positive and a large one:
    the small range scores only the small object and the small false positive."""
    gts = BoxSet([0, 0], [[0, 0, 9, 9], [100, 100, 299, 299]], [0, 0], difficult=[False, False])
    dets = BoxSet(
        [0, 0, 0],
        [[100, 100, 299, 299], [400, 400, 409, 409], [500, 0, 699, 199]],
        [0, 0, 0],
        scores=[0.9, 0.8, 0.7],
    )
    small = evaluate_class(dets, gts, 0, 0.5, COCO_AREA_RANGES["small"])
    assert (small.num_gt, small.num_det, small.tp.tolist()) == (1, 1, [0.0])
    large = evaluate_class(dets, gts, 0, 0.5, COCO_AREA_RANGES["large"])
    assert (large.num_gt, large.num_det, large.tp.tolist()) == (1, 2, [1.0, 0.0])
    assert large.ap_voc12 == 1.0 and small.ap_voc12 == 0.0


def test_table_groups_by_block_name_with_verdicts_and_cost(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    gts = _ground_truth(rng, 120)
    rows = [
        _row("a", 0, "none", _detections(gts, 0.5, 1), gts, 120),
        _row("b", 0, "none", _detections(gts, 0.5, 2), gts, 120),
        _row("c", 1, "se", _detections(gts, 0.95, 3), gts, 120),
        _row("d", 1, "se", _detections(gts, 0.95, 4), gts, 120),
        _row("e", -1, "plug_b", _detections(gts, 0.5, 5), gts, 120),
        _row("f", -1, "plug_a", _detections(gts, 0.5, 6), gts, 120),
    ]
    for row, seed in zip(rows[:4], (1, 2, 1, 2)):  # none and se: one run per seed each
        row.seed, row.settings = seed, {"epochs": 3}
    summaries = summarize_by_phi(rows)
    # plugins (phi -1) stay apart, after the built-in blocks, by name
    assert [(s.phi_name, s.runs) for s in summaries] == [
        ("none", 2), ("se", 2), ("plug_a", 1), ("plug_b", 1)
    ]  # fmt: skip
    none = summaries[0]
    assert abs(none.voc12_mean - (rows[0].voc12 + rows[1].voc12) / 2) < 1e-12
    assert abs(none.voc12_std - abs(rows[0].voc12 - rows[1].voc12) / 2**0.5) < 1e-12
    assert none.cpu_ms_mean == 5.0 and none.params == 1000
    verdicts = pairwise_verdicts(rows, summaries, resamples=300)
    by_pair = {(v.a, v.b): v for v in verdicts}
    assert len(verdicts) == 6 and by_pair[("none", "se")].verdict == "better"
    assert by_pair[("se", "plug_a")].verdict == "worse"
    assert "one run of plug_a and plug_b" in by_pair[("plug_a", "plug_b")].note
    # none and se pair by seed; the plugins' runs have no seed, so their pairs do not
    assert [v.paired for v in verdicts] == [True, False, False, False, False, False]
    assert by_pair[("none", "plug_a")].unpaired_why == "a run of plug_a has no stored seed"
    paths = write_outputs(rows, "test protocol", tmp_path, CompareConfig(bootstrap_resamples=300))
    md = paths["md"].read_text()
    assert (
        "Protocol: test protocol; bootstrap: images paired; seeds paired between blocks of the "
        "same seeds and settings, resampled independently for the other pairs (a run of plug_a "
        "has no stored seed; a run of plug_b has no stored seed)\n" in md
    )
    assert "| 1 se | 2 |" in md and "plug_a (plugin)" in md
    assert f"{100 * none.voc12_mean:.2f} ± {100 * none.voc12_std:.2f}" in md
    se = by_pair[("none", "se")]
    assert (
        f"| se vs none | {100 * se.difference:+.2f} | [{100 * se.low:+.2f}, {100 * se.high:+.2f}]"
        f" | [{100 * se.low_independent:+.2f}, {100 * se.high_independent:+.2f}] | better |" in md
    )
    plug = by_pair[("none", "plug_a")]
    assert f"| plug_a vs none | {100 * plug.difference:+.2f} | - | [" in md
    assert "300 bootstrap resamples" in md
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["attention"] for r in table] == ["none", "none", "se", "se", "plug_b", "plug_a"]
    assert float(table[2]["ap50_large"]) == pytest.approx(rows[2].ap_large, abs=1e-5)
    with open(paths["pairs"]) as f:
        pairs = list(csv.DictReader(f))
    assert pairs[0]["a"] == "none" and pairs[0]["b"] == "se" and pairs[0]["verdict"] == "better"
    assert pairs[0]["seeds"] == "paired" and float(pairs[0]["low95_independent"]) < float(
        pairs[0]["high95_independent"]
    )
    per_seed = [rows[2].voc12 - rows[0].voc12, rows[3].voc12 - rows[1].voc12]
    assert pairs[0]["per_seed_b_minus_a"] == ";".join(
        f"{s}:{d:+.5f}" for s, d in zip((1, 2), per_seed)
    )
    assert pairs[1]["seeds"] == "independent: a run of plug_a has no stored seed"
    assert pairs[1]["per_seed_b_minus_a"] == ""
    assert [r["seed"] for r in table] == ["1", "2", "1", "2", "", ""]
    for key in ("png", "tradeoff"):
        image = cv2.imread(str(paths[key]))
        assert image is not None and image.shape[0] > 200 and image.std() > 10, key


def test_verdicts_cannot_tell_without_per_image_results() -> None:
    rows = [
        Row("a", 0, "none", 1, 1.0, 1.0, 0.72, 0.70, None),
        Row("b", 1, "se", 1, 1.0, 1.0, 0.82, 0.80, None),
    ]
    (verdict,) = pairwise_verdicts(rows)
    assert verdict.verdict == "cannot tell" and abs(verdict.difference - 0.1) < 1e-12
    assert (
        verdict.line()
        == "se vs none: +10.00 mAP50 points: cannot tell (no per-image results to resample)"
    )


def test_too_few_resamples_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    root, classes = make_split(tmp_path, num_train=1, num_test=1)
    args = _eval_args(root, classes, tmp_path / "out")
    code = exit_code(
        eval_cli.main,
        ["--weights", str(tmp_path / "missing.pth"), *args, "--bootstrap-resamples", "10"],
    )
    assert code == 2
    assert capsys.readouterr().err == "error: --bootstrap-resamples 10: must be at least 100\n"


@pytest.mark.slow
def test_study_end_to_end_on_tiny_data(tmp_path: Path) -> None:
    root, classes = make_split(tmp_path, num_train=8, num_test=3)
    base = tiny_train_config(root, classes)
    out = tmp_path / "study"
    paths = run_study(base, ["none", "se"], [0, 1], out, EvalConfig(img_size=64, workers=0))
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["phi0_seed0", "phi0_seed1", "phi1_seed0", "phi1_seed1"]
    md = paths["md"].read_text()
    assert "| 0 none | 2 |" in md and "| 1 se | 2 |" in md and " ± " in md
    assert "| se vs none | " in md and "1000 bootstrap resamples" in md
    # the study's runs are paired by seed: the same seeds and settings for both blocks
    assert md.splitlines()[0].endswith("; bootstrap: images and seeds paired across blocks")
    assert (out / "comparison_pairs.csv").is_file() and (out / "map_vs_latency.png").is_file()
    # a second call reuses the finished runs instead of training again
    mtime = (out / "phi0_seed0" / "weights" / "last.pth").stat().st_mtime
    run_study(base, ["none", "se"], [0, 1], out, EvalConfig(img_size=64, workers=0))
    assert (out / "phi0_seed0" / "weights" / "last.pth").stat().st_mtime == mtime
    # eval.py compares the same checkpoints in one call, and writes JSON per run
    weights = [str(out / n / "weights" / "last.pth") for n in names]
    report = tmp_path / "metrics.json"
    code = exit_code(
        eval_cli.main,
        [
            "--weights",
            *weights,
            "--voc-root",
            str(root),
            "--split",
            "2007:test",
            "--classes",
            str(classes),
            "--workers",
            "0",
            "--no-coco",
            "--save-dir",
            str(tmp_path / "cmp"),
            "--json",
            str(report),
        ],
    )
    assert code == 0
    assert (tmp_path / "cmp" / "comparison.md").is_file()
    assert set(json.loads(report.read_text())["runs"]) == set(weights)


@pytest.mark.slow
def test_eval_single_checkpoint_and_detection_file_agree(
    tmp_path: Path, trained_tiny_checkpoint
) -> None:
    import predict

    root, classes, weights = trained_tiny_checkpoint(epochs=2)
    common = [
        "--voc-root",
        str(root),
        "--split",
        "2007:test",
        "--classes",
        str(classes),
        "--workers",
        "0",
    ]
    metrics = tmp_path / "m.json"
    assert (
        exit_code(
            eval_cli.main,
            [
                "--weights",
                weights,
                *common,
                "--max-det",
                "100",  # the cap predict.py runs with below
                "--json",
                str(metrics),
                "--save-dir",
                str(tmp_path / "e1"),
            ],
        )
        == 0
    )
    m = json.loads(metrics.read_text())
    assert {
        "voc07_map50",
        "voc12_map50",
        "coco_map",
        "coco_map50",
        "coco_map75",
        "precision",
        "recall",
        "num_images",
        "num_instances",
        "per_class",
        "protocol",
    } <= set(m)
    assert m["num_images"] == 4 and set(m["per_class"]) <= set(CLASSES)
    for row in m["per_class"].values():
        assert {"ap_voc07", "ap_voc12", "num_gt", "precision", "recall"} <= set(row)
    assert "11-point" in m["protocol"] and "difficult" in m["protocol"]
    assert (tmp_path / "e1" / "pr_curves.png").is_file()
    assert (tmp_path / "e1" / "ap_per_class.png").is_file()

    dets = tmp_path / "dets.json"
    images = root / "VOC2007" / "JPEGImages"
    test_ids = (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()
    only_test = tmp_path / "test_images"
    only_test.mkdir()
    for image_id in test_ids:
        (only_test / f"{image_id}.jpg").write_bytes((images / f"{image_id}.jpg").read_bytes())
    assert (
        exit_code(
            predict.main,
            [
                "--source",
                str(only_test),
                "--weights",
                weights,
                "--conf",
                "0.001",
                "--nms",
                "0.5",
                "--max-det",
                "100",
                "--no-save",
                "--json",
                str(dets),
                "--device",
                "cpu",
            ],
        )
        == 0
    )
    assert sum(len(r["detections"]) for r in json.loads(dets.read_text())) > 0
    from_file = tmp_path / "f.json"
    assert (
        exit_code(
            eval_cli.main,
            [
                "--detections",
                str(dets),
                *common,
                "--json",
                str(from_file),
                "--save-dir",
                str(tmp_path / "e2"),
            ],
        )
        == 0
    )
    f = json.loads(from_file.read_text())
    assert abs(f["voc12_map50"] - m["voc12_map50"]) < 1e-3
    assert abs(f["voc07_map50"] - m["voc07_map50"]) < 1e-3


def test_eval_detection_file_is_refused_or_warned_about_in_one_line(tmp_path: Path, capsys) -> None:
    """eval.py --detections: a file it cannot score is one error line naming the file (exit
    code 2); what it reads in a way the file does not say is a warning with a count."""
    from data.voc import load_voc, parse_sets

    root, classes = make_split(tmp_path, num_train=1, num_test=3)
    annotations = load_voc(root, parse_sets("2007:test"), CLASSES).annotations
    records = [
        {
            "image": a.image_path,
            "image_id": a.image_id,
            "width": a.width,
            "height": a.height,
            "detections": [
                {"xyxy": b.tolist(), "score": 0.9, "class_id": int(k), "class_name": CLASSES[k]}
                for b, k in zip(a.boxes, a.labels)
            ],
        }
        for a in annotations
    ]
    dets, metrics = tmp_path / "dets.json", tmp_path / "m.json"
    args = ["--detections", str(dets), "--voc-root", str(root), "--classes", str(classes)]
    args += ["--no-coco", "--save-dir", str(tmp_path / "out"), "--json", str(metrics)]

    def run(payload) -> tuple[int, str]:
        dets.write_text(payload if isinstance(payload, str) else json.dumps(payload))
        code = exit_code(eval_cli.main, args)
        return code, capsys.readouterr().err

    assert run(records) == (0, "")  # the ground truth itself
    assert json.loads(metrics.read_text())["voc12_map50"] == 1.0
    # before: scored, with VOC and COCO AP disagreeing about the NaN box
    broken = json.loads(json.dumps(records))
    broken[1]["detections"][0]["xyxy"][2] = float("nan")
    nan = f"error: {dets}: 1 detection with a NaN or infinite coordinate (record 1)\n"
    assert run(broken) == (2, nan)
    # before: the JSON parser's message, without the file
    bad_json = f"error: {dets}: not valid JSON (Expecting value at line 1 column 2)\n"
    assert run("[,") == (2, bad_json)
    # a box past the right edge of its image: scored as given, with a warning
    wide = json.loads(json.dumps(records))
    wide[0]["detections"][0]["xyxy"][2] = 200.0
    clipped = f"{dets}: 1 detection with a box partly outside its image, scored as given (record 0)"
    assert run(wide) == (0, f"warning: {clipped}\n")


@pytest.mark.slow
def test_eval_scores_onnx_exports_like_the_checkpoint(
    tmp_path: Path, trained_tiny_checkpoint
) -> None:
    """eval.py takes .onnx files (fp32 or INT8 exports) next to checkpoints."""
    import predict

    root, _, weights = trained_tiny_checkpoint(epochs=3)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export = ["--weights", weights, "--img-size", "64", "--device", "cpu"]
    assert exit_code(predict.main, [*export, "--export-onnx", str(fp32)]) == 0
    calibration = str(root / "VOC2007" / "JPEGImages")
    assert (
        exit_code(predict.main, [*export, "--export-onnx", str(int8), "--int8", calibration]) == 0
    )
    out = tmp_path / "cmp"
    rc = exit_code(
        eval_cli.main,
        [
            "--weights",
            weights,
            str(fp32),
            str(int8),
            "--voc-root",
            str(root),
            "--split",
            "2007:test",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--save-dir",
            str(out),
            "--json",
            str(tmp_path / "m.json"),
        ],
    )
    assert rc == 0
    runs = json.loads((tmp_path / "m.json").read_text())["runs"]
    pth, onnx_fp32, onnx_int8 = (runs[w] for w in (weights, str(fp32), str(int8)))
    assert pth["voc12_map50"] > 0  # something to compare
    assert abs(onnx_fp32["voc12_map50"] - pth["voc12_map50"]) < 1e-3
    assert onnx_fp32["num_images"] == onnx_int8["num_images"] == 4
    with (out / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len({r["params"] for r in rows}) == 1  # same architecture, counted for the .onnx too
    # one CSV row per model, the INT8 one included, with the score the JSON has
    assert set(runs) == {weights, str(fp32), str(int8)}
    expected = sorted(f"{m['voc12_map50']:.5f}" for m in (pth, onnx_fp32, onnx_int8))
    assert sorted(r["map50_voc12"] for r in rows) == expected


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_split(tmp_path_factory.mktemp("tiny_voc"), num_train=1, num_test=2)


def _eval_args(voc_root: Path, classes: Path, out: Path) -> list[str]:
    return [
        "--voc-root",
        str(voc_root),
        "--split",
        "2007:test",
        "--classes",
        str(classes),
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-coco",
        "--save-dir",
        str(out),
    ]


@pytest.mark.parametrize("name", ["empty.onnx", "random.onnx", "truncated.onnx", "random.pth"])
def test_eval_garbage_model_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny_voc: tuple[Path, Path], name: str
) -> None:
    from nets.decode import Geometry
    from nets.yolo import YoloBody
    from utils.inference.export import export_onnx

    rng = np.random.default_rng(0)
    if name == "truncated.onnx":
        good = export_onnx(YoloBody(2, 0), tmp_path / "good.onnx", Geometry().at_size(64))
        payload = good.read_bytes()[: good.stat().st_size // 2]
    else:
        payload = b"" if name == "empty.onnx" else rng.bytes(4096)
    path = tmp_path / name
    path.write_bytes(payload)
    code = exit_code(
        eval_cli.main, ["--weights", str(path), *_eval_args(*tiny_voc, tmp_path / "out")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {path}: ") and len(err.splitlines()) == 1, err
    assert "weights_only" not in err and "Traceback" not in err


def test_eval_checks_its_outputs_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny_voc: tuple[Path, Path]
) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "m.json").mkdir()
    missing = tmp_path / "missing.pth"  # an error too, but only once the outputs are fine
    args = _eval_args(*tiny_voc, tmp_path / "out")
    for json_path in (Path("/proc/m.json"), tmp_path / "a_file" / "m.json", tmp_path / "m.json"):
        assert (
            exit_code(eval_cli.main, ["--weights", str(missing), *args, "--json", str(json_path)])
            == 2
        )
        err = capsys.readouterr().err
        assert err.startswith(f"error: {json_path}: ") and len(err.splitlines()) == 1, err
    out_dir = tmp_path / "a_file" / "eval"
    args = _eval_args(*tiny_voc, out_dir)
    assert exit_code(eval_cli.main, ["--weights", str(missing), *args]) == 2
    assert capsys.readouterr().err.startswith(f"error: {out_dir}: ")
    assert exit_code(eval_cli.main, ["--detections", str(missing), *args]) == 2
    assert capsys.readouterr().err.startswith(f"error: {out_dir}: ")
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_eval_json_write_failing_at_the_end_is_one_line(
    tmp_path: Path, tiny_voc: tuple[Path, Path]
) -> None:
    """Metrics that cannot be written once scored (larger than the file-size limit, as on a
    full disk): one error line naming the file, exit code 1, no temporary file left."""
    from nets.checkpoint import ModelInfo, save_checkpoint
    from nets.yolo import YoloBody

    weights = tmp_path / "untrained.pth"
    info = ModelInfo(0, "none", len(CLASSES), tuple(CLASSES), input_size=64)
    save_checkpoint(weights, YoloBody(len(CLASSES), 0), info)
    json_path = tmp_path / "m.json"

    cmd = [sys.executable, "eval.py", "--weights", str(weights), "--json", str(json_path)]
    cmd += _eval_args(*tiny_voc, tmp_path / "out")
    result = run_with_file_size_limit(cmd, 64, ROOT, env={"MPLCONFIGDIR": str(tmp_path)})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: {json_path}: cannot write (File too large)" in result.stderr.splitlines()
    assert not json_path.exists() and not list(tmp_path.glob("*.tmp"))


def test_evaluation_settings_are_range_checked_together(capsys) -> None:
    with pytest.raises(ValueError) as err:
        EvalConfig(conf_thresh=float("nan"), nms_thresh=0.0, iou_thresh=1.5, batch_size=0)
    for part in ("--conf nan", "--nms 0.0", "--iou 1.5", "--batch-size 0"):
        assert part in str(err.value)
    EvalConfig(conf_thresh=0.0, nms_thresh=1.0, iou_thresh=1.0, batch_size=1, workers=0)
    args = ["--weights", "missing.pth", "--data", "demo", "--conf", "2"]
    assert exit_code(eval_cli.main, args) == 2  # before any model or data is read
    assert "--conf 2.0: must be a score in [0, 1]" in capsys.readouterr().err


def test_eval_takes_weights_or_detections_and_a_split_of_its_labels(tmp_path, capsys) -> None:
    both = ["--weights", str(tmp_path / "a.pth"), "--detections", str(tmp_path / "d.json")]
    assert exit_code(eval_cli.main, both) == 2
    assert "give --weights (run models) or --detections (score a file)" in capsys.readouterr().err
    voc_root, _ = make_split(tmp_path, 2, 2)
    folder = str(voc_root / "VOC2007")
    args = ["--weights", str(tmp_path / "a.pth"), "--val-labels", folder, "--split", "tst"]
    assert exit_code(eval_cli.main, [*args, "--save-dir", str(tmp_path / "out")]) == 2
    assert f"{folder}: no split 'tst' (it has: test, trainval)" in capsys.readouterr().err
