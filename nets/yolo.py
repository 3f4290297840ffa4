"""YOLOv4-tiny: backbone, FPN neck, two YOLO heads, attention on three places.

``YoloBody.forward`` only predicts: it returns raw maps, decoding lives in ``nets/decode.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from nets.attention import build_attention, resolve_phi
from nets.backbone import BasicConv, CSPDarknet53Tiny

# Anchor (w, h) pairs in pixels at 416 input, as in darknet's yolov4-tiny.cfg.
DEFAULT_ANCHORS: tuple[tuple[float, float], ...] = (
    (10, 14),
    (23, 27),
    (37, 58),
    (81, 82),
    (135, 169),
    (344, 319),
)
# Per output level (stride 32 first, then stride 16): which anchors it predicts.
# Anchor 0 is unused and anchor 3 is shared, exactly as darknet's cfg masks.
DEFAULT_ANCHORS_MASK: tuple[tuple[int, ...], ...] = ((3, 4, 5), (1, 2, 3))
STRIDES: tuple[int, ...] = (32, 16)


class Upsample(nn.Module):
    """1x1 conv then nearest-neighbour x2 (named like the reference: ``upsample.upsample.0``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.Sequential(
            BasicConv(in_channels, out_channels, 1), nn.Upsample(scale_factor=2, mode="nearest")
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x)


def yolo_head(channels: tuple[int, int], in_channels: int) -> nn.Sequential:
    """3x3 conv block, then the output Conv2d (with bias).

    ``(B, in_channels, H, W) -> (B, channels[1], H, W)``
    """
    return nn.Sequential(
        BasicConv(in_channels, channels[0], 3), nn.Conv2d(channels[0], channels[1], 1)
    )


class YoloBody(nn.Module):
    """YOLOv4-tiny with pluggable attention.

    Args:
        num_classes: number of classes C.
        phi: attention block, number or name (see ``nets.attention``).
        num_anchors: anchors per level A (3 for yolov4-tiny).

    ``forward(x)`` with ``x`` (B, 3, S, S), S a multiple of 32, RGB in [0, 1], returns
    ``[out_stride32 (B, A*(5+C), S/32, S/32), out_stride16 (B, A*(5+C), S/16, S/16)]``; per anchor
    the channels are tx, ty, tw, th, objectness, C class logits.
    """

    def __init__(self, num_classes: int, phi: int | str = 0, num_anchors: int = 3) -> None:
        super().__init__()
        self.phi, self.phi_name = resolve_phi(phi)
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        out_channels = num_anchors * (5 + num_classes)

        self.backbone = CSPDarknet53Tiny()
        self.conv_for_P5 = BasicConv(512, 256, 1)
        self.yolo_headP5 = yolo_head((512, out_channels), 256)
        self.upsample = Upsample(256, 128)
        self.yolo_headP4 = yolo_head((256, out_channels), 384)
        # Registered last, as in the reference, so the state-dict key order matches too.
        # phi 0 registers nothing (the lineage's phi-0 checkpoints have no attention keys).
        self.feat1_att = build_attention(self.phi, 256)
        self.feat2_att = build_attention(self.phi, 512)
        self.upsample_att = build_attention(self.phi, 128)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feat1, feat2 = self.backbone(x)  # 26x26x256, 13x13x512
        if self.feat1_att is not None:
            feat1 = self.feat1_att(feat1)
            feat2 = self.feat2_att(feat2)
        p5 = self.conv_for_P5(feat2)  # 13x13x512 -> 13x13x256
        out0 = self.yolo_headP5(p5)  # 13x13x(A*(5+C))
        p5_up = self.upsample(p5)  # 13x13x256 -> 26x26x128
        if self.upsample_att is not None:
            p5_up = self.upsample_att(p5_up)
        p4 = torch.cat([p5_up, feat1], dim=1)  # 26x26x384
        out1 = self.yolo_headP4(p4)  # 26x26x(A*(5+C))
        return [out0, out1]
