"""YOLOv4-tiny: backbone, FPN neck, two YOLO heads, attention on three places.

``YoloBody.forward`` only predicts: it returns raw maps, decoding lives in ``nets/decode.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from nets.attention import (
    ATTENTION_POINTS,
    check_block_output,
    parse_attention_args,
    parse_points,
)
from nets.backbone import BasicConv, CSPDarknet53Tiny
from nets.registry import build_attention, check_attention_args, resolve_phi

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
        phi: attention block, number or name (see ``nets.registry``).
        num_anchors: anchors per level A (3 for yolov4-tiny).
        attention_at: where the block is applied: a subset of ``ATTENTION_POINTS`` as a list or
            a comma-separated string (default feat1, feat2, upsample). Each point ``p`` gets its
            own block, the module ``<p>_att``.
        attention_args: the block's constructor options, a dict or ``"name=value,..."``.

    The default points keep the reference implementation's module names and state-dict key
    order (``feat1_att``, ``feat2_att``, ``upsample_att``, registered last); the others are
    registered after them. Each block is run once on a small input when the model is built
    (``nets.attention.check_block_output``), so a block that does not return its input's
    shape fails here rather than in a training step.

    Raises:
        ValueError: an unknown phi or point, an option the block does not take or a value it
            does not accept, or a block that fails on a tensor of its point's shape.

    ``forward(x)`` with ``x`` (B, 3, S, S), S a multiple of 32, RGB in [0, 1], returns
    ``[out_stride32 (B, A*(5+C), S/32, S/32), out_stride16 (B, A*(5+C), S/16, S/16)]``; per anchor
    the channels are tx, ty, tw, th, objectness, C class logits.
    """

    def __init__(
        self,
        num_classes: int,
        phi: int | str = 0,
        num_anchors: int = 3,
        attention_at: str | Iterable[str] | None = None,
        attention_args: str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.phi, self.phi_name = resolve_phi(phi)
        self.attention_at = parse_points(attention_at)
        self.attention_args = parse_attention_args(attention_args)
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        out_channels = num_anchors * (5 + num_classes)

        self.backbone = CSPDarknet53Tiny()
        self.conv_for_P5 = BasicConv(512, 256, 1)
        self.yolo_headP5 = yolo_head((512, out_channels), 256)
        self.upsample = Upsample(256, 128)
        self.yolo_headP4 = yolo_head((256, out_channels), 384)
        # every point's channel count at once: the error names the point that fails
        at = {p: ATTENTION_POINTS[p] for p in self.attention_at}
        check_attention_args(self.phi_name, self.attention_args, at)
        # Registered last, as in the reference, so the state-dict key order matches too.
        # phi 0 registers nothing (the lineage's phi-0 checkpoints have no attention keys).
        for point, channels in ATTENTION_POINTS.items():
            block = None
            if point in self.attention_at:
                block = build_attention(self.phi_name, channels, **self.attention_args)
            setattr(self, f"{point}_att", block)
        # after every block is built: the check draws no numbers from the global generator,
        # but leaving the init order alone keeps seeded weights as they were
        for point in self.attention_at:
            block = getattr(self, f"{point}_att")
            if block is not None:
                check_block_output(block, self.phi_name, point, ATTENTION_POINTS[point])

    def attention_blocks(self) -> dict[str, nn.Module]:
        """The attention modules the model holds, by module name (``feat1_att``, ...)."""
        names = (f"{p}_att" for p in ATTENTION_POINTS)
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def _attend(self, point: str, x: torch.Tensor) -> torch.Tensor:
        block = getattr(self, f"{point}_att")
        return x if block is None else block(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        csp = (self.csp1_att, self.csp2_att, self.csp3_att)
        feat1, feat2 = self.backbone(x, csp)  # 26x26x256, 13x13x512
        feat1 = self._attend("feat1", feat1)
        feat2 = self._attend("feat2", feat2)
        p5 = self.conv_for_P5(feat2)  # 13x13x512 -> 13x13x256
        out0 = self.yolo_headP5(self._attend("head13", p5))  # 13x13x(A*(5+C))
        p5_up = self.upsample(p5)  # 13x13x256 -> 26x26x128
        p5_up = self._attend("upsample", p5_up)
        p4 = torch.cat([p5_up, feat1], dim=1)  # 26x26x384
        out1 = self.yolo_headP4(self._attend("head26", p4))  # 26x26x(A*(5+C))
        return [out0, out1]
