"""The attention blocks after phi 4 (bam, cbam_plus, simam, nonlocal): each against a literal
re-statement of its formula, parameter and FLOP counts, and the deployment paths (fused
model, ONNX, INT8) and checkpoint recognition for a whole YoloBody with it."""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nets.checkpoint import infer_phi, load_model
from nets.decode import Geometry
from nets.fuse import fuse_model
from nets.registry import attention_names, build_attention, resolve_phi
from nets.summary import count_flops, count_parameters
from nets.yolo import YoloBody
from utils.inference.export import export_onnx
from utils.inference.onnx_runner import OnnxRunner

NEW_PHIS = {5: "bam", 6: "cbam_plus", 7: "simam", 8: "nonlocal"}
# 20 classes; the frozen phi 0-4 counts are pinned in test_model.py
PARAMS_VOC20 = {5: 6_008_788, 6: 6_018_556, 7: 5_918_006, 8: 6_609_270}
TOL = 1e-4  # PyTorch vs ONNX Runtime, fused vs unfused (absolute on raw maps)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomise_bn(module: nn.Module, seed: int) -> nn.Module:
    """Every BN's statistics and affine terms far from their defaults (the non-local block's
    zero-initialised scale included, so that the block does something)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                n = bn.num_features
                bn.running_mean.uniform_(-0.5, 0.5, generator=gen)
                bn.running_var.uniform_(0.3, 3.0, generator=gen)
                bn.weight.uniform_(0.5, 1.5, generator=gen)
                bn.bias.copy_(torch.empty(n).uniform_(-0.3, 0.3, generator=gen))
    return module


def model(phi: int, seed: int = 0, num_classes: int = 3) -> YoloBody:
    torch.manual_seed(seed)
    return randomise_bn(YoloBody(num_classes, phi), seed).eval()


def bn_eval(v: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Inference-mode batch norm of (B, C, H, W), written out."""
    mean, var = bn.running_mean[:, None, None], bn.running_var[:, None, None]
    gamma, beta = bn.weight[:, None, None], bn.bias[:, None, None]
    return (v - mean) / torch.sqrt(var + bn.eps) * gamma + beta


def max_abs_diff(a, b) -> float:
    return max(float((torch.as_tensor(x) - torch.as_tensor(y)).abs().max()) for x, y in zip(a, b))


# --------------------------------------------------------------------------- registry, counts


def test_new_blocks_follow_the_frozen_ones() -> None:
    assert attention_names()[:9] == ["none", "se", "cbam", "eca", "ca", *NEW_PHIS.values()]
    for phi, name in NEW_PHIS.items():
        assert resolve_phi(name) == (phi, name) == resolve_phi(str(phi))


@pytest.mark.parametrize("phi", sorted(NEW_PHIS))
def test_parameter_counts(phi: int) -> None:
    assert count_parameters(YoloBody(20, phi)) == PARAMS_VOC20[phi]


@pytest.mark.parametrize("phi", sorted(NEW_PHIS))
@pytest.mark.parametrize("channels", [128, 256, 512])
def test_blocks_keep_shape(phi: int, channels: int) -> None:
    block = randomise_bn(build_attention(phi, channels), phi).eval()
    x = torch.randn(2, channels, 13, 13)
    assert block(x).shape == x.shape


def test_nonlocal_flops_count_its_matrix_products() -> None:
    """1x1 convs: 4 N C^2 FLOPs; attention: 2 N^2 C (theta phi^T, then times g)."""

    def block_flops(c: int, n: int) -> int:
        return 4 * n * c * c + 2 * n * n * c

    expected = block_flops(256, 26 * 26) + block_flops(512, 13 * 13) + block_flops(128, 26 * 26)
    extra = count_flops(YoloBody(20, "nonlocal"), 416) - count_flops(YoloBody(20, 0), 416)
    assert extra == expected == 778_925_056


# --------------------------------------------------------------------------- formulas


def test_bam_matches_definition() -> None:
    block = randomise_bn(build_attention("bam", 64), 1).eval()
    x = torch.randn(2, 64, 9, 11)
    assert block.spatial_dilated1.dilation == (4, 4) and block.spatial_reduce.out_channels == 4
    # channel: BN(W1 relu(W0 avgpool(F) + b0)), an MLP on the (B, C) descriptor
    w0, b0 = block.channel_fc0.weight[:, :, 0, 0], block.channel_fc0.bias
    w1 = block.channel_fc1.weight[:, :, 0, 0]
    hidden = torch.relu(x.mean(dim=(2, 3)) @ w0.T + b0)
    mc = bn_eval((hidden @ w1.T)[:, :, None, None], block.channel_bn)
    # spatial: 1x1 reduce, two 3x3 convs with dilation 4, 1x1 to one map, BN
    s = torch.relu(F.conv2d(x, block.spatial_reduce.weight, block.spatial_reduce.bias))
    for conv in (block.spatial_dilated1, block.spatial_dilated2):
        s = torch.relu(F.conv2d(s, conv.weight, conv.bias, padding=4, dilation=4))
    ms = bn_eval(F.conv2d(s, block.spatial_out.weight), block.spatial_bn)
    assert mc.shape == (2, 64, 1, 1) and ms.shape == (2, 1, 9, 11)
    expected = x * (1 + torch.sigmoid(mc + ms))
    torch.testing.assert_close(block(x), expected)


def test_cbam_plus_matches_definition() -> None:
    block = randomise_bn(build_attention("cbam_plus", 32), 2).eval()
    cg, sg = block.channel_gate, block.spatial_gate
    x = torch.randn(2, 32, 8, 6)

    def mlp(v, fc1, bn, fc2):  # 1x1 conv -> BN -> ReLU -> 1x1 conv, no biases
        return F.conv2d(torch.relu(bn_eval(F.conv2d(v, fc1.weight), bn)), fc2.weight)

    mc = torch.sigmoid(
        mlp(x.mean(dim=(2, 3), keepdim=True), cg.avg_fc1, cg.avg_bn, cg.avg_fc2)
        + mlp(x.amax(dim=(2, 3), keepdim=True), cg.max_fc1, cg.max_bn, cg.max_fc2)
    )
    avg_c, max_c = x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    s = torch.relu(
        bn_eval(F.conv2d(torch.cat([avg_c, max_c], 1), sg.conv1.weight, padding=3), sg.bn1)
    )
    s = bn_eval(F.conv2d(s, sg.conv2.weight, padding=3), sg.bn2)
    ms = torch.sigmoid(s + (avg_c + max_c) / 2)
    expected = x + x * mc + x * ms  # parallel branches
    torch.testing.assert_close(block(x), expected)
    # the channel branch applies its weight (it does not hand back its input)
    torch.testing.assert_close(cg(x), x * mc)
    assert not torch.allclose(cg(x), x)


@pytest.mark.parametrize(("channels", "hidden"), [(32, 4), (48, 4), (128, 8), (512, 32)])
def test_cbam_plus_widths(channels: int, hidden: int) -> None:
    block = build_attention("cbam_plus", channels)
    assert block.channel_gate.avg_fc1.out_channels == hidden == max(channels // 16, 4)
    assert block.channel_gate.max_fc1.out_channels == hidden
    assert (block.spatial_gate.conv1.in_channels, block.spatial_gate.conv1.out_channels) == (2, 32)
    assert block.spatial_gate.conv2.out_channels == 1
    assert block.spatial_gate.conv1.kernel_size == (7, 7)


def test_cbam_plus_he_fan_out_init() -> None:
    torch.manual_seed(0)
    block = build_attention("cbam_plus", 512)
    convs = [block.channel_gate.avg_fc1, block.channel_gate.max_fc2, block.spatial_gate.conv1]
    for conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        std = float(conv.weight.detach().std())
        assert std == pytest.approx((2 / fan_out) ** 0.5, rel=0.1), conv


def test_simam_matches_definition() -> None:
    block = build_attention("simam", 16)
    assert count_parameters(block) == 0 and list(block.state_dict()) == ["e_lambda"]
    x = torch.randn(2, 16, 5, 7)
    expected = torch.empty_like(x)
    for b in range(2):
        for c in range(16):
            v = x[b, c]
            mu = v.mean()
            var = ((v - mu) ** 2).sum() / (5 * 7 - 1)  # n = H * W - 1
            energy_inv = (v - mu) ** 2 / (4 * (var + 1e-4)) + 0.5
            expected[b, c] = v * torch.sigmoid(energy_inv)
    torch.testing.assert_close(block(x), expected)
    torch.testing.assert_close(
        block(x[:, :, :1, :1]), x[:, :, :1, :1] * torch.sigmoid(torch.tensor(0.5))
    )


def test_nonlocal_matches_definition() -> None:
    block = randomise_bn(build_attention("nonlocal", 32), 3).eval()
    x = torch.randn(2, 32, 5, 6)
    n = 5 * 6
    flat = x.reshape(2, 32, n)

    def embed(conv):  # 1x1 conv to C/2 channels at every position: (B, C/2, N)
        return torch.einsum("oc,bcn->bon", conv.weight[:, :, 0, 0], flat) + conv.bias[:, None]

    theta, phi, g = embed(block.theta), embed(block.phi), embed(block.g)
    assert theta.shape == (2, 16, n)
    logits = torch.einsum("bci,bcj->bij", theta, phi)  # theta_i . phi_j
    f = torch.exp(logits - logits.amax(dim=2, keepdim=True))
    f = f / f.sum(dim=2, keepdim=True)  # normalised over j
    y = torch.einsum("bij,bcj->bci", f, g)  # y_i = sum_j f_ij g_j
    wy = torch.einsum("oc,bcn->bon", block.out_conv.weight[:, :, 0, 0], y).reshape(2, 32, 5, 6)
    expected = x + bn_eval(wy, block.out_bn)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_nonlocal_starts_as_identity() -> None:
    block = build_attention("nonlocal", 64)
    x = torch.randn(2, 64, 6, 6)
    assert torch.equal(block.train()(x), x) and torch.equal(block.eval()(x), x)
    assert torch.equal(block.out_bn.weight, torch.zeros(64))


# --------------------------------------------------------------------------- checkpoints


def test_state_dict_keys_are_distinct_per_block() -> None:
    keys = [frozenset(build_attention(phi, 128).state_dict()) for phi in range(1, 9)]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("phi", sorted(NEW_PHIS))
def test_infer_phi_recognises_state_dict(tmp_path, phi: int) -> None:
    net = model(phi, seed=phi, num_classes=20)
    assert infer_phi(net.state_dict()) == phi
    path = tmp_path / f"phi{phi}.pth"
    torch.save(net.state_dict(), path)  # a bare state dict, as the reference writes
    loaded, info = load_model(path)
    assert (info.phi, info.phi_name, info.num_classes) == (phi, NEW_PHIS[phi], 20)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net(x), loaded.eval()(x)))


# --------------------------------------------------------------------------- deployment


@pytest.mark.parametrize("phi", sorted(NEW_PHIS))
def test_fuse_model_keeps_outputs(phi: int) -> None:
    net = model(phi, seed=20 + phi)
    before = copy.deepcopy(net.state_dict())
    fused = fuse_model(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())  # all folded
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(phi))
    with torch.inference_mode():
        assert max_abs_diff(fused(x), net(x)) < TOL


@pytest.mark.parametrize("phi", sorted(NEW_PHIS))
def test_onnx_export_matches_pytorch(tmp_path, phi: int) -> None:
    import onnx

    net = model(phi, seed=30 + phi)
    path = export_onnx(net, tmp_path / "model.onnx", Geometry(input_size=64), dynamic_batch=True)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    assert {o.domain: o.version for o in graph.opset_import}.get("", 0) == 17
    runner = OnnxRunner(path)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(phi))
    with torch.inference_mode():
        ref = net(x)
    got = runner(x)
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert max_abs_diff(got, ref) < TOL


def _calibration_images(folder: Path, count: int = 2) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i}.jpg"
        cv2.imwrite(str(path), rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))
        paths.append(str(path))
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("phi", sorted(NEW_PHIS))
def test_int8_export_runs(tmp_path, phi: int) -> None:
    import onnx

    from utils.inference.quantize import quantize_int8

    net = model(phi, seed=40 + phi)
    fp32 = export_onnx(net, tmp_path / "fp32.onnx", Geometry(input_size=64), metadata={"phi": phi})
    int8 = quantize_int8(
        fp32, tmp_path / "int8.onnx", _calibration_images(tmp_path / "calib"), method="minmax"
    )
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(phi))
    got, ref = OnnxRunner(int8)(x), OnnxRunner(fp32)(x)
    for a, b in zip(got, ref):
        assert a.shape == b.shape and a.dtype == torch.float32 and torch.isfinite(a).all()
        # close to fp32 (about 1-3 % of the spread with these weights), but really 8-bit
        assert 0 < float((a - b).abs().mean()) < 0.1 * float(b.std())
