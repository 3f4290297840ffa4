"""Training: configuration, learning-rate schedule, EMA, checkpoints, the epoch loop.

``train.py`` parses arguments into a ``TrainConfig`` and calls ``train(cfg)``. Every default
lives in ``TrainConfig`` with a one-line comment (SPEC §8: the reference implementation's).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import datetime
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from data.augment import AugmentConfig
from data.dataset import EpochSampler, MosaicMixup, VOCDetection, collate
from data.voc import (
    Annotation,
    LoadResult,
    class_counts,
    discover_classes,
    load_annotation_lines,
    load_voc,
    parse_sets,
)
from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK, YoloBody
from utils.checkpoint import ModelInfo, load_matching, read_checkpoint, save_checkpoint
from utils.classes import read_anchors, read_class_names
from utils.darknet import load_darknet_weights
from utils.device import select_device
from utils.evaluate import EvalConfig, EvalReport, detect_dataset, format_report, score
from utils.loss import LossConfig, YoloLoss
from utils.sources import increment_path

logger = logging.getLogger("train")

OFFICIAL_WEIGHTS = "model_data/yolov4-tiny.weights"
VOC_CLASSES = "model_data/voc_classes.txt"
BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; written to the run folder and into every checkpoint."""

    # data
    data: str = "voc"  # "voc" (data/VOCdevkit) or "demo" (generated shapes)
    voc_root: str = "data/VOCdevkit"  # folder holding VOC<year>/
    train_sets: str = "2007:trainval,2012:trainval"  # YEAR:SET pairs for training
    val_set: str = "2007:test"  # YEAR:SET pairs for evaluation
    classes: str | None = None  # classes file (default: VOC's 20, the demo's, or the XMLs')
    train_lines: str | None = None  # reference-style annotation lines instead of VOC sets
    val_lines: str | None = None  # the same for evaluation
    anchors: str | None = None  # anchors file (default: darknet's yolov4-tiny anchors)
    include_difficult: bool = False  # train on difficult objects too
    # model
    phi: str = "0"  # attention: 0-4 or none/se/cbam/eca/ca
    img_size: int = 416  # training and evaluation input side (multiple of 32)
    weights: str | None = "auto"  # darknet / ours / reference .pth; auto = COCO weights if present
    # schedule
    epochs: int = 300  # total epochs, frozen ones included
    freeze_epochs: int = 50  # first epochs with a frozen backbone (only with pretrained weights)
    batch_size: int = 16  # total over all processes, after unfreezing
    freeze_batch_size: int = 32  # total batch while the backbone is frozen
    optimizer: str = "sgd"  # sgd (nesterov), adam or adamw
    lr: float | None = None  # max lr at batch 64 (default 1e-2 sgd, 1e-3 adam/adamw)
    min_lr: float | None = None  # final lr at batch 64 (default lr * 0.01)
    lr_schedule: str = "cos"  # cos (warmup + cosine + hold) or step
    warmup_epochs: float | None = None  # quadratic warmup length; None: min(max(0.05E, 1), 3)
    weight_decay: float | None = None  # on conv/linear weights only (default 5e-4 sgd, 0 adam)
    momentum: float = 0.937  # SGD momentum / Adam beta1
    # augmentation
    mosaic: float = 0.5  # mosaic probability
    mixup: float = 0.5  # mixup probability (of a mosaic)
    strong_aug_ratio: float = 0.7  # mosaic and mixup stop after this fraction of the epochs
    # loss
    label_smoothing: float = 0.0  # class targets y * (1 - eps) + eps / C
    focal: bool = False  # focal loss for objectness
    ignore_thresh: float = 0.5  # negatives overlapping a GT more than this are ignored
    # machinery
    ema: bool = True  # exponential moving average of weights (evaluated and saved)
    amp: bool = False  # mixed precision (CUDA only)
    grad_clip: float = 10.0  # max gradient norm
    max_nonfinite: int = 10  # stop after this many consecutive non-finite losses
    workers: int = 2  # data-loading processes per training process
    seed: int = 0  # model init, shuffling and augmentation
    deterministic: bool = False  # deterministic algorithms (exact resume)
    sync_bn: bool = False  # SyncBatchNorm under torchrun
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    # evaluation and output
    eval_period: int = 5  # evaluate every N epochs (and after the last); 0 = only the last
    eval_conf: float = 0.001  # score threshold for mAP
    eval_nms: float = 0.5  # NMS IoU for mAP
    patience: int = 0  # stop after N evaluations without a better mAP (0 = never)
    save_period: int = 0  # also keep epoch_N.pth every N epochs (0 = never)
    resume: str | None = None  # last.pth to continue from
    name: str = "exp"  # run folder logs/<name> (incremented when it exists)
    log_dir: str = "logs"  # parent of run folders
    max_iters: int = 0  # stop each epoch after N iterations (0 = all; for smoke tests)
    stop_at_epoch: int = 0  # stop (resumably) before this epoch; the schedule still spans all

    def __post_init__(self) -> None:
        if self.img_size <= 0 or self.img_size % 32:
            raise ValueError(f"image size {self.img_size} is not a positive multiple of 32")


# --------------------------------------------------------------------------- schedule


def fitted_lrs(cfg: TrainConfig, batch_size: int) -> tuple[float, float]:
    """Max and min lr scaled by batch / 64 and clamped as SPEC §8 says."""
    adam = cfg.optimizer in ("adam", "adamw")
    lr = cfg.lr if cfg.lr is not None else (1e-3 if adam else 1e-2)
    min_lr = cfg.min_lr if cfg.min_lr is not None else lr * 0.01
    lo, hi = (3e-4, 1e-3) if adam else (5e-4, 5e-2)
    fit = min(max(batch_size / 64 * lr, lo), hi)
    fit_min = min(max(batch_size / 64 * min_lr, lo * 1e-2), hi * 1e-2)
    return fit, fit_min


def lr_at(cfg: TrainConfig, progress: float, lr: float, min_lr: float) -> float:
    """lr at ``progress`` epochs (fractional) into the run.

    cos: quadratic warmup from 0.1 * lr, cosine down to ``min_lr``, then ``min_lr`` held for
    the last min(max(0.05 E, 1), 15) epochs. step: ten equal steps from lr down to min_lr.
    """
    total = cfg.epochs
    if cfg.lr_schedule == "step":
        steps = 10
        decay = (min_lr / lr) ** (1 / (steps - 1))
        return lr * decay ** int(progress // max(total / steps, 1e-9))
    warmup = cfg.warmup_epochs if cfg.warmup_epochs is not None else min(max(0.05 * total, 1), 3)
    hold = min(max(0.05 * total, 1), 15)
    start = max(0.1 * lr, 1e-6)
    if warmup > 0 and progress <= warmup:
        return (lr - start) * (progress / warmup) ** 2 + start
    if progress >= total - hold:
        return min_lr
    span = max(total - warmup - hold, 1e-9)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (progress - warmup) / span))


# --------------------------------------------------------------------------- pieces


class ModelEMA:
    """Exponential moving average of weights and buffers: decay 0.9999 * (1 - exp(-n/2000))."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0) -> None:
        self.ema = copy.deepcopy(_unwrap(model)).eval()
        self.updates = 0
        self.decay, self.tau = decay, tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        ema_float, own_float, ema_other, own_other = _tensor_pairs(self.ema, _unwrap(model))
        # ema = d * ema + (1 - d) * own as two multi-tensor ops instead of a Python loop over
        # ~150 tensors: 3.2 -> 2.7 ms per step on a 2-core CPU (phi 2). The pairs are not
        # cached: moving a module replaces its buffers, and a stale pair would fail silently.
        torch._foreach_mul_(ema_float, d)
        torch._foreach_add_(ema_float, own_float, alpha=1 - d)
        for e, o in zip(ema_other, own_other):  # integer buffers (BN's num_batches_tracked)
            e.copy_(o)


def _tensor_pairs(ema: nn.Module, own: nn.Module) -> tuple[list, list, list, list]:
    """Matching state tensors of two copies of one architecture: floating ones, then others."""
    own_state = own.state_dict(keep_vars=True)
    ema_float, own_float, ema_other, own_other = [], [], [], []
    for k, v in ema.state_dict(keep_vars=True).items():
        o = own_state[k].detach()
        if v.dtype.is_floating_point:
            ema_float.append(v.detach())
            own_float.append(o)
        else:
            ema_other.append(v.detach())
            own_other.append(o)
    return ema_float, own_float, ema_other, own_other


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only; batch-norm parameters and biases get none."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "weight" and p.ndim > 1:
                decay.append(p)
            else:
                no_decay.append(p)
    adam = cfg.optimizer in ("adam", "adamw")
    wd = cfg.weight_decay if cfg.weight_decay is not None else (0.0 if adam else 5e-4)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum, nesterov=True)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=0.0, betas=(cfg.momentum, 0.999))


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freezes (or unfreezes) backbone parameters; frozen batch-norm layers stay in eval mode
    (see ``keep_frozen_bn_eval``, called after every ``model.train()``)."""
    for p in _unwrap(model).backbone.parameters():
        p.requires_grad_(not frozen)


def keep_frozen_bn_eval(model: nn.Module, frozen: bool) -> None:
    if frozen:
        for m in _unwrap(model).backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # SyncBatchNorm included
                m.eval()


class SeededShuffle(Sampler):
    """A permutation that depends only on (seed, epoch): resumable without saved RNG state."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Reads torchrun's environment; NCCL on CUDA, gloo on CPU."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return Dist(), select_device(device_name)
    d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    device = select_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    # rank 0 evaluates while the others wait at the next collective: allow long evaluations
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2)
    )
    return d, device


# --------------------------------------------------------------------------- data


@dataclass
class DataSetup:
    class_names: list[str]
    train: list[Annotation]
    val: list[Annotation]
    val_name: str
    issues: list = field(default_factory=list)


def resolve_data(cfg: TrainConfig) -> TrainConfig:
    """Fills in the demo's paths for ``--data demo`` (generating it on first use)."""
    if cfg.data != "demo":
        return cfg
    from data.demo import DEMO_CLASSES, DEMO_ROOT, DEMO_VOC_ROOT, demo_is_current, generate_demo

    if int(os.environ.get("RANK", "0")) == 0 and not demo_is_current(DEMO_ROOT):
        generate_demo(DEMO_ROOT)
    if dist.is_initialized():
        dist.barrier()  # the other ranks wait for rank 0's files
    return replace(
        cfg,
        voc_root=str(DEMO_VOC_ROOT),
        train_sets="2007:trainval",
        val_set="2007:test",
        classes=cfg.classes or str(DEMO_CLASSES),
    )


MISSING_VOC = """{root}: no Pascal VOC here.
  Get it (about 2 GB):   python -m data.download_voc --dest data
  Or train on the generated demo set instead:   python train.py --data demo
  Or point --voc-root at an existing VOCdevkit folder."""


def resolve_class_names(cfg: TrainConfig) -> list[str]:
    """The classes file if given; else VOC's 20 when the XMLs use only VOC names, else the
    names found in the XMLs (sorted, printed so the user can save them as a classes file)."""
    if cfg.classes:
        return read_class_names(cfg.classes)
    voc = read_class_names(VOC_CLASSES)
    if cfg.train_lines:
        return voc
    found = discover_classes(cfg.voc_root, parse_sets(cfg.train_sets))
    if set(found) <= set(voc):
        return voc
    logger.info(
        "no --classes: using the %d class names found in the XMLs: %s", len(found), ", ".join(found)
    )
    return found


def load_data(cfg: TrainConfig) -> DataSetup:
    if not cfg.train_lines and not Path(cfg.voc_root).is_dir():
        raise FileNotFoundError(MISSING_VOC.format(root=cfg.voc_root))
    names = resolve_class_names(cfg)
    if cfg.train_lines:
        train = load_annotation_lines(cfg.train_lines, len(names))
        val = load_annotation_lines(cfg.val_lines, len(names)) if cfg.val_lines else LoadResult()
        return DataSetup(
            names, train.annotations, val.annotations, str(cfg.val_lines), train.issues + val.issues
        )
    train = load_voc(cfg.voc_root, parse_sets(cfg.train_sets), names)
    val = load_voc(cfg.voc_root, parse_sets(cfg.val_set), names)
    if not train.annotations:
        raise ValueError(f"no training images in {cfg.voc_root} {cfg.train_sets}")
    return DataSetup(
        names,
        train.annotations,
        val.annotations,
        f"{cfg.voc_root} {cfg.val_set}",
        train.issues + val.issues,
    )


# --------------------------------------------------------------------------- weights


def load_initial_weights(model: YoloBody, cfg: TrainConfig) -> bool:
    """Loads ``cfg.weights`` by name and shape and logs what did and did not load.

    Returns True when pretrained weights were loaded (which enables backbone freezing).
    """
    path = cfg.weights
    if path == "auto":
        path = OFFICIAL_WEIGHTS if Path(OFFICIAL_WEIGHTS).is_file() else None
        if path is None:
            logger.info(
                "no pretrained weights (run `make weights` for the COCO ones): from scratch"
            )
            return False
    if not path or path.lower() == "none":
        return False
    if path.endswith(".weights"):
        report = load_darknet_weights(model, path)
        logger.info(report.summary())
        return True
    state, info = read_checkpoint(path)
    report = load_matching(model, state)
    logger.info("%s (%s): %s", path, info.describe(), report.summary())
    for key, why in report.mismatched.items():
        logger.info("  not loaded %s: %s", key, why)
    missing = sorted({k.rsplit(".", 2)[0] for k in report.missing})
    if missing:
        logger.info("  kept initialised: %s", ", ".join(missing))
    return True


# --------------------------------------------------------------------------- run folder


class RunLog:
    """Run folder: config, results.csv, results.png, train.log, pictures, checkpoints."""

    def __init__(self, cfg: TrainConfig, resume_dir: Path | None) -> None:
        self.dir = resume_dir or increment_path(Path(cfg.log_dir) / cfg.name)
        (self.dir / "weights").mkdir(parents=True, exist_ok=True)
        self.csv = self.dir / "results.csv"
        handler = logging.FileHandler(self.dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        self.handler = handler
        (self.dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    def row(self, values: dict) -> None:
        new = not self.csv.exists()
        with open(self.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(values))
            if new:
                writer.writeheader()
            writer.writerow(values)
        self.plot()

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with open(self.csv) as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return
        epochs = [int(r["epoch"]) for r in rows]
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
        for ax, key in zip(axes, ["loss_box", "loss_obj", "loss_cls"]):
            ax.plot(epochs, [float(r[key]) for r in rows], marker=".")
            ax.set_title(key)
            ax.set_xlabel("epoch")
        evaluated = [r for r in rows if r["map50_voc12"] != ""]
        for key, label in (("map50_voc12", "mAP50 (VOC12 area)"), ("map50_voc07", "mAP50 (VOC07)")):
            axes[3].plot(
                [int(r["epoch"]) for r in evaluated],
                [float(r[key]) for r in evaluated],
                marker="o",
                label=label,
            )
        axes[3].set_title("mAP@0.5")
        axes[3].legend()
        fig.tight_layout()
        fig.savefig(self.dir / "results.png", dpi=90)
        plt.close(fig)

    def close(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    run_dir: Path
    best_map: float
    last_epoch: int
    history: list[dict]
    final_report: EvalReport | None
    is_main: bool = True  # False on the other ranks of a torchrun job


def _progress_header() -> str:
    return (
        f"{'Epoch':>9}{'mem':>8}{'box_loss':>10}{'obj_loss':>10}{'cls_loss':>10}"
        f"{'Instances':>10}{'Size':>6}"
    )


def train(cfg: TrainConfig) -> TrainResult:
    """Runs a whole training; returns where it went and the best mAP@0.5 (VOC12 area)."""
    d, device = init_distributed(cfg.device)
    try:
        return _train(cfg, d, device)
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, d: Dist, device: torch.device) -> TrainResult:
    resume_state = None
    if cfg.resume:
        resume_state = torch.load(cfg.resume, map_location="cpu", weights_only=True)
        if "train_state" not in resume_state:
            raise ValueError(f"{cfg.resume}: no training state in it (not a last.pth?)")
        saved = TrainConfig(**resume_state["config"])
        # the run continues as configured; only where and how fast it runs may change
        cfg = replace(
            saved,
            resume=cfg.resume,
            device=cfg.device,
            workers=cfg.workers,
            stop_at_epoch=cfg.stop_at_epoch,
        )
    cfg = resolve_data(cfg)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(cfg.seed)

    run = RunLog(cfg, Path(cfg.resume).parent.parent if cfg.resume else None) if d.main else None
    if d.main:
        logger.info("run folder %s; config %s", run.dir, json.dumps(asdict(cfg)))
    data = load_data(cfg)
    for issue in data.issues:
        logger.warning("input skipped or repaired: %s", issue)
    anchors = read_anchors(cfg.anchors) if cfg.anchors else list(DEFAULT_ANCHORS)
    info = ModelInfo(
        0,
        "none",
        len(data.class_names),
        data.class_names,
        anchors,
        list(DEFAULT_ANCHORS_MASK),
        cfg.img_size,
    )

    model = YoloBody(len(data.class_names), cfg.phi)
    info.phi, info.phi_name = model.phi, model.phi_name
    if resume_state is None:
        freeze_epochs = cfg.freeze_epochs if load_initial_weights(model, cfg) else 0
    else:  # as the interrupted run had it (0 when it started from scratch)
        freeze_epochs = resume_state["train_state"]["freeze_epochs"]
    # NHWC on CPU: oneDNN runs the convolutions, their backward passes and the max-pools
    # without layout conversions: a 416 / batch-8 step went from 10.7 to 13.8 images/s on a
    # 2-core CPU (python -m utils.benchmark_train). CUDA keeps NCHW (not measured here).
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    if d.world > 1 and cfg.sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif d.main:
            logger.warning("--sync-bn ignored: SyncBatchNorm needs CUDA (this run is on CPU)")
    ema = ModelEMA(model) if cfg.ema else None
    criterion = YoloLoss(
        len(data.class_names),
        anchors,
        DEFAULT_ANCHORS_MASK,
        cfg.img_size,
        LossConfig(
            label_smoothing=cfg.label_smoothing, focal=cfg.focal, ignore_thresh=cfg.ignore_thresh
        ),
    ).to(device)
    optimizer = build_optimizer(model, cfg)
    amp = cfg.amp and device.type == "cuda"
    if cfg.amp and not amp and d.main:
        logger.info("--amp ignored: mixed precision is for CUDA (this run is on %s)", device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start_epoch, best_map, stale, history = 0, -1.0, 0, []
    if resume_state is not None:
        state = resume_state["train_state"]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when the run started without AMP
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.ema.load_state_dict(resume_state["model"])
            ema.updates = state["ema_updates"]
        start_epoch, best_map, stale = state["epoch"] + 1, state["best_map"], state["stale"]
        history = state.get("history", [])
        if d.main:
            logger.info("resumed from %s at epoch %d", cfg.resume, start_epoch)

    def wrap(frozen: bool) -> nn.Module:
        """DDP registers the parameters that need gradients when it is built: freeze first,
        and build it again when the backbone thaws."""
        set_backbone_frozen(model, frozen)
        if d.world == 1:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    aug = AugmentConfig(mosaic_p=cfg.mosaic, mixup_p=cfg.mixup)
    base = VOCDetection(
        data.train,
        cfg.img_size,
        train=True,
        include_difficult=cfg.include_difficult,
        cfg=aug,
        seed=cfg.seed,
    )
    close_epoch = round(cfg.epochs * cfg.strong_aug_ratio)
    train_set = MosaicMixup(base, close_epoch=close_epoch)
    eval_cfg = EvalConfig(
        input_size=cfg.img_size,
        conf_thresh=cfg.eval_conf,
        nms_thresh=cfg.eval_nms,
        workers=min(cfg.workers, 2),
        coco=False,
    )

    def make_loader(batch_total: int) -> tuple[DataLoader, EpochSampler]:
        per_process = max(1, batch_total // d.world)
        if d.world > 1:
            inner = torch.utils.data.DistributedSampler(
                train_set, d.world, d.rank, shuffle=True, seed=cfg.seed, drop_last=True
            )
        else:
            inner = SeededShuffle(len(train_set), cfg.seed)
        sampler = EpochSampler(inner)
        loader = DataLoader(
            train_set,
            batch_size=per_process,
            sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
            persistent_workers=cfg.workers > 0,
        )
        return loader, sampler

    loader, sampler, loader_batch, train_model, wrapped_frozen = None, None, None, None, None
    completed = start_epoch - 1  # last epoch whose training finished
    nonfinite = 0
    epoch = start_epoch
    last_report = None
    if d.main:
        print(
            f"training {model.phi_name} on {len(base)} images ({cfg.train_sets}), "
            f"{len(data.val)} for evaluation; classes: {', '.join(data.class_names)}; "
            f"device {device}; run folder {run.dir}"
        )
        counts = class_counts(data.train, data.class_names)
        logger.info("training instances per class: %s", counts)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if cfg.stop_at_epoch and epoch >= cfg.stop_at_epoch:
                if d.main:
                    logger.info(
                        "stopping before epoch %d (--stop-at-epoch); resume with --resume %s",
                        epoch + 1,
                        run.dir / "weights" / "last.pth",
                    )
                break
            frozen = epoch < freeze_epochs
            batch_total = cfg.freeze_batch_size if frozen else cfg.batch_size
            if loader_batch != batch_total:  # unfreezing rebuilds what depends on batch size
                loader, sampler = make_loader(batch_total)
                loader_batch = batch_total
            if wrapped_frozen != frozen:
                train_model, wrapped_frozen = wrap(frozen), frozen
            lr_max, lr_min = fitted_lrs(cfg, batch_total)
            lr = lr_at(cfg, epoch, lr_max, lr_min)
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            train_model.train()
            keep_frozen_bn_eval(model, frozen)
            sums = {"loss_box": 0.0, "loss_obj": 0.0, "loss_cls": 0.0, "loss": 0.0}  # "loss" last
            steps = 0
            total_iters = len(loader) if not cfg.max_iters else min(cfg.max_iters, len(loader))
            bar = tqdm(
                total=total_iters,
                disable=not d.main,
                bar_format=BAR_FORMAT,
            )
            if d.main and epoch == start_epoch:
                tqdm.write(_progress_header())
            t0 = time.time()
            for i, (images, targets) in enumerate(loader):
                if i >= total_iters:
                    break
                if d.main and epoch == start_epoch and i == 0 and run is not None:
                    _save_batch_picture(
                        images, targets, data.class_names, run.dir / "train_batch0.jpg"
                    )
                lr = lr_at(cfg, epoch + i / total_iters, lr_max, lr_min)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = images.to(device, non_blocking=True)
                images = images.contiguous(memory_format=memory_format).float().div_(255)
                targets = targets.to(device, non_blocking=True)
                with torch.autocast(device.type, enabled=amp):
                    outputs = train_model(images)
                losses = criterion([o.float() for o in outputs], targets)
                loss = losses["loss"]
                # one transfer for the bar and the guard; under DDP every rank sees the mean,
                # so all of them skip a non-finite step together
                stacked = torch.stack([losses[k].detach() for k in sums])
                if d.world > 1:
                    dist.all_reduce(stacked)
                    stacked /= d.world
                values = stacked.tolist()
                if not math.isfinite(values[-1]):
                    nonfinite += 1
                    logger.warning(
                        "non-finite loss at epoch %d iteration %d: step skipped", epoch, i
                    )
                    optimizer.zero_grad(set_to_none=True)
                    if nonfinite >= cfg.max_nonfinite:
                        raise RuntimeError(f"{nonfinite} non-finite losses in a row: stopping")
                    continue
                nonfinite = 0
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update(model)
                steps += 1
                for k, v in zip(sums, values):
                    sums[k] += v
                if d.main:
                    mem = torch.cuda.memory_reserved(device) / 1e9 if device.type == "cuda" else 0.0
                    bar.set_description_str(
                        f"{epoch + 1:>4}/{cfg.epochs:<4}{mem:>7.2f}G"
                        f"{sums['loss_box'] / steps:>10.4f}"
                        f"{sums['loss_obj'] / steps:>10.4f}{sums['loss_cls'] / steps:>10.4f}"
                        f"{len(targets):>10}{cfg.img_size:>6}"
                    )
                    bar.update(1)
            bar.close()
            completed = epoch
            means = {k: v / max(steps, 1) for k, v in sums.items()}
            # evaluation (rank 0), best by mAP@0.5, never by loss
            last = epoch == cfg.epochs - 1
            do_eval = last or (cfg.eval_period and (epoch + 1) % cfg.eval_period == 0)
            record = {
                "epoch": epoch,
                **{k: round(v, 5) for k, v in means.items()},
                "lr": lr,  # the last one used
                "map50_voc07": "",
                "map50_voc12": "",
                "time_s": round(time.time() - t0, 1),
            }
            improved = False
            if d.main and do_eval and data.val:
                eval_model = ema.ema if ema is not None else model
                detected = detect_dataset(
                    eval_model, data.val, anchors, DEFAULT_ANCHORS_MASK, eval_cfg, device
                )
                last_report = score(detected, data.class_names, data.val_name, coco=False)
                tqdm.write(format_report(last_report))
                record["map50_voc07"] = round(last_report.voc07_map50, 5)
                record["map50_voc12"] = round(last_report.voc12_map50, 5)
                improved = last_report.voc12_map50 > best_map
                if improved:
                    best_map, stale = last_report.voc12_map50, 0
                else:
                    stale += 1
                _save_val_pictures(
                    eval_model, info, data.val[:4], run.dir / "val_predictions.jpg", device
                )
            history.append(record)
            if d.main:
                run.row(record)
                state = _train_state(model, optimizer, scaler, ema, epoch, best_map, stale, history)
                state["freeze_epochs"] = freeze_epochs
                weights_dir = run.dir / "weights"
                _save(weights_dir / "last.pth", model, ema, info, cfg, state)
                if improved:
                    _save(
                        weights_dir / "best.pth",
                        model,
                        ema,
                        info,
                        cfg,
                        None,
                        epoch=epoch,
                        map50=best_map,
                    )
                if cfg.save_period and (epoch + 1) % cfg.save_period == 0:
                    path = weights_dir / f"epoch_{epoch + 1}.pth"
                    _save(path, model, ema, info, cfg, None, epoch=epoch)
            stop = bool(cfg.patience and stale >= cfg.patience)
            if d.world > 1:  # rank 0 evaluated and decided: everyone follows
                flag = torch.tensor([float(stop)], device=device)
                dist.broadcast(flag, 0)
                stop = bool(flag.item())
            if stop:
                if d.main:
                    logger.info("no better mAP for %d evaluations: stopping early", stale)
                break
    except KeyboardInterrupt:
        if d.main:
            state = _train_state(model, optimizer, scaler, ema, completed, best_map, stale, history)
            state["freeze_epochs"] = freeze_epochs
            _save(run.dir / "weights" / "last.pth", model, ema, info, cfg, state)
            print(
                f"\ninterrupted: saved {run.dir / 'weights' / 'last.pth'} "
                f"(resume restarts epoch {epoch + 1})",
                file=sys.stderr,
            )
        raise
    finally:
        if run is not None:
            run.close()
    return TrainResult(
        run.dir if run else Path(), best_map, completed, history, last_report, d.main
    )


def _train_state(model, optimizer, scaler, ema, epoch, best_map, stale, history) -> dict:
    return {
        "freeze_epochs": 0,  # set by the caller
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "ema": ema is not None,  # the EMA weights are the checkpoint's "model"
        "ema_updates": ema.updates if ema else 0,
        "epoch": epoch,
        "best_map": best_map,
        "stale": stale,
        "history": history,
    }


def _save(path: Path, model, ema, info: ModelInfo, cfg: TrainConfig, train_state, **extra) -> None:
    """Atomic checkpoint: ``model`` holds the EMA weights (what inference and eval use)."""
    weights = ema.ema if ema is not None else _unwrap(model)
    payload = {"config": asdict(cfg), **extra}
    if train_state is not None:
        payload["train_state"] = train_state
    save_checkpoint(path, weights, info, **payload)


def _save_batch_picture(images, targets, class_names, path: Path) -> None:
    import cv2

    from data.preview import draw_batch

    cv2.imwrite(str(path), draw_batch(images[:16], targets[targets[:, 0] < 16], class_names))


def _save_val_pictures(model, info: ModelInfo, annotations, path: Path, device) -> None:
    """A few validation images with the current (EMA) model's predictions."""
    import cv2

    from utils.predictor import Detector, InferenceConfig
    from utils.sources import ImageReadError, read_image
    from utils.visualize import draw_detections

    detector = Detector(
        model,
        info,
        info.class_names,
        InferenceConfig(input_size=info.input_size, device=str(device)),
    )
    tiles = []
    for ann in annotations:
        with contextlib.suppress(ImageReadError):
            image = read_image(ann.image_path)
            drawn = draw_detections(image, detector(image))
            tiles.append(cv2.resize(drawn, (320, round(320 * image.shape[0] / image.shape[1]))))
    if tiles:
        height = max(t.shape[0] for t in tiles)
        row = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
        cv2.imwrite(str(path), np.hstack(row))
    model.float()
