"""Every CUDA path of the project, checked in one command: ``python -m benchmarks.gpu_check``.

On a machine with a CUDA GPU (under 5 minutes on one), through the project's own code:

- **train**: ``fit``'s run setup (``start_run``: data, model, ``TrainStep`` with float16
  autocast and the gradient scaler, pinned-memory loader) and ``train_one_epoch`` for phi 0, 2
  and 8 on the demo set at 416, batch 64, 50 steps: the loss finite and decreasing, no step
  skipped by the gradient scaler after its warm-up;
- **speed**: the training step (``TrainStep``) in images/s in float32, float16, and float16
  through ``torch.compile`` (compile time and break-even point), timed by
  ``benchmarks.train``'s helpers on the same pre-loaded batches;
- **ddp**: ``DistributedDataParallel`` over NCCL with one process per visible GPU (one GPU is
  a valid run of one process), ``init_distributed`` and ``start_run`` in each, 20 steps, then
  every rank's weights compared with rank 0's (they must be identical);
- **infer**: ``Detector`` latency at batch 1 and 32, float32 and float16 (end to end, and the
  forward pass alone);
- **detect**: the COCO weights on ``bus.jpg``, CUDA against CPU in float32 (TF32 off for
  the comparison): the same boxes within 1 px, scores within 1e-3;
- **eval**: ``eval.py``'s pass (``detect_dataset`` + ``score``) on the demo test split with
  the phi-0 model trained above: images/s, and the mAP on CUDA equal to the CPU's within 1e-4.

The machine (GPU, driver, torch, CUDA and cuDNN versions, TF32 settings) is printed first, then
one table: check, result, numbers, PASS/FAIL. Exit code 1 when any check fails; 2 on a machine
without a CUDA device (nothing to check). ``--device cpu`` rehearses every check on the CPU
(16-bit there is bfloat16 without a scaler, DDP runs two gloo processes, the CPU is compared
with itself): it proves the command's wiring, not the GPU.

Examples:
    python -m benchmarks.gpu_check
    python -m benchmarks.gpu_check --only train,ddp --steps 20
    python -m benchmarks.gpu_check --no-compile --json logs/gpu_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from benchmarks.common import check_at_least, check_files, finish, start
from benchmarks.train import inductor_cache, measure_compile, measure_steps
from data.demo import DEMO_ROOT, GENERATOR_VERSION, PARAMS_FILE, generate_demo
from nets.options import ModelOptions
from nets.registry import resolve_phi
from utils.config import CommandParser, add_options, run_cli
from utils.detections import Detections
from utils.device import DeviceOptions, select_device, synchronize
from utils.errors import InputError
from utils.evaluation.evaluate import EvalConfig, EvalReport, load_ground_truth
from utils.inference.predictor import Detector, InferenceConfig
from utils.paths import OFFICIAL_WEIGHTS
from utils.precision import resolve_precision
from utils.timing import StageTimer
from utils.training.config import TrainConfig
from utils.training.fit import Run, build_step, start_run
from utils.training.loop import evaluate, train_one_epoch
from utils.training.optim import fitted_lrs, keep_frozen_bn_eval, lr_at
from utils.training.setup import Dist, init_distributed

GROUPS = ("train", "speed", "ddp", "infer", "detect", "eval")
SAMPLE_IMAGE = Path("model_data/samples/bus.jpg")
BOX_TOLERANCE_PX = 1.0  # CUDA vs CPU detections, float32
SCORE_TOLERANCE = 1e-3
MAP_TOLERANCE = 1e-4  # CUDA vs CPU mAP of the same evaluation pass
VOC0712_IMAGES = 16551  # VOC07+12 trainval: the break-even point in epochs of a real run
TRAIN_SPLIT, TEST_SPLIT = "2007:trainval", "2007:test"  # what --data demo trains and tests on


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Check:
    """One row of the table: what was checked, what came out, the numbers behind it."""

    name: str
    result: str
    numbers: str
    passed: bool


def render_table(rows: Sequence[Check]) -> str:
    """The rows as a plain-text table (check, result, numbers, PASS/FAIL) and a verdict line."""
    header = ("check", "result", "numbers", "")
    cells = [header] + [(r.name, r.result, r.numbers, "PASS" if r.passed else "FAIL") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(3)]
    lines = []
    for i, row in enumerate(cells):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  ----")
    failed = [r.name for r in rows if not r.passed]
    if not rows:
        lines.append("no check ran")
    elif failed:
        lines.append(f"FAIL: {len(failed)} of {len(rows)} checks ({', '.join(failed)})")
    else:
        lines.append(f"PASS: all {len(rows)} checks")
    return "\n".join(lines)


def exit_status(rows: Sequence[Check]) -> int:
    """0 when every row passed and at least one ran, else 1."""
    return 0 if rows and all(r.passed for r in rows) else 1


# --------------------------------------------------------------------------- judgements


def scaler_warmup(skipped: Sequence[bool], warmup: int) -> int:
    """The steps counted as the gradient scaler's warm-up: the first ``warmup``, and longer
    while the scaler is still halving its initial scale (skips from the first step on)."""
    leading = next((i for i, s in enumerate(skipped) if not s), len(skipped))
    return max(warmup, leading)


def judge_training(
    losses: Sequence[float], skipped: Sequence[bool], warmup: int
) -> tuple[bool, str]:
    """Whether a short training went as it should, and why not.

    Args:
        losses: the total loss of each step.
        skipped: per step, whether the gradient scaler skipped it (inf/NaN gradients).
        warmup: steps in which scaler skips are expected (see ``scaler_warmup``).

    Returns:
        ``(passed, reason)``: passed when every loss is finite, the mean of the last fifth of
        the steps is below the first fifth's, the scaler kept at least half of the steps and
        skipped none after its warm-up.
    """
    if not losses:
        return False, "no step ran"
    bad = [i + 1 for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        return False, f"non-finite loss at step {', '.join(map(str, bad[:5]))}"
    k = max(1, len(losses) // 5)
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    if not last < first:
        return False, f"loss not decreasing: {first:.4g} (first {k} steps) -> {last:.4g} (last)"
    end = scaler_warmup(skipped, warmup)
    if end > len(losses) // 2:
        return False, f"the gradient scaler skipped the first {end} of {len(losses)} steps"
    late = [i + 1 for i, s in enumerate(skipped) if s and i >= end]
    if late:
        return False, f"gradient scaler skipped step {', '.join(map(str, late[:5]))} after warm-up"
    return True, f"loss {first:.4g} -> {last:.4g} (mean of first / last {k} steps)"


def compare_detections(
    found: Detections,
    reference: Detections,
    box_tol: float = BOX_TOLERANCE_PX,
    score_tol: float = SCORE_TOLERANCE,
) -> tuple[bool, str]:
    """Whether two sets of detections of one image agree: as many, each paired one to one
    with a detection of the same class whose box corners are within ``box_tol`` pixels and
    whose score is within ``score_tol`` (order free: near-equal scores may swap places).

    Returns:
        ``(agree, text)``: the text gives the largest box and score differences, or the first
        detection without a partner.
    """
    if len(found) != len(reference):
        return False, f"{len(found)} detections vs {len(reference)}"
    free = list(range(len(reference)))
    worst_box = worst_score = 0.0
    for i in np.argsort(-np.asarray(found.scores), kind="stable"):
        candidates = [j for j in free if reference.labels[j] == found.labels[i]]
        if not candidates:
            return False, f"detection {i} (class {found.labels[i]}) has no partner of its class"
        box_diff = [float(np.abs(found.boxes[i] - reference.boxes[j]).max()) for j in candidates]
        best = int(np.argmin(box_diff))
        j = candidates[best]
        score_diff = abs(float(found.scores[i]) - float(reference.scores[j]))
        if box_diff[best] > box_tol or score_diff > score_tol:
            return False, (
                f"detection {i} (class {found.labels[i]}): box off by {box_diff[best]:.3g} px "
                f"(tolerance {box_tol:g}), score by {score_diff:.2g} (tolerance {score_tol:g})"
            )
        free.remove(j)
        worst_box, worst_score = max(worst_box, box_diff[best]), max(worst_score, score_diff)
    return True, (
        f"{len(found)} detections; max box difference {worst_box:.3g} px, "
        f"max score difference {worst_score:.2g}"
    )


def compare_weights(per_rank: Sequence[torch.Tensor], atol: float = 0.0) -> tuple[bool, str]:
    """Whether every rank's flattened weights equal rank 0's (within ``atol``; DDP keeps them
    bit-identical: the same averaged gradients feed the same optimizer on every rank).

    Args:
        per_rank: one 1-D tensor per rank, in rank order.
    """
    if len(per_rank) < 2:
        return True, "one rank: nothing to compare it with"
    base = per_rank[0]
    worst = 0.0
    for rank, weights in enumerate(per_rank[1:], start=1):
        if weights.shape != base.shape:
            return False, f"rank {rank} has {weights.numel()} weights, rank 0 {base.numel()}"
        diff = (weights.double() - base.double()).abs().max().item()
        if not diff <= atol:  # NaN fails too
            return False, f"rank {rank} differs from rank 0 by up to {diff:.3g}"
        worst = max(worst, diff)
    return True, f"{len(per_rank)} ranks, {base.numel():,} weights, max difference {worst:.3g}"


def compare_maps(
    found: dict[str, float], reference: dict[str, float], tol: float = MAP_TOLERANCE
) -> tuple[bool, str]:
    """Whether the metrics both reports have agree within ``tol``."""
    keys = [k for k in found if k in reference]
    if not keys:
        return False, "no metric in common"
    diffs = {k: abs(found[k] - reference[k]) for k in keys}
    worst = max(diffs, key=lambda k: diffs[k])
    ok = all(d <= tol for d in diffs.values())
    return ok, f"max |difference| {diffs[worst]:.2g} ({worst}; tolerance {tol:g})"


def break_even(first_s: float, compiled_ms: float, eager_ms: float) -> float | None:
    """Steps after which a compiled step has paid for its compilation (the first call less
    one compiled step, over the time each later step saves), or None when it never does."""
    gain_s = (eager_ms - compiled_ms) / 1000
    if gain_s <= 0:
        return None
    return max(0.0, first_s - compiled_ms / 1000) / gain_s


def report_metrics(report: EvalReport) -> dict[str, float]:
    """The mAPs of an evaluation report (COCO's where it was computed)."""
    metrics = {"voc07_map50": report.voc07_map50, "voc12_map50": report.voc12_map50}
    metrics |= {k: v for k, v in report.coco.items() if k == "coco_map" and v is not None}
    return metrics


# --------------------------------------------------------------------------- setup


def parse_groups(text: str) -> tuple[str, ...]:
    """``--only``'s comma-separated check groups, in the order they run."""
    asked = {g.strip() for g in text.split(",") if g.strip()}
    unknown = sorted(asked - set(GROUPS))
    if unknown or not asked:
        raise InputError(f"--only {text!r}: choose from {', '.join(GROUPS)}")
    return tuple(g for g in GROUPS if g in asked)


def parse_ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{flag} {text!r}: comma-separated whole numbers") from None
    if not values or min(values) < 1:
        raise InputError(f"{flag} {text!r}: each at least 1")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CommandParser(description=__doc__)
    p.add_argument("--only", default=",".join(GROUPS), help="check groups to run")
    p.add_argument("--phis", default="0,2,8", help="attention blocks of the training check")
    p.add_argument("--steps", type=int, default=50, help="training steps per phi")
    p.add_argument(
        "--scaler-warmup",
        type=int,
        default=10,
        help="first steps that may have gradient-scaler skips (more while it skips from step 1)",
    )
    p.add_argument("--ddp-steps", type=int, default=20, help="training steps of the DDP check")
    p.add_argument("--speed-steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--batch-size", type=int, default=64, help="training batch (all processes)")
    add_options(
        p,
        ModelOptions,
        include=("img_size",),
        defaults={"img_size": 416},
        helps={"img_size": "input size of every check"},
    )
    p.add_argument(
        "--latency-batches", default="1,32", help="inference batch sizes, comma-separated"
    )
    p.add_argument("--repeats", type=int, default=20, help="timed runs per inference latency")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time the float16 step through torch.compile (compiles from an empty cache)",
    )
    add_options(
        p,
        DeviceOptions,
        include=("device",),
        defaults={"device": "cuda"},
        helps={"device": "cuda or cuda:N; cpu rehearses the checks on the CPU"},
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="loader processes of each loader (default: one per CPU, at most 8)",
    )
    p.add_argument(
        "--demo-root", default=str(DEMO_ROOT), help="demo set (generated there if missing)"
    )
    p.add_argument("--json", default=None, help="also write the table and machine here")
    args = p.parse_args(argv)
    check_at_least(
        args, steps=2, scaler_warmup=0, ddp_steps=1, speed_steps=1, batch_size=1, repeats=1
    )
    args.groups = parse_groups(args.only)
    args.phi_list = tuple(resolve_phi(p)[0] for p in args.phis.split(","))
    args.latency_list = parse_ints(args.latency_batches, "--latency-batches")
    if args.workers is None:
        args.workers = min(8, os.cpu_count() or 1)
    check_at_least(args, workers=0)
    return args


NO_CUDA = (
    "no CUDA device: torch {torch} (CUDA build {cuda}) sees no GPU here, so there is nothing "
    "to check; run it on a machine with one, or --device cpu to rehearse the checks on the CPU"
)


def check_device(name: str) -> torch.device:
    """The device the checks run on: ``cpu`` as asked, else a CUDA device.

    Raises:
        InputError: no CUDA device on this machine (exit 2), or an unknown name.
    """
    name = name.strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda))
    return select_device("cuda" if name == "auto" else name)


def gpu_lines(device: torch.device) -> list[str]:
    """The GPU, driver, CUDA/cuDNN versions and TF32 settings, as printed at the top."""
    if device.type != "cuda":
        return ["device: CPU (a rehearsal: no GPU is checked)"]
    props = torch.cuda.get_device_properties(device)
    driver = "unknown (no nvidia-smi)"
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, check=False, timeout=60)
        driver = done.stdout.strip().splitlines()[0] if done.stdout.strip() else driver
    return [
        f"GPU: {props.name} ({device}), {props.total_memory / 2**30:.1f} GiB, compute "
        f"capability {props.major}.{props.minor}; {torch.cuda.device_count()} visible",
        f"driver {driver}; torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}; TF32 convolutions "
        f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}, TF32 matmuls "
        f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}",
    ]


def ensure_demo(root: Path) -> Path:
    """``root`` holding a complete demo set (generated with the default parameters when it
    holds none, or one of an older generator)."""
    try:
        written = json.loads((root / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        written = {}
    if not (written.get("complete") and written.get("generator_version") == GENERATOR_VERSION):
        generate_demo(root)
    return root


def demo_config(
    demo_root: Path, log_dir: str, device: torch.device, **fields: object
) -> TrainConfig:
    """A training on the demo set under ``demo_root`` (``train.py --data demo``'s splits),
    writing into ``log_dir``; ``fields`` override the rest (phi, img_size, batch_size, ...)."""
    cfg = TrainConfig(
        voc_root=str(demo_root / "VOCdevkit"),
        train_sets=TRAIN_SPLIT,
        val_set=TEST_SPLIT,
        classes=str(demo_root / "classes.txt"),
        freeze_epochs=0,  # the whole model trains from the first step
        tensorboard=False,
        device=str(device),
        log_dir=log_dir,
        name="run",
    )
    return replace(cfg, **fields)


def epochs_for(cfg: TrainConfig, steps: int) -> int:
    """Epochs of ``cfg``'s training split holding ``steps`` steps (the schedule's length)."""
    sets = (Path(cfg.voc_root) / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").read_text()
    per_epoch = max(1, len(sets.split()) // cfg.batch_size)
    return max(1, math.ceil(steps / per_epoch))


# --------------------------------------------------------------------------- training


class RecordedStep:
    """A ``TrainStep`` as ``train_one_epoch`` calls it, recording each step's total loss and
    whether the gradient scaler skipped it (its scale drops exactly then: it grows only after
    2,000 clean steps)."""

    def __init__(self, step) -> None:
        self.step, self.device = step, step.device
        self.losses: list[float] = []
        self.skipped: list[bool] = []

    def set_lr(self, lr: float) -> None:
        self.step.set_lr(lr)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> list[float] | None:
        scaler = self.step.scaler
        before = scaler.get_scale() if scaler.is_enabled() else 1.0
        values = self.step(images, targets)
        self.losses.append(values[-1] if values is not None else math.nan)
        self.skipped.append(scaler.is_enabled() and scaler.get_scale() < before)
        return values


def train_steps(run: Run, steps: int) -> tuple[RecordedStep, float]:
    """``steps`` steps of ``run`` through ``train_one_epoch``, epoch after epoch with the
    run's lr schedule (``fit``'s ``run_epoch`` without evaluation and checkpoints).

    Returns:
        The recorded step and the seconds the steps took (data loading included).
    """
    cfg = run.cfg
    run.set_frozen(False)
    loader = run.loader_for(cfg.batch_size)
    lr_max, lr_min = fitted_lrs(cfg, loader.batch_size * run.dist.world)
    recorded, epoch = RecordedStep(run.step), 0
    begin = time.perf_counter()
    while len(recorded.losses) < steps:
        loader.sampler.set_epoch(epoch)
        run.train_set.set_epoch(epoch)
        run.step.train_model.train()
        keep_frozen_bn_eval(run.step.model, False)
        train_one_epoch(
            recorded,
            loader,
            lambda done, e=epoch: lr_at(cfg, e + done, lr_max, lr_min),
            max_iters=steps - len(recorded.losses),
        )
        epoch += 1
    synchronize(run.step.device)
    return recorded, time.perf_counter() - begin


def check_training(cfg: TrainConfig, steps: int, warmup: int) -> tuple[Check, Run | None]:
    """``steps`` steps of a new run of ``cfg`` in its 16-bit format (float16 with the
    gradient scaler on CUDA), judged by ``judge_training``; also returns the run when its
    steps ran (None when one raised), whose model the speed and evaluation checks use."""
    phi, phi_name = resolve_phi(cfg.phi)
    device = torch.device(cfg.device)
    precision = resolve_precision(True, device)
    scaler = " + gradient scaler" if device.type == "cuda" else ""
    name = f"train phi {phi} ({phi_name}), {precision.name}{scaler}"
    cfg = replace(cfg, amp=True, epochs=epochs_for(cfg, steps))
    run = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        run = start_run(cfg, Dist(), device)
        recorded, seconds = train_steps(run, steps)
    except Exception as err:  # the row says what broke; the other checks still run
        return failed(name, err), None
    finally:
        if run is not None and run.log is not None:
            run.log.close()
    passed, why = judge_training(recorded.losses, recorded.skipped, warmup)
    skips = [i + 1 for i, s in enumerate(recorded.skipped) if s]
    end = scaler_warmup(recorded.skipped, warmup)
    skip_text = (
        f"scaler skips at steps {', '.join(map(str, skips))} (warm-up: {end} steps)"
        if skips
        else "no scaler skips"
    )
    images = steps * run.loader_batch
    numbers = f"{skip_text}; {images / seconds:.1f} images/s with loading, batch {cfg.batch_size}"
    if device.type == "cuda":
        numbers += f"; peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return Check(name, f"{steps} steps: {why}", numbers, passed), run


def failed(name: str, err: BaseException) -> Check:
    """The row of a check that raised ``err``, whose traceback goes to stderr: a failure on
    a GPU machine is then diagnosable from the log alone, and the other checks still run."""
    traceback.print_exception(err, file=sys.stderr)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "Traceback" in str(err):  # a spawned process's error: its last line is the exception
        text = lines[-1]
    else:
        text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return Check(name, "raised an error", text, False)


def guarded(name: str, check: Callable[..., Check | list[Check]], *args: object) -> list[Check]:
    """The rows of ``check(*args)``, or one failed row named ``name`` when it raises."""
    try:
        rows = check(*args)
    except Exception as err:
        return [failed(name, err)]
    return rows if isinstance(rows, list) else [rows]


class SyncedStep:
    """A training step that returns once the device has finished it, so that a wall-clock
    timer charges each step its own work (CUDA queues it)."""

    def __init__(self, step) -> None:
        self.step = step

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> list[float] | None:
        values = self.step(images, targets)
        synchronize(self.step.device)
        return values


def check_speed(run: Run, steps: int, warmup: int, compile: bool) -> list[Check]:
    """Images/s of the training step (``build_step``, as ``fit`` builds it) in float32 and
    in the 16-bit format, interleaved on the same pre-loaded batches, then the 16-bit step
    through ``torch.compile`` from an empty kernel cache."""
    cfg, device = run.cfg, run.step.device
    loader = run.loader_for(cfg.batch_size)
    batches: list = []
    epoch = 0
    while len(batches) < steps + warmup:
        loader.sampler.set_epoch(100 + epoch)
        batches += list(loader)
        epoch += 1
    batches = batches[: steps + warmup]
    batch = len(batches[0][0])

    def make(amp: bool, compiled: bool = False):
        model = copy.deepcopy(run.step.model)
        cfg_variant = replace(cfg, amp=amp, compile=compiled)
        precision = resolve_precision(amp, device)
        step = build_step(model, cfg_variant, run.info, Dist(), device, precision)
        return SyncedStep(step), precision.name

    (fp32, _), (half, half_name) = make(False), make(True)
    names = {"float32": fp32, half_name: half}
    stats = measure_steps(batches, names, warmup)
    rate = {k: batch * 1000 / s.median for k, s in stats.items()}
    rows = [
        Check(
            f"train speed, {k}",
            f"{rate[k]:.1f} images/s",
            f"{stats[k].median:.1f} ms/step (p10-p90 {stats[k].p10:.1f}-{stats[k].p90:.1f}), "
            f"batch {batch}, median of {stats[k].runs}"
            + (f"; {rate[k] / rate['float32']:.2f}x float32" if k != "float32" else ""),
            math.isfinite(rate[k]),
        )
        for k in names
    ]
    if not compile:
        return rows
    name = f"train speed, {half_name} + torch.compile"
    try:
        with tempfile.TemporaryDirectory() as cache, inductor_cache(cache):
            compiled, _ = make(True, compiled=True)
            first_s, compiled_stats = measure_compile(batches, compiled, warmup)
    except Exception as err:
        return [*rows, failed(name, err)]
    eager = stats[half_name].median
    steps_even = break_even(first_s, compiled_stats.median, eager)
    per_epoch = VOC0712_IMAGES // batch
    even = (
        "never (not faster than eager)"
        if steps_even is None
        else f"after {steps_even:,.0f} steps ({steps_even / per_epoch:.2f} epochs of VOC07+12)"
    )
    compiled_rate = batch * 1000 / compiled_stats.median
    rows.append(
        Check(
            name,
            f"{compiled_rate:.1f} images/s ({compiled_rate / rate[half_name]:.2f}x eager)",
            f"first step (compiles) {first_s:.1f} s with an empty cache; break-even {even}",
            math.isfinite(compiled_rate),
        )
    )
    return rows


# --------------------------------------------------------------------------- DDP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_rank(rank: int, world: int, cfg: TrainConfig, steps: int, port: int, out: str) -> None:
    """One process of the DDP check (``torch.multiprocessing.spawn`` calls it with its rank):
    ``train.py``'s setup under torchrun's environment, ``steps`` steps, then every rank's
    weights gathered on rank 0, which writes the comparison to ``out`` as JSON."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    if world > 1:
        d, device = init_distributed(cfg.device)
    else:  # train.py runs one process without DDP: set both up here, so that they still run
        d, device = Dist(), select_device(cfg.device)
        if device.type == "cuda":
            device = torch.device("cuda", 0)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    run = None
    try:
        run = start_run(cfg, d, device)
        run.set_frozen(False)
        if world == 1:
            ids = [device.index] if device.type == "cuda" else None
            run.step.set_forward(
                nn.parallel.DistributedDataParallel(run.step.model, device_ids=ids)
            )
        recorded, seconds = train_steps(run, steps)
        weights = torch.cat([p.detach().reshape(-1).float() for p in run.step.model.parameters()])
        gathered = [torch.empty_like(weights) for _ in range(world)]
        dist.all_gather(gathered, weights)
        if d.main:
            same, text = compare_weights([g.cpu() for g in gathered])
            result = {
                "same": same,
                "text": text,
                "backend": dist.get_backend(),
                "losses": recorded.losses,
                "images_per_s": steps * run.loader_batch * world / seconds,
            }
            Path(out).write_text(json.dumps(result))
    finally:
        if run is not None and run.log is not None:
            run.log.close()
        dist.destroy_process_group()


def check_ddp(cfg: TrainConfig, steps: int, world: int) -> Check:
    """``world`` processes of DistributedDataParallel (NCCL on CUDA, gloo on CPU), spawned
    with ``torch.multiprocessing``; passes when every loss was finite and the weights are
    the same on every rank at the end."""
    device = torch.device(cfg.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    name = f"DDP, {backend}, world size {world}"
    cfg = replace(cfg, epochs=epochs_for(cfg, steps), device=device.type)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        try:
            mp.spawn(ddp_rank, args=(world, cfg, steps, free_port(), str(out)), nprocs=world)
            result = json.loads(out.read_text())
        except Exception as err:
            return failed(name, err)
    losses = result["losses"]
    finite = all(math.isfinite(v) for v in losses)
    loss_text = f"loss {losses[0]:.4g} -> {losses[-1]:.4g}" if losses else "no step"
    same = "identical weights" if result["same"] else "weights differ"
    return Check(
        name,
        f"{steps} steps, {same}, {loss_text}",
        f"{result['text']}; {result['images_per_s']:.1f} images/s over all ranks",
        result["same"] and finite and result["backend"] == backend,
    )


# --------------------------------------------------------------------------- inference


def check_latency(
    weights: str, image: np.ndarray, device: torch.device, img_size: int, sizes, repeats: int
) -> list[Check]:
    """``Detector`` latency at each batch size in ``sizes``, float32 and 16-bit: end to end
    (letterbox, forward, decode, NMS, back to image pixels) and the forward pass alone."""
    rows = []
    for amp in (False, True):
        config = InferenceConfig(img_size=img_size, device=str(device), amp=amp)
        detector = Detector.from_weights(weights, config=config)
        for size in sizes:
            images = [image] * size
            batch, _ = detector.preprocess(images)
            timer = StageTimer(sync=lambda: synchronize(device))
            for i in range(repeats + 2):  # two warm-up runs (kernel choice, allocator)
                with timer.stage("end to end", record=i >= 2):
                    found = detector.predict_batch(images)
                with timer.stage("forward", record=i >= 2):
                    detector.forward(batch)
            stats = timer.summary()
            e2e, fwd = stats["end to end"], stats["forward"]
            rows.append(
                Check(
                    f"inference batch {size}, {detector.precision.name}",
                    f"{e2e.median:.2f} ms end to end, {fwd.median:.2f} ms forward",
                    f"{size * 1000 / e2e.median:.1f} images/s end to end; p10-p90 "
                    f"{e2e.p10:.2f}-{e2e.p90:.2f} ms; {len(found[0])} detections on image 1",
                    len(found) == size,
                )
            )
    return rows


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for CUDA convolutions and matmuls while inside: TF32 rounds inputs to 10
    mantissa bits, enough to move scores past the 1e-3 a float32 comparison with the CPU
    allows. The previous settings come back after."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def check_detections(
    weights: str, image: np.ndarray, device: torch.device, img_size: int, reference: str = "cpu"
) -> Check:
    """The same image through two float32 ``Detector``s, on ``device`` and on ``reference``:
    their detections must agree (``compare_detections``)."""
    config = InferenceConfig(img_size=img_size, device=str(device))
    with exact_float32():
        found = Detector.from_weights(weights, config=config)(image)
    ref_config = replace(config, device=reference)
    expected = Detector.from_weights(weights, config=ref_config)(image)
    agree, text = compare_detections(found, expected)
    name = f"detections {device.type} vs {reference}, float32 (TF32 off)"
    return Check(name, "agree" if agree else "differ", text, agree)


def check_eval(
    model: nn.Module,
    run: Run,
    device: torch.device,
    workers: int,
    coco: bool = True,
    reference: str = "cpu",
) -> Check:
    """``eval.py``'s pass (``detect_dataset`` + ``score``, through the trainer's
    ``evaluate``) on the run's test split, on ``device`` and on ``reference``: images/s of
    each, and their mAPs equal within ``MAP_TOLERANCE``."""
    cfg = run.cfg
    annotations, dataset, _ = load_ground_truth(
        None, cfg.voc_root, cfg.val_set, run.info.class_names
    )
    eval_cfg = EvalConfig(img_size=cfg.img_size, workers=workers, coco=coco)
    reports = {}
    for where in (str(device), reference):
        copy_on = copy.deepcopy(model).to(where)
        with exact_float32():
            reports[where] = evaluate(
                copy_on, annotations, run.info, eval_cfg, torch.device(where), dataset
            )
    found, expected = reports[str(device)], reports[reference]
    agree, text = compare_maps(report_metrics(found), report_metrics(expected))
    rates = ", ".join(f"{w} {r.speed.images_per_s:.1f} images/s" for w, r in reports.items())
    return Check(
        f"eval pass {device.type} vs {reference} (TF32 off)",
        f"mAP@0.5 {found.voc12_map50:.4f} vs {expected.voc12_map50:.4f}, {found.num_images} images",
        f"{text}; {rates}",
        agree,
    )


# --------------------------------------------------------------------------- main


def run_checks(args: argparse.Namespace, device: torch.device, log_dir: str) -> list[Check]:
    """Runs the asked groups of checks on ``device`` and returns their rows."""
    groups, rows = args.groups, []
    needs_data = {"train", "speed", "ddp", "eval"} & set(groups)
    demo_root = ensure_demo(Path(args.demo_root)) if needs_data else Path(args.demo_root)
    base = demo_config(
        demo_root,
        log_dir,
        device,
        img_size=args.img_size,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    phis = list(args.phi_list) if "train" in groups else []
    if {"speed", "eval"} & set(groups) and 0 not in phis:
        phis.append(0)  # their model: phi 0 after the training check
    phi0_run = None
    for phi in phis:
        cfg = replace(base, phi=str(phi), name=f"phi{phi}")
        row, run = check_training(cfg, args.steps, args.scaler_warmup)
        if "train" in groups:
            rows.append(row)
        if phi == 0:
            phi0_run = run
    not_trained = "the phi-0 training raised an error"
    if "speed" in groups and phi0_run is None:
        rows.append(Check("train speed", "not run", not_trained, False))
    elif "speed" in groups:
        rows += guarded("train speed", check_speed, phi0_run, args.speed_steps, 3, args.compile)
    if "ddp" in groups:
        world = torch.cuda.device_count() if device.type == "cuda" else 2
        cfg = replace(base, phi="0", name="ddp")
        rows += guarded("DDP", check_ddp, cfg, args.ddp_steps, world)
    weights, image = str(OFFICIAL_WEIGHTS), None
    if {"infer", "detect"} & set(groups):
        image = cv2.imread(str(SAMPLE_IMAGE))
    if "infer" in groups:
        sizes = args.latency_list
        rows += guarded(
            "inference", check_latency, weights, image, device, args.img_size, sizes, args.repeats
        )
    if "detect" in groups:
        rows += guarded("detections", check_detections, weights, image, device, args.img_size)
    if "eval" in groups and phi0_run is None:
        rows.append(Check("eval pass", "not run", not_trained, False))
    elif "eval" in groups:
        model = phi0_run.step.eval_model()
        rows += guarded("eval pass", check_eval, model, phi0_run, device, args.workers)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = check_device(args.device)
    if {"infer", "detect"} & set(args.groups):  # before minutes of training
        check_files(str(OFFICIAL_WEIGHTS), str(SAMPLE_IMAGE), hint="run `make weights`")
    info = start(f"GPU check ({', '.join(args.groups)}) on {device}")
    gpu = gpu_lines(device)
    for line in gpu:
        print(line)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as log_dir:
        rows = run_checks(args, device, log_dir)
    print()
    print(render_table(rows))
    report = {"machine": {**info, "gpu": gpu}, "checks": [asdict(r) for r in rows]}
    finish(report, args.json)
    return exit_status(rows)


if __name__ == "__main__":
    run_cli(main)
