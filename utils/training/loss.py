"""YOLO targets and loss, as two pieces with one contract each.

``build_targets`` (pure, vectorised, no loop over boxes) assigns each ground-truth box to one
anchor slot per level; ``YoloLoss`` decodes the predictions with the inference decoder, marks
ignored negatives, and returns ``{"loss_box", "loss_obj", "loss_cls", "loss"}``.

Targets come from ``data.dataset.collate``: (M, 6) image index, class id, x1, y1, x2, y2 in
input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss, sigmoid_focal_loss

from nets.decode import Geometry, cxcywh_to_xyxy, decode_boxes


@dataclass(frozen=True)
class LossConfig:
    """Loss weights; defaults are the reference implementation's."""

    box_weight: float = 0.05  # multiplies 1 - CIoU (mean over positives)
    obj_weight: float = 5.0  # times (input area / 416^2), times the level balance
    cls_weight: float = 1.0  # times num_classes / 80
    balance: tuple[float, ...] = (0.4, 1.0)  # objectness weight per level (stride 32, 16)
    ignore_thresh: float = 0.5  # negatives whose prediction overlaps a GT more are ignored
    label_smoothing: float = 0.0  # class targets y * (1 - eps) + eps / C
    focal: bool = False  # focal loss for objectness
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    # on: a box whose best anchor no level predicts (anchor 0 with darknet's masks) takes the
    # best anchor a level does predict; off: it has no positive (see TrainConfig's option)
    anchor_fallback: bool = False


@dataclass
class LevelTargets:
    """Positives of one level, as parallel index tensors of length P."""

    batch: torch.Tensor  # (P,) image index
    anchor: torch.Tensor  # (P,) slot in the level's mask
    gy: torch.Tensor  # (P,) cell row
    gx: torch.Tensor  # (P,) cell column
    boxes: torch.Tensor  # (P, 4) GT xyxy in input pixels
    labels: torch.Tensor  # (P,) class ids


def shape_iou(wh_a: torch.Tensor, wh_b: torch.Tensor) -> torch.Tensor:
    """IoU of (N, 2) and (K, 2) width/height pairs aligned at a corner -> (N, K)."""
    inter = torch.min(wh_a[:, None, 0], wh_b[None, :, 0]) * torch.min(
        wh_a[:, None, 1], wh_b[None, :, 1]
    )
    area_a = (wh_a[:, 0] * wh_a[:, 1])[:, None]
    area_b = (wh_b[:, 0] * wh_b[:, 1])[None, :]
    return inter / (area_a + area_b - inter)


def build_targets(
    targets: torch.Tensor,
    anchors: torch.Tensor,
    anchors_mask: Sequence[Sequence[int]],
    grid_sizes: Sequence[tuple[int, int]],
    input_size: int,
    *,
    fallback: bool = False,
) -> list[LevelTargets]:
    """Assigns every GT box to its best anchor (by shape IoU over all anchors) on each level
    whose mask holds that anchor, in the cell containing its centre.

    With ``fallback``, a box whose best anchor is in no mask (anchor 0 with darknet's masks)
    takes the best of the anchors some mask holds instead of getting no positive.

    When several boxes land on the same slot, the last one (in ``targets`` order) wins, as in
    a sequential loop.

    Args:
        targets: (M, 6) image index, class, x1, y1, x2, y2 (input pixels).
        anchors: (K, 2) all anchors, pixels at ``input_size``.
        anchors_mask: per level, the anchor indices it predicts.
        grid_sizes: per level, (H, W) of its output map.
    """
    device = targets.device
    wh = (targets[:, 4:6] - targets[:, 2:4]).clamp(min=1e-6)
    iou = shape_iou(wh, anchors.to(device))
    if fallback:  # anchors no mask holds can never be the best
        used = torch.zeros(len(anchors), dtype=torch.bool, device=device)
        used[[i for mask in anchors_mask for i in mask]] = True
        iou = iou.masked_fill(~used, -1.0)
    best = iou.argmax(1) if len(targets) else targets.new_zeros(0).long()
    centre = (targets[:, 2:4] + targets[:, 4:6]) / 2
    levels = []
    for mask, (h, w) in zip(anchors_mask, grid_sizes):
        mask_t = torch.as_tensor(list(mask), device=device)
        in_level = best[:, None] == mask_t[None, :]  # (M, A)
        rows, slots = in_level.nonzero(as_tuple=True)
        t = targets[rows]
        gx = (centre[rows, 0] * w / input_size).long().clamp(0, w - 1)
        gy = (centre[rows, 1] * h / input_size).long().clamp(0, h - 1)
        b = t[:, 0].long()
        # last writer wins: keep the last row of every (image, slot, cell)
        flat = ((b * len(mask) + slots) * h + gy) * w + gx
        order = torch.arange(len(flat), device=device)
        last = torch.full(
            (int(flat.max()) + 1 if len(flat) else 0,), -1, dtype=torch.long, device=device
        ).scatter_reduce(0, flat, order, "amax")
        keep = last[flat] == order if len(flat) else order.bool()
        levels.append(
            LevelTargets(b[keep], slots[keep], gy[keep], gx[keep], t[keep, 2:6], t[keep, 1].long())
        )
    return levels


class YoloLoss(torch.nn.Module):
    """YOLOv4-tiny loss.

    ``forward(outputs, targets)`` with ``outputs`` the model's raw maps (stride 32 first) and
    ``targets`` (M, 6) returns a dict of scalar tensors ``loss_box``, ``loss_obj``,
    ``loss_cls`` (each already weighted) and their sum ``loss``.

    Args:
        num_classes: classes the head predicts.
        geometry: anchors (pixels), masks, the training input side and the grid sensitivity
            (the decoder's, so that training and inference decode alike).
        cfg: loss weights and options (default: ``LossConfig()``).
    """

    def __init__(
        self, num_classes: int, geometry: Geometry, *, cfg: LossConfig | None = None
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer(
            "anchors", torch.tensor(geometry.anchors, dtype=torch.float32), persistent=False
        )
        self.anchors_mask = [list(m) for m in geometry.anchors_mask]
        self.input_size = geometry.input_size
        self.scale_x_y = geometry.scale_x_y
        self.cfg = cfg or LossConfig()

    def forward(
        self, outputs: Sequence[torch.Tensor], targets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        targets = targets.to(outputs[0].device, torch.float32)
        grid_sizes = [tuple(o.shape[2:]) for o in outputs]
        assigned = build_targets(
            targets,
            self.anchors,
            self.anchors_mask,
            grid_sizes,
            self.input_size,
            fallback=cfg.anchor_fallback,
        )
        obj_weight = cfg.obj_weight * self.input_size**2 / 416**2
        cls_weight = cfg.cls_weight * self.num_classes / 80
        zero = outputs[0].new_zeros(())
        loss_box, loss_obj, loss_cls = zero.clone(), zero.clone(), zero.clone()
        gt_boxes, gt_batch = targets[:, 2:6], targets[:, 0].long()
        for level, (out, mask, pos) in enumerate(zip(outputs, self.anchors_mask, assigned)):
            b, _, h, w = out.shape
            pred = out.float().view(b, len(mask), 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2)
            boxes = cxcywh_to_xyxy(
                decode_boxes(pred, self.anchors[mask], self.input_size, self.scale_x_y)
            )
            obj_target = torch.zeros_like(pred[..., 4])
            noobj = self._not_ignored(boxes.detach(), gt_boxes, gt_batch)
            if len(pos.batch):
                index = (pos.batch, pos.anchor, pos.gy, pos.gx)
                loss_box = loss_box + cfg.box_weight * complete_box_iou_loss(
                    boxes[index], pos.boxes, reduction="mean"
                )
                cls_target = F.one_hot(pos.labels, self.num_classes).float()
                if cfg.label_smoothing:
                    cls_target = (
                        cls_target * (1 - cfg.label_smoothing)
                        + cfg.label_smoothing / self.num_classes
                    )
                loss_cls = loss_cls + cls_weight * F.binary_cross_entropy_with_logits(
                    pred[index][:, 5:], cls_target
                )
                obj_target[index] = 1.0
                noobj[index] = True  # a positive is always in the objectness loss
            selected = noobj
            logits, goal = pred[..., 4][selected], obj_target[selected]
            if cfg.focal:
                obj = sigmoid_focal_loss(logits, goal, cfg.focal_alpha, cfg.focal_gamma, "mean")
            else:
                obj = F.binary_cross_entropy_with_logits(logits, goal)
            balance = cfg.balance[level] if level < len(cfg.balance) else 1.0
            loss_obj = loss_obj + obj_weight * balance * obj
        total = loss_box + loss_obj + loss_cls
        return {"loss_box": loss_box, "loss_obj": loss_obj, "loss_cls": loss_cls, "loss": total}

    def _not_ignored(self, boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_batch: torch.Tensor):
        """(B, A, H, W) True where a cell may be a negative: its predicted box overlaps no GT
        of its image by more than ``ignore_thresh``. GTs are padded per image, so memory is
        B x cells x (max boxes per image), not B x cells x all boxes."""
        b = boxes.shape[0]
        flat = boxes.reshape(b, -1, 4)
        if len(gt_boxes) == 0:
            return torch.ones(flat.shape[:2], dtype=torch.bool, device=boxes.device).view(
                boxes.shape[:-1]
            )
        counts = torch.bincount(gt_batch, minlength=b)
        order = torch.argsort(gt_batch, stable=True)
        slot = (
            torch.arange(len(gt_batch), device=boxes.device)
            - (torch.cumsum(counts, 0) - counts)[gt_batch[order]]
        )
        padded = boxes.new_zeros(b, int(counts.max()), 4)
        valid = torch.zeros(b, padded.shape[1], dtype=torch.bool, device=boxes.device)
        padded[gt_batch[order], slot] = gt_boxes[order]
        valid[gt_batch[order], slot] = True
        p = flat[:, :, None, :]  # (B, N, 1, 4)
        g = padded[:, None, :, :]  # (B, 1, G, 4)
        # x and y separately and in place: the (B, N, G) products dominate this loss's time
        inter = torch.min(p[..., 2], g[..., 2]).sub_(torch.max(p[..., 0], g[..., 0])).clamp_(min=0)
        inter *= torch.min(p[..., 3], g[..., 3]).sub_(torch.max(p[..., 1], g[..., 1])).clamp_(min=0)
        area_p = (flat[..., 2] - flat[..., 0]) * (flat[..., 3] - flat[..., 1])
        area_g = (padded[..., 2] - padded[..., 0]) * (padded[..., 3] - padded[..., 1])
        # iou > t  <=>  inter * (1 + t) > t * (area_p + area_g), without a division
        t = self.cfg.ignore_thresh
        over = inter.mul_(1 + t) > (area_p[:, :, None] + area_g[:, None, :]).mul_(t)
        over &= valid[:, None, :]
        return (~over.any(2)).view(boxes.shape[:-1])
