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
        return out, letterbox_layout(w, h, input_size, letterbox=False)
    new_w, new_h, pad_x, pad_y = _letterbox_sizes(w, h, input_size)
    canvas = np.full((input_size, input_size, 3), PAD_VALUE, dtype=np.uint8)
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return canvas, letterbox_layout(w, h, input_size)


def _letterbox_sizes(width: int, height: int, input_size: int) -> tuple[int, int, int, int]:
    """Letterboxed: the resized image's width and height and its offsets on the canvas."""
    scale = min(input_size / width, input_size / height)
    new_w, new_h = max(1, int(width * scale)), max(1, int(height * scale))
    return new_w, new_h, (input_size - new_w) // 2, (input_size - new_h) // 2


def letterbox_layout(
    width: int, height: int, input_size: int, letterbox: bool = True
) -> ResizeMeta:
    """Where ``resize_image`` puts a ``width x height`` image on the canvas (the ``ResizeMeta``
    it returns), without resizing anything."""
    if not letterbox:
        return ResizeMeta(width, height, input_size / width, input_size / height, 0, 0)
    new_w, new_h, pad_x, pad_y = _letterbox_sizes(width, height, input_size)
    # The per-axis scale is what the resize actually did (new_w / w), not the nominal one.
    return ResizeMeta(width, height, new_w / width, new_h / height, pad_x, pad_y)


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


class InputCanvas:
    """``preprocess_bgr`` followed by ``to_tensor`` for one image at a time, into buffers
    allocated once: the RGB canvas, whose grey padding is only redrawn when the layout
    changes, and the float input tensor. The same values bit for bit; inside the end-to-end
    loop the fresh 0.5 MB canvas and 2 MB tensor per image cost page faults and cache misses
    that the forward pass then pays for too.

    Not for sharing: each call overwrites the tensor the previous call returned, so use it
    where the forward pass runs before the next image is prepared (one thread).

    Args:
        input_size: side of the square network input.
        letterbox: as ``resize_image``.
        channels_last: the tensor's memory layout (NHWC, as the torch path runs); else plain
            NCHW, as ONNX Runtime reads it.
    """

    def __init__(self, input_size: int, letterbox: bool = True, channels_last: bool = True):
        self.input_size, self.letterbox, self.channels_last = input_size, letterbox, channels_last
        self.canvas = np.full((input_size, input_size, 3), PAD_VALUE, np.uint8)
        self._pixels = torch.from_numpy(self.canvas)
        shape = (1, 3, input_size, input_size)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.tensor = torch.empty(shape).contiguous(memory_format=fmt)
        self._layout: tuple[int, int, int, int] | None = None

    def __call__(
        self,
        image_bgr: np.ndarray,
        original_size: tuple[int, int] | None = None,
        interpolation: int = cv2.INTER_LINEAR,
    ) -> tuple[torch.Tensor, ResizeMeta]:
        """One BGR image -> the (1, 3, S, S) float input in [0, 1] and its meta.

        Args:
            image_bgr: uint8 (H, W, 3) as cv2 reads it.
            original_size: ``(width, height)`` of the image ``image_bgr`` was decoded from at
                a reduced scale (``read_image_reduced``): the layout and the meta are then the
                full-size image's, so boxes map back onto it (None: ``image_bgr``'s own).

        Returns:
            The reused input tensor (overwritten by the next call) and the ``ResizeMeta``.
        """
        h, w = image_bgr.shape[:2]
        width, height = original_size or (w, h)
        meta = letterbox_layout(width, height, self.input_size, self.letterbox)
        if self.letterbox:
            new_w, new_h = _letterbox_sizes(width, height, self.input_size)[:2]
        else:
            new_w = new_h = self.input_size
        if self._layout is None or (new_w, new_h, meta.pad_x, meta.pad_y) != self._layout:
            self.canvas[:] = PAD_VALUE
            self._layout = (new_w, new_h, meta.pad_x, meta.pad_y)
        region = self.canvas[meta.pad_y : meta.pad_y + new_h, meta.pad_x : meta.pad_x + new_w]
        resized = cv2.resize(image_bgr, (new_w, new_h), dst=region, interpolation=interpolation)
        if resized is not region:  # OpenCV allocated its own output after all
            region[:] = resized
        cv2.cvtColor(region, cv2.COLOR_BGR2RGB, dst=region)
        # one pass: uint8 HWC -> float CHW in [0, 1], as to_tensor's .float().div_(255.0)
        torch.div(self._pixels.permute(2, 0, 1)[None], 255.0, out=self.tensor)
        return self.tensor, meta


def decode_reduction(width: int, height: int, input_size: int, letterbox: bool = True) -> int:
    """By how much a ``width x height`` JPEG may be decoded smaller (1, 2 or 4; libjpeg scales
    in the DCT) for a network input of ``input_size``: the largest factor that keeps the
    reduced image at least as large as what is drawn on the canvas, so the resize still only
    shrinks. Letterboxed, the longer side decides (it becomes ``input_size``); stretched,
    the shorter one."""
    ratio = (max(width, height) if letterbox else min(width, height)) / input_size
    return next((f for f in (4, 2) if ratio >= f), 1)
