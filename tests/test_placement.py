"""Where the attention block goes (``--attention-at``), its options (``--attention-args``), and
plugin blocks (``--attention-plugin``): building, saving, loading, exporting."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from nets.attention import ATTENTION_POINTS, DEFAULT_POINTS, parse_attention_args, parse_points
from nets.checkpoint import ModelInfo, load_model, read_checkpoint, save_checkpoint
from nets.registry import (
    PLUGIN_PHI,
    attention_names,
    load_attention_plugins,
    resolve_phi,
    temporary_registrations,
)
from nets.summary import count_parameters
from nets.yolo import YoloBody
from utils.training.config import TrainConfig
from utils.training.setup import merge_resume

GOLDEN = Path(__file__).resolve().parent / "golden"
PARAMS = {0: 5_918_006, 1: 5_961_014, 2: 6_004_316, 3: 5_918_021, 4: 5_982_630}
OUT = 3 * (5 + 20)


def _golden_keys(phi: int) -> list[str]:
    lines = (GOLDEN / f"keys_phi{phi}_voc20.txt").read_text().splitlines()
    return [line.split()[0] for line in lines if line.strip()]


@pytest.mark.parametrize("phi", sorted(PARAMS))
def test_default_placement_keeps_keys_and_counts(phi: int) -> None:
    for at in (None, "feat1,feat2,upsample", "upsample, feat2 ,feat1", list(DEFAULT_POINTS)):
        model = YoloBody(20, phi, attention_at=at, attention_args="")
        assert model.attention_at == DEFAULT_POINTS
        assert list(model.state_dict()) == _golden_keys(phi)
        assert count_parameters(model) == PARAMS[phi]


@pytest.mark.parametrize("points", [*([p] for p in ATTENTION_POINTS), list(ATTENTION_POINTS)])
def test_points_build_and_run(points: list[str]) -> None:
    model = YoloBody(20, "se", attention_at=",".join(points)).eval()
    assert sorted(model.attention_blocks()) == sorted(f"{p}_att" for p in points)
    seen = {}
    for point in points:
        block = getattr(model, f"{point}_att")
        assert block.fc[0].in_features == ATTENTION_POINTS[point]
        block.register_forward_hook(lambda m, i, o, p=point: seen.update({p: o.shape[1]}))
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert [o.shape for o in out] == [(1, OUT, 2, 2), (1, OUT, 4, 4)]
    assert seen == {p: ATTENTION_POINTS[p] for p in points}  # every block ran, on its channels
    keys = {k.split(".")[0] for k in model.state_dict() if "_att." in k}
    assert keys == {f"{p}_att" for p in points}


def test_no_point_is_the_plain_network() -> None:
    model = YoloBody(20, "cbam", attention_at="")
    assert model.attention_at == () and model.attention_blocks() == {}
    assert count_parameters(model) == PARAMS[0]


def test_options_reach_the_block() -> None:
    # SE at the default points: two bias-free linear layers C -> C/r -> C per block
    def se_params(reduction: int) -> int:
        return sum(2 * c * (c // reduction) for c in (256, 512, 128))

    eight = YoloBody(20, "se", attention_args="reduction=8")
    assert eight.feat1_att.fc[0].out_features == 256 // 8
    assert count_parameters(eight) - PARAMS[1] == se_params(8) - se_params(16) == 43_008
    cbam = YoloBody(20, "cbam", attention_args={"ratio": 4, "kernel_size": 3})
    assert cbam.upsample_att.spatialattention.conv1.kernel_size == (3, 3)
    assert cbam.upsample_att.channelattention.fc1.out_channels == 128 // 4


def test_parse_attention_args() -> None:
    parsed = parse_attention_args(" ratio=8, scale=0.5,flag=True,mode=fast,off=false")
    assert parsed == {"ratio": 8, "scale": 0.5, "flag": True, "mode": "fast", "off": False}
    assert type(parsed["ratio"]) is int and parse_attention_args("") == {}
    with pytest.raises(ValueError, match="name=value"):
        parse_attention_args("ratio")


def test_unknown_option_lists_the_blocks_options() -> None:
    with pytest.raises(ValueError) as err:
        YoloBody(20, "cbam", attention_args="reduction=4")
    message = str(err.value)
    assert "'reduction'" in message and "ratio=8" in message and "kernel_size=7" in message
    with pytest.raises(ValueError, match=r"options.*: none"):
        YoloBody(20, "none", attention_args="ratio=2")


def test_unknown_point_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        parse_points("feat1,neck")
    assert "'neck'" in str(err.value)
    assert all(p in str(err.value) for p in ATTENTION_POINTS)
    with pytest.raises(ValueError, match="attention-at"):
        TrainConfig(attention_at="feat3")


def _model(phi="cbam", at="csp2,head13,feat1", args="ratio=4,kernel_size=3", seed=0) -> YoloBody:
    torch.manual_seed(seed)
    model = YoloBody(3, phi, attention_at=at, attention_args=args)
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _info(model: YoloBody) -> ModelInfo:
    return ModelInfo(
        phi=model.phi,
        phi_name=model.phi_name,
        num_classes=3,
        class_names=["a", "b", "c"],
        input_size=64,
        attention_at=model.attention_at,
        attention_args=model.attention_args,
    )


def test_checkpoint_round_trip_keeps_points_and_options(tmp_path) -> None:
    model = _model()
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, _info(model))
    _, info = read_checkpoint(path)
    assert info.attention_at == ("feat1", "csp2", "head13")
    assert info.attention_options == {"kernel_size": 3, "ratio": 4}
    assert "at feat1,csp2,head13" in info.describe()
    loaded, _ = load_model(path)
    assert loaded.attention_at == model.attention_at
    assert loaded.attention_args == model.attention_args
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(loaded.eval()(x), model(x), strict=True):
            torch.testing.assert_close(a, b)


def test_checkpoint_without_placement_reads_as_default(tmp_path) -> None:
    model = YoloBody(3, "se")
    path = tmp_path / "old.pth"
    save_checkpoint(path, model, _info(model))
    payload = torch.load(path, weights_only=True)
    del payload["attention_at"], payload["attention_args"]
    torch.save(payload, path)
    _, info = read_checkpoint(path)
    assert (info.attention_at, info.attention_args) == (DEFAULT_POINTS, ())
    torch.save(model.state_dict(), tmp_path / "bare.pth")  # the reference layout
    assert read_checkpoint(tmp_path / "bare.pth")[1].attention_at == DEFAULT_POINTS
    load_model(tmp_path / "bare.pth")


def test_bare_state_dict_points_are_inferred(tmp_path) -> None:
    torch.save(YoloBody(3, "eca", attention_at="csp1,head26").state_dict(), tmp_path / "s.pth")
    _, info = read_checkpoint(tmp_path / "s.pth")
    assert (info.phi_name, info.attention_at) == ("eca", ("csp1", "head26"))


def test_onnx_export_keeps_points_and_options(tmp_path) -> None:
    from utils.inference.export import export_model
    from utils.inference.onnx_runner import onnx_metadata
    from utils.inference.predictor import Detector

    model = _model(phi="se", at="csp3,head26", args="reduction=8")
    info = _info(model)
    path = tmp_path / "m.onnx"
    export_model(model, info, info.class_names, path, input_size=64)
    meta = onnx_metadata(path)
    assert meta["attention_at"] == ["csp3", "head26"] and meta["attention_args"] == {"reduction": 8}
    detector = Detector.from_weights(path)
    assert detector.info.attention_at == ("csp3", "head26")
    assert detector.info.attention_options == {"reduction": 8}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    for a, b in zip(detector.model(x), ref, strict=True):  # the ONNX Runtime graph
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_resume_treats_points_and_options_as_fixed() -> None:
    saved = TrainConfig(phi="se", attention_at="csp1,feat1", attention_args="reduction=8")
    assert (saved.attention_at, saved.attention_args) == ("feat1,csp1", "reduction=8")
    same = TrainConfig(resume="run/last.pth", attention_at="csp1 ,feat1")
    assert merge_resume(saved, same, {"attention_at"}).attention_at == "feat1,csp1"
    for field, value in (("attention_at", "feat1"), ("attention_args", "reduction=4")):
        cfg = TrainConfig(resume="run/last.pth", **{field: value})
        with pytest.raises(ValueError, match=f"--{field.replace('_', '-')}"):
            merge_resume(saved, cfg, {field})


PLUGIN = """
import torch
from torch import nn

from nets.attention import register_attention


@register_attention("gain")
class Gain(nn.Module):
    def __init__(self, channels, *, init=1.0):
        super().__init__()
        self.gain = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x):
        return x * self.gain[:, None, None]
"""


def test_plugin_block_is_saved_and_loaded_by_name(tmp_path, monkeypatch):
    module = f"gain_plugin_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{module}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    numbered = attention_names()
    with temporary_registrations():
        try:
            assert load_attention_plugins(module) == ["gain"]
        finally:
            sys.modules.pop(module, None)
        assert attention_names() == numbered  # a plugin takes no number
        assert resolve_phi("GAIN") == (PLUGIN_PHI, "gain")
        model = YoloBody(3, "gain", attention_at="csp1,upsample", attention_args="init=0.5")
        assert model.csp1_att.gain.shape == (128,) and model.upsample_att.gain[0].item() == 0.5
        path = tmp_path / "plugin.pth"
        save_checkpoint(path, model, _info(model))
        assert torch.load(path, weights_only=True)["phi"] == "gain"
        loaded, info = load_model(path)
        assert (info.phi, info.phi_name) == (PLUGIN_PHI, "gain")
        assert "plugin attention 'gain'" in info.describe()
        torch.testing.assert_close(loaded.csp1_att.gain, model.csp1_att.gain)

    # a later session that did not import the plugin
    with pytest.raises(ValueError) as err:
        load_model(path)
    assert "'gain'" in str(err.value) and "--attention-plugin" in str(err.value)


def test_missing_plugin_module_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="--attention-plugin no_such_plugin_module"):
        load_attention_plugins("no_such_plugin_module")
