"""The training step, one epoch of it, and evaluation: plain functions over small objects.

``TrainStep`` owns what one optimisation step touches (model, loss, optimizer, grad scaler,
EMA); ``train_one_epoch`` runs it over a loader; ``evaluate`` is detection on a split plus its
score. ``fit`` (``utils.training.fit``) wires them into a run, and ``benchmarks.train`` times the
same ``TrainStep``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.voc import Annotation
from nets.checkpoint import ModelInfo
from utils.errors import FailedError
from utils.evaluation.evaluate import EvalConfig, EvalReport, detect_dataset, score
from utils.precision import autocast
from utils.training.optim import ModelEMA, unwrap

logger = logging.getLogger("train")

LOSS_KEYS = ("loss_box", "loss_obj", "loss_cls", "loss")  # "loss" (the total) last
BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"


class NonFiniteLossError(FailedError):
    """Too many optimisation steps in a row had a non-finite loss."""


class TrainStep:
    """One optimisation step: forward (under ``torch.autocast`` when ``autocast_dtype`` is
    set: float16 on CUDA with a gradient scaler, bfloat16 on CPU), loss in float32, backward,
    gradient clipping, optimizer and EMA update, with a guard that skips steps whose loss is
    not finite.

    ``model`` is the bare model (what the optimizer and the EMA hold); ``train_model`` is what
    runs the forward pass: the same model or its DistributedDataParallel wrapper, compiled
    with ``torch.compile`` when ``compile`` is set.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        ema: ModelEMA | None = None,
        autocast_dtype: torch.dtype | None = None,
        compile: bool = False,
        grad_clip: float = 10.0,
        max_nonfinite: int = 1,
        world_size: int = 1,
    ) -> None:
        self.model, self.compile = model, compile
        self.criterion, self.optimizer, self.ema = criterion, optimizer, ema
        self.device = next(model.parameters()).device
        self.autocast_dtype = autocast_dtype
        scaled = autocast_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=scaled)
        self.grad_clip, self.max_nonfinite, self.world_size = grad_clip, max_nonfinite, world_size
        # NHWC on CPU: oneDNN runs the convolutions, their backward passes and the max-pools
        # without layout conversions (10.7 -> 13.8 images/s for a 416 / batch-8 step on a
        # 2-core CPU, python -m benchmarks.train). CUDA keeps NCHW.
        cpu = self.device.type == "cpu"
        self.memory_format = torch.channels_last if cpu else torch.contiguous_format
        self.nonfinite = 0  # non-finite losses in a row, across epochs
        self.set_forward(model)

    def set_forward(self, module: nn.Module) -> None:
        """What runs the forward pass: ``module`` (the model or its DDP wrapper), through
        ``torch.compile`` when the step compiles. The compiled module shares the parameters;
        it compiles on its first call and again when the frozen parameters change."""
        self.train_model = torch.compile(module) if self.compile else module

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> list[float] | None:
        """One step on a batch.

        Args:
            images: (B, 3, S, S) uint8 or float in [0, 255].
            targets: (N, 6) rows of image index, class, x1, y1, x2, y2 in input pixels.

        Returns:
            The loss values in ``LOSS_KEYS`` order (averaged over processes under DDP), or
            None when the loss was not finite and the step was skipped.

        Raises:
            NonFiniteLossError: the ``max_nonfinite``-th non-finite loss in a row (the first
                one by default: a loss that is not finite means a broken model or data, unlike
                the gradient scaler's skipped steps, which happen inside ``scaler.step``).
        """
        images = images.to(self.device, non_blocking=True)
        images = images.contiguous(memory_format=self.memory_format).float().div_(255)
        targets = targets.to(self.device, non_blocking=True)
        with autocast(self.device, self.autocast_dtype):
            outputs = self.train_model(images)
        losses = self.criterion([o.float() for o in outputs], targets)
        values = self.loss_values(losses)
        if not math.isfinite(values[-1]):
            self.nonfinite += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.nonfinite >= self.max_nonfinite:
                named = ", ".join(f"{k} {v:g}" for k, v in zip(LOSS_KEYS, values))
                row = f", {self.nonfinite} in a row" if self.nonfinite > 1 else ""
                raise NonFiniteLossError(f"non-finite loss ({named}{row}): training stopped")
            return None
        self.nonfinite = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.update_ema()
        return values

    def loss_values(self, losses: dict[str, torch.Tensor]) -> list[float]:
        """The logged loss values in one host transfer; under DDP every process gets the mean,
        so all of them skip a non-finite step together."""
        stacked = torch.stack([losses[k].detach() for k in LOSS_KEYS])
        if self.world_size > 1:
            dist.all_reduce(stacked)
            stacked /= self.world_size
        return stacked.tolist()

    def update_ema(self) -> None:
        self.ema.update(self.model)

    def eval_model(self) -> nn.Module:
        """What evaluation and checkpoints use: the EMA weights when there are any."""
        return self.ema.ema if self.ema is not None else unwrap(self.model)

    def state_dict(self) -> dict:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema is not None,  # the EMA weights are the checkpoint's "model"
            "ema_updates": self.ema.updates if self.ema else 0,
        }

    def load_state_dict(self, state: dict, ema_weights: dict | None = None) -> None:
        """Restores ``state_dict()``'s output; ``ema_weights`` are the checkpoint's model."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when the run started without AMP
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") and ema_weights is not None:
            self.ema.ema.load_state_dict(ema_weights)
            self.ema.updates = state["ema_updates"]


@dataclass
class EpochProgress:
    """The progress bar's fixed columns; ``None`` turns the bar off (other DDP ranks).

    ``gpu``: the run is on CUDA, the only device whose memory the bar can show; elsewhere the
    ``GPU_mem`` column is left out rather than showing a meaningless 0. ``header()`` and
    ``describe()`` give the same columns at the same widths, values right-aligned under their
    names.
    """

    epoch: int
    epochs: int
    img_size: int
    gpu: bool = False

    def header(self) -> str:
        mem = f"{'GPU_mem':>8}" if self.gpu else ""
        return (
            f"{'Epoch':>9}{mem}{'box_loss':>10}{'obj_loss':>10}{'cls_loss':>10}"
            f"{'Instances':>10}{'Size':>6}"
        )

    def describe(self, means: Sequence[float], instances: int, device: torch.device) -> str:
        mem = ""
        if self.gpu and device.type == "cuda":
            mem = f"{torch.cuda.memory_reserved(device) / 1e9:>7.2f}G"
        elif self.gpu:  # the column is in the header: keep the row aligned under it
            mem = f"{'-':>8}"
        box, obj, cls = means[:3]
        epoch = f"{self.epoch + 1}/{self.epochs}"
        return (
            f"{epoch:>9}{mem}{box:>10.4f}{obj:>10.4f}{cls:>10.4f}{instances:>10}{self.img_size:>6}"
        )


def train_one_epoch(
    step: TrainStep,
    loader: DataLoader,
    lr_at: Callable[[float], float],
    max_iters: int = 0,
    progress: EpochProgress | None = None,
    on_first_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[dict[str, float], float]:
    """Runs ``step`` over ``loader`` once.

    Args:
        lr_at: lr for the fraction of this epoch done (0 at its first step).
        max_iters: stop after this many batches (0 = all).
        progress: the bar's columns, or None for no bar.
        on_first_batch: called with the first (images, targets) batch before the step.

    Returns:
        The mean of each loss in ``LOSS_KEYS`` over the steps taken (skipped steps, whose loss
        was not finite, left out), and the last lr used.

    Raises:
        NonFiniteLossError: from the step (naming the step), or when every step was skipped.
    """
    total = len(loader) if not max_iters else min(max_iters, len(loader))
    sums, steps, skipped, lr = [0.0] * len(LOSS_KEYS), 0, 0, lr_at(0.0)
    bar = tqdm(total=total, disable=progress is None, bar_format=BAR_FORMAT)
    try:  # a failed step ends the bar first: its error starts on a line of its own
        for i, (images, targets) in enumerate(loader):
            if i >= total:
                break
            if i == 0 and on_first_batch is not None:
                on_first_batch(images, targets)
            lr = lr_at(i / total)
            step.set_lr(lr)
            try:
                values = step(images, targets)
            except NonFiniteLossError as err:
                raise NonFiniteLossError(f"step {i + 1}/{total}: {err}") from None
            if values is None:
                logger.warning("non-finite loss at step %d/%d: step skipped", i + 1, total)
                skipped += 1
                continue
            steps += 1
            sums = [s + v for s, v in zip(sums, values)]
            if progress is not None:
                means = [s / steps for s in sums]
                bar.set_description_str(progress.describe(means, len(targets), step.device))
                bar.update(1)
    finally:
        bar.close()
    if skipped and not steps:  # no loss to report: a row of zeros would look like a perfect fit
        raise NonFiniteLossError(
            f"all {skipped} steps had a non-finite loss and were skipped: training stopped"
        )
    return {k: s / max(steps, 1) for k, s in zip(LOSS_KEYS, sums)}, lr


def evaluate(
    model: nn.Module,
    annotations: Sequence[Annotation],
    info: ModelInfo,
    cfg: EvalConfig,
    device: torch.device,
    dataset: str,
) -> EvalReport:
    """mAP of ``model`` on ``annotations``: detection (``detect_dataset``) then ``score``.

    Args:
        info: the model's classes, anchors and masks.
        cfg: thresholds and input size of the detection pass.
        dataset: how the split is named in the report's protocol line.
    """
    detected = detect_dataset(model, annotations, info.geometry, cfg, device=device)
    return score(
        detected, info.class_names, dataset, cfg.iou_thresh, coco=cfg.coco, max_det=cfg.max_det
    )
