"""Which anchors a run trains with: darknet's, a file's, or k-means on its own boxes.

Darknet's anchors are pixels at 416 (10x14 ... 344x319). Anchors are not rescaled with the input
size, so at a smaller ``--img-size``, or on data whose objects are all small or all large, they
fit the boxes less well: on the demo set at 160 px the mean best IoU is 0.61 with darknet's
and 0.78 with k-means anchors, and 45% of the boxes pick anchor 0, which no head predicts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.anchor_kmeans import (
    kmeans_anchors,
    letterbox_box_shapes,
    mean_best_iou,
    round_anchors,
)
from data.voc import Annotation
from nets.yolo import DEFAULT_ANCHORS
from utils.classes import read_anchors
from utils.errors import InputError

logger = logging.getLogger("train")

ANCHOR_CHOICES = ("auto", "kmeans", "default")
# 'auto' switches to k-means anchors only when darknet's fit the training boxes poorly: a mean
# best IoU below this (the average box overlaps its best anchor less than half). A better IoU
# fit alone does not train better on this two-level head: on the demo set at 160 px, darknet's
# anchors fit 0.61 and k-means anchors 0.78, yet 15 epochs reached mAP50 0.028 with k-means
# against 0.164 with darknet's, because k-means moves half the boxes onto the 5x5 stride-32
# grid, at about one cell per object. Darknet's anchors fit COCO and VOC at 416 far above it.
AUTO_MAX_DEFAULT_IOU = 0.5


@dataclass(frozen=True)
class AnchorChoice:
    """The anchors a run uses and how they fit its training boxes."""

    anchors: tuple[tuple[float, float], ...]
    source: str  # "default", "kmeans", or the file's path
    default_iou: float  # mean best IoU of darknet's anchors (nan without boxes)
    chosen_iou: float  # of the chosen ones
    reason: str

    def describe(self) -> str:
        pairs = ", ".join(f"{w:g}x{h:g}" for w, h in self.anchors)
        return (
            f"anchors ({self.source}): {pairs}; mean best IoU with the training boxes "
            f"{self.default_iou:.3f} (darknet's) -> {self.chosen_iou:.3f} ({self.reason})"
        )


def resolve_anchors(
    setting: str | None,
    annotations: list[Annotation],
    input_size: int,
    *,
    include_difficult: bool = False,
    seed: int = 0,
) -> AnchorChoice:
    """The anchors ``--anchors`` asks for, measured on the training boxes at ``input_size``.

    Args:
        setting: 'auto', 'kmeans', 'default' (or None), or an anchors file.
        annotations: the training images.
        input_size: the training input side (boxes are letterboxed to it).
        include_difficult: count difficult boxes too (as training does when asked).
        seed: k-means++ seed (the run's seed: the same run gives the same anchors).

    Raises:
        FileNotFoundError, ValueError: an unreadable anchors file; 'kmeans' with fewer boxes
            (or distinct shapes) than anchors.
    """
    setting = setting or "default"
    default = np.asarray(DEFAULT_ANCHORS, np.float64)
    shapes = letterbox_box_shapes(annotations, input_size, include_difficult)
    shapes = shapes[(shapes > 0).all(1)]

    def fit(anchors: np.ndarray) -> float:
        return mean_best_iou(shapes, anchors) if len(shapes) else float("nan")

    if setting not in ANCHOR_CHOICES:
        anchors = np.asarray(read_anchors(setting), np.float64)
        if len(anchors) != len(default):
            raise InputError(
                f"{setting}: {len(anchors)} anchors, but the model has {len(default)} "
                "(3 per head, one shared)"
            )
        why = "from the file"
        if fit(anchors) < fit(default):  # NaN (no boxes) compares False
            why += (
                ", which fits these boxes worse than darknet's: made at another input size? "
                "(python -m tools.anchors --input-size)"
            )
        return _choice(anchors, str(Path(setting)), fit(default), fit(anchors), why)
    if setting == "default":
        return _choice(default, "default", fit(default), fit(default), "--anchors default")
    try:
        kmeans = round_anchors(kmeans_anchors(shapes, len(default), seed)).astype(np.float64)
    except ValueError as err:
        if setting == "kmeans":
            raise InputError(f"--anchors kmeans: {err}") from None
        return _choice(default, "default", fit(default), fit(default), f"k-means impossible: {err}")
    if setting == "kmeans":
        return _choice(kmeans, "kmeans", fit(default), fit(kmeans), "--anchors kmeans")
    if fit(default) < AUTO_MAX_DEFAULT_IOU:
        why = f"auto: darknet's fit below {AUTO_MAX_DEFAULT_IOU}"
        return _choice(kmeans, "kmeans", fit(default), fit(kmeans), why)
    why = (
        f"auto: darknet's fit at least {AUTO_MAX_DEFAULT_IOU}; k-means would reach "
        f"{fit(kmeans):.3f} (--anchors kmeans)"
    )
    return _choice(default, "default", fit(default), fit(default), why)


def _choice(anchors: np.ndarray, source: str, default_iou: float, iou: float, why: str):
    pairs = tuple((float(w), float(h)) for w, h in np.asarray(anchors, np.float64))
    return AnchorChoice(pairs, source, default_iou, iou, why)
