"""Drawing detections and heatmaps on BGR images."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from utils.detections import Detections


def class_color(class_id: int, num_classes: int) -> tuple[int, int, int]:
    """A distinct, stable BGR colour per class."""
    hue = (class_id * 0.618034) % 1.0 if num_classes > 1 else 0.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image_bgr: np.ndarray, detections: Detections) -> np.ndarray:
    """Returns a copy of the image with boxes and ``name score`` labels drawn."""
    out = image_bgr.copy()
    h, w = out.shape[:2]
    thickness = max(1, round((h + w) / 600))
    font_scale = max(0.4, (h + w) / 2000)
    num_classes = max(1, len(detections.class_names))
    for box, score, label, name in zip(
        detections.boxes, detections.scores, detections.labels, detections.names
    ):
        color = class_color(int(label), num_classes)
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        text = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - th - base if y1 - th - base >= 0 else y1
        tx = max(0, min(x1, w - tw))  # keep the label inside the image
        cv2.rectangle(out, (tx, ty), (tx + tw, ty + th + base), color, -1)
        cv2.putText(
            out,
            text,
            (tx, ty + th),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return out


def overlay_heatmap(image_bgr: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends a (H, W) map in [0, 1] over the image with the JET colormap."""
    colored = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(image_bgr, 1 - alpha, colored, alpha, 0)


def crop_detections(image_bgr: np.ndarray, detections: Detections) -> list[np.ndarray]:
    """One crop per detection (boxes are already clipped to the image)."""
    crops = []
    for x1, y1, x2, y2 in detections.boxes:
        crops.append(
            image_bgr[int(y1) : int(np.ceil(y2)) + 1, int(x1) : int(np.ceil(x2)) + 1].copy()
        )
    return crops


def _banner(image: np.ndarray, lines: list[str]) -> None:
    """White text lines on a dark strip across the top of ``image`` (in place)."""
    h, w = image.shape[:2]
    widest = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][0] for line in lines)
    scale = min(max(0.4, min(w, h) / 900), (w - 8) / max(widest, 1))  # the longest line fits
    thickness = max(1, round(scale * 1.5))
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    step = th + base + 4
    strip = image[: step * len(lines) + 4]
    strip[:] = (strip * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        y = 2 + th + i * step
        cv2.putText(
            image, line, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness
        )


def overlay_attention(
    image_bgr: np.ndarray, attention: np.ndarray, title: str, alpha: float = 0.45
) -> np.ndarray:
    """Blends an attention map of the image's size over a copy of it with the JET colormap,
    stretched from the map's minimum (blue) to its maximum (red): attention maps often vary
    by a few percent around 0.5, which a fixed [0, 1] scale would show as one flat colour.
    The top strip names the map (``title``) and the values at both ends of the scale.

    Args:
        image_bgr: (H, W, 3) uint8.
        attention: (H, W) float map on the image's pixel grid.
        title: what the map is (point, block, kind of values).
    """
    lo, hi = float(attention.min()), float(attention.max())
    span = hi - lo
    norm = (attention - lo) / span if span > 1e-12 else np.full_like(attention, 0.5)
    colored = cv2.applyColorMap(np.clip(norm * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(image_bgr, 1 - alpha, colored, alpha, 0)
    scale = f"blue {lo:.4g} .. red {hi:.4g}" if span > 1e-12 else f"constant {lo:.4g}"
    _banner(out, [title, scale])
    return out


def draw_channel_histogram(
    weights: np.ndarray, title: str, *, bins: int = 20, size: tuple[int, int] = (480, 260)
) -> np.ndarray:
    """A histogram of channel weights as a BGR image: how many channels get each weight.

    The x axis spans [0, 1] (channel gates are sigmoids), widened to the data if it falls
    outside; the y axis runs to the tallest bar. Title, channel count, mean and range are
    written above the bars.

    Args:
        weights: (C,) channel weights.
        title: what the weights are (point, block).
        bins: number of equal-width bins.
        size: (width, height) of the image in pixels.
    """
    weights = np.asarray(weights, dtype=np.float64).ravel()
    lo, hi = min(0.0, float(weights.min())), max(1.0, float(weights.max()))
    counts, _ = np.histogram(weights, bins=bins, range=(lo, hi))
    width, height = size
    img = np.full((height, width, 3), 255, np.uint8)
    font, small = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    left, right, top, bottom = 40, 12, 48, 26
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot area
    peak = max(int(counts.max()), 1)
    bar_w = (x1 - x0) / bins
    for i, n in enumerate(counts):
        if n:
            bx0, bx1 = round(x0 + i * bar_w) + 1, round(x0 + (i + 1) * bar_w) - 1
            by = round(y1 - (y1 - y0) * n / peak)
            cv2.rectangle(img, (bx0, by), (max(bx0, bx1), y1), (180, 110, 40), -1)
    cv2.line(img, (x0, y1), (x1, y1), (0, 0, 0), 1)
    cv2.line(img, (x0, y0), (x0, y1), (0, 0, 0), 1)
    for value in (lo, (lo + hi) / 2, hi):
        x = round(x0 + (x1 - x0) * (value - lo) / (hi - lo))
        cv2.line(img, (x, y1), (x, y1 + 4), (0, 0, 0), 1)
        text = f"{value:.2g}"
        (tw, _), _ = cv2.getTextSize(text, font, small, 1)
        tx = min(max(0, x - tw // 2), width - tw)
        cv2.putText(img, text, (tx, height - 8), font, small, (0, 0, 0), 1, cv2.LINE_AA)
    for n, y in ((peak, y0), (0, y1)):
        cv2.putText(img, str(n), (4, y + 4), font, small, (0, 0, 0), 1, cv2.LINE_AA)
    stats = (
        f"{weights.size} channels, mean {weights.mean():.3f}, "
        f"min {weights.min():.3f}, max {weights.max():.3f}"
    )
    cv2.putText(img, title, (6, 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, stats, (6, 38), font, small, (60, 60, 60), 1, cv2.LINE_AA)
    return img
