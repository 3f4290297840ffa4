"""Image -> network input, and the inverse mapping for boxes.

Two resize modes, both exact in their inverse: letterbox (keep aspect ratio, grey padding,
centred) and plain resize (stretch, as OpenCV DNN and darknet do). The mapping is an
axis-aligned affine map ``x_in = x_orig * scale_x + pad_x`` recorded in ``ResizeMeta``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

PAD_VALUE = 128  # grey canvas, as darknet and the reference implementation


@dataclass(frozen=True)
class ResizeMeta:
    """How an original image of ``width x height`` was mapped onto the network input."""

    width: int
    height: int
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int


def resize_image(
    image: np.ndarray,
    input_size: int,
    letterbox: bool = True,
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, ResizeMeta]:
    """Resizes an HxWx3 image onto an ``input_size`` square canvas.

    Args:
        image: uint8 array (H, W, 3), any channel order (it is kept).
        input_size: side of the square network input.
        letterbox: keep the aspect ratio and pad with grey; otherwise stretch.

    Returns:
        The canvas (input_size, input_size, 3) uint8 and the ``ResizeMeta`` to invert it.
    """
    h, w = image.shape[:2]
    if not letterbox:
        out = cv2.resize(image, (input_size, input_size), interpolation=interpolation)
        return out, ResizeMeta(w, h, input_size / w, input_size / h, 0, 0)
    scale = min(input_size / w, input_size / h)
    new_w, new_h = max(1, int(w * scale)), max(1, int(h * scale))
    pad_x, pad_y = (input_size - new_w) // 2, (input_size - new_h) // 2
    canvas = np.full((input_size, input_size, 3), PAD_VALUE, dtype=np.uint8)
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    # The per-axis scale is what the resize actually did (new_w / w), not the nominal one.
    return canvas, ResizeMeta(w, h, new_w / w, new_h / h, pad_x, pad_y)


def to_tensor(images_rgb: list[np.ndarray]) -> torch.Tensor:
    """Stacks HxWx3 uint8 RGB canvases into a float tensor (B, 3, H, W) in [0, 1].

    The result is stored channels-last (a permuted NHWC buffer, no extra copy); call
    ``.contiguous()`` where plain NCHW memory is needed.
    """
    batch = torch.from_numpy(np.stack(images_rgb)).permute(0, 3, 1, 2)
    return batch.float().div_(255.0)


def preprocess_bgr(
    image_bgr: np.ndarray, input_size: int, letterbox: bool = True
) -> tuple[np.ndarray, ResizeMeta]:
    """BGR image (as cv2 reads it) -> RGB canvas ready for ``to_tensor``, plus its meta."""
    canvas, meta = resize_image(image_bgr, input_size, letterbox)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB), meta


def boxes_to_original(
    boxes: np.ndarray | torch.Tensor, meta: ResizeMeta, clip: bool = True
) -> np.ndarray | torch.Tensor:
    """Maps xyxy boxes from network-input pixels back to original-image pixels.

    Detections are mapped through ``Detections.to_original``, which calls this.

    Args:
        boxes: (N, 4) x1, y1, x2, y2 in input pixels, a numpy array or a tensor (not changed).
        meta: how the original image was resized onto the input.
        clip: clip to [0, W-1] x [0, H-1]: 0-based pixel coordinates, the convention of our
            JSON output (a VOC XML coordinate v is v - 1 there).

    Returns:
        (N, 4) xyxy in original pixels, of the type and dtype of ``boxes``.
    """
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)
    out[:, 0::2] = (out[:, 0::2] - meta.pad_x) / meta.scale_x
    out[:, 1::2] = (out[:, 1::2] - meta.pad_y) / meta.scale_y
    if clip:
        out[:, 0::2] = out[:, 0::2].clip(0, meta.width - 1)
        out[:, 1::2] = out[:, 1::2].clip(0, meta.height - 1)
    return out


def boxes_to_original_many(
    boxes: np.ndarray, image: np.ndarray, metas: list[ResizeMeta]
) -> np.ndarray:
    """``boxes_to_original`` (clipped) for the boxes of many images in one pass.

    The same float operations as one ``boxes_to_original`` call per image, so the results are
    equal bit for bit: each meta's scale is rounded to the boxes' dtype, as a Python float is
    when it meets a float32 array.

    Args:
        boxes: (N, 4) xyxy in network-input pixels (float32 or float64).
        image: (N,) index into ``metas`` of each box's image.
        metas: how each image was resized onto the input.

    Returns:
        (N, 4) xyxy in the original images' 0-based pixels, clipped to each image, of the
        dtype of ``boxes``.
    """
    dtype = boxes.dtype
    table = np.array(
        [(m.pad_x, m.pad_y, m.scale_x, m.scale_y, m.width - 1, m.height - 1) for m in metas],
        np.float64,
    ).reshape(-1, 6)[image]
    pad, scale, high = (table[:, k : k + 2].astype(dtype) for k in (0, 2, 4))
    out = np.empty_like(boxes)
    for corner in (slice(0, 2), slice(2, 4)):  # (x1, y1), then (x2, y2)
        out[:, corner] = np.clip((boxes[:, corner] - pad) / scale, dtype.type(0), high)
    return out


def boxes_to_input(boxes: torch.Tensor, meta: ResizeMeta) -> torch.Tensor:
    """Inverse of ``boxes_to_original`` (without clipping): original pixels -> input pixels."""
    out = boxes.clone()
    out[:, 0::2] = out[:, 0::2] * meta.scale_x + meta.pad_x
    out[:, 1::2] = out[:, 1::2] * meta.scale_y + meta.pad_y
    return out
