"""Train YOLOv4-tiny with pluggable attention on Pascal VOC or the generated demo set.

Examples:
    python train.py --phi 2                                   # VOC 07+12, CBAM, 300 epochs
    python train.py --data demo --img-size 192 --epochs 25    # the demo set, on a CPU
    python train.py --resume logs/exp/weights/last.pth
    torchrun --nproc_per_node 2 train.py --phi cbam           # multi-GPU (DDP)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from utils.config import HelpFormatter, add_options, from_args, given_options
from utils.paths import OutputPathError, OutputRefusedError, check_output_path
from utils.runlock import FolderLockedError
from utils.training.config import TrainConfig
from utils.training.fit import fit
from utils.training.loop import NonFiniteLossError


def build_parser(add_help: bool = True, exclude: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """Every ``TrainConfig`` field as a flag, with its default and help (``--help``).

    Args:
        add_help: False for a parent parser (``tools.study`` extends this one).
        exclude: fields left out (the study sets phi, seed and the run folder per run).
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter, add_help=add_help
    )
    add_options(parser, TrainConfig, exclude=exclude)
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, set[str]]:
    """The config, and the fields the command line set (a resume checks them)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return from_args(TrainConfig, args), given_options(parser, argv)
    except ValueError as err:  # the config's own checks
        parser.error(str(err))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Ctrl-C must reach the loop (which saves last.pth) even where the shell started us with
    # SIGINT ignored, as non-interactive shells do for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cfg, given = parse_args(argv)
    try:
        if not cfg.resume:  # a resumed run writes into its own folder
            check_output_path(cfg.log_dir, folder=True)
    except OutputPathError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        result = fit(cfg, given)
    except KeyboardInterrupt:
        return 130
    except OutputRefusedError as err:  # refused before the run started
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OutputPathError as err:  # a checkpoint, log or picture could not be written
        print(f"error: {err}", file=sys.stderr)
        return 1
    except NonFiniteLossError as err:  # the message says where the last good epoch is
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, FolderLockedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not result.is_main:
        return 0
    if result.best_map < 0:  # never evaluated: no evaluation images, or none due yet
        print(f"done: not evaluated, so no best.pth; run folder {result.run_dir}")
    else:
        print(
            f"done: best mAP@0.5 (VOC2010+ area) {result.best_map:.4f}; run folder {result.run_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
