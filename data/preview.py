"""Writes a grid of augmented training samples with their boxes, to see what the model sees.

Usage: ``python -m data.preview --voc-root data/demo/VOCdevkit --sets 2007:trainval
--classes data/demo/classes.txt --out logs/augment_preview.jpg``
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from data.augment import AugmentConfig
from data.dataset import MosaicMixup, VOCDetection
from data.voc import load_voc, parse_sets
from utils.classes import read_class_names
from utils.visualize import class_color


def draw_batch(
    images: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str], columns: int = 4
) -> np.ndarray:
    """A BGR grid of RGB uint8 images (B, 3, S, S) with (M, 6) targets drawn on them."""
    b, _, s, _ = images.shape
    rows = math.ceil(b / columns)
    grid = np.full((rows * s, min(b, columns) * s, 3), 255, np.uint8)
    for i in range(b):
        tile = cv2.cvtColor(images[i].permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR).copy()
        for _, cls, x1, y1, x2, y2 in targets[targets[:, 0] == i].tolist():
            color = class_color(int(cls), len(class_names))
            cv2.rectangle(tile, (round(x1), round(y1)), (round(x2), round(y2)), color, 1)
            cv2.putText(
                tile,
                class_names[int(cls)],
                (round(x1), max(8, round(y1) - 2)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.3,
                color,
                1,
                cv2.LINE_AA,
            )
        r, c = divmod(i, columns)
        grid[r * s : (r + 1) * s, c * s : (c + 1) * s] = tile
    return grid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voc-root", default="data/VOCdevkit", help="folder holding VOC<year>/")
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
