"""The built-in attention blocks, registered in phi order: the lineage's five (0 none, 1 se,
2 cbam, 3 eca, 4 ca; numbers frozen), then bam, cbam_plus, simam and nonlocal (5-8).

Each block is built as ``Block(channels, **options)`` (options by keyword, with the published
values as defaults, and what each accepts in the class attribute ``OPTIONS``) and maps
(B, C, H, W) -> (B, C, H, W). ``nets.attention`` imports this module, so the registry
(``nets.registry``) holds them wherever a model is built. Parameter names follow the reference
implementation so that its checkpoints load strictly.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from nets.registry import BlockOption, register_attention

# what the options accept (checked when the settings are read, before any work)
AT_LEAST_ONE = BlockOption(int, lambda v: v >= 1, "an integer >= 1")
# a reduction of the width C to C // value: it must leave at least one channel
CHANNEL_REDUCTION = BlockOption(int, lambda v: v >= 1, "an integer >= 1", at_most_channels=True)
# 'same' padding of kernel_size // 2 keeps the map's size only for an odd kernel
ODD_KERNEL = BlockOption(int, lambda v: v >= 1 and v % 2 == 1, "an odd integer >= 1")


@register_attention("none")
class Identity(nn.Identity):
    """phi 0: no attention. Never instantiated inside the model, so it adds no state-dict keys."""

    def __init__(self, channels: int = 0) -> None:
        super().__init__()


@register_attention("se")
class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018): channel weights from a 2-layer MLP on
    the global average."""

    OPTIONS: ClassVar[dict[str, BlockOption]] = {"reduction": CHANNEL_REDUCTION}

    def __init__(self, channels: int, *, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
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
    """CBAM (Woo et al., ECCV 2018): channel attention, then spatial attention, each applied
    multiplicatively."""

    OPTIONS: ClassVar[dict[str, BlockOption]] = {
        "ratio": CHANNEL_REDUCTION,
        "kernel_size": ODD_KERNEL,
    }

    def __init__(self, channels: int, *, ratio: int = 8, kernel_size: int = 7) -> None:
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
    """Efficient channel attention (ECA-Net, Wang et al., CVPR 2020): 1-D conv across the
    pooled channel descriptor."""

    OPTIONS: ClassVar[dict[str, BlockOption]] = {
        "gamma": AT_LEAST_ONE,
        "b": BlockOption(int, valid="an integer"),
    }

    def __init__(self, channels: int, *, gamma: int = 2, b: int = 1) -> None:
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
    """Coordinate attention (Hou et al., CVPR 2021): separate attention maps along H and
    along W."""

    OPTIONS: ClassVar[dict[str, BlockOption]] = {"reduction": CHANNEL_REDUCTION}

    def __init__(self, channels: int, *, reduction: int = 16) -> None:
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


def _fold_conv_bn(owner: nn.Module, conv_name: str, bn_name: str) -> None:
    """Folds the eval-mode BatchNorm ``owner.<bn_name>`` into the conv ``owner.<conv_name>``
    that feeds it and replaces the BN by an identity (no-op once folded)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    bn = getattr(owner, bn_name)
    if isinstance(bn, nn.BatchNorm2d):
        setattr(owner, conv_name, fuse_conv_bn_eval(getattr(owner, conv_name), bn))
        setattr(owner, bn_name, nn.Identity())


@register_attention("bam")
class BAMBlock(nn.Module):
    """Bottleneck attention module (Park et al., BMVC 2018).

    ``F' = F * (1 + sigmoid(Mc(F) + Ms(F)))``, the two maps broadcast to (B, C, H, W):

    * channel ``Mc(F) = BN(W1 relu(W0 avgpool(F) + b0))``, (B, C, 1, 1): an MLP with one
      hidden layer of ``C / reduction`` units;
    * spatial ``Ms(F) = BN(f3 relu(f2 relu(f1 relu(f0 F))))``, (B, 1, H, W): ``f0`` a 1x1
      conv to ``C / reduction`` channels, ``f1`` and ``f2`` 3x3 convs with dilation
      ``dilation``, ``f3`` a 1x1 conv to one map.

    The layer right before each BatchNorm has no bias (the BN's shift absorbs it). Both BNs
    normalise over the batch in training, so training needs batches of 2 or more images.
    ``fold_batchnorm`` folds them into those layers for deployment.
    """

    # the hidden width is max(C // reduction, 1): any reduction leaves a channel
    OPTIONS: ClassVar[dict[str, BlockOption]] = {
        "reduction": AT_LEAST_ONE,
        "dilation": AT_LEAST_ONE,
    }

    def __init__(self, channels: int, *, reduction: int = 16, dilation: int = 4) -> None:
        super().__init__()
        mid = max(channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.channel_fc0 = nn.Conv2d(channels, mid, 1)
        self.channel_fc1 = nn.Conv2d(mid, channels, 1, bias=False)
        self.channel_bn = nn.BatchNorm2d(channels)
        self.spatial_reduce = nn.Conv2d(channels, mid, 1)
        self.spatial_dilated1 = nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation)
        self.spatial_dilated2 = nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation)
        self.spatial_out = nn.Conv2d(mid, 1, 1, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1)

    def channel_map(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.relu(self.channel_fc0(self.avg_pool(x)))
        return self.channel_bn(self.channel_fc1(hidden))  # (B, C, 1, 1)

    def spatial_map(self, x: torch.Tensor) -> torch.Tensor:
        s = self.relu(self.spatial_reduce(x))
        s = self.relu(self.spatial_dilated1(s))
        s = self.relu(self.spatial_dilated2(s))
        return self.spatial_bn(self.spatial_out(s))  # (B, 1, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + torch.sigmoid(self.channel_map(x) + self.spatial_map(x)))

    def fold_batchnorm(self) -> None:
        """Folds both BNs (eval mode) into the convolutions before them."""
        _fold_conv_bn(self, "channel_fc1", "channel_bn")
        _fold_conv_bn(self, "spatial_out", "spatial_bn")


def _he_fan_out(module: nn.Module) -> None:
    """He initialisation (normal, fan_out, ReLU gain) of every conv; BNs at gamma 1, beta 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CBAMPlusChannelGate(nn.Module):
    """Channel branch of ``cbam_plus``: ``x * sigmoid(MLP_avg(avgpool x) + MLP_max(maxpool x))``
    with two separate MLPs ``1x1 conv -> BN -> ReLU -> 1x1 conv`` of ``hidden`` units."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.relu = nn.ReLU(inplace=True)
        self.avg_fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.avg_bn = nn.BatchNorm2d(hidden)
        self.avg_fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.max_fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.max_bn = nn.BatchNorm2d(hidden)
        self.max_fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        # the weight passes through it unchanged, so a forward hook can read it (no state)
        self.weight_tap = nn.Identity()

    def weight(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.avg_fc2(self.relu(self.avg_bn(self.avg_fc1(self.avg_pool(x)))))
        mx = self.max_fc2(self.relu(self.max_bn(self.max_fc1(self.max_pool(x)))))
        return self.weight_tap(torch.sigmoid(avg + mx))  # (B, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight(x)

    def fold_batchnorm(self) -> None:
        _fold_conv_bn(self, "avg_fc1", "avg_bn")
        _fold_conv_bn(self, "max_fc1", "max_bn")


class CBAMPlusSpatialGate(nn.Module):
    """Spatial branch of ``cbam_plus``: ``x * sigmoid(BN(conv(ReLU(BN(conv(p))))) + mean_c(p))``
    where ``p = [mean over C, max over C]`` (2 channels) and the convs are ``kernel_size``
    square, 2 -> ``width`` -> 1 channels."""

    def __init__(self, kernel_size: int = 7, width: int = 32) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(2, width, kernel_size, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, 1, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm2d(1)
        # the weight passes through it unchanged, so a forward hook can read it (no state)
        self.weight_tap = nn.Identity()

    def weight(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        s = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(pooled)))))
        return self.weight_tap(torch.sigmoid(s + pooled.mean(dim=1, keepdim=True)))  # (B,1,H,W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight(x)

    def fold_batchnorm(self) -> None:
        _fold_conv_bn(self, "conv1", "bn1")
        _fold_conv_bn(self, "conv2", "bn2")


@register_attention("cbam_plus")
class CBAMPlusBlock(nn.Module):
    """CBAM with the five changes usually called "improved CBAM".

    1. separate MLPs for the average- and max-pooled descriptors, with a BN after the
       hidden layer (``CBAMPlusChannelGate``);
    2. a deeper spatial branch, 2 -> 32 -> 1 channels of 7x7 convs each followed by BN, plus
       a residual: the mean of the two pooled maps is added before the sigmoid
       (``CBAMPlusSpatialGate``);
    3. hidden width ``max(C // reduction, 4)``, ``reduction`` 16 by default;
    4. He (fan_out) initialisation of the convolutions;
    5. both branches computed from the input in parallel and fused as
       ``x + x * Mc(x) + x * Ms(x)``.

    Snippets of this block in circulation return the input unchanged from the channel branch
    (the computed weight is never applied), which reduces the fusion to
    ``2x + x * Ms(x)``; here the channel branch returns ``x * Mc(x)`` as intended.

    The BNs normalise over the batch in training (the channel MLP's over 1x1 maps), so
    training needs batches of 2 or more images. ``fold_batchnorm`` of each branch folds them
    into the convolutions for deployment.
    """

    # the hidden width is max(C // reduction, 4): any reduction leaves channels
    OPTIONS: ClassVar[dict[str, BlockOption]] = {
        "reduction": AT_LEAST_ONE,
        "kernel_size": ODD_KERNEL,
        "spatial_width": AT_LEAST_ONE,
    }

    def __init__(
        self, channels: int, *, reduction: int = 16, kernel_size: int = 7, spatial_width: int = 32
    ) -> None:
        super().__init__()
        self.channel_gate = CBAMPlusChannelGate(channels, max(channels // reduction, 4))
        self.spatial_gate = CBAMPlusSpatialGate(kernel_size, spatial_width)
        _he_fan_out(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.channel_gate(x) + self.spatial_gate(x)


@register_attention("simam")
class SimAM(nn.Module):
    """SimAM (Yang et al., ICML 2021): parameter-free attention from a neuron energy.

    For each channel, with ``mu`` and ``var = sum((x - mu)^2) / n`` over its H x W positions
    (``n = H * W - 1``), each position is weighted by
    ``sigmoid((x - mu)^2 / (4 * (var + lambda)) + 0.5)``.

    It has no parameters (adds 0 to the count); ``lambda`` (1e-4) is kept as the buffer
    ``e_lambda`` so that the block appears in state dicts and ``infer_phi`` recognises it. A
    1x1 map (n = 0) is given ``n = 1``: var 0, weight ``sigmoid(0.5)``.
    """

    # lambda 0 divides 0 by 0 on a constant map
    OPTIONS: ClassVar[dict[str, BlockOption]] = {
        "e_lambda": BlockOption(float, lambda v: v > 0, "a positive number")
    }

    def __init__(self, channels: int = 0, *, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("e_lambda", torch.tensor(float(e_lambda)))
        # the (B, C, H, W) weight passes through it unchanged, so a forward hook can read it
        self.weight_tap = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        n = max(h * w - 1, 1)
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        var = d.sum(dim=(2, 3), keepdim=True) / n
        return x * self.weight_tap(torch.sigmoid(d / (4 * (var + self.e_lambda)) + 0.5))


@register_attention("nonlocal")
class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al., CVPR 2018).

    ``theta``, ``phi`` and ``g`` are 1x1 convs to ``C // 2`` channels; over the N = H x W
    positions ``y_i = sum_j softmax_j(theta_i . phi_j) g_j``, and the output is
    ``x + BN(W y)`` with ``W`` a 1x1 conv back to C. The BN's scale starts at zero, so a new
    block is the identity. No subsampling of ``phi``/``g``.

    Parameters: ``2 C^2 + 3.5 C`` per block; 691,264 for the three in YoloBody.

    Extra FLOPs in YoloBody at 416, batch 1, measured with ``nets.summary.count_flops``
    (2 x MACs of the four 1x1 convs, ``4 N C^2``, and of the two attention matrix products,
    ``2 N^2 C``; softmax, BN and the residual sum are not counted):

    * feat1, 256 ch on 26x26 (N = 676): 0.177 conv + 0.234 matmul = 0.411 GFLOPs;
    * feat2, 512 ch on 13x13 (N = 169): 0.177 conv + 0.029 matmul = 0.206 GFLOPs;
    * upsampled P5, 128 ch on 26x26: 0.044 conv + 0.117 matmul = 0.161 GFLOPs;

    0.779 GFLOPs in all (778,925,056; 0.380 of it matrix products), 6.81 -> 7.59 GFLOPs with
    20 classes. The (N, N) attention matrix grows with the fourth power of the input side.
    """

    # the inner width is max(C // reduction, 1): any reduction leaves a channel
    OPTIONS: ClassVar[dict[str, BlockOption]] = {"reduction": AT_LEAST_ONE}

    def __init__(self, channels: int, *, reduction: int = 2) -> None:
        super().__init__()
        inter = max(channels // reduction, 1)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.out_conv = nn.Conv2d(inter, channels, 1, bias=False)
        self.out_bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.out_bn.weight)
        # the softmax affinity passes through it unchanged, so a forward hook can read it
        self.affinity_tap = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # explicit reshapes: flatten/unflatten export as Slice/Mod chains that ONNX Runtime's
        # symbolic shape inference (run before INT8 quantization) cannot follow
        b, _, h, w = x.shape
        theta = self.theta(x).reshape(b, -1, h * w).transpose(1, 2)  # (B, N, C')
        phi = self.phi(x).reshape(b, -1, h * w)  # (B, C', N)
        g = self.g(x).reshape(b, -1, h * w).transpose(1, 2)  # (B, N, C')
        # (B, N, N), rows sum to 1; through an identity so a forward hook can read it
        attention = self.affinity_tap(torch.softmax(torch.bmm(theta, phi), dim=-1))
        y = torch.bmm(attention, g).transpose(1, 2).reshape(b, -1, h, w)  # (B, C', H, W)
        return x + self.out_bn(self.out_conv(y))

    def fold_batchnorm(self) -> None:
        """Folds the output BN (eval mode) into ``out_conv``."""
        _fold_conv_bn(self, "out_conv", "out_bn")
