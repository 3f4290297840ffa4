"""Command line: a grid of augmented training samples with their boxes, to see what the model sees.

Usage: ``python -m tools.preview --voc-root data/demo/VOCdevkit --sets 2007:trainval
--classes data/demo/classes.txt --out logs/augment_preview.jpg``
"""

from __future__ import annotations

import argparse
import sys

import cv2
import torch

from data.augment import AugmentConfig
from data.dataset import MosaicMixup, VOCDetection
from data.preview import (
    draw_batch,
)
from data.voc import load_voc, parse_sets
from utils.classes import read_class_names
from utils.config import HelpFormatter
from utils.paths import VOC_ROOT


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--voc-root", default=VOC_ROOT, help="folder holding VOC<year>/")
    p.add_argument("--sets", default="2007:trainval", help="YEAR:SET,...")
    p.add_argument("--classes", default="model_data/voc_classes.txt", help="classes file")
    p.add_argument("--img-size", type=int, default=416, help="training input size")
    p.add_argument("--num", type=int, default=16, help="samples in the grid")
    p.add_argument("--mosaic", type=float, default=0.5, help="mosaic probability")
    p.add_argument("--mixup", type=float, default=0.5, help="mixup probability")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--out", default="logs/augment_preview.jpg", help="output image")
    args = p.parse_args(argv)
    try:
        names = read_class_names(args.classes)
        result = load_voc(args.voc_root, parse_sets(args.sets), names)
        cfg = AugmentConfig(mosaic_p=args.mosaic, mixup_p=args.mixup)
        ds = MosaicMixup(
            VOCDetection(result.annotations, args.img_size, True, cfg=cfg, seed=args.seed)
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    samples = [ds[i % len(ds)] for i in range(args.num)]
    images = torch.stack([s[0] for s in samples])
    targets = torch.cat(
        [torch.cat([torch.full((len(t), 1), float(i)), t], 1) for i, (_, t) in enumerate(samples)]
    )
    cv2.imwrite(args.out, draw_batch(images, targets, names))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
