"""Attention blocks selected by ``--phi`` and the registry that names them.

Every block maps ``(B, C, H, W) -> (B, C, H, W)`` and is built as ``cls(channels)``. The
numeric aliases are frozen: users' checkpoints and published comparisons depend on them. A new
block is one class decorated with ``@register_attention("name")``; it gets the next free number.

Parameter names follow the reference implementation so that its checkpoints load strictly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}
_PHI_NAMES: list[str] = []  # index == numeric phi


def register_attention(name: str):
    """Class decorator: registers an attention block under ``name`` and the next free number."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        key = name.lower()
        if key in _REGISTRY:
            raise ValueError(f"attention block {key!r} is already registered")
        _REGISTRY[key] = cls
        _PHI_NAMES.append(key)
        return cls

    return decorator


def attention_names() -> list[str]:
    """Registered block names in phi order (``attention_names()[phi]`` is phi's name)."""
    return list(_PHI_NAMES)


def describe_phis() -> str:
    """Every registered block as ``0=none, 1=se, ...`` (for help texts; the registry grows)."""
    return ", ".join(f"{n}={name}" for n, name in enumerate(_PHI_NAMES))


def resolve_phi(phi: int | str) -> tuple[int, str]:
    """Turns a phi given as number, numeric string or name (any case) into ``(number, name)``.

    Raises:
        ValueError: for an unknown value; the message lists every valid number and name.
    """
    key = str(phi).strip().lower()
    if key.isdigit() and int(key) < len(_PHI_NAMES):
        return int(key), _PHI_NAMES[int(key)]
    if key in _REGISTRY:
        return _PHI_NAMES.index(key), key
    valid = ", ".join(f"{i}={n}" for i, n in enumerate(_PHI_NAMES))
    raise ValueError(f"unknown phi {phi!r}; valid values: {valid}")


def build_attention(phi: int | str, channels: int) -> nn.Module | None:
    """Builds the block for ``phi`` on ``channels`` channels, or ``None`` for phi 0 (no keys)."""
    _, name = resolve_phi(phi)
    cls = _REGISTRY[name]
    return None if cls is Identity else cls(channels)


@register_attention("none")
class Identity(nn.Identity):
    """phi 0: no attention. Never instantiated inside the model, so it adds no state-dict keys."""

    def __init__(self, channels: int = 0) -> None:
        super().__init__()


@register_attention("se")
class SEBlock(nn.Module):
    """Squeeze-and-excitation: channel weights from a 2-layer MLP on the global average."""

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // ratio, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // ratio, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        weight = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * weight


class ChannelAttention(nn.Module):
    """CBAM channel branch: shared 1x1-conv MLP over average- and max-pooled descriptors."""

    def __init__(self, channels: int, ratio: int = 8) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // ratio, 1, bias=False)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // ratio, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(self.relu1(self.fc1(self.avg_pool(x))))
        mx = self.fc2(self.relu1(self.fc1(self.max_pool(x))))
        return self.sigmoid(avg + mx)  # (B, C, 1, 1)


class SpatialAttention(nn.Module):
    """CBAM spatial branch: 7x7 conv over [mean over C, max over C]."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(x, dim=1, keepdim=True)
        mx, _ = torch.max(x, dim=1, keepdim=True)
        return self.sigmoid(self.conv1(torch.cat([avg, mx], dim=1)))  # (B, 1, H, W)


@register_attention("cbam")
class CBAMBlock(nn.Module):
    """CBAM: channel attention, then spatial attention, each applied multiplicatively."""

    def __init__(self, channels: int, ratio: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        self.channelattention = ChannelAttention(channels, ratio)
        self.spatialattention = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channelattention(x)
        return x * self.spatialattention(x)


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA's adaptive 1-D kernel size: ``|log2(C) + b| / gamma``, truncated, made odd."""
    k = int(abs((math.log(channels, 2) + b) / gamma))
    return k if k % 2 else k + 1


@register_attention("eca")
class ECABlock(nn.Module):
    """Efficient channel attention: 1-D conv across the pooled channel descriptor."""

    def __init__(self, channels: int, gamma: int = 2, b: int = 1) -> None:
        super().__init__()
        k = eca_kernel_size(channels, gamma, b)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = self.avg_pool(x).view(b, 1, c)  # channels become the 1-D sequence
        weight = self.sigmoid(self.conv(y)).view(b, c, 1, 1)
        return x * weight


@register_attention("ca")
class CoordAttention(nn.Module):
    """Coordinate attention: separate attention maps along H and along W."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        mid = channels // reduction
        self.conv_1x1 = nn.Conv2d(channels, mid, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm2d(mid)
        self.F_h = nn.Conv2d(mid, channels, 1, bias=False)
        self.F_w = nn.Conv2d(mid, channels, 1, bias=False)
        self.sigmoid_h = nn.Sigmoid()
        self.sigmoid_w = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        x_h = torch.mean(x, dim=3, keepdim=True).permute(0, 1, 3, 2)  # (B, C, 1, H)
        x_w = torch.mean(x, dim=2, keepdim=True)  # (B, C, 1, W)
        y = self.relu(self.bn(self.conv_1x1(torch.cat([x_h, x_w], dim=3))))
        y_h, y_w = y.split([h, w], dim=3)
        a_h = self.sigmoid_h(self.F_h(y_h.permute(0, 1, 3, 2)))  # (B, C, H, 1)
        a_w = self.sigmoid_w(self.F_w(y_w))  # (B, C, 1, W)
        return x * a_h * a_w
