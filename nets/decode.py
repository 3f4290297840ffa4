"""Raw YOLO maps -> boxes, and post-processing (score filter + NMS).

``Geometry`` is what turns raw maps into pixels (anchors, masks, input side); it is passed as
one object to the decoder, the loss, the ONNX and darknet exports and the evaluation.
``decode_outputs`` is shared by inference and the loss so both use the model's ``scale_x_y``.
``detect`` is the one post-processing step of inference and evaluation: raw maps in,
``Detections`` (network-input pixels) out; ``detect_batch`` gives the same detections for a
whole batch as flat arrays (evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torchvision.ops import batched_nms, nms

from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK
from utils.detections import Detections
from utils.errors import InputError

SCALE_X_Y = 1.05  # darknet yolov4-tiny.cfg `scale_x_y`: the official weights were trained with it
# The reference implementation's loss and decoder have no grid sensitivity, so its .pth files
# were trained (and are decoded there) with the plain sigmoid offset.
REFERENCE_SCALE_X_Y = 1.0


@dataclass(frozen=True)
class Geometry:
    """The head's geometry: which anchor each prediction refines, at which input size, and how
    far a centre may leave its cell.

    Sequences are stored as tuples (lists given are converted), so a ``Geometry`` is
    immutable and hashable; derive another one with ``dataclasses.replace`` or ``at_size``.

    Attributes:
        anchors: all anchors, (w, h) pairs in pixels at the network input.
        anchors_mask: per output level (stride 32 first, then 16), indices into ``anchors``.
        input_size: network input side in pixels; a level's stride is input_size / its width.
        scale_x_y: grid sensitivity s: cx = (sigmoid(tx) * s - (s - 1) / 2 + gx) * stride.
            A property of how the weights were trained: 1.05 for darknet's, 1.0 for the
            reference implementation's ``.pth`` files; training and decoding must agree.
    """

    anchors: tuple[tuple[float, float], ...] = DEFAULT_ANCHORS
    anchors_mask: tuple[tuple[int, ...], ...] = DEFAULT_ANCHORS_MASK
    input_size: int = 416
    scale_x_y: float = SCALE_X_Y

    def __post_init__(self) -> None:
        if not 1.0 <= self.scale_x_y <= 2.0:
            raise InputError(f"scale_x_y must be in [1, 2], got {self.scale_x_y}")
        object.__setattr__(self, "scale_x_y", float(self.scale_x_y))
        object.__setattr__(self, "anchors", tuple(tuple(a) for a in self.anchors))
        object.__setattr__(self, "anchors_mask", tuple(tuple(m) for m in self.anchors_mask))
        object.__setattr__(self, "input_size", int(self.input_size))

    def at_size(self, input_size: int | None) -> Geometry:
        """The same anchors at another input side (``None`` keeps this one's)."""
        if input_size is None or input_size == self.input_size:
            return self
        return replace(self, input_size=input_size)


def decode_outputs(outputs: Sequence[torch.Tensor], geometry: Geometry) -> torch.Tensor:
    """Decodes every level into one tensor of candidate boxes.

    Args:
        outputs: per level (B, A*(5+C), H, W) raw maps, in the order of
            ``geometry.anchors_mask``.
        geometry: anchors (pixels), masks, the input side the maps were computed at, and the
            grid sensitivity.

    Returns:
        (B, N, 5+C) with N = sum over levels of A*H*W, ordered level, anchor, row, column:
        cx, cy, w, h in input pixels, objectness probability, C class probabilities.
    """
    anchors, input_size = geometry.anchors, geometry.input_size
    decoded = []
    for out, mask in zip(outputs, geometry.anchors_mask):
        b, _, h, w = out.shape
        pred = out.view(b, len(mask), -1, h, w).permute(0, 1, 3, 4, 2)  # (B, A, H, W, 5+C)
        anchor_wh = torch.tensor([anchors[i] for i in mask], device=out.device, dtype=out.dtype)
        boxes = decode_boxes(pred, anchor_wh, input_size, geometry.scale_x_y)
        level = torch.cat([boxes, torch.sigmoid(pred[..., 4:])], -1)
        decoded.append(level.reshape(b, -1, level.shape[-1]))
    return torch.cat(decoded, 1)


def decode_boxes(
    pred: torch.Tensor, anchor_wh: torch.Tensor, input_size: int, scale_x_y: float = SCALE_X_Y
) -> torch.Tensor:
    """Boxes of one level: (B, A, H, W, >=4) raw tx, ty, tw, th -> (B, A, H, W, 4) cx, cy, w, h
    in input pixels. ``anchor_wh`` (A, 2) in pixels. Shared by inference and the loss."""
    _, na, h, w = pred.shape[:4]
    grid_y, grid_x = torch.meshgrid(
        torch.arange(h, device=pred.device, dtype=pred.dtype),
        torch.arange(w, device=pred.device, dtype=pred.dtype),
        indexing="ij",
    )
    wh = anchor_wh.view(1, na, 1, 1, 2)
    return _cell_boxes(
        pred, grid_x, grid_y, wh, input_size / w, input_size / h, scale_x_y=scale_x_y
    )


def _cell_boxes(raw, grid_x, grid_y, anchor_wh, stride_x, stride_y, *, scale_x_y) -> torch.Tensor:
    """cx, cy, w, h in pixels from raw (..., >=4) predictions and their cells' grid
    coordinates and anchors (broadcast against ``raw[..., 0]`` and ``raw[..., :2]``):
    cx = (sigmoid(tx) * s - (s - 1) / 2 + gx) * stride, w = exp(tw) * anchor_w."""
    xy = torch.sigmoid(raw[..., :2]) * scale_x_y - (scale_x_y - 1) / 2
    wh = torch.exp(raw[..., 2:4]) * anchor_wh
    cx = (xy[..., 0] + grid_x) * stride_x
    cy = (xy[..., 1] + grid_y) * stride_y
    return torch.stack([cx, cy, wh[..., 0], wh[..., 1]], -1)


def decode_candidates(
    outputs: Sequence[torch.Tensor],
    geometry: Geometry,
    *,
    min_objectness: float = 0.0,
) -> list[torch.Tensor]:
    """``decode_outputs`` restricted to the predictions whose objectness can pass a score
    threshold.

    A score is objectness * class probability <= objectness, so with ``min_objectness`` set to
    the score threshold nothing that could pass is dropped; only the few kept cells are
    decoded (at 416 and conf 0.25: tens of the 2,535 rows). On a 2-core CPU this took
    ``Detector.postprocess`` from 1.2 to 0.9 ms inside the end-to-end loop (0.45 to 0.25 ms
    timed alone).

    Args:
        outputs: per level (B, A*(5+C), H, W) raw maps, as for ``decode_outputs``.
        geometry: anchors, masks, input side and grid sensitivity of the maps.
        min_objectness: rows whose objectness probability is below this are left out.

    Returns:
        Per image (K_i, 5+C): the rows of ``decode_outputs`` (cx, cy, w, h in input pixels,
        objectness, class probabilities) with objectness >= ``min_objectness``, in the same
        order and with the same values.
    """
    batch = outputs[0].shape[0]
    parts: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    for out, mask in zip(outputs, geometry.anchors_mask):
        rows, image_index = _level_candidates(out, mask, geometry, min_objectness)
        counts = torch.bincount(image_index, minlength=batch).tolist()
        for image, chunk in enumerate(rows.split(counts)):
            parts[image].append(chunk)
    return [torch.cat(p) for p in parts]


def _level_candidates(
    out: torch.Tensor, mask: Sequence[int], geometry: Geometry, min_objectness: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One level's rows of ``decode_outputs`` with objectness >= ``min_objectness``, for the
    whole batch: (K, 5+C) ordered image, anchor, row, column, and each row's image index (K,).
    Shared by ``decode_candidates`` and ``detect_batch`` so both compute every value on the
    same tensors (CPU kernels may round differently on different shapes)."""
    # 1e-6 below the threshold: the final score test decides, this one only must not drop
    # a row whose objectness rounds differently when computed on the gathered values
    floor = min_objectness * (1 - 1e-6)
    input_size = geometry.input_size
    b, _, h, w = out.shape
    pred = out.view(b, len(mask), -1, h, w)
    bi, ai, yi, xi = (torch.sigmoid(pred[:, :, 4]) >= floor).nonzero(as_tuple=True)
    raw = pred[bi, ai, :, yi, xi]  # (K, 5+C), ordered image, anchor, row, column
    anchor_wh = torch.tensor(
        [geometry.anchors[i] for i in mask], device=out.device, dtype=out.dtype
    )
    boxes = _cell_boxes(
        raw,
        xi.to(raw.dtype),
        yi.to(raw.dtype),
        anchor_wh[ai],
        input_size / w,
        input_size / h,
        scale_x_y=geometry.scale_x_y,
    )
    return torch.cat([boxes, torch.sigmoid(raw[:, 4:])], 1), bi


def cxcywh_to_xyxy(boxes_cxcywh: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def _scored(
    rows: torch.Tensor, conf_thresh: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each candidate's score (objectness * its best class's probability, as darknet and
    OpenCV DNN), that class, and the mask of the scores of at least ``conf_thresh``."""
    cls_prob, labels = rows[:, 5:].max(1)
    scores = rows[:, 4] * cls_prob
    return scores, labels, scores >= conf_thresh


def _nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    nms_thresh: float,
    agnostic: bool,
) -> torch.Tensor:
    """Indices of the boxes NMS keeps, sorted by decreasing score; class-wise unless
    ``agnostic``."""
    if agnostic:
        return nms(boxes, scores, nms_thresh)
    return batched_nms(boxes, scores, labels, nms_thresh)


def postprocess(
    decoded: torch.Tensor | Sequence[torch.Tensor],
    *,
    conf_thresh: float = 0.25,
    nms_thresh: float = 0.45,
    max_det: int | None = 300,
    agnostic: bool = False,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] = (),
    input_size: int = 0,
) -> list[Detections]:
    """Score filter and NMS per image.

    Each candidate keeps its best class; its score is objectness * class probability (as
    darknet and OpenCV DNN). NMS is class-wise (``batched_nms``) unless ``agnostic``.

    Args:
        decoded: (B, N, 5+C) from ``decode_outputs``, or per image (N_i, 5+C) from
            ``decode_candidates``; boxes cx, cy, w, h in input pixels.
        conf_thresh: minimum score kept.
        nms_thresh: IoU above which a lower-scored box is suppressed.
        max_det: detections kept per image after NMS (None keeps all).
        agnostic: NMS across classes instead of per class.
        classes: keep only these class ids (None keeps all).
        class_names: names by class id, attached to the results.
        input_size: network input side, recorded as the results' width and height.

    Returns:
        Per image a ``Detections`` in network-input pixels: ``boxes`` (K, 4) float32 xyxy,
        ``scores`` (K,) float32, ``labels`` (K,) int64, sorted by decreasing score,
        K <= max_det.
    """
    results = []
    for pred in decoded:
        scores, labels, keep = _scored(pred, conf_thresh)
        if classes is not None:
            allowed = torch.as_tensor(list(classes), device=pred.device)
            keep &= torch.isin(labels, allowed)
        boxes = cxcywh_to_xyxy(pred[keep, :4])
        scores, labels = scores[keep], labels[keep]
        idx = _nms(boxes, scores, labels, nms_thresh, agnostic)[:max_det]
        results.append(
            Detections(
                boxes=boxes[idx].float().cpu().numpy(),
                scores=scores[idx].float().cpu().numpy(),
                labels=labels[idx].cpu().numpy(),
                class_names=class_names,
                width=input_size,
                height=input_size,
            )
        )
    return results


def detect(
    outputs: Sequence[torch.Tensor],
    geometry: Geometry,
    *,
    conf_thresh: float = 0.25,
    nms_thresh: float = 0.45,
    max_det: int | None = 300,
    agnostic: bool = False,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] = (),
) -> list[Detections]:
    """Raw maps -> per image detections: ``decode_candidates`` then ``postprocess``.

    The one post-processing step of inference and evaluation; half-precision maps are decoded
    in fp32. Map the results to the original images with ``Detections.to_original``.

    Args:
        outputs: per level (B, A*(5+C), H, W) raw maps, as the model returns them.
        geometry: anchors, masks and the input side the maps were computed at.
        conf_thresh, nms_thresh, max_det, agnostic, classes, class_names: as for
            ``postprocess``.

    Returns:
        Per image a ``Detections`` in network-input pixels (xyxy, width = height =
        ``geometry.input_size``), sorted by decreasing score.
    """
    candidates = decode_candidates(
        [o.float() for o in outputs], geometry, min_objectness=conf_thresh
    )
    return postprocess(
        candidates,
        conf_thresh=conf_thresh,
        nms_thresh=nms_thresh,
        max_det=max_det,
        agnostic=agnostic,
        classes=classes,
        class_names=class_names,
        input_size=geometry.input_size,
    )


@dataclass(frozen=True, eq=False)
class BatchDetections:
    """A batch's detections as flat host arrays: image by image in batch order, each image's
    by decreasing score, in network-input pixels (the rows of ``detect``'s per-image results,
    one image after the other).

    Attributes:
        image: (K,) int64 position in the batch of each detection's image.
        boxes: (K, 4) float32 x1, y1, x2, y2.
        scores: (K,) float32, objectness * class probability.
        labels: (K,) int64 class ids.
    """

    image: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def detect_batch(
    outputs: Sequence[torch.Tensor],
    geometry: Geometry,
    *,
    conf_thresh: float = 0.25,
    nms_thresh: float = 0.45,
    max_det: int | None = 300,
    agnostic: bool = False,
) -> BatchDetections:
    """``detect`` for a whole batch at once: the same detections, values and order, as flat
    arrays instead of one ``Detections`` per image (evaluation's hot loop).

    Decoding, the score filter and the box conversion run once on the whole batch, and each
    array comes to the host in one copy; on a busy CPU every small tensor operation can wait
    milliseconds for a thread, so 16 images cost one operation instead of 16. Only NMS runs
    per image, because no single call is exact across images: up to 1,000 boxes
    ``batched_nms`` keeps classes apart by shifting each class's boxes by a multiple of the
    image's largest coordinate, so the IoUs it compares are those of the shifted float32
    boxes; shifting by image as well would round them differently, flip decisions at the IoU
    threshold and change the mAP.

    Args:
        outputs: per level (B, A*(5+C), H, W) raw maps, as the model returns them.
        geometry: anchors, masks, input side and grid sensitivity of the maps.
        conf_thresh, nms_thresh, max_det, agnostic: as for ``postprocess``.

    Returns:
        A ``BatchDetections``; image ``i``'s rows equal ``detect(outputs, ...)[i]``.
    """
    outputs = [o.float() for o in outputs]
    batch = outputs[0].shape[0]
    levels = [
        _level_candidates(out, mask, geometry, conf_thresh)
        for out, mask in zip(outputs, geometry.anchors_mask)
    ]
    rows = torch.cat([r for r, _ in levels])
    image = torch.cat([i for _, i in levels])
    # Per image: level, anchor, row, column, as ``decode_candidates`` orders them; NMS breaks
    # score ties by position, so the order is part of the result.
    order = torch.argsort(image, stable=True)
    rows, image = rows[order], image[order]
    scores, labels, keep = _scored(rows, conf_thresh)
    boxes = cxcywh_to_xyxy(rows[keep, :4])
    scores, labels, image = scores[keep], labels[keep], image[keep]
    kept, start = [], 0
    for count in torch.bincount(image, minlength=batch).tolist():
        if count:
            part = slice(start, start + count)
            idx = _nms(boxes[part], scores[part], labels[part], nms_thresh, agnostic)
            kept.append(idx[:max_det] + start)
        start += count
    idx = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long, device=boxes.device)
    return BatchDetections(
        image=image[idx].cpu().numpy(),
        boxes=boxes[idx].cpu().numpy(),
        scores=scores[idx].cpu().numpy(),
        labels=labels[idx].cpu().numpy(),
    )
