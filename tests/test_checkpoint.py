"""Our checkpoints, reference-implementation state dicts, and clear mismatch errors."""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
import pytest
import torch

from nets.checkpoint import (
    CheckpointMismatchError,
    ModelInfo,
    infer_phi,
    load_matching,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from nets.decode import Geometry
from nets.yolo import DEFAULT_ANCHORS, YoloBody
from utils.inference.predictor import Detector, InferenceConfig
from utils.paths import OutputPathError


def _model(num_classes: int, phi: int | str, seed: int = 0) -> YoloBody:
    torch.manual_seed(seed)
    model = YoloBody(num_classes, phi)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _same_outputs(a: YoloBody, b: YoloBody) -> bool:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return all(torch.equal(p, q) for p, q in zip(a.eval()(x), b.eval()(x)))


def test_a_checkpoint_write_that_fails_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    model, info = _model(1, 0), ModelInfo(phi=0, phi_name="none", num_classes=1)
    path = tmp_path / "last.pth"
    save_checkpoint(path, model, info, epoch=1)
    before = path.read_bytes()

    def full_disk(payload, target) -> None:  # what torch's zip writer raises on a full disk
        with open(target, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OutputPathError, match=r"last\.pth: cannot write \(disk full"):
        save_checkpoint(path, model, info, epoch=2)
    assert path.read_bytes() == before  # the older checkpoint is kept
    assert not path.with_name("last.pth.tmp").exists()


def test_our_checkpoint_round_trip(tmp_path) -> None:
    model = _model(3, "cbam")
    info = ModelInfo(
        phi=2,
        phi_name="cbam",
        num_classes=3,
        class_names=["a", "b", "c"],
        anchors=[(5, 6)] * 6,
        input_size=160,
    )
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, model, info, config={"epochs": 3}, epoch=2)
    loaded, loaded_info = load_model(path)
    assert _same_outputs(model, loaded)
    assert loaded_info.phi_name == "cbam" and loaded_info.class_names == ("a", "b", "c")
    assert loaded_info.anchors == ((5.0, 6.0),) * 6 and loaded_info.input_size == 160
    assert loaded_info.geometry == Geometry(anchors=[(5, 6)] * 6, input_size=160)
    assert not path.with_name("ckpt.pth.tmp").exists()


def test_model_info_is_immutable() -> None:
    info = ModelInfo(phi=0, phi_name="none", num_classes=2, class_names=["a", "b"])
    assert info.class_names == ("a", "b") and info.anchors == DEFAULT_ANCHORS
    assert isinstance(info.anchors_mask, tuple) and hash(info) == hash(dataclasses.replace(info))
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.anchors = ((1, 2),) * 6  # type: ignore[misc]
    wider = dataclasses.replace(info, input_size=608)
    assert (wider.input_size, info.input_size) == (608, 416)
    assert wider.geometry == info.geometry.at_size(608)


@pytest.mark.parametrize("phi", range(5))
def test_reference_state_dict_is_recognised(tmp_path, phi: int) -> None:
    model = _model(20, phi, seed=phi)
    path = tmp_path / f"ep100-loss2.3-phi{phi}.pth"
    torch.save(model.state_dict(), path)  # what the reference implementation writes
    loaded, info = load_model(path)
    assert (info.phi, info.num_classes, info.source) == (phi, 20, "state_dict")
    assert _same_outputs(model, loaded)


def test_dataparallel_prefix_is_stripped(tmp_path) -> None:
    model = _model(2, "eca")
    state = collections.OrderedDict(("module." + k, v) for k, v in model.state_dict().items())
    torch.save(state, tmp_path / "dp.pth")
    loaded, info = load_model(tmp_path / "dp.pth")
    assert info.phi_name == "eca" and _same_outputs(model, loaded)


def test_phi_mismatch_says_what_the_file_holds(tmp_path) -> None:
    torch.save(_model(20, "cbam").state_dict(), tmp_path / "cbam.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        load_model(tmp_path / "cbam.pth", phi="se")
    message = str(err.value)
    assert "cbam.pth contains phi 2 (cbam) with 20 classes" in message
    assert "phi 1 (se) with 20 classes was asked for" in message


def test_class_count_mismatch_says_what_the_file_holds(tmp_path) -> None:
    info = ModelInfo(phi=0, phi_name="none", num_classes=3)
    save_checkpoint(tmp_path / "ours.pth", _model(3, 0), info)
    with pytest.raises(CheckpointMismatchError, match=r"contains phi 0 .none. with 3 classes"):
        load_model(tmp_path / "ours.pth", num_classes=20)


def test_matching_request_passes(tmp_path) -> None:
    torch.save(_model(20, 4).state_dict(), tmp_path / "ca.pth")
    _, info = load_model(tmp_path / "ca.pth", phi="CA", num_classes=20)
    assert info.phi == 4


def test_missing_and_corrupt_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        load_model(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match=r"junk\.pth: cannot read"):
        load_model(tmp_path / "junk.pth")


class _Payload:  # arbitrary pickled objects must not be executed or accepted
    pass


def test_pickled_objects_are_refused(tmp_path) -> None:
    torch.save({"model": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth"):
        read_checkpoint(tmp_path / "evil.pth")


def test_infer_phi_rejects_unknown_attention_keys() -> None:
    state = {"upsample_att.mystery.weight": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError, match="unrecognised attention keys"):
        infer_phi(state)


def test_load_matching_reports_what_did_not_fit() -> None:
    source = _model(80, 0).state_dict()
    target = YoloBody(20, "se")
    report = load_matching(target, source)
    assert set(report.mismatched) == {
        "yolo_headP5.1.weight",
        "yolo_headP5.1.bias",
        "yolo_headP4.1.weight",
        "yolo_headP4.1.bias",
    }
    assert {k.split(".")[0] for k in report.missing} == {"feat1_att", "feat2_att", "upsample_att"}
    assert torch.equal(
        target.state_dict()["backbone.conv1.conv.weight"], source["backbone.conv1.conv.weight"]
    )


def test_detector_uses_checkpoint_class_names(tmp_path) -> None:
    names = ["cat", "dog"]
    info = ModelInfo(phi=1, phi_name="se", num_classes=2, class_names=names)
    save_checkpoint(tmp_path / "c.pth", _model(2, 1), info)
    detector = Detector.from_weights(tmp_path / "c.pth", config=InferenceConfig(img_size=64))
    assert detector.class_names == names
    dets = detector(np.zeros((50, 70, 3), np.uint8))
    assert dets.boxes.shape[1:] == (4,) and (dets.width, dets.height) == (70, 50)


def test_detector_rejects_wrong_class_file(tmp_path) -> None:
    info = ModelInfo(phi=0, phi_name="none", num_classes=2)
    save_checkpoint(tmp_path / "c.pth", _model(2, 0), info)
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    with pytest.raises(CheckpointMismatchError, match="with 2 classes"):
        Detector.from_weights(tmp_path / "c.pth", classes=tmp_path / "names.txt")


def test_grid_sensitivity_is_stored_and_inferred(tmp_path, official_weights) -> None:
    """Ours: stored (1.05 when an older file has none); the reference implementation's state
    dicts: 1.0, as it trained; darknet files: 1.05."""
    model = _model(3, 0)
    info = ModelInfo(phi=0, phi_name="none", num_classes=3, scale_x_y=1.0)
    save_checkpoint(tmp_path / "ours.pth", model, info)
    _, read = load_model(tmp_path / "ours.pth")
    assert read.scale_x_y == 1.0 and read.geometry.scale_x_y == 1.0

    payload = torch.load(tmp_path / "ours.pth", weights_only=True)
    del payload["scale_x_y"]  # written before the factor was stored
    torch.save(payload, tmp_path / "older.pth")
    assert load_model(tmp_path / "older.pth")[1].scale_x_y == 1.05

    torch.save(model.state_dict(), tmp_path / "reference.pth")
    assert load_model(tmp_path / "reference.pth")[1].scale_x_y == 1.0
    assert load_model(official_weights)[1].scale_x_y == 1.05


def test_detector_decodes_with_the_weights_factor_unless_overridden(tmp_path) -> None:
    model = _model(3, 0)
    info = ModelInfo(phi=0, phi_name="none", num_classes=3, class_names=["a", "b", "c"])
    save_checkpoint(tmp_path / "a.pth", model, dataclasses.replace(info, scale_x_y=1.0))
    assert Detector.from_weights(tmp_path / "a.pth").geometry.scale_x_y == 1.0
    forced = Detector.from_weights(tmp_path / "a.pth", config=InferenceConfig(scale_xy=1.1))
    assert forced.geometry.scale_x_y == 1.1
    with pytest.raises(ValueError, match="scale-xy"):
        InferenceConfig(scale_xy=0.5)


def test_a_checkpoint_missing_tensors_is_one_error_naming_the_file(tmp_path) -> None:
    info = ModelInfo(phi=2, phi_name="cbam", num_classes=3)
    path = tmp_path / "ours.pth"
    save_checkpoint(path, _model(3, "cbam"), info)
    payload = torch.load(path, weights_only=False)
    keys = list(payload["model"])
    for key in keys[::7]:
        del payload["model"][key]
    torch.save(payload, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_model(path)
    message = str(err.value)
    assert message.startswith(f"{path}: does not match the phi 2 (cbam) with 3 classes")
    assert f"{len(keys[::7])} tensors missing (first: {keys[0]})" in message


class _Callable:
    def __reduce__(self):  # unpickling would call os.getcwd: never done by our loader
        return (os.getcwd, ())


@pytest.mark.parametrize(
    ("write", "why"),
    [
        (lambda p: p.write_text("hello world\n"), "not a PyTorch file"),
        (lambda p: torch.save({"x": _Callable()}, p), "stores Python objects besides tensors"),
        (lambda p: torch.save({"a.weight": torch.zeros(1)}, p), "not a YOLOv4-tiny state dict"),
    ],
)
def test_foreign_pth_files_are_named_with_what_they_are(tmp_path, write, why) -> None:
    path = tmp_path / "model.pth"
    write(path)
    with pytest.raises(ValueError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: ") and why in str(err.value), err.value
