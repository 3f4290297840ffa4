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

from utils.config import (
    CommandParser,
    add_options,
    from_args,
    given_options,
    run_cli,
)
from utils.paths import check_output_path
from utils.training.config import TrainConfig
from utils.training.fit import fit


def build_parser(add_help: bool = True, exclude: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """Every ``TrainConfig`` field as a flag, with its default and help (``--help``).

    Args:
        add_help: False for a parent parser (``tools.study`` extends this one).
        exclude: fields left out (the study sets phi, seed and the run folder per run).
    """
    parser = CommandParser(description=__doc__, add_help=add_help)
    add_options(parser, TrainConfig, exclude=exclude)
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, set[str]]:
    """The config, and the fields the command line set (a resume checks them).

    Raises:
        InputError: a setting outside its range (the config's own checks).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    return from_args(TrainConfig, args), given_options(parser, argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Ctrl-C must reach the loop (which saves last.pth) even where the shell started us with
    # SIGINT ignored, as non-interactive shells do for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cfg, given = parse_args(argv)
    if not cfg.resume:  # a resumed run writes into its own folder
        check_output_path(cfg.log_dir, folder=True)
    result = fit(cfg, given)
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
    run_cli(main)
