"""Training augmentation: random resize-and-place on a grey canvas, horizontal flip,
HSV gains, mosaic and mixup. All geometry is done in one resize per image; boxes follow it.

Every function takes an explicit ``numpy.random.Generator`` so that a sample's randomness is a
pure function of ``(seed, epoch, index)`` (see ``data/dataset.py``).

Boxes are float32 (N, 4) xyxy in pixels of the image they belong to; labels (N,) int64.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np

from utils.preprocess import PAD_VALUE


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings; defaults are the reference implementation's ranges."""

    jitter: float = 0.3  # aspect jitter: new_ar = w/h * U(1-j, 1+j) / U(1-j, 1+j)
    scale: tuple[float, float] = (0.25, 2.0)  # longer side as a fraction of the canvas
    flip_p: float = 0.5  # horizontal flip probability
    hsv_gains: tuple[float, float, float] = (0.1, 0.7, 0.4)  # gain = U(-1, 1) * g + 1
    mosaic_p: float = 0.5  # probability that a sample is a 4-image mosaic
    mosaic_scale: tuple[float, float] = (0.4, 1.0)  # per-image scale inside a mosaic
    mosaic_cut: tuple[float, float] = (0.3, 0.7)  # cut point as a fraction of each side
    mixup_p: float = 0.5  # probability that a mosaic is blended with a plain sample
    min_box_size: float = 1.0  # boxes narrower or shorter than this (pixels) are dropped
    min_visibility: float = 0.0  # drop boxes keeping less than this fraction of their area


def clip_and_filter(
    boxes: np.ndarray,
    labels: np.ndarray,
    region: tuple[float, float, float, float],
    cfg: AugmentConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Clips boxes to ``region`` (x1, y1, x2, y2) and drops those that become too small or keep
    less than ``cfg.min_visibility`` of their area."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float32), labels
    x1, y1, x2, y2 = region
    area_before = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    out = boxes.copy()
    out[:, 0::2] = out[:, 0::2].clip(x1, x2)
    out[:, 1::2] = out[:, 1::2].clip(y1, y2)
    w, h = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    keep = (w >= cfg.min_box_size) & (h >= cfg.min_box_size)
    if cfg.min_visibility > 0:
        keep &= w * h >= cfg.min_visibility * np.maximum(area_before, 1e-9)
    return out[keep].astype(np.float32), labels[keep]


def random_resize(
    image: np.ndarray,
    boxes: np.ndarray,
    canvas: int,
    scale_range: tuple[float, float],
    jitter: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Resizes with aspect jitter so that the longer side is ``U(scale_range) * canvas``."""
    h, w = image.shape[:2]
    aspect = w / h * rng.uniform(1 - jitter, 1 + jitter) / rng.uniform(1 - jitter, 1 + jitter)
    scale = rng.uniform(*scale_range)
    if aspect < 1:
        new_h = scale * canvas
        new_w = new_h * aspect
    else:
        new_w = scale * canvas
        new_h = new_w / aspect
    new_w, new_h = max(1, int(new_w)), max(1, int(new_h))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out = boxes.astype(np.float32).copy()
    out[:, 0::2] *= new_w / w
    out[:, 1::2] *= new_h / h
    return resized, out


def paste(
    canvas: np.ndarray,
    image: np.ndarray,
    dx: int,
    dy: int,
    region: tuple[int, int, int, int] | None = None,
) -> None:
    """Copies ``image`` with its top-left corner at (dx, dy) into ``canvas``, limited to
    ``region`` (x1, y1, x2, y2; default the whole canvas). Parts outside are cut off."""
    ch, cw = canvas.shape[:2]
    rx1, ry1, rx2, ry2 = region or (0, 0, cw, ch)
    h, w = image.shape[:2]
    x1, y1 = max(dx, rx1), max(dy, ry1)
    x2, y2 = min(dx + w, rx2), min(dy + h, ry2)
    if x2 > x1 and y2 > y1:
        canvas[y1:y2, x1:x2] = image[y1 - dy : y2 - dy, x1 - dx : x2 - dx]


_FLIP = A.Compose(
    [A.HorizontalFlip(p=1.0)],
    bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True),
)


def hflip(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
    """Horizontal flip of image and boxes (albumentations).

    Our x2 is the last pixel's index (VOC, inclusive) while albumentations' boxes end at an
    edge: x2 + 1 going in, - 1 coming out, so pixel x maps to W - 1 - x as it must.
    """
    if len(boxes) == 0:
        return np.ascontiguousarray(image[:, ::-1]), boxes, labels
    w = image.shape[1]
    edges = boxes + np.float32([0, 0, 1, 1])
    edges[:, 2] = np.minimum(edges[:, 2], w)  # callers pass clipped boxes
    edges[:, 3] = np.minimum(edges[:, 3], image.shape[0])
    out = _FLIP(image=image, bboxes=edges, labels=labels)
    flipped = np.asarray(out["bboxes"], np.float32).reshape(-1, 4) - np.float32([0, 0, 1, 1])
    return out["image"], flipped, np.asarray(out["labels"], np.int64)


def hsv_gain(image: np.ndarray, gains: tuple[float, float, float], rng: np.random.Generator):
    """Multiplies hue, saturation and value by ``U(-1, 1) * gain + 1`` (lookup tables)."""
    r = rng.uniform(-1, 1, 3) * np.asarray(gains) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def random_place(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    size: int,
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training sample: jitter + scale, random placement on grey, flip, HSV."""
    resized, boxes = random_resize(image, boxes, size, cfg.scale, cfg.jitter, rng)
    h, w = resized.shape[:2]
    dx = int(rng.uniform(min(0, size - w), max(0, size - w) + 1e-9))
    dy = int(rng.uniform(min(0, size - h), max(0, size - h) + 1e-9))
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    paste(canvas, resized, dx, dy)
    boxes = boxes + np.array([dx, dy, dx, dy], np.float32)
    boxes, labels = clip_and_filter(boxes, labels, (0, 0, size, size), cfg)
    if rng.random() < cfg.flip_p:
        canvas, boxes, labels = hflip(canvas, boxes, labels)
    return hsv_gain(canvas, cfg.hsv_gains, rng), boxes, labels


def mosaic(
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    size: int,
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four (image, boxes, labels) into one canvas split at a random cut point.

    Each image is jittered, scaled by ``cfg.mosaic_scale``, optionally flipped, and placed
    with its inner corner at the cut point; what falls outside its quadrant is cut off.
    """
    assert len(samples) == 4
    cut_x = int(size * rng.uniform(*cfg.mosaic_cut))
    cut_y = int(size * rng.uniform(*cfg.mosaic_cut))
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    # quadrant regions: top-left, top-right, bottom-left, bottom-right
    regions = [(0, 0, cut_x, cut_y), (cut_x, 0, size, cut_y), (0, cut_y, cut_x, size),
               (cut_x, cut_y, size, size)]  # fmt: skip
    all_boxes, all_labels = [], []
    for k, ((image, boxes, labels), region) in enumerate(zip(samples, regions)):
        resized, boxes = random_resize(image, boxes, size, cfg.mosaic_scale, cfg.jitter, rng)
        if rng.random() < cfg.flip_p:
            resized, boxes, labels = hflip(resized, boxes, labels)
        h, w = resized.shape[:2]
        dx = cut_x - w if k in (0, 2) else cut_x
        dy = cut_y - h if k in (0, 1) else cut_y
        paste(canvas, resized, dx, dy, region)
        boxes, labels = clip_and_filter(boxes + np.float32([dx, dy, dx, dy]), labels, region, cfg)
        all_boxes.append(boxes)
        all_labels.append(labels)
    canvas = hsv_gain(canvas, cfg.hsv_gains, rng)
    return canvas, np.concatenate(all_boxes).reshape(-1, 4), np.concatenate(all_labels)


def mixup(
    a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0.5/0.5 blend of two same-size samples; boxes and labels are concatenated."""
    image = cv2.addWeighted(a[0], 0.5, b[0], 0.5, 0)
    return image, np.concatenate([a[1], b[1]]).reshape(-1, 4), np.concatenate([a[2], b[2]])
