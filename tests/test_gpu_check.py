"""The GPU check's CPU-checkable parts: its arguments, the exit code without a CUDA device,
the table, the judgements each check makes (fed numbers that pass and numbers that fail), and
every check's body rehearsed on the CPU."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import exit_code

from benchmarks import gpu_check
from benchmarks.gpu_check import (
    Check,
    RecordedStep,
    break_even,
    compare_detections,
    compare_maps,
    compare_weights,
    exit_status,
    judge_training,
    parse_args,
    render_table,
    scaler_warmup,
)
from data.demo import generate_demo
from utils.detections import Detections
from utils.errors import InputError


def test_defaults_are_the_full_check() -> None:
    args = parse_args([])
    assert args.groups == ("train", "speed", "ddp", "infer", "detect", "eval")
    assert args.phi_list == (0, 2, 8) and args.steps == 50 and args.ddp_steps == 20
    assert (args.img_size, args.batch_size, args.latency_list) == (416, 64, (1, 32))
    assert args.device == "cuda" and args.compile and args.workers >= 1


def test_only_keeps_the_run_order_and_refuses_unknown_groups() -> None:
    assert parse_args(["--only", "ddp, train"]).groups == ("train", "ddp")
    with pytest.raises(InputError, match="choose from train, speed"):
        parse_args(["--only", "train,gpu"])
    with pytest.raises(InputError, match="--only"):
        parse_args(["--only", ","])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "1"], "--steps 1: must be at least 2"),
        (["--repeats", "0"], "--repeats 0"),
        (["--latency-batches", "1,x"], "comma-separated whole numbers"),
        (["--latency-batches", "0"], "each at least 1"),
        (["--phis", "0,99"], "unknown phi '99'"),
        (["--workers", "-1"], "--workers -1"),
    ],
)
def test_bad_arguments_are_input_errors(argv, message) -> None:
    with pytest.raises(InputError, match=message):
        parse_args(argv)


def test_phis_by_name() -> None:
    assert parse_args(["--phis", "none,cbam"]).phi_list == (0, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_no_cuda_device_exits_2_before_any_work(capsys) -> None:
    assert exit_code(gpu_check.main, []) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: no CUDA device") and "--device cpu" in err
    assert out == ""  # refused before the machine lines and any check
    assert exit_code(gpu_check.main, ["--device", "cuda:0"]) == 2
    assert exit_code(gpu_check.main, ["--device", "tpu"]) == 2  # unknown: bad input too


def test_missing_weights_are_refused_before_any_training(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(gpu_check, "OFFICIAL_WEIGHTS", tmp_path / "yolov4-tiny.weights")
    argv = ["--device", "cpu", "--only", "train,detect", "--demo-root", tmp_path / "demo"]
    assert exit_code(gpu_check.main, argv) == 2
    out, err = capsys.readouterr()
    assert "yolov4-tiny.weights not found (run `make weights`)" in err and out == ""
    assert not (tmp_path / "demo").exists()  # nothing generated, nothing trained


def test_a_check_that_raises_is_a_failed_row(capsys) -> None:
    def broken(size: int) -> Check:
        raise RuntimeError(f"CUDA out of memory at batch {size}\nmore detail")

    def spawned() -> Check:  # how torch.multiprocessing reports a rank's error
        raise RuntimeError(
            "-- Process 1 terminated:\nTraceback (most recent call last):\n  x\nValueError: bad"
        )

    ok = Check("fine", "ran", "1 ms", True)
    assert gpu_check.guarded("fine", lambda: ok) == [ok]
    assert gpu_check.guarded("fine", lambda: [ok, ok]) == [ok, ok]
    (row,) = gpu_check.guarded("inference", broken, 32)
    assert row == Check(
        "inference", "raised an error", "RuntimeError: CUDA out of memory at batch 32", False
    )
    assert gpu_check.guarded("DDP", spawned)[0].numbers == "ValueError: bad"
    assert "Traceback" in capsys.readouterr().err  # the whole story is on stderr


ROWS = [
    Check("train phi 0 (none), float16", "50 steps: loss 9 -> 3", "no scaler skips", True),
    Check("DDP, nccl, world size 2", "20 steps, weights differ", "rank 1 differs", False),
]


def test_table_has_one_aligned_row_per_check_and_a_verdict() -> None:
    text = render_table(ROWS[:1])
    lines = text.splitlines()
    assert lines[0].split() == ["check", "result", "numbers"]
    assert lines[2].startswith("train phi 0 (none), float16  50 steps")
    assert lines[2].endswith("PASS") and lines[-1] == "PASS: all 1 checks"
    # the columns line up: each cell starts where its header does
    assert lines[2].index("50 steps") == lines[0].index("result")
    assert lines[2].index("no scaler") == lines[0].index("numbers")
    assert exit_status(ROWS[:1]) == 0


def test_one_failed_check_fails_the_table() -> None:
    text = render_table(ROWS)
    assert "rank 1 differs" in text and text.splitlines()[3].endswith("FAIL")
    assert text.splitlines()[-1] == "FAIL: 1 of 2 checks (DDP, nccl, world size 2)"
    assert exit_status(ROWS) == 1
    assert exit_status([]) == 1 and render_table([]).endswith("no check ran")


DECREASING = [10.0 - 0.15 * i for i in range(50)]


def test_training_judgement_passes_a_decreasing_loss_and_the_scalers_warmup() -> None:
    skipped = [True] * 4 + [False] * 46  # the scaler halving its initial scale
    assert scaler_warmup(skipped, 2) == 4 and scaler_warmup(skipped, 10) == 10
    passed, why = judge_training(DECREASING, skipped, warmup=2)
    assert passed and why.startswith("loss 9.325 -> 3.325 (mean of first / last 10")
    assert judge_training(DECREASING, [False] * 48 + [True, False], warmup=10) == (
        False,
        "gradient scaler skipped step 49 after warm-up",
    )


@pytest.mark.parametrize(
    "losses, skipped, reason",
    [
        ([], [], "no step ran"),
        (
            [*DECREASING[:10], math.nan, *DECREASING[11:]],
            [False] * 50,
            "non-finite loss at step 11",
        ),
        ([*DECREASING[:5], *[math.inf] * 45], [False] * 50, "non-finite loss at step 6, 7, 8"),
        ([5.0] * 50, [False] * 50, "loss not decreasing: 5 (first 10 steps) -> 5"),
        (DECREASING[::-1], [False] * 50, "loss not decreasing"),
        (DECREASING, [True] * 26 + [False] * 24, "skipped the first 26 of 50 steps"),
        (DECREASING, [False] * 20 + [True] + [False] * 29, "skipped step 21 after warm-up"),
    ],
)
def test_training_judgement_fails(losses, skipped, reason) -> None:
    passed, why = judge_training(losses, skipped, warmup=10)
    assert not passed and reason in why


class ScaledStep:
    """The part of ``TrainStep`` the recorder reads: a real gradient scaler stepping a real
    optimizer, on a loss that overflows when ``overflow`` is set."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.optimizer = torch.optim.SGD([self.weight], lr=0.1)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        self.overflow = False

    def set_lr(self, lr: float) -> None:
        self.optimizer.param_groups[0]["lr"] = lr

    def __call__(self, images, targets) -> list[float]:
        loss = (self.weight * (math.inf if self.overflow else 1.0)).sum()
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return [0.0, 0.0, 0.0, 1.0]


def test_recorded_step_sees_the_scalers_skips() -> None:
    step = ScaledStep()
    recorded = RecordedStep(step)
    for overflow in (True, True, False, True, False):
        step.overflow = overflow
        recorded(None, None)
    assert recorded.skipped == [True, True, False, True, False]
    assert recorded.losses == [1.0] * 5 and step.scaler.get_scale() == 2.0**5


def dets(boxes, scores, labels) -> Detections:
    return Detections(
        np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(labels)
    )


REFERENCE = dets(
    [[10, 10, 50, 80], [100, 20, 140, 60], [12, 11, 48, 79]], [0.9, 0.8, 0.3], [5, 0, 2]
)


def test_detections_agree_within_a_pixel_and_1e3_in_any_order() -> None:
    order = [2, 0, 1]
    shifted = dets(
        REFERENCE.boxes[order] + 0.9, REFERENCE.scores[order] - 9e-4, REFERENCE.labels[order]
    )
    agree, text = compare_detections(shifted, REFERENCE)
    assert agree and text.startswith("3 detections; max box difference 0.9 px")
    assert compare_detections(dets([], [], []), dets([], [], []))[0]


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda b, s, k: (b + np.float32(1.5), s, k), "box off by 1.5 px (tolerance 1)"),
        (lambda b, s, k: (b, s + np.float32(2e-3), k), "score by 0.002 (tolerance 0.001)"),
        (lambda b, s, k: (b, s, np.array([5, 0, 7])), "detection 2 (class 7) has no partner"),
        (lambda b, s, k: (b[:2], s[:2], k[:2]), "2 detections vs 3"),
    ],
)
def test_detections_differ(change, reason) -> None:
    boxes, scores, labels = change(REFERENCE.boxes, REFERENCE.scores, REFERENCE.labels)
    agree, text = compare_detections(dets(boxes, scores, labels), REFERENCE)
    assert not agree and reason in text


def test_weights_identical_across_ranks() -> None:
    w = torch.linspace(-1, 1, 1000)
    assert compare_weights([w, w.clone(), w.clone()]) == (
        True,
        "3 ranks, 1,000 weights, max difference 0",
    )
    assert compare_weights([w])[0]  # world size 1: nothing to compare
    nudged = w.clone()
    nudged[7] += 1e-7
    assert compare_weights([w, w.clone(), nudged]) == (
        False,
        "rank 2 differs from rank 0 by up to 1.19e-07",
    )
    assert compare_weights([w, nudged], atol=1e-6)[0]
    nan = w.clone()
    nan[0] = math.nan
    assert not compare_weights([w, nan])[0]
    assert "rank 1 has 999 weights" in compare_weights([w, w[1:]])[1]


def test_map_agreement() -> None:
    cuda = {"voc07_map50": 0.41235, "voc12_map50": 0.43001}
    assert compare_maps(cuda, {"voc07_map50": 0.41238, "voc12_map50": 0.43001}) == (
        True,
        "max |difference| 3e-05 (voc07_map50; tolerance 0.0001)",
    )
    passed, text = compare_maps(cuda, {"voc07_map50": 0.41235, "voc12_map50": 0.43021})
    assert not passed and text.startswith("max |difference| 0.0002 (voc12_map50")
    assert compare_maps(cuda, {"coco_map": 0.2}) == (False, "no metric in common")


def test_break_even_of_a_compiled_step() -> None:
    # 60 s first call, 100 ms -> 80 ms per step: (60 - 0.08) / 0.02 steps
    assert break_even(60.0, 80.0, 100.0) == pytest.approx(2996.0)
    assert break_even(60.0, 100.0, 100.0) is None and break_even(60.0, 120.0, 100.0) is None


@pytest.mark.slow
def test_every_check_rehearsed_on_the_cpu(official_weights, sample_images, tmp_path, capsys):
    """The whole command at its smallest on the CPU: every body runs (DDP as two gloo
    processes through ``init_distributed``), the CPU compared with itself agrees exactly."""
    generate_demo(tmp_path / "demo", num_images=24)
    out = tmp_path / "report.json"
    argv = ["--device", "cpu", "--phis", "0", "--steps", "3", "--ddp-steps", "2"]
    argv += ["--img-size", "64", "--batch-size", "4", "--workers", "0", "--no-compile"]
    argv += ["--speed-steps", "1", "--latency-batches", "1,2", "--repeats", "1"]
    code = gpu_check.main([*argv, "--demo-root", str(tmp_path / "demo"), "--json", str(out)])
    printed = capsys.readouterr().out
    rows = {r["name"]: r for r in json.loads(out.read_text())["checks"]}
    # on a CPU the 16-bit format is bfloat16 (``--amp``'s, with no scaler)
    assert set(rows) == {
        "train phi 0 (none), bfloat16",
        "train speed, float32",
        "train speed, bfloat16",
        "DDP, gloo, world size 2",
        *(f"inference batch {b}, {p}" for b in (1, 2) for p in ("float32", "bfloat16")),
        "detections cpu vs cpu, float32 (TF32 off)",
        "eval pass cpu vs cpu (TF32 off)",
    }
    assert rows["train phi 0 (none), bfloat16"]["result"].startswith("3 steps: ")
    assert json.loads((tmp_path / "demo" / "demo.json").read_text())["num_images"] == 24
    for name in (
        "DDP, gloo, world size 2",
        "detections cpu vs cpu, float32 (TF32 off)",
        "eval pass cpu vs cpu (TF32 off)",
    ):
        assert rows[name]["passed"], rows[name]
    assert "max difference 0;" in rows["DDP, gloo, world size 2"]["numbers"]
    assert (
        "max box difference 0 px, max score difference 0"
        in rows["detections cpu vs cpu, float32 (TF32 off)"]["numbers"]
    )
    assert rows["eval pass cpu vs cpu (TF32 off)"]["numbers"].startswith("max |difference| 0 ")
    assert printed.count("PASS") + printed.count("FAIL") >= len(rows)
    assert code == (0 if all(r["passed"] for r in rows.values()) else 1)


def test_float32_comparisons_turn_tf32_off_and_restore_it() -> None:
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with gpu_check.exact_float32():
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
