"""CPU training step at 416, batch 8: ``python -m benchmarks.train``.

Runs the trainer's step (forward, ``YoloLoss``, backward, gradient clipping, SGD, EMA) on
batches of the demo set drawn through the trainer's data pipeline (mosaic + mixup, 416), in
three configurations, interleaved on the same batches:

- **reference**: the avoidable costs of the reference implementation put back into the same
  ``TrainStep``: NCHW, a Python loop over ground-truth boxes writing per-level target arrays,
  a loop over images for the ignore mask, one ``.item()`` per logged loss value and an EMA
  that loops over a ``state_dict`` rebuilt every step; float32, as the reference trains on a
  CPU (its mixed precision is CUDA-only);
- **ours, float32**: model and batch channels-last (NHWC), vectorised target building and
  ignore mask, one host transfer for the four logged loss values, EMA as two multi-tensor ops;
- **ours, bfloat16**: the same under bfloat16 autocast (float32 weights, loss and optimizer),
  what ``train.py`` does by default on a CPU with native bfloat16 instructions.

All compute the same loss (checked on the first batch). Then, unless ``--no-compile``,
``torch.compile`` of the default step: the compile time, the compiled step and the break-even
point. Also measured: the loss alone, the per-epoch start-up of the data-loader workers with
and without ``persistent_workers``, and the operators that take the step's time
(``--profile``). Pinned memory only matters on CUDA (the trainer turns it on there); this
script measures the CPU.

Examples:
    python -m benchmarks.train
    python -m benchmarks.train --steps 20 --no-compile --profile
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from benchmarks.common import check_at_least, start
from data.augment import AugmentConfig
from data.dataset import EpochSampler, MosaicMixup, SeededShuffle, VOCDetection, collate
from data.demo import DEMO_CLASSES, DEMO_ROOT, DEMO_VOC_ROOT, demo_is_current, generate_demo
from data.voc import load_voc, parse_sets
from nets.decode import Geometry
from nets.options import ModelOptions
from nets.registry import resolve_phi
from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK, YoloBody
from utils.classes import read_class_names
from utils.config import CommandParser, add_options, run_cli
from utils.precision import autocast, cpu_has_native_bf16, resolve_precision
from utils.timing import StageTimer, Stats
from utils.training import loss as loss_module
from utils.training.config import TrainConfig
from utils.training.loop import LOSS_KEYS, TrainStep
from utils.training.loss import LevelTargets, YoloLoss
from utils.training.optim import ModelEMA, build_optimizer

INPUT_SIZE, BATCH = 416, 8  # the training step the reference numbers were measured at
# the reference implementation's own training step at 416, batch 8, phi 0, timed on a 2-core
# CPU before this benchmark existed (images/s); printed for context, never compared against
REFERENCE_FIGURE = (8.7, 10.6)
VOC_STEPS = 16551 // BATCH  # one epoch of VOC07+12 trainval at this batch


# --------------------------------------------------------------------------- "before" pieces


def loop_build_targets(targets, anchors, anchors_mask, grid_sizes, input_size, *, fallback=False):
    """``build_targets`` as the reference implementation does it: for every GT box, a Python
    loop over the anchors for the best shape IoU, then element writes into a per-level
    (B, A, H, W, 6) target array; the positives are read back from the arrays. ``fallback``
    (the anchor-0 rule) is not restated: the benchmark trains with it off, the default."""
    if fallback:
        raise ValueError("the restated reference loop has no anchor-0 fallback")
    batch = int(targets[:, 0].max()) + 1 if len(targets) else 1
    arrays = [
        targets.new_zeros(batch, len(m), h, w, 6) for m, (h, w) in zip(anchors_mask, grid_sizes)
    ]
    anchor_list = anchors.tolist()
    for image, label, x1, y1, x2, y2 in targets.tolist():
        bw, bh = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
        ious = []
        for aw, ah in anchor_list:
            inter = min(bw, aw) * min(bh, ah)
            ious.append(inter / (bw * bh + aw * ah - inter))
        best = max(range(len(ious)), key=ious.__getitem__)
        for mask, (h, w), array in zip(anchors_mask, grid_sizes, arrays):
            if best not in mask:
                continue
            gx = min(max(int((x1 + x2) / 2 * w / input_size), 0), w - 1)
            gy = min(max(int((y1 + y2) / 2 * h / input_size), 0), h - 1)
            array[int(image), list(mask).index(best), gy, gx] = torch.tensor(
                [x1, y1, x2, y2, label, 1.0]
            )
    levels = []
    for array in arrays:
        b, a, gy, gx = (array[..., 5] > 0).nonzero(as_tuple=True)
        rows = array[b, a, gy, gx]
        levels.append(LevelTargets(b, a, gy, gx, rows[:, :4], rows[:, 4].long()))
    return levels


def loop_not_ignored(self, boxes, gt_boxes, gt_batch):
    """``YoloLoss._not_ignored`` as a loop over the images of the batch."""
    keep = torch.ones(boxes.shape[:-1], dtype=torch.bool, device=boxes.device)
    for image in range(boxes.shape[0]):
        gts = gt_boxes[gt_batch == image]
        if len(gts):
            iou = box_iou(boxes[image].reshape(-1, 4), gts)
            keep[image] = (iou.max(1).values <= self.cfg.ignore_thresh).view(keep.shape[1:])
    return keep


def ema_state_dict_loop(ema: ModelEMA, model: torch.nn.Module) -> None:
    """The EMA update as a loop over freshly built ``state_dict``s."""
    ema.updates += 1
    d = ema.decay * (1 - math.exp(-ema.updates / ema.tau))
    own = model.state_dict()
    with torch.no_grad():
        for k, v in ema.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(own[k].detach(), alpha=1 - d)
            else:
                v.copy_(own[k])


@contextmanager
def reference_loss_pieces():
    """Swaps the loss's vectorised target building and ignore mask for the loops."""
    build, not_ignored = loss_module.build_targets, YoloLoss._not_ignored
    loss_module.build_targets, YoloLoss._not_ignored = loop_build_targets, loop_not_ignored
    try:
        yield
    finally:
        loss_module.build_targets, YoloLoss._not_ignored = build, not_ignored


# --------------------------------------------------------------------------- setup


def demo_dataset(root: Path, input_size: int, seed: int = 0) -> tuple[MosaicMixup, int]:
    """The demo training split through the trainer's augmentation (mosaic and mixup on), and
    its class count; the demo set is generated into ``root`` first if it is not there."""
    if not demo_is_current(root):
        generate_demo(root)
    names = read_class_names(root / DEMO_CLASSES.relative_to(DEMO_ROOT))
    voc_root = root / DEMO_VOC_ROOT.relative_to(DEMO_ROOT)
    train = load_voc(str(voc_root), parse_sets("2007:train"), names).annotations
    cfg = TrainConfig()
    aug = AugmentConfig(mosaic_p=cfg.mosaic, mixup_p=cfg.mixup)
    base = VOCDetection(train, input_size, train=True, cfg=aug, seed=seed)
    return MosaicMixup(base, close_epoch=10**6), len(names)


def make_loader(dataset, workers: int, persistent: bool, seed: int = 0) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=BATCH,
        sampler=EpochSampler(SeededShuffle(len(dataset), seed)),
        collate_fn=collate,
        num_workers=workers,
        drop_last=True,
        persistent_workers=persistent and workers > 0,
    )


class ReferenceStep(TrainStep):
    """The trainer's step with the avoidable costs put back: one ``.item()`` per logged loss
    value, the EMA as a loop over ``state_dict``s and the loss's Python loops."""

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> list[float] | None:
        with reference_loss_pieces():
            return super().__call__(images, targets)

    def loss_values(self, losses: dict[str, torch.Tensor]) -> list[float]:
        return [losses[k].item() for k in LOSS_KEYS]  # one host sync per value

    def update_ema(self) -> None:
        ema_state_dict_loop(self.ema, self.model)


def make_step(
    model: YoloBody, reference: bool, dtype: torch.dtype | None = None, compile: bool = False
) -> TrainStep:
    """The trainer's ``TrainStep`` (or ``ReferenceStep``) on its own copy of ``model``, with
    the trainer's optimizer, loss and EMA; the reference copy runs NCHW in float32, ours NHWC
    under autocast to ``dtype`` (None: float32), through ``torch.compile`` if ``compile``."""
    memory_format = torch.contiguous_format if reference else torch.channels_last
    model = copy.deepcopy(model).to(memory_format=memory_format).train()
    cfg = TrainConfig()
    geometry = Geometry(
        anchors=DEFAULT_ANCHORS, anchors_mask=DEFAULT_ANCHORS_MASK, input_size=INPUT_SIZE
    )
    criterion = YoloLoss(model.num_classes, geometry)
    optimizer = build_optimizer(model, cfg)
    ema, clip = ModelEMA(model), cfg.grad_clip
    if reference:
        step = ReferenceStep(model, criterion, optimizer, ema=ema, grad_clip=clip)
    else:
        step = TrainStep(
            model,
            criterion,
            optimizer,
            ema=ema,
            grad_clip=clip,
            autocast_dtype=dtype,
            compile=compile,
        )
    step.memory_format = memory_format
    return step


# --------------------------------------------------------------------------- measurements


def first_batch_losses(batches, step: TrainStep) -> dict[str, float]:
    """The loss values of ``step``'s model (in its layout and format) on the first batch."""
    images, targets = batches[0]
    x = images.float().div(255).contiguous(memory_format=step.memory_format)
    pieces = reference_loss_pieces() if isinstance(step, ReferenceStep) else nullcontext()
    with torch.no_grad(), pieces:
        with autocast(step.device, step.autocast_dtype):
            outputs = step.train_model(x)
        losses = step.criterion([o.float() for o in outputs], targets)
    return {k: losses[k].item() for k in LOSS_KEYS}


def relative_difference(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in LOSS_KEYS)


def measure_steps(batches, steps: dict[str, TrainStep], warmup: int) -> dict[str, Stats]:
    """Step times (ms) of each configuration, interleaved on the same batches."""
    timer = StageTimer()
    names = list(steps)
    for i, (images, targets) in enumerate(batches):
        shift = i % len(names)  # rotate who goes first: drift and caches hit all alike
        for name in names[shift:] + names[:shift]:
            with timer.stage(name, record=i >= warmup):
                steps[name](images, targets)
    return timer.summary()


def measure_compile(batches, step: TrainStep, warmup: int) -> tuple[float, Stats]:
    """Seconds of the first (compiling) call of a compiled step, and its later step times."""
    images, targets = batches[0]
    start = time.perf_counter()
    step(images, targets)
    first = time.perf_counter() - start
    timer = StageTimer()
    for i, (images, targets) in enumerate(batches[1:]):
        with timer.stage("compiled", record=i + 1 >= warmup):
            step(images, targets)
    return first, timer.summary()["compiled"]


def measure_loss_only(batches, model: YoloBody, repeats: int) -> dict[str, Stats]:
    with torch.no_grad():
        outputs = [model(images.float() / 255) for images, _ in batches[:repeats]]
    geometry = Geometry(
        anchors=DEFAULT_ANCHORS, anchors_mask=DEFAULT_ANCHORS_MASK, input_size=INPUT_SIZE
    )
    criterion = YoloLoss(model.num_classes, geometry)
    timer = StageTimer()
    for out, (_, targets) in zip(outputs, batches):
        out = [o.detach().requires_grad_() for o in out]
        with timer.stage("after"):
            criterion(out, targets)["loss"].backward()
        with timer.stage("before"), reference_loss_pieces():
            criterion(out, targets)["loss"].backward()
    return timer.summary()


def worker_startup(dataset, workers: int, epochs: int) -> dict[str, Stats]:
    """Time from the start of an epoch to its first batch, epochs after the first."""
    timer = StageTimer()
    for persistent in (True, False):
        name = "persistent" if persistent else "started every epoch"
        loader = make_loader(dataset, workers, persistent)
        for epoch in range(epochs):
            loader.sampler.set_epoch(epoch)
            with timer.stage(name, record=epoch > 0):
                iterator = iter(loader)
                next(iterator)
            del iterator
    return timer.summary()


def profile_step(batches, model: YoloBody, dtype: torch.dtype | None, top: int):
    """The operators taking the most self CPU time in three steps, as (name, percent)."""
    from torch.profiler import ProfilerActivity, profile

    step = make_step(model, False, dtype)
    images, targets = batches[0]
    step(images, targets)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for images, targets in batches[1:4]:
            step(images, targets)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [(e.key, 100 * e.self_cpu_time_total / total) for e in events[:top]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CommandParser(description=__doc__)
    p.add_argument("--steps", type=int, default=12, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="discarded steps per configuration")
    add_options(
        p,
        ModelOptions,
        include=("phi",),
        defaults={"phi": "0"},
        helps={"phi": "attention block of the model, by number or name"},
    )
    p.add_argument("--workers", type=int, default=2, help="data-loader workers")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time torch.compile: its compile time, its steps and the break-even point",
    )
    p.add_argument("--profile", action="store_true", help="top operators of the step")
    p.add_argument(
        "--demo-root", default=str(DEMO_ROOT), help="demo set (generated there if missing)"
    )
    args = p.parse_args(argv)
    check_at_least(args, steps=1, warmup=0, workers=0)
    return args


def print_steps(steps: dict[str, Stats], names: list[str], batches: int) -> None:
    print(f"\nstep (forward, loss, backward, clip, SGD, EMA), median of {batches}:")
    print(f"  {'':<28}{'s/step':>8}{'images/s':>10}{'vs reference':>14}")
    reference = steps["reference"].median
    for name in names:
        stats = steps[name]
        seconds = stats.median / 1000
        ratio = reference / stats.median
        print(f"  {name:<28}{seconds:>8.3f}{BATCH / seconds:>10.2f}{ratio:>13.2f}x")
    low, high = REFERENCE_FIGURE
    print(
        f"  the reference implementation itself, timed when this benchmark was written on a "
        f"2-core CPU (not this run): {low}-{high} images/s"
    )


@contextmanager
def inductor_cache(folder: str):
    """Points inductor's on-disk kernel cache at ``folder`` (restored afterwards) and empties
    its in-memory caches, so that a compile sees only what ``folder`` holds, as a new process
    would, whatever earlier runs left in the default cache."""
    from torch._inductor import utils as inductor_utils

    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    getattr(inductor_utils, "clear_caches", lambda: None)()
    torch._dynamo.reset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCHINDUCTOR_CACHE_DIR"]
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def print_compile(firsts: list[float], compiled: Stats, eager: Stats, name: str) -> None:
    """Compile cost (cold and warm kernel cache), per-step gain and break-even (cold) of the
    compiled step against ``eager``."""
    cold, warm = firsts
    overhead = cold - compiled.median / 1000  # the first call minus a normal step
    gain = (eager.median - compiled.median) / 1000
    print(f"\ntorch.compile (inductor) of the {name} step:")
    print(
        f"  first step (compiles forward and backward): {cold:.1f} s with an empty kernel "
        f"cache, {warm:.1f} s with a filled one (a later run on the same machine)"
    )
    print(
        f"  then {compiled.median / 1000:.3f} s/step ({BATCH * 1000 / compiled.median:.2f} "
        f"images/s) against {eager.median / 1000:.3f} eager"
    )
    if gain <= 0:
        print("  break-even: never (the compiled step is not faster here)")
        return
    steps = overhead / gain
    print(
        f"  break-even after {steps:,.0f} steps = {steps / VOC_STEPS:.2f} epochs of VOC07+12 at "
        f"batch {BATCH} ({VOC_STEPS:,} steps each); a run compiles twice (frozen, then unfrozen)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    phi, phi_name = resolve_phi(args.phi)
    dataset, num_classes = demo_dataset(Path(args.demo_root), INPUT_SIZE)
    torch.manual_seed(0)
    model = YoloBody(num_classes, phi)
    loader = make_loader(dataset, args.workers, persistent=True)
    batches = []
    while len(batches) < args.steps + args.warmup:
        loader.sampler.set_epoch(len(batches))
        batches += list(loader)
    batches = batches[: args.steps + args.warmup]
    boxes = statistics.mean(len(t) for _, t in batches)
    default = resolve_precision(None, torch.device("cpu"))
    native = "native" if cpu_has_native_bf16() else "no native bfloat16: emulated"
    start(
        f"training step, phi {phi} ({phi_name}), {INPUT_SIZE} px, batch {BATCH}, demo set with "
        f"mosaic ({boxes:.0f} boxes per batch); {default.describe()}"
    )
    configs = {
        "reference": make_step(model, True),
        "ours, float32": make_step(model, False),
        f"ours, bfloat16 ({native})": make_step(model, False, torch.bfloat16),
    }
    first = {name: first_batch_losses(batches, step) for name, step in configs.items()}
    names = list(configs)
    print(
        "same loss as the reference on the first batch: max relative difference "
        f"{relative_difference(first[names[0]], first[names[1]]):.1e} float32 (NCHW vs NHWC "
        f"rounding), {relative_difference(first[names[0]], first[names[2]]):.1e} bfloat16"
    )
    steps = measure_steps(batches, configs, args.warmup)
    print_steps(steps, names, args.steps)
    default_name = names[2] if default.dtype == torch.bfloat16 else names[1]
    print(f"  train.py's default on this machine: {default_name}")

    if args.compile:
        with tempfile.TemporaryDirectory() as cache:
            firsts = []
            for _ in ("cold", "warm"):  # an empty kernel cache, then the one just filled
                with inductor_cache(cache):
                    compiled = make_step(model, False, default.dtype, compile=True)
                    seconds, stats = measure_compile(batches, compiled, args.warmup)
                firsts.append(seconds)
        print_compile(firsts, stats, steps[default_name], default_name)

    loss = measure_loss_only(batches, model, min(len(batches), 8))
    print("\nloss + targets forward and backward alone (ms, median):")
    print(f"  before {loss['before'].median:.1f}   after {loss['after'].median:.1f}")

    startup = worker_startup(dataset, args.workers, epochs=4)
    print(f"\nfirst batch of an epoch, {args.workers} workers (s, median of epochs 2-4):")
    for name, stats in startup.items():
        print(f"  {name:<22}{stats.median / 1000:.3f}")

    if args.profile:
        print(f"\n{default_name}: top operators of the step by self CPU time")
        for name, percent in profile_step(batches, model, default.dtype, top=12):
            print(f"  {name:<40}{percent:>6.1f} %")
    return 0


if __name__ == "__main__":
    run_cli(main)
