"""Attention maps: capture with temporary hooks, what each block records, mapping onto the
image, drawing, ``Detector.attention_maps`` and ``predict.py --attention-maps``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import exit_code
from torch import nn

import nets.attention_maps as attention_maps
import predict
from nets.attention import ATTENTION_POINTS, DEFAULT_POINTS
from nets.attention_maps import AttentionMap, capture_attention, register_attention_map
from nets.checkpoint import ModelInfo, load_matching, load_model, save_checkpoint
from nets.registry import (
    attention_names,
    plugin_names,
    register_attention,
    temporary_registrations,
)
from nets.yolo import YoloBody
from utils.inference.attention_output import AttentionMapWriter
from utils.inference.predictor import Detector, InferenceConfig
from utils.preprocess import resize_image
from utils.visualize import draw_channel_histogram, overlay_attention

SIZE = 64
OTHER_POINTS = ("csp1", "csp2", "csp3", "head13", "head26")
STRIDE = {
    "feat1": 16,
    "feat2": 32,
    "upsample": 16,
    "csp1": 8,
    "csp2": 16,
    "csp3": 32,
    "head13": 32,
    "head26": 16,
}
# block -> (has a spatial map, has channel weights); a new built-in block must be added here
KINDS = {
    "se": (False, True),
    "cbam": (True, True),
    "eca": (False, True),
    "ca": (True, False),
    "bam": (True, True),
    "cbam_plus": (True, True),
    "simam": (True, False),
    "nonlocal": (True, False),
}


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BN statistics and affine terms away from their defaults (the non-local block's zero
    scale included), so that every block's maps vary over positions and channels."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5, generator=gen)
                bn.running_var.uniform_(0.3, 3.0, generator=gen)
                bn.weight.uniform_(0.5, 1.5, generator=gen)
                bn.bias.uniform_(-0.3, 0.3, generator=gen)
    return model


def make_model(phi: str, at: str | tuple[str, ...] | None, seed: int = 0) -> YoloBody:
    torch.manual_seed(seed)
    return randomise_bn(YoloBody(3, phi, attention_at=at), seed).eval()


def hooks_left(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
    ]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- every block


def test_every_registered_block_is_covered() -> None:
    assert set(attention_names()) - {"none"} | set(plugin_names()) == set(KINDS)


@pytest.mark.parametrize("points", [DEFAULT_POINTS, OTHER_POINTS], ids=["default", "other"])
@pytest.mark.parametrize("phi", attention_names())
def test_capture_keeps_outputs_and_records_each_blocks_maps(phi: str, points) -> None:
    model = make_model(phi, points)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(x)
        with capture_attention(model) as capture:
            captured = model(x)
        with capture_attention(model) as capture_one:
            model(x[1:])
    assert all(torch.equal(a, b) for a, b in zip(plain, captured))
    assert hooks_left(model) == []
    per_image = capture.maps()
    if phi == "none":
        assert per_image == [] and capture.unmapped == []
        return
    assert len(per_image) == 2
    has_spatial, has_channels = KINDS[phi]
    for maps in per_image:
        assert list(maps) == list(points)
        for point, m in maps.items():
            assert m.block == phi
            side = SIZE // STRIDE[point]
            if has_spatial:
                assert m.spatial.shape == (side, side) and m.spatial.dtype == np.float32
                assert m.spatial_kind
                check_spatial_range(phi, m.spatial)
            else:
                assert m.spatial is None
            if has_channels:
                assert m.channels.shape == (ATTENTION_POINTS[point],)
                assert m.channels.dtype == np.float32
                assert m.channels.min() >= 0 and m.channels.max() <= 1
                assert m.channels.std() > 1e-4  # weights differ between channels
            else:
                assert m.channels is None
    # image 1 alone gives the maps it had in the batch
    for point, m in capture_one.maps()[0].items():
        batched = per_image[1][point]
        for a, b in ((m.spatial, batched.spatial), (m.channels, batched.channels)):
            if a is not None:
                np.testing.assert_allclose(a, b, atol=1e-5)


def check_spatial_range(phi: str, spatial: np.ndarray) -> None:
    if phi == "nonlocal":  # softmax column sums: non-negative, H * W in all
        assert spatial.min() >= 0
        assert math.isclose(float(spatial.sum()), spatial.size, rel_tol=1e-4)
    elif phi == "simam":  # sigmoid(energy + 0.5) with a non-negative energy
        assert 1 / (1 + math.exp(-0.5)) - 1e-6 <= spatial.min() and spatial.max() <= 1
    else:  # sigmoid gates and their products
        assert spatial.min() >= 0 and spatial.max() <= 1


def test_hooks_are_removed_when_the_forward_pass_fails() -> None:
    model = make_model("cbam", None)
    # 48 is not a multiple of 32: the concat fails after feat1 and feat2's blocks have run
    with pytest.raises(RuntimeError), torch.no_grad(), capture_attention(model):
        model(torch.rand(1, 3, 48, 48))
    assert hooks_left(model) == []


def test_taps_add_no_state_dict_keys() -> None:
    for phi in KINDS:
        keys = YoloBody(3, phi, attention_at=",".join(ATTENTION_POINTS)).state_dict()
        assert not [k for k in keys if "tap" in k], phi


# --------------------------------------------------------------------------- by hand


def captured_on(model: YoloBody, point: str, x: torch.Tensor):
    """The maps recorded when ``point``'s block alone runs on ``x``."""
    with torch.no_grad(), capture_attention(model) as capture:
        getattr(model, f"{point}_att")(x)
    assert hooks_left(model) == []
    return capture.maps()[0][point]


def test_coordinate_attention_map_is_the_outer_product_of_its_gates() -> None:
    model = make_model("ca", "feat1")
    block = model.feat1_att
    with torch.no_grad():  # gates far from 0.5 that differ between channels
        block.F_h.weight.mul_(20)
        block.F_w.weight.mul_(20)
    h, w, c = 5, 7, ATTENTION_POINTS["feat1"]
    x = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(3))
    got = captured_on(model, "feat1", x).spatial
    with torch.no_grad():
        pooled = torch.cat([x.mean(dim=3), x.mean(dim=2)], dim=2)[..., None]  # (1, C, H+W, 1)
        y = torch.relu(block.bn(block.conv_1x1(pooled)))
        a_h = torch.sigmoid(block.F_h(y[:, :, :h]))[0, :, :, 0]  # (C, H)
        a_w = torch.sigmoid(block.F_w(y[:, :, h:]))[0, :, :, 0]  # (C, W)
        expected = torch.einsum("ch,cw->hw", a_h, a_w) / c
    assert got.shape == (h, w)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-7)
    assert expected.std() > 0.01  # a map that varies, not a constant both sides agree on
    # the mean of per-channel products, not the product of the channel means
    assert (expected - torch.outer(a_h.mean(0), a_w.mean(0))).abs().max() > 0.01


def test_nonlocal_map_is_attention_received() -> None:
    model = make_model("nonlocal", "upsample")
    block = model.upsample_att
    x = torch.randn(
        1, ATTENTION_POINTS["upsample"], 4, 6, generator=torch.Generator().manual_seed(4)
    )
    got = captured_on(model, "upsample", x).spatial
    with torch.no_grad():
        theta = block.theta(x).flatten(2).transpose(1, 2)  # (1, N, C')
        phi = block.phi(x).flatten(2)  # (1, C', N)
        affinity = torch.softmax(theta @ phi, dim=-1)[0]  # row i: where position i looks
        expected = affinity.sum(dim=0).reshape(4, 6)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_simam_and_se_maps_match_their_definitions() -> None:
    model = make_model("simam", "feat1")
    x = torch.randn(1, 256, 5, 5, generator=torch.Generator().manual_seed(5))
    d = (x - x.mean(dim=(2, 3), keepdim=True)) ** 2
    weight = torch.sigmoid(d / (4 * (d.sum(dim=(2, 3), keepdim=True) / 24 + 1e-4)) + 0.5)
    got = captured_on(model, "feat1", x).spatial
    np.testing.assert_allclose(got, weight.mean(dim=1)[0].numpy(), rtol=1e-6)

    model = make_model("se", "feat2")
    x = torch.randn(1, 512, 3, 3, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model.feat2_att.fc(x.mean(dim=(2, 3)))[0]
    got = captured_on(model, "feat2", x).channels
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6)


# --------------------------------------------------------------------------- plugins


@pytest.fixture
def scale_block(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[nn.Module]]:
    """A plugin block ("scale_gate", registered for this test only) with no map recipe."""
    monkeypatch.setattr(attention_maps, "_RECIPES", dict(attention_maps._RECIPES))
    with temporary_registrations():

        @register_attention("scale_gate", plugin=True)
        class ScaleGate(nn.Module):
            def __init__(self, channels: int) -> None:
                super().__init__()
                self.gain = nn.Parameter(torch.linspace(0, 1, channels))
                self.gate = nn.Sigmoid()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x * self.gate(self.gain)[:, None, None]

        yield ScaleGate


def test_a_block_without_recipe_gives_no_map_until_it_registers_one(scale_block) -> None:
    model = YoloBody(3, "scale_gate", attention_at="feat1,csp2").eval()
    with torch.no_grad(), capture_attention(model) as capture:
        model(torch.rand(1, 3, SIZE, SIZE))
    assert capture.maps() == [{}]
    assert capture.unmapped == ["feat1", "csp2"]
    assert hooks_left(model) == []

    @register_attention_map(scale_block, ("gate",))
    def _gain(taps, shape):
        return None, taps["gate"].expand(shape[0], -1)

    with torch.no_grad(), capture_attention(model) as capture:
        model(torch.rand(1, 3, SIZE, SIZE))
    (maps,) = capture.maps()
    expected = torch.sigmoid(torch.linspace(0, 1, 256)).numpy()
    np.testing.assert_allclose(maps["feat1"].channels, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="already has"):
        register_attention_map(scale_block, ("gate",))(_gain)


# --------------------------------------------------------------------------- onto the image


@pytest.mark.parametrize("letterbox", [True, False])
def test_to_original_undoes_the_resize(letterbox: bool) -> None:
    """A map whose value is the input x (or y) of each cell centre reads, on the original
    image, the input coordinate each pixel centre was resized to."""
    image = np.zeros((100, 200, 3), np.uint8)
    _, meta = resize_image(image, SIZE, letterbox)
    side = SIZE // 8
    centres = (np.arange(side) + 0.5) * 8  # input pixels
    for axis in (1, 0):
        ramp = np.broadcast_to(centres if axis else centres[:, None], (side, side))
        amap = AttentionMap("csp1", "cbam", ramp.astype(np.float32), None, "", SIZE, meta)
        on_image = amap.to_original()
        assert on_image.shape == (100, 200) and on_image.dtype == np.float32
        n = 200 if axis else 100
        scale, pad = (meta.scale_x, meta.pad_x) if axis else (meta.scale_y, meta.pad_y)
        expected = (np.arange(n) + 0.5) * scale + pad
        line = on_image[50] if axis else on_image[:, 100]
        inside = (expected >= centres[0]) & (expected <= centres[-1])  # not clamped at edges
        assert inside.sum() > n // 2
        np.testing.assert_allclose(line[inside], expected[inside], atol=1e-3)
    if letterbox:
        assert meta.pad_y == 16  # the case where the padding matters


def test_overlay_colours_follow_the_map() -> None:
    image = np.full((120, 160, 3), 128, np.uint8)
    heat = np.zeros((120, 160), np.float32)
    heat[:, :80] = 0.7  # left half attended
    heat[:, 80:] = 0.6
    out = overlay_attention(image, heat, "feat1: test")
    assert out.shape == image.shape and out.dtype == np.uint8
    left, right = out[100, 40].astype(int), out[100, 120].astype(int)  # below the title strip
    assert left[2] > left[0] + 50  # red end of the scale
    assert right[0] > right[2] + 50  # blue end
    assert out[2:20, 2:100].mean() < image[2:20, 2:100].mean()  # darkened title strip


def test_channel_histogram_bars_follow_the_weights() -> None:
    weights = np.r_[np.full(30, 0.02), np.full(10, 0.97)]
    img = draw_channel_histogram(weights, "feat1: test", size=(480, 260))
    assert img.shape == (260, 480, 3)
    bar = np.array([180, 110, 40])
    is_bar = np.abs(img.astype(int) - bar).sum(axis=2) < 10
    first, last = is_bar[:, 42:60].sum(axis=0).max(), is_bar[:, 450:466].sum(axis=0).max()
    middle = is_bar[:, 200:300].sum()
    assert middle == 0
    assert first == pytest.approx(186, abs=2)  # the tallest bar spans the plot's height
    assert last == pytest.approx(186 * 10 / 30, abs=2)


# --------------------------------------------------------------------------- Detector


def tiny_info(model: YoloBody) -> ModelInfo:
    return ModelInfo(
        phi=model.phi,
        phi_name=model.phi_name,
        num_classes=3,
        class_names=["a", "b", "c"],
        input_size=SIZE,
        attention_at=model.attention_at,
    )


def test_detector_attention_maps_leave_detections_unchanged() -> None:
    model = make_model("cbam", "feat1,csp2")
    detector = Detector(
        model, tiny_info(model), config=InferenceConfig(device="cpu", conf_thresh=0)
    )
    image = np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8)
    before = detector(image)
    maps = detector.attention_maps(image)
    after = detector(image)
    assert np.array_equal(before.boxes, after.boxes) and len(before) > 0
    assert np.array_equal(before.scores, after.scores)
    assert list(maps) == ["feat1", "csp2"]
    assert hooks_left(detector.model) == []
    m = maps["csp2"]
    assert (m.point, m.block, m.input_size) == ("csp2", "cbam", SIZE)
    assert m.spatial.shape == (4, 4) and m.channels.shape == (256,)
    assert (m.meta.width, m.meta.height) == (120, 80) and m.meta.pad_y > 0
    assert m.to_original().shape == (80, 120)
    # the same as capturing on the Detector's own input by hand
    batch, _ = detector.preprocess([image])
    with torch.no_grad(), capture_attention(detector.model) as capture:
        detector.model(batch)
    np.testing.assert_array_equal(capture.maps()[0]["csp2"].spatial, m.spatial)


def test_phi_zero_detector_has_no_maps() -> None:
    model = make_model("none", None)
    detector = Detector(model, tiny_info(model), config=InferenceConfig(device="cpu"))
    assert detector.attention_maps(np.zeros((40, 40, 3), np.uint8)) == {}


def test_writer_says_once_that_a_block_has_no_map(scale_block, tmp_path: Path, capsys) -> None:
    model = YoloBody(3, "scale_gate", attention_at="feat1").eval()
    info = dataclasses.replace(tiny_info(model), phi_name="scale_gate")
    detector = Detector(model, info, config=InferenceConfig(device="cpu"))
    failures: list[str] = []
    writer = AttentionMapWriter(detector, tmp_path, failures)
    image = np.zeros((40, 50, 3), np.uint8)
    assert writer.write(image, "a") == [] and writer.write(image, "b") == []
    err = capsys.readouterr().err
    assert err.count("'scale_gate' block at feat1 records no map") == 1
    assert failures == [] and list(tmp_path.iterdir()) == []


def test_onnx_detector_refuses_clearly() -> None:
    model = make_model("cbam", None)
    config = InferenceConfig(device="cpu", backend="onnxruntime")
    detector = Detector(model, tiny_info(model), config=config)
    with pytest.raises(ValueError, match=r"attention maps need the PyTorch model.*ONNX"):
        detector.attention_maps(np.zeros((64, 64, 3), np.uint8))


# --------------------------------------------------------------------------- predict.py


@pytest.fixture(scope="module")
def tiny_checkpoints(trained_tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The shared tiny trained checkpoint (phi 0) and copies with untrained blocks added:
    cbam at feat1 and csp2, se at the default points."""
    root, _, weights = trained_tiny_checkpoint(epochs=2)
    folder = tmp_path_factory.mktemp("attention_checkpoints")
    base, info = load_model(weights)
    paths = {"none": Path(weights), "images": root / "VOC2007" / "JPEGImages"}
    for phi, at in (("cbam", "feat1,csp2"), ("se", None)):
        torch.manual_seed(0)
        model = YoloBody(base.num_classes, phi, attention_at=at)
        assert load_matching(model, base.state_dict()).mismatched == {}
        block_info = dataclasses.replace(info, phi=model.phi, phi_name=phi)
        paths[phi] = folder / f"{phi}.pth"
        save_checkpoint(paths[phi], model, block_info)
    return paths


def run_predict(weights: Path, source: Path, save_dir: Path, *extra: str) -> int:
    args = ["--weights", str(weights), "--source", str(source), "--save-dir", str(save_dir)]
    return exit_code(predict.main, [*args, "--device", "cpu", "--attention-maps", *extra])


@pytest.mark.slow
def test_cli_writes_maps_for_each_image_and_point(tiny_checkpoints, tmp_path: Path) -> None:
    images = sorted(tiny_checkpoints["images"].glob("*.jpg"))[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    out = tmp_path / "cbam"
    assert run_predict(tiny_checkpoints["cbam"], folder, out) == 0
    stems = [p.stem for p in images]
    expected = {f"{s}.jpg" for s in stems}
    for s in stems:  # the maps in a folder of their own, apart from the annotated images
        for point in ("feat1", "csp2"):
            expected |= {
                f"attention/{s}_attn_{point}.jpg",
                f"attention/{s}_attn_{point}_channels.png",
            }
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == expected
    original = cv2.imread(str(images[0]))
    overlay = cv2.imread(str(out / "attention" / f"{stems[0]}_attn_csp2.jpg"))
    assert overlay.shape == original.shape  # mapped back onto the original image
    assert np.abs(overlay.astype(int) - original.astype(int)).mean() > 20  # coloured
    histogram = out / "attention" / f"{stems[0]}_attn_csp2_channels.png"
    assert cv2.imread(str(histogram)).shape == (260, 480, 3)

    out = tmp_path / "se"  # channel weights only: no overlay
    assert run_predict(tiny_checkpoints["se"], images[0], out) == 0
    channels = {f"attention/{stems[0]}_attn_{p}_channels.png" for p in DEFAULT_POINTS}
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == {f"{stems[0]}.jpg"} | channels


@pytest.mark.slow
def test_cli_says_once_when_there_is_nothing_to_draw(tiny_checkpoints, tmp_path: Path, capsys):
    images = tiny_checkpoints["images"]
    out = tmp_path / "none"
    assert run_predict(tiny_checkpoints["none"], images, out) == 0
    err = capsys.readouterr().err
    assert err.count("the model has no attention block (phi 0)") == 1
    assert not list(out.glob("*_attn_*"))

    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 60 * i, np.uint8))
    writer.release()
    out = tmp_path / "video"
    assert run_predict(tiny_checkpoints["cbam"], clip, out) == 0
    assert "maps are written for image files only" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["clip.mp4"]


@pytest.mark.slow
def test_cli_refuses_what_it_cannot_draw(tiny_checkpoints, tmp_path: Path, capsys) -> None:
    image = next(tiny_checkpoints["images"].glob("*.jpg"))
    assert run_predict(tiny_checkpoints["cbam"], image, tmp_path / "a", "--no-save") == 2
    assert "--attention-maps writes into --save-dir" in capsys.readouterr().err
    code = run_predict(tiny_checkpoints["cbam"], image, tmp_path / "b", "--backend", "onnxruntime")
    assert code == 2
    assert "--attention-maps need the PyTorch model" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*_attn_*"))
