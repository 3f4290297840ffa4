"""CSPDarknet53-tiny, the backbone of darknet's yolov4-tiny.cfg.

Module and parameter names follow the reference implementation, so its checkpoints load
strictly; the darknet layer order is documented in ``utils/darknet.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class BasicConv(nn.Module):
    """Conv2d(bias=False) + BatchNorm2d + LeakyReLU(0.1), 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.activation = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn(self.conv(x)))


class ResblockBody(nn.Module):
    """One CSP block: returns ``(pooled, feat)``; ``feat`` has ``channels`` channels at the input
    resolution and ``pooled`` has ``2 * channels`` at half of it.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv1 = BasicConv(channels, channels, 3)
        self.conv2 = BasicConv(channels // 2, channels // 2, 3)
        self.conv3 = BasicConv(channels // 2, channels // 2, 3)
        self.conv4 = BasicConv(channels, channels, 1)
        self.maxpool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        route = x
        # darknet `route groups=2 group_id=1`: continue with the second half of the channels
        x = x[:, self.channels // 2 :]
        x = self.conv2(x)
        route1 = x
        x = self.conv3(x)
        feat = self.conv4(torch.cat([x, route1], dim=1))
        x = torch.cat([route, feat], dim=1)
        return self.maxpool(x), feat


class CSPDarknet53Tiny(nn.Module):
    """Backbone. ``forward`` returns ``(feat1, feat2)``:
    feat1 (B, 256, S/16, S/16) and feat2 (B, 512, S/32, S/32) for an input (B, 3, S, S).

    ``forward(x, after_blocks)`` applies ``after_blocks[i]`` (a module, or None for nothing) to
    the output of CSP block ``i + 1``: (B, 128, S/8, S/8), (B, 256, S/16, S/16) and
    (B, 512, S/32, S/32), each the block's concat after its max-pool.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = BasicConv(3, 32, 3, stride=2)
        self.conv2 = BasicConv(32, 64, 3, stride=2)
        self.resblock_body1 = ResblockBody(64)
        self.resblock_body2 = ResblockBody(128)
        self.resblock_body3 = ResblockBody(256)
        self.conv3 = BasicConv(512, 512, 3)

    def forward(
        self, x: torch.Tensor, after_blocks: Sequence[nn.Module | None] = (None, None, None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        after1, after2, after3 = after_blocks
        x = self.conv2(self.conv1(x))  # 416x416x3 -> 104x104x64
        x, _ = self.resblock_body1(x)  # -> 52x52x128
        if after1 is not None:
            x = after1(x)
        x, _ = self.resblock_body2(x)  # -> 26x26x256
        if after2 is not None:
            x = after2(x)
        x, feat1 = self.resblock_body3(x)  # -> 13x13x512, feat1 26x26x256
        if after3 is not None:
            x = after3(x)
        feat2 = self.conv3(x)  # 13x13x512
        return feat1, feat2
