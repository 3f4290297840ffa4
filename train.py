"""Train YOLOv4-tiny with pluggable attention on Pascal VOC or the generated demo set.

Examples:
    python train.py --phi 2                                   # VOC 07+12, CBAM, SPEC defaults
    python train.py --data demo --img-size 224 --epochs 20    # the demo set, on a CPU
    python train.py --resume logs/exp/weights/last.pth
    torchrun --nproc_per_node 2 train.py --phi cbam           # multi-GPU (DDP)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from utils.trainer import TrainConfig, train

D = TrainConfig()  # defaults live there, one comment each


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", choices=["voc", "demo"], default=D.data, help="VOC or the generated demo set"
    )
    g.add_argument("--voc-root", default=D.voc_root, help="folder holding VOC<year>/")
    g.add_argument("--train-sets", default=D.train_sets, help="YEAR:SET pairs to train on")
    g.add_argument("--val-set", default=D.val_set, help="YEAR:SET pairs to evaluate on")
    g.add_argument(
        "--classes", default=D.classes, help="classes file (default: VOC's 20 / the demo's)"
    )
    g.add_argument("--anchors", default=D.anchors, help="anchors file (w,h pairs at --img-size)")
    g.add_argument(
        "--include-difficult", action="store_true", help="train on difficult objects too"
    )
    g.add_argument(
        "--train-lines",
        default=None,
        help="reference-implementation annotation lines (path x1,y1,x2,y2,cls ...) to train on "
        "instead of VOC image sets",
    )
    g.add_argument("--val-lines", default=None, help="the same for evaluation")
    g = p.add_argument_group("model")
    g.add_argument("--phi", default=D.phi, help="attention: 0-4 or none/se/cbam/eca/ca")
    g.add_argument("--img-size", type=int, default=D.img_size, help="input side, a multiple of 32")
    g.add_argument(
        "--weights",
        default=D.weights,
        help="initial weights: darknet .weights, our .pth, reference .pth; 'auto' = "
        "model_data/yolov4-tiny.weights if present; 'none' = from scratch",
    )
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=D.epochs, help="total epochs")
    g.add_argument(
        "--freeze-epochs",
        type=int,
        default=D.freeze_epochs,
        help="first epochs with a frozen backbone (with pretrained weights only)",
    )
    g.add_argument("--batch-size", type=int, default=D.batch_size, help="batch (all GPUs together)")
    g.add_argument(
        "--freeze-batch-size", type=int, default=D.freeze_batch_size, help="batch while frozen"
    )
    g.add_argument(
        "--optimizer", choices=["sgd", "adam", "adamw"], default=D.optimizer, help="optimizer"
    )
    g.add_argument("--lr", type=float, default=D.lr, help="max lr at batch 64 (scaled by batch/64)")
    g.add_argument(
        "--min-lr", type=float, default=D.min_lr, help="final lr at batch 64 (default lr/100)"
    )
    g.add_argument(
        "--lr-schedule", choices=["cos", "step"], default=D.lr_schedule, help="lr schedule"
    )
    g.add_argument(
        "--warmup-epochs",
        type=float,
        default=D.warmup_epochs,
        help="quadratic warmup epochs (default min(max(0.05 E, 1), 3))",
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        default=D.weight_decay,
        help="on conv/linear weights only (default 5e-4 sgd, 0 adam)",
    )
    g.add_argument("--momentum", type=float, default=D.momentum, help="SGD momentum / Adam beta1")
    g = p.add_argument_group("augmentation and loss")
    g.add_argument("--mosaic", type=float, default=D.mosaic, help="mosaic probability")
    g.add_argument("--mixup", type=float, default=D.mixup, help="mixup probability (of a mosaic)")
    g.add_argument(
        "--strong-aug-ratio",
        type=float,
        default=D.strong_aug_ratio,
        help="fraction of epochs with mosaic/mixup (then off)",
    )
    g.add_argument(
        "--label-smoothing", type=float, default=D.label_smoothing, help="class label smoothing"
    )
    g.add_argument("--focal", action="store_true", help="focal loss for objectness")
    g.add_argument("--ignore-thresh", type=float, default=D.ignore_thresh, help="ignore threshold")
    g = p.add_argument_group("machinery")
    g.add_argument(
        "--ema", action=argparse.BooleanOptionalAction, default=D.ema, help="EMA of weights"
    )
    g.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    g.add_argument("--grad-clip", type=float, default=D.grad_clip, help="max gradient norm")
    g.add_argument("--workers", type=int, default=D.workers, help="data-loading processes")
    g.add_argument("--seed", type=int, default=D.seed, help="seed")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")
    g.add_argument("--device", default=D.device, help="auto, cpu, cuda or cuda:N")
    g = p.add_argument_group("evaluation and output")
    g.add_argument("--eval-period", type=int, default=D.eval_period, help="evaluate every N epochs")
    g.add_argument(
        "--patience", type=int, default=D.patience, help="early stop after N evals (0 = off)"
    )
    g.add_argument(
        "--save-period", type=int, default=D.save_period, help="keep epoch_N.pth every N epochs"
    )
    g.add_argument("--resume", default=D.resume, help="continue from this last.pth")
    g.add_argument("--name", default=D.name, help="run folder logs/<name> (incremented)")
    g.add_argument("--log-dir", default=D.log_dir, help="parent folder of runs")
    g.add_argument(
        "--max-iters", type=int, default=D.max_iters, help="iterations per epoch (0 = all)"
    )
    g.add_argument(
        "--stop-at-epoch",
        type=int,
        default=D.stop_at_epoch,
        help="stop before this epoch, resumably (the lr schedule still spans --epochs)",
    )
    args = vars(p.parse_args(argv))
    if args["img_size"] % 32:
        p.error(f"--img-size {args['img_size']} is not a multiple of 32")
    return TrainConfig(**args)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Ctrl-C must reach the loop (which saves last.pth) even where the shell started us with
    # SIGINT ignored, as non-interactive shells do for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cfg = parse_args(argv)
    try:
        result = train(cfg)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not result.is_main:
        return 0
    print(
        f"done: best mAP@0.5 (VOC2010+ area) {max(result.best_map, 0):.4f}; "
        f"run folder {result.run_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
