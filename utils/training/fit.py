"""``fit(cfg)``: a whole training run, from a ``TrainConfig`` to a run folder.

``start_run`` builds everything (processes, data, model, ``TrainStep``, run folder) and restores
it on ``--resume``; ``fit`` runs the epochs; ``run_epoch`` is one epoch: train, evaluate on
rank 0, write the results row and the checkpoints, decide about early stopping.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.augment import AugmentConfig
from data.dataset import EpochSampler, MosaicMixup, SeededShuffle, VOCDetection, collate
from data.voc import class_counts, summarize_issues
from nets.attention import parse_attention_args
from nets.checkpoint import ModelInfo
from nets.registry import check_attention_args, load_attention_plugins
from nets.yolo import YoloBody
from utils.errors import InputError
from utils.evaluation.evaluate import EvalConfig, EvalReport, format_report
from utils.paths import check_apart, require_component, write_text_atomic
from utils.precision import Precision, check_compiler, resolve_precision
from utils.runlock import FolderLock, end_with_parent
from utils.training.adapt import FittedRun, fit_to_data
from utils.training.config import TrainConfig
from utils.training.loop import (
    EpochProgress,
    NonFiniteLossError,
    TrainStep,
    evaluate,
    train_one_epoch,
)
from utils.training.loss import LossConfig, YoloLoss
from utils.training.optim import (
    ModelEMA,
    build_optimizer,
    fitted_lrs,
    keep_frozen_bn_eval,
    lr_at,
    set_backbone_frozen,
)
from utils.training.runlog import RunLog, save_batch_picture, save_val_pictures
from utils.training.setup import (
    DataSetup,
    Dist,
    init_distributed,
    load_data,
    read_resume,
    require_objects,
    resolve_data,
    run_inputs,
    seed_run,
)
from utils.training.state import TrainState, save_training_checkpoint

logger = logging.getLogger("train")


@dataclass
class TrainResult:
    run_dir: Path
    best_map: float
    last_epoch: int
    history: list[dict]
    final_report: EvalReport | None
    is_main: bool = True  # False on the other ranks of a torchrun job


@dataclass
class Run:
    """Everything one training run holds; built by ``start_run``."""

    cfg: TrainConfig
    dist: Dist
    log: RunLog | None  # None on the other ranks: only rank 0 writes
    data: DataSetup
    info: ModelInfo
    step: TrainStep
    state: TrainState
    train_set: MosaicMixup
    start_epoch: int
    loader: DataLoader | None = None
    loader_batch: int = 0
    wrapped_frozen: bool | None = None
    last_report: EvalReport | None = None
    saved_epoch: int = -1  # the epoch whose end last.pth holds

    @property
    def last_path(self) -> Path:
        return self.log.dir / "weights" / "last.pth"

    def loader_for(self, batch_total: int) -> DataLoader:
        """The training loader at this total batch (rebuilt when unfreezing changes it)."""
        if self.loader_batch != batch_total:
            self.loader, self.loader_batch = make_loader(self, batch_total), batch_total
        return self.loader

    def set_frozen(self, frozen: bool) -> None:
        """DDP registers the parameters that need gradients when it is built: freeze first,
        and build it again when the backbone thaws."""
        if self.wrapped_frozen == frozen:
            return
        model, device = self.step.model, self.step.device
        set_backbone_frozen(model, frozen)
        if self.dist.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.step.set_forward(nn.parallel.DistributedDataParallel(model, device_ids=ids))
        self.wrapped_frozen = frozen


def fit(
    cfg: TrainConfig, given: Collection[str] | None = None, *, issues_to_console: bool = True
) -> TrainResult:
    """Runs a whole training; returns where it went and the best mAP@0.5 (VOC2010+ area).

    Args:
        cfg: the run's settings.
        given: with ``cfg.resume``, the fields set on the command line (checked against the
            checkpoint's settings); None takes every non-default field as set.
        issues_to_console: False logs the summary of the data's skipped or repaired files to
            train.log only (a study says it once for all its runs); every issue goes to
            train.log, one line each, either way.

    Raises:
        ValueError: ``cfg.name`` is not one folder name (a new run only: a resumed run keeps
            its folder), or another bad setting or input.
        utils.runlock.FolderLockedError: another live process writes the run folder that
            ``cfg.resume`` continues.
        NonFiniteLossError: the loss stopped being finite (the message names the epoch, the
            step and the last checkpoint saved).
    """
    if not cfg.resume:  # the run folder is <log_dir>/<name>: it must stay in log_dir
        require_component(cfg.name, "--name")
    d, device = init_distributed(cfg.device)
    try:
        run = start_run(cfg, d, device, given, issues_to_console=issues_to_console)
        epoch = run.start_epoch
        try:
            for epoch in range(run.start_epoch, run.cfg.epochs):
                if run.cfg.stop_at_epoch and epoch >= run.cfg.stop_at_epoch:
                    if d.main:
                        logger.info(
                            "stopping before epoch %d (--stop-at-epoch); resume with --resume %s",
                            epoch + 1,
                            run.last_path,
                        )
                    break
                if not run_epoch(run, epoch):
                    break
        except NonFiniteLossError as err:
            raise NonFiniteLossError(
                f"epoch {epoch + 1}/{run.cfg.epochs}, {err}; {last_good(run)}"
            ) from None
        except KeyboardInterrupt:
            # last.pth already holds the end of the last finished epoch: a resume from it
            # equals a run that was never interrupted (mid-epoch weights are not saved)
            if d.main and run.saved_epoch >= 0:
                print(
                    f"\ninterrupted in epoch {epoch + 1}: {run.last_path} holds the end of epoch "
                    f"{run.saved_epoch + 1}; --resume {run.last_path} continues from there",
                    file=sys.stderr,
                )
            elif d.main:
                print(
                    f"\ninterrupted in epoch {epoch + 1}: no epoch finished, nothing saved",
                    file=sys.stderr,
                )
            raise
        finally:
            if run.log is not None:
                run.log.close(run.state.history)  # TensorBoard's hparams, whatever ended the run
        run_dir = run.log.dir if run.log else Path()
        s = run.state
        return TrainResult(run_dir, s.best_map, s.epoch, s.history, run.last_report, d.main)
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def last_good(run: Run) -> str:
    """Where the run's last finished epoch is saved, for a message about a failed epoch."""
    if not run.dist.main:  # only rank 0 saves, and its message says where
        return "the main process names the last checkpoint"
    if run.saved_epoch < 0:
        return "no epoch finished, so no checkpoint was saved"
    return (
        f"the last good checkpoint is {run.last_path} (end of epoch {run.saved_epoch + 1}); "
        "check the data, the attention block and the lr before resuming from it"
    )


def start_run(
    cfg: TrainConfig,
    d: Dist,
    device: torch.device,
    given: Collection[str] | None = None,
    *,
    issues_to_console: bool = True,
) -> Run:
    """Builds a run from ``cfg`` (or resumes the one ``cfg.resume`` names).

    A resumed run's folder is locked before anything else is read (rank 0 only: it is the one
    that writes), so a second process continuing the same run stops here with
    ``FolderLockedError``; a new run's folder is claimed and locked by ``RunLog``.
    """
    lock = None
    if cfg.resume and d.main and Path(cfg.resume).is_file():
        lock = FolderLock(Path(cfg.resume).parent.parent, "run").acquire()
    try:
        return _start_run(cfg, d, device, given, lock, issues_to_console)
    except BaseException:
        if lock is not None:
            lock.release()  # released again by a RunLog that took it over: harmless
        raise


def _start_run(
    cfg: TrainConfig,
    d: Dist,
    device: torch.device,
    given: Collection[str] | None,
    lock: FolderLock | None,
    issues_to_console: bool,
) -> Run:
    cfg, checkpoint = read_resume(cfg, given)
    load_attention_plugins(cfg.attention_plugin)
    check_attention_args(cfg.phi, parse_attention_args(cfg.attention_args))  # before the data
    cfg = resolve_data(cfg)
    if checkpoint is None:  # a new run's folder must not land in its data
        check_apart(Path(cfg.log_dir) / cfg.name, run_inputs(cfg), flag="--log-dir/--name")
    seed_run(cfg)
    data = load_data(cfg)
    require_objects(data, cfg)
    model = YoloBody(
        len(data.class_names),
        cfg.phi,
        attention_at=cfg.attention_at,
        attention_args=cfg.attention_args,
    )
    state = TrainState()
    fitted = fit_to_data(cfg, model, data, checkpoint, state, d.world)
    cfg, info = fitted.cfg, fitted.info
    precision = resolve_precision(cfg.amp, device)
    step = build_step(model, cfg, info, d, device, precision)
    if checkpoint is not None:
        step.load_state_dict(checkpoint["train_state"], ema_weights=checkpoint["model"])
    base = VOCDetection(
        data.train,
        cfg.img_size,
        train=True,
        include_difficult=cfg.include_difficult,
        cfg=AugmentConfig(mosaic_p=cfg.mosaic, mixup_p=cfg.mixup),
        seed=cfg.seed,
    )
    train_set = MosaicMixup(base, close_epoch=round(cfg.epochs * cfg.strong_aug_ratio))
    start = state.epoch + 1
    if not d.main:
        return Run(cfg, d, None, data, info, step, state, train_set, start, saved_epoch=start - 1)
    # the run folder only once every input has been read: a failed start leaves nothing
    resume_dir = Path(cfg.resume).parent.parent if cfg.resume else None
    log = RunLog(cfg, resume_dir, lock)
    try:
        announce_issues(data, log, issues_to_console)
        announce_run(cfg, data, checkpoint, state, fitted, precision, log)
        print(
            f"training {model.phi_name} on {len(base)} images "
            f"({data.train_name or cfg.train_sets}), "
            f"{len(data.val)} for evaluation; classes: {', '.join(data.class_names)}; "
            f"device {device}; run folder {log.dir}"
        )
    except BaseException:
        log.close()
        raise
    return Run(cfg, d, log, data, info, step, state, train_set, start, saved_epoch=start - 1)


def announce_issues(data: DataSetup, log: RunLog, to_console: bool = True) -> None:
    """The files the data readers skipped or repaired: one summary line per kind of issue
    (on the console unless ``to_console`` is False), and every issue in train.log."""
    if not data.issues:
        return
    for line in summarize_issues(data.issues):
        if to_console:
            logger.warning("input skipped or repaired: %s", line)
        else:
            log.to_file(logging.WARNING, "input skipped or repaired: %s", line)
    if to_console:
        logger.info("each of the %d is listed in %s", len(data.issues), log.dir / "train.log")
    for issue in data.issues:
        log.to_file(logging.WARNING, "input skipped or repaired: %s", issue)


def announce_run(
    cfg: TrainConfig,
    data: DataSetup,
    checkpoint: dict | None,
    state: TrainState,
    fitted: FittedRun,
    precision: Precision,
    log: RunLog,
) -> None:
    """Logs (rank 0) what the run resumes, runs in and derived; writes anchors.txt."""
    if checkpoint is not None and state.epoch + 1 >= cfg.epochs:
        logger.info(
            "%s already finished all %d epochs: nothing to train (--epochs N to go on)",
            cfg.resume,
            cfg.epochs,
        )
    elif checkpoint is not None:
        logger.info("resumed from %s after epoch %d", cfg.resume, state.epoch + 1)
    logger.info(precision.describe())
    if precision.warning:
        logger.warning(precision.warning)
    if fitted.anchors is not None:
        logger.info(fitted.anchors.describe())
        pairs = ", ".join(f"{w:g},{h:g}" for w, h in fitted.anchors.anchors)
        write_text_atomic(log.dir / "anchors.txt", pairs + "\n")
    for warning in fitted.schedule.warnings:
        logger.warning(warning)
    lr, min_lr = fitted_lrs(cfg, cfg.batch_size)
    logger.info(fitted.schedule.describe(lr, min_lr))
    counted = "" if cfg.include_difficult else " (difficult ones counted; training skips them)"
    logger.info(
        "training instances per class%s: %s", counted, class_counts(data.train, data.class_names)
    )
    if not data.val:
        logger.warning(
            "no evaluation images (%s): no mAP is measured and no best.pth is written, "
            "only last.pth; give --val-labels, or labels with a val split",
            data.val_name,
        )


def build_step(
    model: YoloBody,
    cfg: TrainConfig,
    info: ModelInfo,
    d: Dist,
    device: torch.device,
    precision: Precision,
) -> TrainStep:
    """Model on the device (SyncBatchNorm under CUDA DDP if asked), loss, optimizer and EMA,
    the forward pass in ``precision`` (and compiled with ``--compile``)."""
    cpu = device.type == "cpu"
    model.to(device, memory_format=torch.channels_last if cpu else torch.contiguous_format)
    if d.world > 1 and cfg.sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif d.main:
            logger.warning("--sync-bn ignored: SyncBatchNorm needs CUDA (this run is on CPU)")
    if cfg.compile:
        check_compiler()
    loss_cfg = LossConfig(
        label_smoothing=cfg.label_smoothing,
        focal=cfg.focal,
        ignore_thresh=cfg.ignore_thresh,
        anchor_fallback=cfg.anchor_fallback,
    )
    criterion = YoloLoss(info.num_classes, info.geometry, cfg=loss_cfg).to(device)
    return TrainStep(
        model,
        criterion,
        build_optimizer(model, cfg),
        ema=ModelEMA(model) if cfg.ema else None,
        autocast_dtype=precision.dtype,
        compile=cfg.compile,
        grad_clip=cfg.grad_clip,
        max_nonfinite=cfg.max_nonfinite,
        world_size=d.world,
    )


def make_loader(run: Run, batch_total: int) -> DataLoader:
    """Training loader: ``batch_total`` split over the processes, a (seed, epoch) shuffle."""
    d, cfg = run.dist, run.cfg
    if d.world > 1:
        inner = torch.utils.data.DistributedSampler(
            run.train_set, d.world, d.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
    else:
        inner = SeededShuffle(len(run.train_set), cfg.seed)
    per_process = max(1, batch_total // d.world)
    images = len(run.train_set) // d.world  # per process, as drop_last splits them
    if images == 0:
        raise InputError(f"{len(run.train_set)} training images for {d.world} processes")
    if per_process > images:  # drop_last would leave the epoch without a single step
        if d.main:
            logger.warning(
                "batch %d is more than the %d training images: training with batch %d",
                batch_total,
                images * d.world,
                images * d.world,
            )
        per_process = images
    return DataLoader(
        run.train_set,
        batch_size=per_process,
        sampler=EpochSampler(inner),
        collate_fn=collate,
        num_workers=cfg.workers,
        pin_memory=run.step.device.type == "cuda",
        drop_last=True,
        persistent_workers=cfg.workers > 0,
        worker_init_fn=end_with_parent,  # no worker outlives a killed run, holding its lock
    )


def run_epoch(run: Run, epoch: int) -> bool:
    """Trains one epoch, evaluates and saves on rank 0; False when the run should stop."""
    cfg, state, main = run.cfg, run.state, run.dist.main
    frozen = epoch < state.freeze_epochs
    batch_total = cfg.freeze_batch_size if frozen else cfg.batch_size
    loader = run.loader_for(batch_total)
    run.set_frozen(frozen)
    loader.sampler.set_epoch(epoch)
    run.train_set.set_epoch(epoch)
    run.step.train_model.train()
    keep_frozen_bn_eval(run.step.model, frozen)
    lr_max, lr_min = fitted_lrs(cfg, loader.batch_size * run.dist.world)  # the batch it runs
    gpu = run.step.device.type == "cuda"
    progress = EpochProgress(epoch, cfg.epochs, cfg.img_size, gpu=gpu) if main else None
    first_epoch = main and epoch == run.start_epoch
    if first_epoch:
        tqdm.write(progress.header())

    def picture(images: torch.Tensor, targets: torch.Tensor) -> None:
        path = run.log.dir / "train_batch0.jpg"
        drawn = save_batch_picture(images, targets, run.data.class_names, path)
        run.log.log_picture("train/batch0", drawn, epoch)

    t0 = time.time()
    means, lr = train_one_epoch(
        run.step,
        loader,
        lambda done: lr_at(cfg, epoch + done, lr_max, lr_min),
        max_iters=cfg.max_iters,
        progress=progress,
        on_first_batch=picture if first_epoch else None,
    )
    record = {"epoch": epoch, **{k: round(v, 5) for k, v in means.items()}, "lr": lr}
    record |= {"map50_voc07": "", "map50_voc12": "", "time_s": round(time.time() - t0, 1)}
    last = epoch == cfg.epochs - 1
    improved = False
    if main and run.data.val and (last or (cfg.eval_period and (epoch + 1) % cfg.eval_period == 0)):
        improved = evaluate_epoch(run, record)
    state.history.append(record)
    state.epoch = epoch
    if main:
        # TensorBoard before last.pth: a resume purges the steps past the epoch it holds
        run.log.log_epoch(record)
        save_epoch_checkpoints(run, epoch, improved)
        run.saved_epoch = epoch
        run.log.write_history(state.history)  # after last.pth: the rows it holds
    return not should_stop(run)


def evaluate_epoch(run: Run, record: dict) -> bool:
    """mAP of the EMA model (rank 0) into ``record``; True when it is a new best."""
    cfg, device = run.cfg, run.step.device
    eval_cfg = EvalConfig(
        img_size=cfg.img_size,
        conf_thresh=cfg.eval_conf,
        nms_thresh=cfg.eval_nms,
        workers=min(cfg.workers, 2),
        coco=False,
    )
    model = run.step.eval_model()
    report = evaluate(model, run.data.val, run.info, eval_cfg, device, run.data.val_name)
    tqdm.write(format_report(report))
    record["map50_voc07"] = round(report.voc07_map50, 5)
    record["map50_voc12"] = round(report.voc12_map50, 5)
    run.last_report = report
    improved = run.state.record_map(report.voc12_map50)
    drawn = save_val_pictures(
        model, run.info, run.data.val[:4], run.log.dir / "val_predictions.jpg", device
    )
    run.log.log_picture("val/predictions", drawn, record["epoch"])
    return improved


def save_epoch_checkpoints(run: Run, epoch: int, improved: bool) -> None:
    """``last.pth`` every epoch, ``best.pth`` on a new best, ``epoch_N.pth`` every save period."""
    weights, cfg, step, info = run.log.dir / "weights", run.cfg, run.step, run.info
    # best.pth first: a kill between the two writes leaves last.pth recording the previous
    # best, whose best.pth is still whole (resuming redoes the epoch and the new best)
    if improved:
        save_training_checkpoint(
            weights / "best.pth", step, info, cfg, epoch=epoch, map50=run.state.best_map
        )
    save_training_checkpoint(weights / "last.pth", step, info, cfg, run.state)
    if cfg.save_period and (epoch + 1) % cfg.save_period == 0:
        save_training_checkpoint(weights / f"epoch_{epoch + 1}.pth", step, info, cfg, epoch=epoch)


def should_stop(run: Run) -> bool:
    """Early stop after ``patience`` evaluations without a better mAP; rank 0 decides (it is
    the one that evaluated) and every rank follows."""
    stop = bool(run.cfg.patience and run.state.stale >= run.cfg.patience)
    if run.dist.world > 1:
        flag = torch.tensor([float(stop)], device=run.step.device)
        dist.broadcast(flag, 0)
        stop = bool(flag.item())
    if stop and run.dist.main:
        logger.info("no better mAP for %d evaluations: stopping early", run.state.stale)
    return stop
