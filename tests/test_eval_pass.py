"""The evaluation pass: overlapped loading and batched decoding find exactly what the serial,
per-image loop found; the speed line eval.py prints after the report."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import exit_code

import eval as eval_cli
from benchmarks import eval_pass as benchmark_eval_pass
from data.demo import CLASS_NAMES, generate_demo
from data.voc import load_voc, parse_sets
from nets.checkpoint import load_model
from utils.errors import InputError
from utils.evaluation.evaluate import (
    STAGES,
    Detected,
    EvalConfig,
    EvalSpeed,
    detect_dataset,
    score,
)


def _assert_same(a: Detected, b: Detected) -> None:
    for name in ("image", "boxes", "labels", "scores"):
        assert np.array_equal(getattr(a.dets, name), getattr(b.dets, name)), name
    assert np.array_equal(a.image_sizes, b.image_sizes)


@pytest.mark.slow
def test_overlapped_batched_pass_equals_serial_and_per_image_loop(
    tmp_path: Path, trained_tiny_checkpoint
) -> None:
    """On the demo test split (one image made unreadable), at 320 px where some images have
    over 1,000 candidates (the other ``batched_nms`` path): the same detections, bit for bit,
    and so the same metrics, with 2 loader workers, with none, and in the per-image loop."""
    _, _, weights = trained_tiny_checkpoint(epochs=2)
    model, info = load_model(weights)
    model.eval()
    root = generate_demo(tmp_path / "demo")
    annotations = load_voc(root / "VOCdevkit", parse_sets("2007:test"), CLASS_NAMES).annotations
    assert len(annotations) >= 80
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    annotations[5] = dataclasses.replace(annotations[5], image_path=str(broken))
    geometry = info.geometry
    cfg = EvalConfig(img_size=320, batch_size=16, workers=2)

    # the loop evaluation ran before loading overlapped and decoding was batched
    reference = benchmark_eval_pass.before_detect(
        model,
        annotations,
        geometry.at_size(320),
        dataclasses.replace(cfg, workers=0),
        torch.device("cpu"),
    )
    serial = detect_dataset(model, annotations, geometry, dataclasses.replace(cfg, workers=0))
    overlapped = detect_dataset(model, annotations, geometry, cfg)
    assert len(reference.dets) > 100 * len(annotations)  # a busy case: ~hundreds per image
    assert reference.image_sizes[5].tolist() == [0, 0] and len(overlapped.failures) == 1
    _assert_same(serial, reference)
    _assert_same(overlapped, reference)
    reports = [score(d, CLASS_NAMES, "demo") for d in (reference, serial, overlapped)]
    metrics = [{k: v for k, v in r.to_json().items() if k != "speed"} for r in reports]
    assert metrics[0] == metrics[1] == metrics[2]
    assert reports[0].speed is None and reports[2].speed.images == len(annotations) - 1


def test_speed_line_and_json() -> None:
    speed = EvalSpeed(300, 4.0, {"loading wait": 0.2, "forward": 3.0, "decode+NMS": 0.4})
    full = speed.plus("scoring", 0.36)
    assert tuple(full.stages) == STAGES and full.wall_s == pytest.approx(4.36)
    assert full.images_per_s == pytest.approx(300 / 4.36)
    assert sum(full.shares().values()) == pytest.approx(3.96 / 4.36)
    assert full.format() == (
        "speed: 68.8 images/s (300 images in 4.36 s) | loading wait 0.20 s (5%), "
        "forward 3.00 s (69%), decode+NMS 0.40 s (9%), scoring 0.36 s (8%)"
    )
    payload = full.to_json()
    assert payload["stages"]["forward"] == {"seconds": 3.0, "share": 3.0 / 4.36}
    assert json.loads(json.dumps(payload)) == payload


def _eval_on_a_copy(tmp_path: Path, trained_tiny_checkpoint) -> tuple[Path, list[str]]:
    """A copy of the tiny checkpoint's VOC tree (the fixture's is shared: no writes into it)
    and ``eval.py`` arguments scoring its test split on it."""
    root, classes, weights = trained_tiny_checkpoint(epochs=2)
    local = tmp_path / "VOCdevkit"
    shutil.copytree(root, local)
    args = ["--weights", weights, "--voc-root", str(local), "--classes", str(classes)]
    args += ["--split", "2007:test", "--device", "cpu", "--no-coco"]
    return local, [*args, "--save-dir", str(tmp_path / "out")]


@pytest.mark.slow
def test_eval_prints_the_speed_line_after_the_report(
    tmp_path: Path, trained_tiny_checkpoint, capsys
) -> None:
    _, args = _eval_on_a_copy(tmp_path, trained_tiny_checkpoint)
    metrics = tmp_path / "m.json"
    assert exit_code(eval_cli.main, [*args, "--json", str(metrics)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.endswith("| COCO: not computed") for line in lines)  # --no-coco
    at = next(i for i, line in enumerate(lines) if line.startswith("speed: "))
    assert lines[at - 1].startswith("P/R at the score threshold")  # right after the report
    line = lines[at]
    assert re.match(r"speed: [\d.]+ images/s \(4 images in [\d.]+ s\) \| ", line), line
    shares = {
        name: float(share) / 100
        for name, share in re.findall(r"([A-Za-z+ ]+) [\d.]+ s \((\d+)%\)", line.split(" | ")[1])
    }
    assert tuple(s.strip() for s in shares) == STAGES
    assert 0.9 <= sum(shares.values()) <= 1.0 + 0.03  # rounded to whole percents
    speed = json.loads(metrics.read_text())["speed"]
    assert speed["images"] == 4 and tuple(speed["stages"]) == STAGES
    assert 0.9 <= sum(s["share"] for s in speed["stages"].values()) <= 1.0
    assert speed["images_per_s"] == pytest.approx(4 / speed["wall_s"])


@pytest.mark.slow
def test_benchmark_eval_pass_reports_before_after_and_the_target(
    tmp_path: Path, trained_tiny_checkpoint, capsys
) -> None:
    root, classes, weights = trained_tiny_checkpoint(epochs=2)
    out = tmp_path / "bench.json"
    args = ["--weights", weights, "--data", "voc", "--voc-root", str(root)]
    args += ["--classes", str(classes), "--img-size", "64", "--batch-size", "2"]
    assert benchmark_eval_pass.main([*args, "--workers", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["identical"] is True and report["images"] == 4
    assert set(report["images_per_s"]) == {"forward_only", "before", "after"}
    assert tuple(report["breakdown"]["stages"]) == STAGES
    printed = capsys.readouterr().out
    assert ("PASS" if report["passed"] else "FAIL") in printed
    assert "before and after identical (detections and every metric): yes" in printed
    assert "after, stage breakdown: speed: " in printed


def test_benchmark_eval_pass_ratios_are_medians_of_each_rounds_own() -> None:
    """Each path's ratio is the median over rounds of its rate over that round's forward-only
    rate (0.9, 0.7, 0.9 -> 0.9), not the ratio of the medians (14 / 20 = 0.7), so that load
    that changes between rounds cancels out."""
    rates = {
        "forward": [10.0, 20.0, 40.0],
        "before": [5.0, 10.0, 10.0],
        "after": [9.0, 14.0, 36.0],
    }
    median, ratio = benchmark_eval_pass.summarize(rates)
    assert median == {"forward": 20.0, "before": 10.0, "after": 14.0}
    assert ratio["after"] == pytest.approx(0.9)
    assert ratio["before"] == pytest.approx(0.5)  # 0.5, 0.5, 0.25
    assert ratio["forward"] == 1.0


def test_benchmark_eval_pass_explains_a_missing_checkpoint(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.pth")
    with pytest.raises(InputError) as raised:
        benchmark_eval_pass.main(["--weights", missing])
    assert str(raised.value) == f"{missing} not found"


@pytest.mark.slow
def test_an_unreadable_first_image_is_left_out_not_fatal(
    tmp_path: Path, trained_tiny_checkpoint
) -> None:
    local, args = _eval_on_a_copy(tmp_path, trained_tiny_checkpoint)
    sets = local / "VOC2007" / "ImageSets" / "Main" / "test.txt"
    first = sets.read_text().split()[0]
    (local / "VOC2007" / "JPEGImages" / f"{first}.jpg").write_bytes(b"\x00" * 64)
    metrics = tmp_path / "m.json"
    assert exit_code(eval_cli.main, [*args, "--workers", "0", "--json", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["num_images"] == 3  # of the split's 4
