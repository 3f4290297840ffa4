"""The comparison pairs runs by seed: a seed's runs of every block are resampled together.

Checked here: the paired and independent intervals against a naive restatement, the gain on a
study whose seeds shift every block alike, the fallback when seeds or settings differ, and
the seeds and settings eval.py reads from the checkpoints it compares."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import exit_code
from voc_factory import CLASSES, make_split

import eval as eval_cli
from nets.checkpoint import ModelInfo, save_checkpoint
from nets.yolo import YoloBody
from utils.evaluation.bootstrap import MatchTable, compare_groups, materialize, seed_pairing
from utils.evaluation.compare import (
    CompareConfig,
    Row,
    markdown,
    pairwise_verdicts,
    summarize_by_phi,
    training_run,
)
from utils.evaluation.metrics import BoxSet, evaluate_voc
from utils.training.config import RESULT_NEUTRAL_FIELDS


def _ground_truth(rng: np.random.Generator, num_images: int) -> BoxSet:
    """1-3 boxes of 2 classes per image."""
    per_image = rng.integers(1, 4, num_images)
    image = np.repeat(np.arange(num_images), per_image)
    wh = rng.integers(20, 120, (len(image), 2)).astype(np.float64)
    xy = np.floor(rng.random((len(image), 2)) * 200)
    return BoxSet(image, np.column_stack([xy, xy + wh - 1]), rng.integers(0, 2, len(image)))


def _detections(gts: BoxSet, recall: float, seed: int) -> BoxSet:
    """Each object found with probability ``recall`` (jittered), plus 2 random boxes per image;
    continuous scores, so that no two detections tie."""
    rng = np.random.default_rng(seed)
    found = np.flatnonzero(rng.random(len(gts)) < recall)
    size = np.tile(gts.boxes[found, 2:] - gts.boxes[found, :2] + 1, 2)
    near = gts.boxes[found] + rng.normal(0, 0.1, (len(found), 4)) * size
    far_image = np.repeat(np.arange(int(gts.image.max()) + 1), 2)
    xy = rng.random((len(far_image), 2)) * 200
    far = np.column_stack([xy, xy + rng.uniform(10, 100, (len(far_image), 2))])
    return BoxSet(
        np.concatenate([gts.image[found], far_image]),
        np.vstack([near, far]),
        np.concatenate([gts.labels[found], rng.integers(0, 2, len(far_image))]),
        scores=rng.random(len(found) + len(far_image)),
    )


def test_intervals_match_a_naive_restatement() -> None:
    """Every replicate written out image by image and rescored with ``evaluate_voc``, the seeds
    drawn from the same streams one group at a time: both intervals agree to 1e-12."""
    rng = np.random.default_rng(11)
    num_images, resamples = 8, 60
    gts = _ground_truth(rng, num_images)
    # 3 groups x seeds 7, 3, 5, listed in a different order in each group
    seeds = [7, 3, 5, 5, 7, 3, 3, 5, 7]
    groups = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    recalls = [0.4 + 0.05 * g + 0.1 * (seeds[k] % 3) for g in range(3) for k in groups[g]]
    dets = [_detections(gts, recall, k) for k, recall in enumerate(recalls)]
    tables = [MatchTable.from_boxes(d, gts, 2, num_images=num_images) for d in dets]
    results = compare_groups(tables, groups, seeds=seeds, resamples=resamples, seed=4)

    images_rng, seeds_rng, paired_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(4).spawn(3)
    )
    picks = images_rng.integers(0, num_images, (resamples, num_images))
    independent = [seeds_rng.integers(0, 3, (resamples, 3)) for _ in groups]
    drawn_seeds = np.array([3, 5, 7])[paired_rng.integers(0, 3, (resamples, 3))]
    member = {(g, seeds[k]): k for g, ks in enumerate(groups) for k in ks}
    ind_values, paired_values = np.zeros((3, resamples)), np.zeros((3, resamples))
    for b in range(resamples):
        resampled_gts = materialize(gts, picks[b])
        maps = [evaluate_voc(materialize(d, picks[b]), resampled_gts, 2)["voc12_map"] for d in dets]
        for g, ks in enumerate(groups):
            ind_values[g, b] = np.mean([maps[ks[i]] for i in independent[g][b]])
            paired_values[g, b] = np.mean([maps[member[g, s]] for s in drawn_seeds[b]])
    exact = [evaluate_voc(d, gts, 2)["voc12_map"] for d in dets]
    pairs = [(0, 1), (0, 2), (1, 2)]
    assert [(r.a, r.b) for r in results] == pairs
    for r, (a, b) in zip(results, pairs):
        assert r.paired and r.unpaired_why == ""
        point = np.mean([exact[k] for k in groups[b]]) - np.mean([exact[k] for k in groups[a]])
        assert abs(r.difference - point) < 1e-12
        low, high = np.percentile(paired_values[b] - paired_values[a], [2.5, 97.5])
        assert abs(r.low - low) < 1e-12 and abs(r.high - high) < 1e-12
        low, high = np.percentile(ind_values[b] - ind_values[a], [2.5, 97.5])
        assert abs(r.low_independent - low) < 1e-12 and abs(r.high_independent - high) < 1e-12
        assert [s for s, _ in r.per_seed] == [3, 5, 7]
        for s, d in r.per_seed:
            assert abs(d - (exact[member[b, s]] - exact[member[a, s]])) < 1e-12
    # the independent interval is the one of the design without seeds: unchanged draws
    unpaired = compare_groups(tables, groups, resamples=resamples, seed=4)
    assert [(r.low, r.high) for r in unpaired] == [
        (r.low_independent, r.high_independent) for r in results
    ]
    assert all(not r.paired and r.unpaired_why == "training seeds unknown" for r in unpaired)


def _found(num_images: int, images: np.ndarray) -> BoxSet:
    """One object per image, found exactly on ``images``: no false positives, so the AP is
    the fraction of objects found (on any resample, the weighted fraction)."""
    boxes = np.tile([10.0, 10.0, 60.0, 60.0], (len(images), 1))
    scores = np.linspace(0.9, 0.1, len(images))
    return BoxSet(images, boxes, np.zeros(len(images), np.int64), scores=scores)


def test_a_shift_shared_by_all_blocks_leaves_the_paired_interval_narrow() -> None:
    """Seeds move every block by -5, 0 or +5 points alike; block b finds 2 more objects of 200
    than block a with every seed (+1 point). The paired interval covers +1 and is far narrower
    than the independent one, which counts the seeds' shift twice."""
    num_images = 200
    gts = BoxSet(
        np.arange(num_images),
        np.tile([10.0, 10.0, 60.0, 60.0], (num_images, 1)),
        np.zeros(num_images, np.int64),
    )
    tables, seeds = [], []
    for extra in (np.zeros(0, np.int64), np.array([180, 181])):  # block a, block b
        for seed, found in ((0, 90), (1, 100), (2, 110)):
            images = np.concatenate([np.arange(found), extra])
            tables.append(MatchTable.from_boxes(_found(num_images, images), gts, 1))
            seeds.append(seed)
    (r,) = compare_groups(tables, [[0, 1, 2], [3, 4, 5]], seeds=seeds, resamples=1000)
    assert r.paired and r.difference == pytest.approx(0.01, abs=1e-12)
    assert [d for _, d in r.per_seed] == pytest.approx([0.01] * 3, abs=1e-12)
    assert r.low <= 0.01 <= r.high
    assert r.low_independent <= 0.01 <= r.high_independent
    assert (r.high - r.low) < 0.5 * (r.high_independent - r.low_independent)
    assert r.high - r.low < 0.03 and r.low_independent < -0.03  # seeds hide it when unpaired


def _rows(seeds: list[int | None], settings: list[dict | None]) -> list[Row]:
    """Two blocks (none, se) of len(seeds) // 2 runs each, scored on one synthetic split."""
    rng = np.random.default_rng(12)
    gts = _ground_truth(rng, 40)
    half = len(seeds) // 2
    rows = []
    for k, (seed, setting) in enumerate(zip(seeds, settings)):
        phi, name = (0, "none") if k < half else (1, "se")
        dets = _detections(gts, 0.5 + 0.1 * phi, k)
        voc = evaluate_voc(dets, gts, 2)
        rows.append(
            Row(
                f"r{k}", phi, name, 1000, 1.0, 1.0, voc["voc07_map"], voc["voc12_map"], None,
                matches=MatchTable.from_boxes(dets, gts, 2, num_images=40), seed=seed,
                settings=setting,
            )
        )  # fmt: skip
    return rows


@pytest.mark.parametrize(
    ("seeds", "settings", "why"),
    [
        ([0, 1, 0, 2], [{"epochs": 3}] * 4, "seeds differ: none 0, 1, se 0, 2"),
        ([0, 1, None, 1], [{"epochs": 3}] * 4, "a run of se has no stored seed"),
        ([0, 0, 0, 1], [{"epochs": 3}] * 4, "none holds seed 0 more than once"),
        (
            [0, 1, 0, 1],
            [{"epochs": 3, "lr": 1}, {"epochs": 3, "lr": 1}, {"epochs": 4, "lr": 1}] * 2,
            "training settings differ (epochs)",
        ),
        (
            [0, 1, 0, 1],
            [{"epochs": 3}, {"epochs": 3}, None, {"epochs": 3}],
            "a run's training settings are unknown",
        ),
    ],
)
def test_seeds_or_settings_that_differ_fall_back_to_independent_seeds(seeds, settings, why) -> None:
    rows = _rows(seeds, settings[:4])
    (verdict,) = pairwise_verdicts(rows, resamples=200)
    assert not verdict.paired and why in verdict.unpaired_why and verdict.per_seed == ()
    assert (verdict.low, verdict.high) == (verdict.low_independent, verdict.high_independent)
    md = markdown(rows, summarize_by_phi(rows), "p", [verdict], CompareConfig(200))
    protocol = f"Protocol: p; bootstrap: images paired; seeds resampled independently ({why}"
    assert md.startswith(protocol)
    assert f"| se vs none | {verdict.difference * 100:+.2f} | - | [" in md
    # the same rows with matching seeds and settings pair
    (paired,) = pairwise_verdicts(_rows([0, 1, 0, 1], [{"epochs": 3}] * 4), resamples=200)
    assert paired.paired and [s for s, _ in paired.per_seed] == [0, 1]
    assert seed_pairing([[0, 1], [2, 3]], [0, 1, 1, 0]) == {(0, 1): ""}


def _checkpoint(path: Path, phi: str, config: dict | None, init: int) -> str:
    torch.manual_seed(init)
    model = YoloBody(len(CLASSES), phi)
    info = ModelInfo(phi=model.phi, phi_name=phi, num_classes=len(CLASSES), class_names=CLASSES)
    save_checkpoint(path, model, info, **({"config": config} if config else {}))
    return str(path)


def test_stored_seed_and_settings_leave_out_the_block_and_neutral_fields(tmp_path: Path) -> None:
    config = {"phi": "se", "attention_at": "feat1", "seed": 4, "epochs": 3, "name": "run"}
    path = _checkpoint(tmp_path / "se.pth", "se", config, 0)
    assert training_run(path, RESULT_NEUTRAL_FIELDS) == (4, {"epochs": 3})
    assert training_run(path) == (4, {"epochs": 3, "name": "run"})
    no_seed = _checkpoint(tmp_path / "none.pth", "none", {"epochs": 3}, 1)
    assert training_run(no_seed, RESULT_NEUTRAL_FIELDS) == (None, None)
    assert training_run(str(tmp_path / "model.onnx")) == (None, None)  # never read


@pytest.mark.slow
def test_eval_pairs_checkpoints_by_their_stored_seeds(tmp_path: Path) -> None:
    """eval.py reads each checkpoint's seed and settings: none and se, trained with seeds 0
    and 1 and the same settings (names and folders apart), pair; cbam, without a stored
    config, does not."""
    root, classes = make_split(tmp_path, num_train=1, num_test=2)

    def config(phi: str, seed: int) -> dict:
        name = f"{phi}_seed{seed}"  # result-neutral fields differ from run to run
        return {"phi": phi, "seed": seed, "epochs": 3, "name": name, "log_dir": str(tmp_path)}

    weights = [
        _checkpoint(tmp_path / f"{phi}{seed}.pth", phi, config(phi, seed), 2 * k + seed)
        for k, phi in enumerate(("none", "se"))
        for seed in (1, 0)
    ]
    weights.append(_checkpoint(tmp_path / "cbam.pth", "cbam", None, 9))
    assert training_run(weights[0], RESULT_NEUTRAL_FIELDS) == (1, {"epochs": 3})
    assert training_run(weights[-1], RESULT_NEUTRAL_FIELDS) == (None, None)
    out = tmp_path / "cmp"
    args = ["--weights", *weights, "--voc-root", root, "--split", "2007:test"]
    args += ["--classes", classes, "--img-size", "64", "--workers", "0", "--device", "cpu"]
    args += ["--no-coco", "--save-dir", out, "--bootstrap-resamples", "100"]
    assert exit_code(eval_cli.main, args) == 0
    with open(out / "comparison_pairs.csv") as f:
        pairs = {(p["a"], p["b"]): p for p in csv.DictReader(f)}
    assert pairs["none", "se"]["seeds"] == "paired"
    assert [s.split(":")[0] for s in pairs["none", "se"]["per_seed_b_minus_a"].split(";")] == [
        "0",
        "1",
    ]
    assert pairs["none", "cbam"]["seeds"] == "independent: a run of cbam has no stored seed"
    with open(out / "comparison.csv") as f:
        assert [r["seed"] for r in csv.DictReader(f)] == ["1", "0", "1", "0", ""]
    md = (out / "comparison.md").read_text()
    assert "seeds paired between blocks of the same seeds and settings" in md.splitlines()[0]
