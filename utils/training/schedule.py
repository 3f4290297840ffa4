"""The schedule a run actually follows, derived from its epochs and its data set's size.

The reference implementation's defaults are the VOC schedule: 300 epochs on 16,551 images,
50 of them with a frozen backbone, batch 16 (32 while frozen), a warmup of a few epochs. On a
data set of a few hundred images, or a run of 20 epochs, those numbers mean something else:
freezing 50 epochs freezes the whole run, and batch 32 on 55 images is one optimizer step per
epoch, so warmup, freezing and the mosaic switch each last a handful of steps. So the settings
left unset (None) are derived here, from the number of epochs, the number of training images
and whether pretrained weights were loaded; a value the user set is kept, with a warning when it
cannot work. ``resolve_schedule`` returns the config with every derived value filled in (that is
what the run folder and the checkpoints record, so a resume follows the same schedule) and one
line that says what was chosen and why.

The rules and the experiments they come from are in the README ("How the schedule adapts").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from utils.training.config import TrainConfig

logger = logging.getLogger("train")

# The VOC schedule freezes 50 of 300 epochs: the same fraction of any run (never all of it).
DEFAULT_FREEZE_EPOCHS = 50
FREEZE_FRACTION = DEFAULT_FREEZE_EPOCHS / 300
# Batch sizes of the VOC schedule, used whenever the data set is large enough for them.
DEFAULT_BATCH = 16
DEFAULT_FREEZE_BATCH = 32
# Fewer optimizer steps per epoch than this and the batch is lowered (down to MIN_BATCH):
# below it a short run has too few updates to learn from. 24 gives the demo set's 210 images
# batch 8, the setting of the recipe that reached mAP50 0.345 in 25 epochs.
MIN_STEPS_PER_EPOCH = 24
MIN_BATCH = 4
# Warmup is at least this many iterations (never more than a fifth of the run): a warmup of
# "1 epoch" on 55 images would be 3 steps. Darknet's burn-in is 1000 iterations at batch 64;
# this is the same number of images at batch 16 divided by 4, which short runs can afford.
MIN_WARMUP_ITERS = 60
MAX_WARMUP_SHARE = 0.2
# A user's batch that leaves fewer steps per epoch than this gets a warning.
FEW_STEPS = 4
# The reference scales lr by batch/64 (1e-2 at 64 is 2.5e-3 at 16), which suits VOC's 300k
# iterations. A run shorter than this many iterations (a few hundred images, tens of epochs)
# keeps the base lr at its own batch instead: on the demo set (15 epochs, 390 iterations, batch
# 8) mAP50 was 0.164 at 1e-2 and lower at 2.5e-3 (README: "How the schedule adapts").
SHORT_RUN_ITERS = 10_000
BASE_LR = {"sgd": 1e-2, "adam": 1e-3, "adamw": 1e-3}


@dataclass
class Schedule:
    """The derived schedule, and why anything differs from the VOC defaults."""

    epochs: int
    freeze_epochs: int
    batch_size: int
    freeze_batch_size: int
    steps_per_epoch: int
    frozen_steps_per_epoch: int
    warmup_epochs: float
    warmup_iters: int
    strong_aug_until: int
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def describe(self, lr: float, min_lr: float) -> str:
        """One line: epochs, freezing, batches and steps, warmup, augmentation switch, lr."""
        frozen = (
            f"backbone frozen for epochs 1-{self.freeze_epochs} (batch {self.freeze_batch_size}, "
            f"{self.frozen_steps_per_epoch} steps/epoch)"
            if self.freeze_epochs
            else "no frozen epochs"
        )
        line = (
            f"schedule: {self.epochs} epochs, batch {self.batch_size} ({self.steps_per_epoch} "
            f"steps/epoch), {frozen}, warmup {self.warmup_iters} iterations "
            f"({self.warmup_epochs:.2f} epochs), mosaic/mixup until epoch "
            f"{self.strong_aug_until}, lr {lr:.3g} -> {min_lr:.3g}"
        )
        if self.reasons:
            line += " [" + "; ".join(self.reasons) + "]"
        return line


def _steps(images: int, batch: int, world: int) -> int:
    """Optimizer steps per epoch as the loader makes them (drop_last, per process)."""
    per_process = max(1, batch // world)
    return max(1, (images // world) // per_process) if images >= world else 0


def _iters_until(per_epoch: list[int], epochs: float) -> float:
    """Optimizer steps in the first ``epochs`` (fractional) epochs."""
    whole = min(int(epochs), len(per_epoch))
    done = sum(per_epoch[:whole])
    if whole < len(per_epoch):
        done += (epochs - whole) * per_epoch[whole]
    return done


def _epochs_for(per_epoch: list[int], iters: float) -> float:
    """The (fractional) epoch count whose steps reach ``iters``."""
    for e, n in enumerate(per_epoch):
        if iters <= n:
            return e + iters / max(n, 1)
        iters -= n
    return float(len(per_epoch))


def default_warmup_epochs(epochs: int) -> float:
    """The VOC schedule's warmup for a run of ``epochs``: 5% of it, between 1 and 3 epochs
    (what the lr schedule uses when a run leaves it unset)."""
    return min(max(0.05 * epochs, 1), 3)


def resolve_schedule(
    cfg: TrainConfig,
    num_images: int,
    *,
    pretrained: bool,
    world: int = 1,
    resumed: bool = False,
) -> tuple[TrainConfig, Schedule]:
    """``cfg`` with batch sizes, frozen epochs, warmup and lr filled in, and the ``Schedule``.

    Args:
        cfg: the run's settings; None in ``batch_size``, ``freeze_batch_size``,
            ``freeze_epochs``, ``warmup_epochs`` or ``lr`` means "derive it".
        num_images: training images.
        pretrained: whether pretrained weights were loaded (only then is the backbone frozen).
        world: training processes (the batch is split over them).
        resumed: the config comes from a checkpoint. Warmup and lr are then left as saved:
            a run saved before these rules existed has them unset and must keep the schedule
            it started with (the lr schedule's own defaults).
    """
    epochs, reasons, warnings = cfg.epochs, [], []
    batch, freeze_batch = _batch_sizes(cfg, num_images, reasons)
    freeze = _freeze_epochs(cfg, pretrained, reasons, warnings)
    steps = _steps(num_images, batch, world)
    frozen_steps = _steps(num_images, freeze_batch, world)
    warnings += _few_steps_warnings(cfg, num_images, world, batch, freeze_batch, freeze)
    per_epoch = [frozen_steps if e < freeze else steps for e in range(epochs)]
    warmup = _warmup_epochs(cfg, per_epoch, resumed, reasons)
    lr = _short_run_lr(cfg, batch, sum(per_epoch), resumed, reasons)
    resolved = replace(
        cfg,
        batch_size=batch,
        freeze_batch_size=freeze_batch,
        freeze_epochs=freeze,
        warmup_epochs=cfg.warmup_epochs if resumed else round(warmup, 4),
        lr=lr,
    )
    return resolved, Schedule(
        epochs=epochs,
        freeze_epochs=freeze,
        batch_size=batch,
        freeze_batch_size=freeze_batch,
        steps_per_epoch=steps,
        frozen_steps_per_epoch=frozen_steps,
        warmup_epochs=round(warmup, 4),
        warmup_iters=round(_iters_until(per_epoch, warmup)),
        strong_aug_until=round(epochs * cfg.strong_aug_ratio),
        reasons=reasons,
        warnings=warnings,
    )


def _batch_sizes(cfg: TrainConfig, num_images: int, reasons: list[str]) -> tuple[int, int]:
    """The batch and the frozen phase's batch: the user's, else the VOC schedule's lowered
    until an epoch has ``MIN_STEPS_PER_EPOCH`` steps (never below ``MIN_BATCH``)."""
    fit_batch = max(MIN_BATCH, num_images // MIN_STEPS_PER_EPOCH)
    batch = cfg.batch_size
    if batch is None:
        batch = min(DEFAULT_BATCH, fit_batch)
        if batch < DEFAULT_BATCH:
            steps = max(1, num_images // batch)
            why = (
                f"{num_images} images give at least {MIN_STEPS_PER_EPOCH} steps per epoch"
                if steps >= MIN_STEPS_PER_EPOCH
                else f"the smallest batch the rules allow; {num_images} images give {steps} "
                f"steps per epoch, fewer than the {MIN_STEPS_PER_EPOCH} aimed at"
            )
            reasons.append(f"batch {DEFAULT_BATCH} -> {batch}: {why}")
    freeze_batch = cfg.freeze_batch_size
    if freeze_batch is None:
        freeze_batch = min(DEFAULT_FREEZE_BATCH, max(batch, fit_batch))
        if freeze_batch < DEFAULT_FREEZE_BATCH:
            reasons.append(f"frozen-phase batch {DEFAULT_FREEZE_BATCH} -> {freeze_batch}")
    return batch, freeze_batch


def _freeze_epochs(
    cfg: TrainConfig, pretrained: bool, reasons: list[str], warnings: list[str]
) -> int:
    """Frozen epochs: none from scratch, else the user's or a sixth of the run."""
    freeze, epochs = cfg.freeze_epochs, cfg.epochs
    if not pretrained:
        if freeze:
            warnings.append(
                f"--freeze-epochs {freeze} ignored: training from scratch, the backbone has "
                "nothing to keep"
            )
        return 0
    if freeze is None:
        freeze = round(epochs * FREEZE_FRACTION)
        if freeze != DEFAULT_FREEZE_EPOCHS:
            reasons.append(
                f"{freeze} frozen epochs: a sixth of the run, as {DEFAULT_FREEZE_EPOCHS} of "
                "VOC's 300"
            )
    elif freeze >= epochs:
        warnings.append(
            f"--freeze-epochs {freeze} >= --epochs {epochs}: the backbone stays frozen for the "
            "whole run, so only the neck and heads learn"
        )
    return freeze


def _few_steps_warnings(
    cfg: TrainConfig, num_images: int, world: int, batch: int, freeze_batch: int, freeze: int
) -> list[str]:
    """A warning for each batch the user set that leaves fewer than ``FEW_STEPS`` steps per
    epoch (the frozen phase's only when there is one)."""
    warnings = []
    for name, value, given in (
        ("--batch-size", batch, cfg.batch_size),
        ("--freeze-batch-size", freeze_batch, cfg.freeze_batch_size),
    ):
        runs = _steps(num_images, value, world)
        if given is not None and runs < FEW_STEPS and (name == "--batch-size" or freeze):
            warnings.append(
                f"{name} {value} on {num_images} images is {runs} optimizer step(s) per epoch: "
                "warmup, freezing and the lr schedule get very few updates (leave it unset to "
                "adapt it to the data set)"
            )
    return warnings


def _warmup_epochs(
    cfg: TrainConfig, per_epoch: list[int], resumed: bool, reasons: list[str]
) -> float:
    """Warmup in (fractional) epochs: the user's, else the VOC schedule's, lengthened to
    ``MIN_WARMUP_ITERS`` steps (at most ``MAX_WARMUP_SHARE`` of the run) unless resumed."""
    if cfg.warmup_epochs is not None:
        return cfg.warmup_epochs
    warmup = default_warmup_epochs(cfg.epochs)
    if resumed:  # what the lr schedule does with it unset
        return warmup
    floor = min(MIN_WARMUP_ITERS, MAX_WARMUP_SHARE * sum(per_epoch))
    if _iters_until(per_epoch, warmup) < floor:
        warmup = _epochs_for(per_epoch, floor)
        reasons.append(f"warmup at least {MIN_WARMUP_ITERS} iterations (or a fifth of the run)")
    return warmup


def _short_run_lr(
    cfg: TrainConfig, batch: int, total_iters: int, resumed: bool, reasons: list[str]
) -> float | None:
    """The user's lr, else for a short run (not resumed) the base lr at this batch, not
    scaled down by batch / 64; else None (the optimizer's scaled default)."""
    if cfg.lr is not None or total_iters >= SHORT_RUN_ITERS or resumed:
        return cfg.lr
    base = BASE_LR[cfg.optimizer]
    lr = round(base * 64 / batch, 6)  # the option is lr at batch 64, scaled by batch / 64
    reasons.append(
        f"lr {base:g} at batch {batch}, not scaled down by {batch}/64: a short run "
        f"({total_iters} iterations)"
    )
    return lr
