"""``TrainConfig``: everything a training run depends on, each default in one place.

Each field is also ``train.py``'s flag of the same name (``utils.config.option``); the resolved
config is written to the run folder and into every checkpoint. The defaults are the VOC
schedule of the reference implementation (300 epochs on 16,551 images, the first 50 with a
frozen backbone when starting from pretrained weights) where it fits; the batch sizes, frozen
epochs and warmup left unset are derived from the run's length and data set size
(``utils.training.schedule``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from data.formats import LABEL_FORMATS
from data.options import DataOptions
from data.source import DATA_CHOICES
from nets.attention import (
    ATTENTION_POINTS,
    DEFAULT_POINTS,
    check_attention_settings,
    format_attention_args,
    parse_attention_args,
    parse_points,
)
from nets.options import IMG_SIZE_MUST, ModelOptions, valid_img_size
from nets.registry import describe_phis
from utils.config import option, rule_problems, shared
from utils.device import DeviceOptions
from utils.errors import InputError
from utils.evaluation.evaluate import EvalConfig

OPTIMIZERS = ("sgd", "adam", "adamw")


# TrainConfig fields that do not change what a run computes: where the run lives (name,
# log_dir, resume), how this machine runs the same arithmetic (device, workers, compile), what
# is only written on the side (tensorboard, save_period) and where a run pauses
# (stop_at_epoch). Two runs equal in every other field are one run.
RESULT_NEUTRAL_FIELDS = (
    "name",
    "log_dir",
    "resume",
    "device",
    "workers",
    "compile",
    "tensorboard",
    "save_period",
    "stop_at_epoch",
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; written to the run folder and into every checkpoint."""

    # data
    data: str = shared(DataOptions, "data")
    voc_root: str = shared(DataOptions, "voc_root")
    train_sets: str = option(
        "2007:trainval,2012:trainval", "YEAR:SET pairs to train on", group="data"
    )
    val_set: str = option("2007:test", "YEAR:SET pairs to evaluate on", group="data")
    classes: str | None = shared(
        DataOptions,
        "classes",
        None,
        "classes file (default: the demo's with --data demo; else the checkpoint's when "
        "evaluating, and VOC's 20 or the names in the XMLs when training)",
    )
    train_lines: str | None = option(
        None,
        "reference-implementation annotation lines (path x1,y1,x2,y2,cls ...) to train on "
        "instead of VOC image sets",
        group="data",
    )
    val_lines: str | None = option(None, "the same for evaluation", group="data")
    train_labels: str | None = option(
        None,
        "labels to train on instead of VOC image sets, in any format (a VOC folder or image-set "
        "file, a COCO .json, a YOLO folder, data .yaml or image list, annotation lines), "
        "detected unless --label-format; its 'train' split where it has splits (a data YAML "
        "also gives the val split and the names)",
        group="data",
    )
    val_labels: str | None = option(
        None,
        "labels to evaluate on, any format (default: the 'val' split of --train-labels where it "
        "has one, else no evaluation)",
        group="data",
    )
    train_images: str | None = option(
        None,
        "images folder of COCO --train-labels (default: the first holding its images of "
        "<root>/images/<split>, <root>/<split>, <root>/images and the JSON's folder, <root> "
        "being the folder above the JSON's)",
        group="data",
    )
    val_images: str | None = option(
        None, "images folder of COCO --val-labels (default: as --train-images)", group="data"
    )
    label_format: str = shared(
        DataOptions,
        "label_format",
        "auto",
        "format of --train-labels/--val-labels (auto: from the path)",
    )
    anchors: str | None = shared(
        ModelOptions,
        "anchors",
        "auto",
        "anchors: 'auto' (k-means on the training boxes at --img-size when darknet's fit them "
        "poorly, else darknet's), 'kmeans' (always), 'default' (darknet's), or a file of w,h "
        "pairs at --img-size",
        group="data",
    )
    anchor_fallback: bool = option(
        False,
        "assign a box whose best anchor no head predicts (anchor 0) to the best anchor a head "
        "does predict, as the reference implementation does (off: it gets no positive; off "
        "trained better on the demo set, see the README)",
        group="augmentation and loss",
    )
    include_difficult: bool = option(False, "train on difficult objects too", group="data")
    # model
    phi: str = shared(
        ModelOptions, "phi", "0", lambda: f"attention block, by number or name: {describe_phis()}"
    )
    attention_at: str = option(
        ",".join(DEFAULT_POINTS),
        f"comma-separated points the block is applied at, any of: {', '.join(ATTENTION_POINTS)}",
        group="model",
    )
    attention_args: str = option(
        "",
        "the block's options as name=value,... (e.g. reduction=8); unset ones keep the block's "
        "defaults",
        group="model",
    )
    attention_plugin: str | None = shared(ModelOptions, "attention_plugin")
    img_size: int = shared(
        ModelOptions, "img_size", 416, "training and evaluation input side (multiple of 32)"
    )
    scale_xy: float | None = option(
        None,
        "grid sensitivity of the box centres, in the loss and decoding (default: the initial "
        "weights': 1.05 for darknet files and from scratch, 1.0 for reference-implementation "
        ".pth files, stored in ours)",
        group="model",
    )
    weights: str | None = shared(
        ModelOptions,
        "weights",
        "auto",
        "initial weights: darknet .weights, our .pth, reference .pth; 'auto' = the COCO "
        "weights in model_data/ if present; 'none' = from scratch",
    )
    # schedule
    epochs: int = option(300, "total epochs, frozen ones included", group="schedule")
    freeze_epochs: int | None = option(
        None,
        "first epochs with a frozen backbone, pretrained weights only (default: a sixth of the "
        "run, as 50 of VOC's 300)",
        group="schedule",
    )
    batch_size: int | None = option(
        None,
        "batch over all processes, after unfreezing (default: 16, lower (down to 4) when the "
        "data set would give fewer than 24 steps per epoch)",
        group="schedule",
    )
    freeze_batch_size: int | None = option(
        None,
        "batch while the backbone is frozen (default: 32, lowered like --batch-size)",
        group="schedule",
    )
    optimizer: str = option(
        "sgd", "sgd (nesterov), adam or adamw", group="schedule", choices=OPTIMIZERS
    )
    lr: float | None = option(
        None,
        "max lr at batch 64, scaled by batch/64 (default 1e-2 sgd, 1e-3 adam; a run under "
        "10,000 iterations gets that lr at its own batch)",
        group="schedule",
    )
    min_lr: float | None = option(None, "final lr at batch 64 (default lr / 100)", group="schedule")
    lr_schedule: str = option(
        "cos", "cos (warmup, cosine, hold) or step", group="schedule", choices=("cos", "step")
    )
    warmup_epochs: float | None = option(
        None,
        "quadratic warmup epochs (default min(max(0.05 E, 1), 3), at least 60 iterations or a "
        "fifth of the run)",
        group="schedule",
    )
    weight_decay: float | None = option(
        None, "on conv/linear weights only (default 5e-4 sgd, 0 adam)", group="schedule"
    )
    momentum: float = option(0.937, "SGD momentum / Adam beta1", group="schedule")
    # augmentation and loss
    mosaic: float = option(0.5, "mosaic probability", group="augmentation and loss")
    mixup: float = option(0.5, "mixup probability (of a mosaic)", group="augmentation and loss")
    strong_aug_ratio: float = option(
        0.7,
        "fraction of the epochs with mosaic and mixup (then off)",
        group="augmentation and loss",
    )
    label_smoothing: float = option(
        0.0, "class targets y * (1 - eps) + eps / C", group="augmentation and loss"
    )
    focal: bool = option(False, "focal loss for objectness", group="augmentation and loss")
    ignore_thresh: float = option(
        0.5, "negatives overlapping a GT more than this are ignored", group="augmentation and loss"
    )
    # machinery
    ema: bool = option(
        True, "exponential moving average of weights (evaluated, saved)", group="machinery"
    )
    amp: bool | None = shared(
        DeviceOptions,
        "amp",
        None,
        "mixed precision: float16 autocast on CUDA, bfloat16 on CPU (default: on for CPUs "
        "with native bfloat16 instructions, AVX512-BF16 or AMX; off on other CPUs and on "
        "CUDA)",
        group="machinery",
    )
    compile: bool = option(
        False,
        "torch.compile the model's forward and backward (inductor; needs a C++ compiler); "
        "costs a compile at the start and at unfreezing, and on a CPU the compiled step was "
        "no faster (python -m benchmarks.train measures it)",
        group="machinery",
    )
    grad_clip: float = option(10.0, "max gradient norm", group="machinery")
    max_nonfinite: int = option(
        1,
        "stop at the Nth non-finite loss in a row, an error naming the epoch, the step and the "
        "last good checkpoint (1: at the first; more skips those steps, with a warning each)",
        group="machinery",
    )
    workers: int = option(2, "data-loading processes per training process", group="machinery")
    seed: int = option(0, "model init, shuffling and augmentation", group="machinery")
    deterministic: bool = option(
        False, "deterministic algorithms (exact resume)", group="machinery"
    )
    sync_bn: bool = option(False, "SyncBatchNorm under torchrun (CUDA)", group="machinery")
    device: str = shared(DeviceOptions, "device", "auto", group="machinery")
    # evaluation and output
    eval_period: int = option(
        5,
        "evaluate every N epochs and after the last (0 = only the last)",
        group="evaluation and output",
    )
    eval_conf: float = option(
        EvalConfig.conf_thresh, "score threshold for mAP", group="evaluation and output"
    )
    eval_nms: float = option(
        EvalConfig.nms_thresh, "NMS IoU for mAP", group="evaluation and output"
    )
    patience: int = option(
        0,
        "stop after N evaluations without a better mAP (0 = never)",
        group="evaluation and output",
    )
    save_period: int = option(
        0, "also keep epoch_N.pth every N epochs (0 = never)", group="evaluation and output"
    )
    resume: str | None = option(None, "last.pth to continue from", group="evaluation and output")
    name: str = option(
        "exp", "run folder <log-dir>/<name> (incremented)", group="evaluation and output"
    )
    log_dir: str = option("logs", "parent folder of run folders", group="evaluation and output")
    tensorboard: bool = option(
        True,
        "TensorBoard event files in the run folder: losses, lr, mAPs, pictures, settings "
        "(tensorboard --logdir <log-dir>)",
        group="evaluation and output",
    )
    max_iters: int = option(
        0, "iterations per epoch (0 = all; for smoke tests)", group="evaluation and output"
    )
    stop_at_epoch: int = option(
        0,
        "stop before this epoch, resumably (the lr schedule still spans --epochs)",
        group="evaluation and output",
    )

    def __post_init__(self) -> None:
        problems = config_problems(self)
        try:  # canonical forms: equal settings compare equal (resume)
            object.__setattr__(self, "attention_at", ",".join(parse_points(self.attention_at)))
        except ValueError as err:
            problems.append(f"--attention-at {self.attention_at!r}: {err}")
        try:
            args = format_attention_args(parse_attention_args(self.attention_args))
            object.__setattr__(self, "attention_args", args)
        except ValueError as err:
            problems.append(f"--attention-args {self.attention_args!r}: {err}")
        if not self.resume and not any("--attention-" in p for p in problems):
            # the block, its options' values and its placement together (imports the plugins
            # that register blocks): a bad value is refused here, not in the first step. A
            # resumed run's block is the checkpoint's: its config is checked when it is read.
            try:
                check_attention_settings(
                    self.phi, self.attention_at, self.attention_args, self.attention_plugin
                )
            except ValueError as err:
                problems.append(str(err))
        if problems:
            raise InputError("invalid training settings: " + "; ".join(problems))


# field -> (check, what it must be); the flag is the field name in kebab case
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "img_size": (valid_img_size, IMG_SIZE_MUST),
    "seed": (lambda v: 0 <= v < 2**32, "0 to 2**32 - 1 (a numpy seed)"),
    "epochs": (lambda v: v >= 1, "at least 1"),
    "freeze_epochs": (lambda v: v is None or v >= 0, "0 or more"),
    "batch_size": (lambda v: v is None or v >= 1, "at least 1"),
    "freeze_batch_size": (lambda v: v is None or v >= 1, "at least 1"),
    "scale_xy": (lambda v: v is None or 1 <= v <= 2, "in [1, 2]"),
    "lr": (lambda v: v is None or 0 < v < math.inf, "a positive number"),
    "min_lr": (lambda v: v is None or 0 <= v < math.inf, "0 or a positive number"),
    "warmup_epochs": (lambda v: v is None or 0 <= v < math.inf, "0 or more"),
    "weight_decay": (lambda v: v is None or 0 <= v < math.inf, "0 or more"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "mosaic": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "mixup": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "strong_aug_ratio": (lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "ignore_thresh": (lambda v: 0 < v <= 1, "an IoU in (0, 1]"),
    "grad_clip": (lambda v: v > 0, "positive"),
    "max_nonfinite": (lambda v: v >= 1, "at least 1"),
    "workers": (lambda v: v >= 0, "0 or more"),
    "eval_period": (lambda v: v >= 0, "0 or more"),
    "eval_conf": (lambda v: 0 <= v <= 1, "a score in [0, 1]"),
    "eval_nms": (lambda v: 0 < v <= 1, "an IoU in (0, 1]"),
    "patience": (lambda v: v >= 0, "0 or more"),
    "save_period": (lambda v: v >= 0, "0 or more"),
    "max_iters": (lambda v: v >= 0, "0 or more"),
    "stop_at_epoch": (lambda v: v >= 0, "0 or more"),
    "data": (lambda v: v in DATA_CHOICES, f"one of {', '.join(DATA_CHOICES)}"),
    "label_format": (lambda v: v in LABEL_FORMATS, f"one of {', '.join(LABEL_FORMATS)}"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "lr_schedule": (lambda v: v in ("cos", "step"), "cos or step"),
}


def config_problems(cfg: TrainConfig) -> list[str]:
    """Every setting of ``cfg`` outside its valid range, as ``--flag value: must be ...``
    (NaN fails every numeric rule)."""
    return rule_problems(cfg, _RULES)
