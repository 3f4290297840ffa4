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
from data.preview import (
    draw_batch,
)
from data.voc import discover_classes, load_voc, parse_sets
from utils.classes import read_class_names
from utils.config import HelpFormatter
from utils.paths import VOC_ROOT, OutputPathError, check_image_path, write_image_atomic


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.preview",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--voc-root", default=VOC_ROOT, help="folder holding VOC<year>/")
    p.add_argument("--sets", default="2007:trainval", help="YEAR:SET,...")
    p.add_argument(
        "--classes", default=None, help="classes file (default: the names used in the XMLs)"
    )
    p.add_argument("--img-size", type=int, default=416, help="training input size")
    p.add_argument("--num", type=int, default=16, help="samples in the grid")
    p.add_argument("--mosaic", type=float, default=0.5, help="mosaic probability")
    p.add_argument("--mixup", type=float, default=0.5, help="mixup probability")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--out", default="logs/augment_preview.jpg", help="output image")
    args = p.parse_args(argv)
    if args.num < 1:
        p.error(f"--num {args.num}: at least 1 sample")
    try:
        check_image_path(args.out)
        sets = parse_sets(args.sets)
        if args.classes:
            names = read_class_names(args.classes)
        else:
            names = discover_classes(args.voc_root, sets)
            print(f"classes found in the XMLs: {', '.join(names)}")
        result = load_voc(args.voc_root, sets, names)
        if not result.annotations:
            raise ValueError(f"{args.voc_root} {args.sets}: no images to preview")
        cfg = AugmentConfig(mosaic_p=args.mosaic, mixup_p=args.mixup)
        ds = MosaicMixup(
            VOCDetection(result.annotations, args.img_size, True, cfg=cfg, seed=args.seed)
        )
    except (FileNotFoundError, ValueError, OutputPathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for issue in result.issues[:10]:
        print(f"warning: {issue}", file=sys.stderr)
    if len(result.issues) > 10:
        print(f"warning: ... and {len(result.issues) - 10} more", file=sys.stderr)
    samples = [ds[i % len(ds)] for i in range(args.num)]
    images = torch.stack([s[0] for s in samples])
    targets = torch.cat(
        [torch.cat([torch.full((len(t), 1), float(i)), t], 1) for i, (_, t) in enumerate(samples)]
    )
    try:
        write_image_atomic(args.out, draw_batch(images, targets, names))
    except OutputPathError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
