"""What a run needs before its first step: processes and device, data, initial weights."""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist

from data.annotation_lines import load_annotation_lines
from data.dataset import quick_check
from data.formats import LabelSource, train_val_sources
from data.label_io import remap_classes
from data.source import resolve_data_source
from data.voc import (
    Annotation,
    LoadResult,
    discover_classes,
    load_voc,
    parse_sets,
)
from nets.checkpoint import load_matching, load_torch_file, read_checkpoint
from nets.darknet import load_darknet_weights
from nets.decode import SCALE_X_Y
from nets.yolo import YoloBody
from utils.classes import read_class_names
from utils.device import select_device
from utils.errors import InputError
from utils.paths import OFFICIAL_WEIGHTS, VOC_CLASSES
from utils.training.config import TrainConfig

logger = logging.getLogger("train")


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


@dataclass
class DataSetup:
    class_names: list[str]
    train: list[Annotation]
    val: list[Annotation]
    val_name: str
    issues: list = field(default_factory=list)
    train_name: str = ""  # what the training images are, when not --train-sets


NO_CLASSES_FOR_LINES = (
    "no --classes: annotation lines hold class ids only, so they are read as VOC's 20 classes "
    "(give a classes file, one name per line, for other data)"
)


def require_objects(data: DataSetup, cfg: TrainConfig) -> None:
    """Training needs readable images with objects of its classes: a classes file that names
    none of the labels' classes would otherwise train a model that never sees a positive.

    Raises:
        ValueError: no training image file that exists and is not empty; no training object
            (difficult ones counted only with ``--include-difficult``); names the classes the
            labels use instead, when known.
    """
    what = data.train_name or f"{cfg.voc_root} {cfg.train_sets}"
    kept, missing = quick_check(data.train)
    if not kept:  # before the run folder is made: a failed start leaves nothing behind
        first = missing[0] if missing else "no images listed"
        raise InputError(
            f"{what}: none of the {len(data.train)} training images can be read ({first})"
        )
    include_difficult = cfg.include_difficult
    usable = sum(
        len(a.labels) if include_difficult else int((~a.difficult).sum()) for a in data.train
    )
    if usable:
        return
    skipped = Counter(
        m.group(2)
        for issue in data.issues
        if (m := re.search(r"class (['\"])(.+?)\1", getattr(issue, "problem", str(issue))))
    )
    message = (
        f"{what}: no training object of the {len(data.class_names)} classes "
        f"({', '.join(data.class_names[:6])}{', ...' if len(data.class_names) > 6 else ''}) "
        f"in {len(data.train)} images"
    )
    if skipped:
        other = ", ".join(repr(name) for name, _ in skipped.most_common(6))
        message += f"; the labels use other classes ({other}): give a classes file listing them"
    elif not include_difficult and any(len(a.labels) for a in data.train):
        message += "; every object is marked difficult (--include-difficult trains on them)"
    raise InputError(message)


MISSING_VOC = """{root}: no Pascal VOC here.
  Get it (about 2 GB):   python -m tools.download_voc --out data
  Or train on the generated demo set instead:   python train.py --data demo
  Or point --voc-root at an existing VOCdevkit folder."""


def resolve_class_names(cfg: TrainConfig) -> list[str]:
    """The classes file if given; else VOC's 20 when the XMLs use only VOC names, else the
    names found in the XMLs (sorted, printed so the user can save them as a classes file)."""
    if cfg.classes:
        return read_class_names(cfg.classes)
    voc = read_class_names(VOC_CLASSES)
    if cfg.train_lines:
        logger.info(NO_CLASSES_FOR_LINES)
        return voc
    found = discover_classes(cfg.voc_root, parse_sets(cfg.train_sets))
    if set(found) <= set(voc):
        return voc
    logger.info(
        "no --classes: using the %d class names found in the XMLs: %s", len(found), ", ".join(found)
    )
    return found


def label_sources(cfg: TrainConfig) -> tuple[LabelSource, LabelSource | None]:
    """The training and evaluation labels ``--train-labels``/``--val-labels`` name (see
    ``data.formats.train_val_sources``)."""
    return train_val_sources(
        cfg.train_labels,
        cfg.val_labels,
        fmt=cfg.label_format,
        train_images=cfg.train_images,
        val_images=cfg.val_images,
    )


def eval_label_source(cfg: TrainConfig) -> LabelSource | None:
    """The labels a run is evaluated on when they are not VOC image sets (None: they are).

    Raises:
        ValueError: ``--train-labels`` without an evaluation split (no ``--val-labels`` and no
            ``val`` split in it).
    """
    if cfg.train_labels:
        source = label_sources(cfg)[1]
        if source is None:
            raise InputError(f"{cfg.train_labels} has no val split: give --val-labels")
        return source
    return LabelSource(cfg.val_lines, "lines") if cfg.val_lines else None


def load_label_data(cfg: TrainConfig) -> DataSetup:
    """Training and evaluation data from ``--train-labels``/``--val-labels`` (any format).

    Class names: ``--classes``; else the training labels' own (VOC's 20 when a VOC folder uses
    only VOC names, as for ``--voc-root``; VOC's 20 for annotation lines, which have none).
    Evaluation labels are matched to them by name.
    """
    if cfg.train_lines:
        raise InputError("--train-labels and --train-lines both name training labels: give one")
    if cfg.data != "voc":
        raise InputError(f"--train-labels replaces --data {cfg.data}: leave --data out")
    train_source, val_source = label_sources(cfg)
    voc = read_class_names(VOC_CLASSES)
    names = read_class_names(cfg.classes) if cfg.classes else None
    if names is None and train_source.kind == "lines":
        logger.info(NO_CLASSES_FOR_LINES)
        names = voc
    train = train_source.load(names)
    if names is None:
        names = train.class_names
        if train_source.kind == "voc" and set(names) <= set(voc):
            names, train = voc, remap_classes(train, voc)
        else:
            logger.info(
                "no --classes: using the %d class names of %s: %s",
                len(names),
                train_source.describe(),
                ", ".join(names),
            )
    if not names:
        raise InputError(f"{train_source.describe()}: no class names found: give --classes")
    if not train.annotations:
        raise InputError(f"no training images in {train_source.describe()}")
    # evaluation ground truth as written: the per-epoch mAP is then eval.py's (no clipping)
    val = val_source.load(names, clip_boxes=False) if val_source is not None else None
    return DataSetup(
        names,
        train.annotations,
        val.annotations if val is not None else [],
        val_source.describe() if val_source is not None else "none",
        train.issues + (val.issues if val is not None else []),
        train_name=train_source.describe(),
    )


def load_data(cfg: TrainConfig) -> DataSetup:
    if cfg.train_labels:
        return load_label_data(cfg)
    if cfg.val_labels or cfg.train_images or cfg.val_images:
        raise InputError("--val-labels, --train-images and --val-images go with --train-labels")
    if not cfg.train_lines and not Path(cfg.voc_root).is_dir():
        raise FileNotFoundError(MISSING_VOC.format(root=cfg.voc_root))
    names = resolve_class_names(cfg)
    if cfg.train_lines:
        train = load_annotation_lines(cfg.train_lines, len(names))
        val = load_annotation_lines(cfg.val_lines, len(names)) if cfg.val_lines else LoadResult()
        return DataSetup(
            names,
            train.annotations,
            val.annotations,
            str(cfg.val_lines),
            train.issues + val.issues,
            train_name=str(cfg.train_lines),
        )
    train = load_voc(cfg.voc_root, parse_sets(cfg.train_sets), names)
    val = load_voc(cfg.voc_root, parse_sets(cfg.val_set), names, clip_boxes=False)
    if not train.annotations:
        raise InputError(f"no training images in {cfg.voc_root} {cfg.train_sets}")
    return DataSetup(
        names,
        train.annotations,
        val.annotations,
        f"{cfg.voc_root} {cfg.val_set}",
        train.issues + val.issues,
    )


@dataclass(frozen=True)
class InitialWeights:
    """What ``load_initial_weights`` loaded: whether the weights were pretrained (which enables
    backbone freezing) and the grid sensitivity they were trained with."""

    pretrained: bool
    scale_x_y: float = SCALE_X_Y


def load_initial_weights(model: YoloBody, cfg: TrainConfig) -> InitialWeights:
    """Loads ``cfg.weights`` by name and shape and logs what did and did not load."""
    path = cfg.weights
    if path == "auto":
        path = str(OFFICIAL_WEIGHTS) if OFFICIAL_WEIGHTS.is_file() else None
        if path is None:
            logger.info(
                "no pretrained weights (run `make weights` for the COCO ones): from scratch"
            )
            return InitialWeights(False)
    if not path or path.lower() == "none":
        return InitialWeights(False)
    if path.endswith(".weights"):
        report = load_darknet_weights(model, path)
        logger.info(report.summary())
        return InitialWeights(True, SCALE_X_Y)
    state, info = read_checkpoint(path)
    report = load_matching(model, state)
    logger.info("%s (%s): %s", path, info.describe(), report.summary())
    for key, why in report.mismatched.items():
        logger.info("  not loaded %s: %s", key, why)
    missing = sorted({k.rsplit(".", 2)[0] for k in report.missing})
    if missing:
        logger.info("  kept initialised: %s", ", ".join(missing))
    return InitialWeights(True, info.scale_x_y)


def resolve_data(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the paths ``--data`` stands for; under torchrun rank 0 generates the demo
    set when needed while the other ranks wait."""
    main = int(os.environ.get("RANK", "0")) == 0
    source = resolve_data_source(
        cfg.data, cfg.voc_root, cfg.train_sets, cfg.val_set, cfg.classes, generate=main
    )
    if cfg.data == "demo" and dist.is_initialized():
        dist.barrier()  # the other ranks wait for rank 0's files
    return replace(
        cfg,
        voc_root=source.voc_root,
        train_sets=source.train_sets,
        val_set=source.val_set,
        classes=source.classes,
    )


# settings of one invocation: always the command line's
PER_INVOCATION = ("device", "workers", "amp", "compile", "stop_at_epoch", "tensorboard")
# settings a resumed run may change: applied when given (not left at their defaults)
CHANGEABLE_ON_RESUME = (
    "epochs",
    "patience",
    "eval_period",
    "save_period",
    "max_iters",
    "attention_plugin",
)


def run_inputs(cfg: TrainConfig) -> list[str]:
    """Every path a training reads (after ``resolve_data``): run folders are kept apart
    from all of them (``utils.paths.check_apart``)."""
    paths = [
        cfg.voc_root,
        cfg.classes,
        cfg.train_lines,
        cfg.val_lines,
        cfg.train_labels,
        cfg.val_labels,
        cfg.train_images,
        cfg.val_images,
        cfg.weights,
        cfg.anchors,
    ]
    return [str(p) for p in paths if p]


# where the run lives: a resumed run continues in its own folder
IGNORED_ON_RESUME = ("resume", "name", "log_dir")


def read_resume(
    cfg: TrainConfig, given: Collection[str] | None = None
) -> tuple[TrainConfig, dict | None]:
    """For ``--resume``: the interrupted run's config merged with ``cfg`` (``merge_resume``;
    ``given`` names the fields set on the command line), and the checkpoint itself.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a ``last.pth`` (the message names it), or a flag conflicts
            with the checkpoint.
    """
    if not cfg.resume:
        return cfg, None
    try:
        checkpoint = load_torch_file(cfg.resume)
    except ValueError as err:
        hint = (
            " (darknet weights start a run with --weights)"
            if cfg.resume.endswith(".weights")
            else ""
        )
        raise InputError(f"{err}{hint}") from None
    if not isinstance(checkpoint, dict) or "train_state" not in checkpoint:
        raise InputError(f"{cfg.resume}: no training state in it (not a last.pth?)")
    try:
        stored = {**checkpoint["config"]}
        if cfg.attention_plugin is not None and (given is None or "attention_plugin" in given):
            # building the config imports its plugins: those given now, the old module may
            # have moved (a resumed run may change --attention-plugin)
            stored["attention_plugin"] = cfg.attention_plugin
        saved = TrainConfig(**stored)
    except (KeyError, TypeError) as err:
        raise InputError(f"{cfg.resume}: its training config is unreadable ({err})") from None
    return merge_resume(saved, cfg, given), checkpoint


def merge_resume(
    saved: TrainConfig, cfg: TrainConfig, given: Collection[str] | None = None
) -> TrainConfig:
    """The config a resumed run continues with.

    Args:
        saved: the checkpoint's config.
        cfg: the config asked for now.
        given: the fields set on the command line; None counts every field whose value in
            ``cfg`` is not the default as given (the Python API).

    Device, workers, precision (``amp``), ``compile``, ``stop_at_epoch`` and ``tensorboard``
    come from ``cfg``: they are about the machine, not the model. Epochs,
    patience, eval/save periods and ``max_iters`` may change: a given value is applied and
    logged. Every other setting is the checkpoint's: a given value other than the
    checkpoint's is an error naming both.
    """
    defaults = TrainConfig()
    if given is None:
        given = {
            f.name for f in fields(TrainConfig) if getattr(cfg, f.name) != getattr(defaults, f.name)
        }
    changes, conflicts = {}, []
    for f in fields(TrainConfig):
        name = f.name
        new, old = getattr(cfg, name), getattr(saved, name)
        if name in PER_INVOCATION:
            changes[name] = new
        elif name in IGNORED_ON_RESUME and name != "resume" and name in given and new != old:
            logger.warning(
                "resume: --%s %r ignored: a resumed run continues in its own folder (%s)",
                name.replace("_", "-"),
                new,
                Path(cfg.resume).parent.parent,
            )
        elif name in IGNORED_ON_RESUME or new == old or name not in given:
            continue
        elif name in CHANGEABLE_ON_RESUME:
            changes[name] = new
        else:
            scale = " at batch 64; the schedule line shows it at the run's batch"
            held = f"{old!r}{scale if name in ('lr', 'min_lr') else ''}"
            conflicts.append(f"--{name.replace('_', '-')} {new!r} (the checkpoint has {held})")
    if conflicts:
        may_change = ", ".join("--" + n.replace("_", "-") for n in CHANGEABLE_ON_RESUME)
        raise InputError(
            f"{cfg.resume}: a resumed run keeps its settings, and these flags conflict with "
            f"them: {'; '.join(conflicts)}. Only {may_change} (and --device, --workers, "
            "--amp, --compile, --stop-at-epoch, --tensorboard) may change on --resume."
        )
    for name, value in changes.items():
        if value != getattr(saved, name):
            logger.info(
                "resume: --%s %r (was %r)", name.replace("_", "-"), value, getattr(saved, name)
            )
    return replace(saved, resume=cfg.resume, **changes)


def seed_run(cfg: TrainConfig) -> None:
    """Seeds torch and, with ``--deterministic``, asks for deterministic algorithms."""
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(cfg.seed)
