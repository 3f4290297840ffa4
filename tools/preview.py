"""Command line: a grid of augmented training samples with their boxes, to see what the model sees.

Usage: ``python -m tools.preview --voc-root data/demo/VOCdevkit --sets 2007:trainval
--classes data/demo/classes.txt --out logs/augment_preview.jpg``
"""

from __future__ import annotations

import argparse
import sys

import torch

from data.augment import AugmentConfig
from data.dataset import MosaicMixup, VOCDetection
from data.options import DataOptions
from data.preview import (
    draw_batch,
)
from data.voc import LoadResult, discover_classes, load_voc, parse_sets
from nets.options import check_img_size
from utils.classes import read_class_names
from utils.config import CommandParser, add_options, run_cli
from utils.errors import InputError
from utils.paths import check_apart, check_image_path, write_image_atomic
from utils.training.config import TrainConfig

MAX_SAMPLES = 64  # a grid of 8 x 8 images: more would be a poster, not a preview


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="python -m tools.preview",
        description=__doc__.splitlines()[0],
    )
    add_options(
        p,
        DataOptions,
        include=("voc_root", "sets", "classes"),
        defaults={"sets": "2007:trainval"},
        helps={"classes": "classes file (default: the names used in the XMLs)"},
    )
    add_options(  # training's defaults: the grid shows what train.py feeds the model
        p,
        TrainConfig,
        include=("img_size", "mosaic", "mixup"),
        helps={"img_size": "training input side (multiple of 32)"},
    )
    p.add_argument("--num", type=int, default=16, help=f"samples in the grid, 1 to {MAX_SAMPLES}")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation, 0 or more")
    p.add_argument("--out", default="logs/augment_preview.jpg", help="output image")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuses, before any data is read, values the augmentation cannot use.

    Raises:
        InputError: naming the flag.
        OutputRefusedError: ``--out`` is not a writable image path, or would replace one of
            the inputs (an image or file of the VOC root, the classes file).
    """
    if not 1 <= args.num <= MAX_SAMPLES:
        raise InputError(f"--num {args.num}: must be 1 to {MAX_SAMPLES} samples")
    check_img_size(args.img_size)  # as train.py: a positive multiple of 32, not too large
    for flag, value in (("--mosaic", args.mosaic), ("--mixup", args.mixup)):
        if not 0 <= value <= 1:  # NaN fails too
            raise InputError(f"{flag} {value}: must be a probability in [0, 1]")
    if args.seed < 0:
        raise InputError(f"--seed {args.seed}: must be >= 0")
    check_image_path(args.out)
    check_apart(args.out, [args.voc_root, args.classes or ""], flag="--out", folder=False)


def load_samples(args: argparse.Namespace) -> tuple[MosaicMixup, list[str], LoadResult]:
    """The augmented training set ``args`` name, its class names, and what its reader found."""
    sets = parse_sets(args.sets)
    if args.classes:
        names = read_class_names(args.classes)
    else:
        names = discover_classes(args.voc_root, sets)
        print(f"classes found in the XMLs: {', '.join(names)}")
    result = load_voc(args.voc_root, sets, names)
    if not result.annotations:
        raise InputError(f"{args.voc_root} {args.sets}: no images to preview")
    cfg = AugmentConfig(mosaic_p=args.mosaic, mixup_p=args.mixup)
    dataset = VOCDetection(result.annotations, args.img_size, True, cfg=cfg, seed=args.seed)
    return MosaicMixup(dataset), names, result


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_args(args)  # before any work
    ds, names, result = load_samples(args)
    for issue in result.issues[:10]:
        print(f"warning: {issue}", file=sys.stderr)
    if len(result.issues) > 10:
        print(f"warning: ... and {len(result.issues) - 10} more", file=sys.stderr)
    samples = [ds[i % len(ds)] for i in range(args.num)]
    images = torch.stack([s[0] for s in samples])
    targets = torch.cat(
        [torch.cat([torch.full((len(t), 1), float(i)), t], 1) for i, (_, t) in enumerate(samples)]
    )
    write_image_atomic(args.out, draw_batch(images, targets, names))  # exit 1 on a full disk
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
