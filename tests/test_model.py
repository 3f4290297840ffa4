"""Model structure: shapes, parameter counts, golden state-dict keys, attention registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from nets.blocks import eca_kernel_size
from nets.registry import (
    attention_names,
    build_attention,
    register_attention,
    resolve_phi,
    temporary_registrations,
)
from nets.summary import count_flops, count_parameters
from nets.yolo import YoloBody

# Copied from shared/golden: the reference implementation's state-dict keys and shapes.
GOLDEN = Path(__file__).resolve().parent / "golden"
# The reference implementation's parameter counts with 20 classes.
PARAMS_VOC20 = {0: 5_918_006, 1: 5_961_014, 2: 6_004_316, 3: 5_918_021, 4: 5_982_630}


@pytest.mark.parametrize("phi", range(5))
@pytest.mark.parametrize("size", [64, 96])
def test_output_shapes(phi: int, size: int) -> None:
    model = YoloBody(num_classes=3, phi=phi).eval()
    out = model(torch.rand(2, 3, size, size))
    assert [tuple(o.shape) for o in out] == [
        (2, 3 * 8, size // 32, size // 32),
        (2, 3 * 8, size // 16, size // 16),
    ]


def test_non_square_input() -> None:
    out = YoloBody(2, "cbam").eval()(torch.rand(1, 3, 64, 128))
    assert [tuple(o.shape[2:]) for o in out] == [(2, 4), (4, 8)]


@pytest.mark.parametrize("phi", range(5))
def test_parameter_counts(phi: int) -> None:
    assert count_parameters(YoloBody(20, phi)) == PARAMS_VOC20[phi]


def test_parameter_count_coco() -> None:
    assert count_parameters(YoloBody(80, 0)) == 6_056_606


def test_flops_match_published() -> None:
    assert count_flops(YoloBody(20, 0), 416) / 1e9 == pytest.approx(6.81, abs=0.005)
    assert count_flops(YoloBody(80, 0), 416) / 1e9 == pytest.approx(6.91, abs=0.005)


def _golden(phi: int) -> list[tuple[str, tuple[int, ...]]]:
    path = GOLDEN / f"keys_phi{phi}_voc20.txt"
    if not path.is_file():
        pytest.fail(f"golden key list missing: {path}")
    rows = []
    for line in path.read_text().splitlines():
        key, shape = line.rsplit(" ", 1) if " (" not in line else line.split(" (", 1)
        dims = shape.strip("()").replace(" ", "")
        rows.append((key, tuple(int(d) for d in dims.split(",") if d)))
    return rows


@pytest.mark.parametrize("phi", range(5))
def test_state_dict_matches_golden_keys(phi: int) -> None:
    ours = [(k, tuple(v.shape)) for k, v in YoloBody(20, phi).state_dict().items()]
    assert ours == _golden(phi)


@pytest.mark.parametrize("phi", range(5))
def test_reference_style_state_dict_loads_strictly_and_reproduces(phi: int) -> None:
    """A state dict built only from the golden key list (as a lineage .pth) loads strictly."""
    gen = torch.Generator().manual_seed(phi)
    reference = {}
    for key, shape in _golden(phi):
        if key.endswith("num_batches_tracked"):
            reference[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            reference[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            reference[key] = torch.randn(shape, generator=gen) * 0.05
    a, b = YoloBody(20, phi).eval(), YoloBody(20, phi).eval()
    a.load_state_dict(reference, strict=True)
    b.load_state_dict(reference, strict=True)
    x = torch.rand(1, 3, 64, 64, generator=gen)
    for oa, ob in zip(a(x), b(x)):
        assert torch.equal(oa, ob)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in reference.items())


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (0, (0, "none")),
        ("2", (2, "cbam")),
        ("CBAM", (2, "cbam")),
        (" Eca ", (3, "eca")),
        ("ca", (4, "ca")),
        (1, (1, "se")),
    ],
)
def test_resolve_phi(given, expected) -> None:
    assert resolve_phi(given) == expected


@pytest.mark.parametrize("bad", [99, "-1", "senet", "", 2.5])
def test_unknown_phi_lists_valid_values(bad) -> None:
    with pytest.raises(ValueError) as err:
        resolve_phi(bad)
    for name in ("0=none", "1=se", "2=cbam", "3=eca", "4=ca"):
        assert name in str(err.value)


def test_phi_zero_adds_no_modules() -> None:
    model = YoloBody(20, 0)
    assert model.feat1_att is None and model.feat2_att is None and model.upsample_att is None
    assert not any("_att" in k for k in model.state_dict())


@pytest.mark.parametrize("channels", [128, 256, 512])
def test_eca_kernel_size(channels: int) -> None:
    assert eca_kernel_size(channels) == 5
    assert eca_kernel_size(64) == 3  # (6 + 1) / 2 = 3.5 -> 3, already odd


@pytest.mark.parametrize("phi", [1, 2, 3, 4])
def test_attention_preserves_shape_and_changes_values(phi: int) -> None:
    block = build_attention(phi, 32).eval()
    x = torch.rand(2, 32, 5, 7) + 0.1
    y = block(x)
    assert y.shape == x.shape
    assert not torch.allclose(x, y)


def test_se_matches_definition() -> None:
    block = build_attention("se", 32)
    x = torch.randn(2, 32, 4, 4)
    w = torch.sigmoid(block.fc[2](torch.relu(block.fc[0](x.mean((2, 3))))))
    torch.testing.assert_close(block(x), x * w[:, :, None, None])


def test_cbam_matches_definition() -> None:
    block = build_attention("cbam", 16)
    ca, sa = block.channelattention, block.spatialattention
    x = torch.randn(2, 16, 6, 6)

    def mlp(v):
        return ca.fc2(torch.relu(ca.fc1(v)))

    x1 = x * torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    spatial = torch.cat([x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)], 1)
    expected = x1 * torch.sigmoid(sa.conv1(spatial))
    torch.testing.assert_close(block(x), expected)


def test_ca_matches_definition() -> None:
    block = build_attention("ca", 32).eval()
    x = torch.randn(1, 32, 3, 5)
    pooled = torch.cat([x.mean(3), x.mean(2)], dim=2)[..., None]  # (B, C, H+W, 1)
    y = torch.relu(block.bn(block.conv_1x1(pooled)))
    a_h = torch.sigmoid(block.F_h(y[:, :, :3]))  # (B, C, H, 1)
    a_w = torch.sigmoid(block.F_w(y[:, :, 3:])).transpose(2, 3)  # (B, C, 1, W)
    torch.testing.assert_close(block(x), x * a_h * a_w)


@pytest.fixture
def new_registrations_forgotten():
    """Blocks the test registers are forgotten after it."""
    with temporary_registrations():
        yield


def test_registering_a_new_block_takes_the_next_number(new_registrations_forgotten) -> None:
    next_phi = len(attention_names())

    @register_attention("Scale")
    class Scale(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(channels))

        def forward(self, x):
            return x * self.gain[:, None, None]

    assert resolve_phi("scale") == (next_phi, "scale")
    assert resolve_phi(next_phi) == (next_phi, "scale")
    model = YoloBody(2, "scale")
    assert "upsample_att.gain" in model.state_dict()
    with pytest.raises(ValueError, match="already registered"):
        register_attention("se")(Scale)
    assert attention_names()[:5] == ["none", "se", "cbam", "eca", "ca"]
