"""Writes a grid of augmented training samples with their boxes, to see what the model sees.

Usage: ``python -m tools.preview --voc-root data/demo/VOCdevkit --sets 2007:trainval
--classes data/demo/classes.txt --out logs/augment_preview.jpg``
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

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
