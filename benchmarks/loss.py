"""Speed of ``YoloLoss`` on this machine's CPU: ``python -m benchmarks.loss``.

Prints (a) the loss forward + backward (target building, decoding, ignore rule, all losses) on
random head outputs, next to the reference implementation's Python-loop loss measured on a
2-core CPU, and (b) images/s of a full training step (YoloBody phi 0, loss, backward, SGD) beside
the same step with a trivial loss, i.e. what the real loss costs a training step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from benchmarks.common import check_at_least, start
from nets.decode import Geometry
from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK, STRIDES, YoloBody
from utils.config import CommandParser, add_options, run_cli
from utils.device import ThreadConfig
from utils.timing import StageTimer
from utils.training.loss import YoloLoss

INPUT_SIZE = 416
NUM_CLASSES = 20
# (batch, boxes per image) -> reference Python-loop loss, forward + backward, ms (2-core CPU).
REFERENCE_MS: dict[tuple[int, int], float] = {(8, 10): 74.0, (64, 10): 498.0, (64, 40): 1156.0}


def random_targets(batch: int, boxes_per_image: int, gen: torch.Generator) -> torch.Tensor:
    """(batch * boxes_per_image, 6) image index, class, x1, y1, x2, y2 inside the input."""
    n = batch * boxes_per_image
    image = torch.arange(batch).repeat_interleave(boxes_per_image).float()
    cls = torch.randint(0, NUM_CLASSES, (n,), generator=gen).float()
    wh = 8 + torch.rand(n, 2, generator=gen) * (INPUT_SIZE / 2)
    x1y1 = torch.rand(n, 2, generator=gen) * (INPUT_SIZE - wh)
    return torch.cat([image[:, None], cls[:, None], x1y1, x1y1 + wh], 1)


def random_outputs(batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    channels = len(DEFAULT_ANCHORS_MASK[0]) * (5 + NUM_CLASSES)
    return [
        torch.randn(batch, channels, INPUT_SIZE // s, INPUT_SIZE // s, generator=gen)
        .mul_(0.5)
        .requires_grad_()
        for s in STRIDES
    ]


def median_seconds(step: Callable[[], None], runs: int, warmup: int) -> float:
    timer = StageTimer()
    for i in range(warmup + runs):
        with timer.stage("step", record=i >= warmup):
            step()
    return timer.summary()["step"].median / 1000


def bench_loss(runs: int, warmup: int) -> None:
    geometry = Geometry(
        anchors=DEFAULT_ANCHORS, anchors_mask=DEFAULT_ANCHORS_MASK, input_size=INPUT_SIZE
    )
    criterion = YoloLoss(NUM_CLASSES, geometry)
    gen = torch.Generator().manual_seed(0)
    print(f"(a) YoloLoss forward + backward, {INPUT_SIZE} px, {NUM_CLASSES} classes")
    print(f"    median of {runs} runs after {warmup} warm-ups")
    print(f"    {'batch':>5} {'boxes/img':>9} {'ours ms':>9} {'ref loop ms':>11} {'speed-up':>8}")
    for (batch, boxes), reference in REFERENCE_MS.items():
        outputs = random_outputs(batch, gen)
        targets = random_targets(batch, boxes, gen)

        def step(outputs: list[torch.Tensor] = outputs, targets: torch.Tensor = targets) -> None:
            for o in outputs:
                o.grad = None
            criterion(outputs, targets)["loss"].backward()

        ms = median_seconds(step, runs, warmup) * 1000
        print(f"    {batch:>5} {boxes:>9} {ms:>9.1f} {reference:>11.0f} {reference / ms:>7.1f}x")


def bench_train_step(batch: int, boxes: int, runs: int, warmup: int) -> None:
    torch.manual_seed(0)
    model = YoloBody(NUM_CLASSES, phi=0).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    geometry = Geometry(
        anchors=DEFAULT_ANCHORS, anchors_mask=DEFAULT_ANCHORS_MASK, input_size=INPUT_SIZE
    )
    criterion = YoloLoss(NUM_CLASSES, geometry)
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, INPUT_SIZE, INPUT_SIZE, generator=gen)
    targets = random_targets(batch, boxes, gen)

    def trivial(outputs: list[torch.Tensor]) -> torch.Tensor:
        return sum(o.mean() for o in outputs)

    def real(outputs: list[torch.Tensor]) -> torch.Tensor:
        return criterion(outputs, targets)["loss"]

    def step(loss_fn: Callable[[list[torch.Tensor]], torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images)).backward()
        optimizer.step()

    timer = StageTimer()
    for i in range(warmup + runs):  # interleaved, so drift in the machine's speed hits both alike
        with timer.stage("model only", record=i >= warmup):
            step(trivial)
        with timer.stage("with YoloLoss", record=i >= warmup):
            step(real)
    medians = {name: stats.median / 1000 for name, stats in timer.summary().items()}
    print()
    print(f"(b) training step, YoloBody phi 0, {INPUT_SIZE} px, batch {batch}, {boxes} boxes/img")
    print(f"    forward, loss, backward, SGD; median of {runs} runs after {warmup} warm-ups")
    print(f"    {'step':<14} {'s/step':>7} {'images/s':>9}")
    for name, seconds in medians.items():
        print(f"    {name:<14} {seconds:>7.3f} {batch / seconds:>9.2f}")
    overhead = medians["with YoloLoss"] / medians["model only"] - 1
    verdict = "within" if overhead <= 0.10 else "OVER"
    print(f"    loss overhead: {overhead * 100:+.1f}% ({verdict} the 10% target)")


def cpu_busy(seconds: float = 0.5) -> float | None:
    """Fraction of all CPUs busy over ``seconds`` (Linux /proc/stat; None elsewhere)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(total1 - total0, 1)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss-runs", type=int, default=10, help="timed loss runs per case")
    parser.add_argument("--step-runs", type=int, default=10, help="timed training steps per kind")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    add_options(
        parser, ThreadConfig, helps={"threads": "torch and OpenCV threads (default: their own)"}
    )
    args = parser.parse_args(argv)
    check_at_least(args, loss_runs=1, step_runs=1, warmup=0)
    start("YoloLoss speed on this machine's CPU", args.threads)
    # Other busy processes make multi-threaded torch stall at every parallel op: report them.
    busy = cpu_busy()
    if busy is not None:
        note = "" if busy < 0.2 else "  (other processes are busy: timings will be inflated)"
        print(f"CPU busy before the run: {busy * 100:.0f}%{note}")
    print()
    bench_loss(args.loss_runs, args.warmup)
    bench_train_step(8, 10, args.step_runs, args.warmup)
    return 0


if __name__ == "__main__":
    run_cli(main)
