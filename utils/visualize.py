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
