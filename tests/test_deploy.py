"""Deployment: batch-norm folding (nets/fuse.py), ONNX export (utils/inference/export.py) and
ONNX Runtime (utils/inference/onnx_runner.py) against PyTorch, and the ``predict.py`` deployment
flags (``--export-onnx``, ``--backend``, ``--no-fuse``).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import exit_code
from torch import nn

import predict
from nets.backbone import BasicConv
from nets.blocks import CoordAttention
from nets.checkpoint import CheckpointMismatchError, ModelInfo, save_checkpoint
from nets.decode import Geometry, decode_outputs
from nets.fuse import FusedConv, fuse_model
from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK, YoloBody
from utils.detections import Detections
from utils.inference.export import export_onnx
from utils.inference.onnx_runner import OnnxRunner, onnx_metadata
from utils.inference.predictor import Detector, InferenceConfig

NUM_CLASSES = 3
TOL = 1e-4  # two fp32 runtimes: abs difference, relative above 1 (decoded pixel coordinates)
BOX_TOL_PX = 0.05  # detections in original-image pixels
SCORE_TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small inputs gain nothing from threads, and spinning threads on a shared CI CPU can
    stall for a second per forward; restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_with_bn_stats(phi: int, seed: int = 0) -> YoloBody:
    """Random weights with BN statistics and affine terms far from their identity defaults."""
    torch.manual_seed(seed)
    model = YoloBody(NUM_CLASSES, phi)
    gen = torch.Generator().manual_seed(seed)
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.empty(n).uniform_(-0.5, 0.5, generator=gen))
            bn.running_var.copy_(torch.empty(n).uniform_(0.3, 3.0, generator=gen))
            bn.weight.data.copy_(torch.empty(n).uniform_(1.0, 2.0, generator=gen))
            bn.bias.data.copy_(torch.empty(n).uniform_(-0.3, 0.3, generator=gen))
    return model


def max_diff(a, b) -> float:
    """Largest ``|a - b| / max(1, |b|)`` over paired tensors: absolute for raw maps and
    probabilities, relative for decoded boxes (pixels up to the input size, where float32 exp
    alone moves the 5th significant digit)."""
    return max(
        float(((torch.as_tensor(x) - yt).abs() / yt.abs().clamp(min=1)).max())
        for x, y in zip(a, b)
        for yt in [torch.as_tensor(y)]
    )


# --------------------------------------------------------------------------- fuse_model


@pytest.mark.parametrize("phi", range(5))
def test_fuse_model_matches_unfused_and_leaves_original_alone(phi: int) -> None:
    model = model_with_bn_stats(phi).train()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    bn_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())

    fused = fuse_model(model)

    assert not fused.training
    assert sum(isinstance(m, FusedConv) for m in fused.modules()) == 19  # every BasicConv
    assert not any(isinstance(m, BasicConv) for m in fused.modules())
    attention = [m for m in fused.modules() if isinstance(m, CoordAttention)]
    assert len(attention) == (3 if phi == 4 else 0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    # The original keeps its mode, its BN modules and every tensor.
    assert model.training
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn_before
    state_after = model.state_dict()
    assert state_after.keys() == state_before.keys()
    assert all(torch.equal(state_after[k], v) for k, v in state_before.items())

    model.eval()
    ignored_stats = copy.deepcopy(model)  # same convs, BN statistics and affine terms reset
    for bn in ignored_stats.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.reset_parameters()
    gen = torch.Generator().manual_seed(phi)
    for size in (96, 128):
        x = torch.rand(2, 3, size, size, generator=gen)
        with torch.inference_mode():
            ref, out = model(x), fused(x)
            assert [o.shape for o in out] == [o.shape for o in ref]
            assert max_diff(out, ref) < TOL
            # The BN terms matter far above the tolerance, so a fold that dropped them fails.
            assert max_diff(ignored_stats(x), ref) > 100 * TOL


# --------------------------------------------------------------------------- ONNX export


@pytest.fixture(scope="module")
def onnx_models() -> dict[int, YoloBody]:
    return {phi: model_with_bn_stats(phi, seed=10 + phi).eval() for phi in range(5)}


def torch_reference(model: YoloBody, x: torch.Tensor, decode: bool, size: int) -> list:
    with torch.inference_mode():
        out = model(x)
        if decode:
            out = [decode_outputs(out, Geometry(input_size=size))]
    return [o.numpy() for o in out]


def export_checked(model: YoloBody, path: Path, size: int, opset: int, dynamic: bool, decode: bool):
    geometry = Geometry(anchors=DEFAULT_ANCHORS, anchors_mask=DEFAULT_ANCHORS_MASK, input_size=size)
    export_onnx(model, path, geometry, opset=opset, dynamic_batch=dynamic, decode=decode)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)  # independent of export_onnx's own check
    versions = {o.domain: o.version for o in graph.opset_import}
    assert versions.get("", versions.get("ai.onnx")) == opset
    return graph


@pytest.mark.parametrize("decode", [False, True], ids=["raw", "decoded"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("opset", [17, 18])
def test_onnx_export_matches_pytorch(onnx_models, tmp_path, opset, dynamic, decode) -> None:
    size, phi = 96, 4  # CA: permute, split, means over H and W; the most unusual graph
    model = onnx_models[phi]
    path = tmp_path / "model.onnx"
    graph = export_checked(model, path, size, opset, dynamic, decode)
    names = ["detections"] if decode else ["out32", "out16"]
    assert [o.name for o in graph.graph.output] == names
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert (batch_dim.dim_param != "") == dynamic
    if not dynamic:
        assert batch_dim.dim_value == 1

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    runner = None if decode else OnnxRunner(path)  # what Detector uses: the model's contract
    gen = torch.Generator().manual_seed(opset)
    for batch in (2, 3) if dynamic else (1,):
        x = torch.rand(batch, 3, size, size, generator=gen)
        got = session.run(names, {"images": x.numpy()})
        ref = torch_reference(model, x, decode, size)
        assert [g.shape for g in got] == [r.shape for r in ref]
        assert max_diff(got, ref) < TOL
        if runner is not None:
            assert max_diff(runner(x), ref) < TOL
    if not dynamic:
        x = torch.rand(2, 3, size, size, generator=gen)
        with pytest.raises(Exception, match=r"(?i)dimension|shape"):
            session.run(names, {"images": x.numpy()})
        if runner is not None:  # OnnxRunner runs a fixed-batch graph image by image
            assert max_diff(runner(x), torch_reference(model, x, False, size)) < TOL


@pytest.mark.parametrize("phi", [0, 1, 2, 3])
def test_onnx_export_every_attention_block(onnx_models, tmp_path, phi) -> None:
    size = 128
    path = tmp_path / f"phi{phi}.onnx"
    export_checked(onnx_models[phi], path, size, 17, dynamic=True, decode=False)
    runner = OnnxRunner(path)
    assert runner.dynamic_batch and runner.input_size == size
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(phi))
    assert max_diff(runner(x), torch_reference(onnx_models[phi], x, False, size)) < TOL


def test_onnx_metadata_round_trip(onnx_models, tmp_path) -> None:
    meta = {
        "phi": 3,
        "phi_name": "eca",
        "class_names": ["cat", "dog", "ünïcode bird"],
        "anchors": [list(a) for a in DEFAULT_ANCHORS],
        "anchors_mask": [list(m) for m in DEFAULT_ANCHORS_MASK],
        "input_size": 64,
    }
    with_meta = export_onnx(
        onnx_models[3], tmp_path / "meta.onnx", Geometry(input_size=64), metadata=meta
    )
    assert onnx_metadata(with_meta) == meta
    onnx.checker.check_model(str(with_meta))
    without = export_onnx(onnx_models[3], tmp_path / "plain.onnx", Geometry(input_size=64))
    assert onnx_metadata(without) == {}
    assert Detector.from_weights(with_meta, phi="eca").info.phi_name == "eca"
    with pytest.raises(CheckpointMismatchError, match=r"meta\.onnx contains phi 3 \(eca\)"):
        Detector.from_weights(with_meta, phi=2)  # --phi is checked against the graph


def test_opset_below_17_is_refused(onnx_models, tmp_path) -> None:
    with pytest.raises(ValueError, match="opset 16"):
        export_onnx(onnx_models[0], tmp_path / "old.onnx", Geometry(input_size=64), opset=16)
    assert not (tmp_path / "old.onnx").exists()


def test_onnx_runner_refuses_decoded_graph(onnx_models, tmp_path) -> None:
    path = tmp_path / "decoded.onnx"
    export_onnx(onnx_models[0], path, Geometry(input_size=64), decode=True)
    with pytest.raises(ValueError, match=r"out32/out16.*--decode"):
        OnnxRunner(path)
    with pytest.raises(ValueError, match="out32/out16"):
        Detector.from_weights(path, classes=["a", "b", "c"])


@pytest.mark.parametrize("damage", ["empty", "random", "truncated", "text"])
def test_unreadable_onnx_files_are_one_line_naming_the_file(onnx_models, tmp_path, damage):
    good = export_onnx(onnx_models[0], tmp_path / "good.onnx", Geometry(input_size=64))
    payload = {
        "empty": b"",
        "random": np.random.default_rng(0).bytes(4096),
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "text": b"this is a text file\n" * 30,
    }[damage]
    path = tmp_path / f"{damage}.onnx"
    path.write_bytes(payload)
    for load in (onnx_metadata, OnnxRunner, lambda p: Detector.from_weights(p, classes=["a"])):
        with pytest.raises(ValueError) as excinfo:
            load(path)
        message = str(excinfo.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx: no such file"):
        OnnxRunner(tmp_path / "missing.onnx")


# --------------------------------------------------------------------------- official weights


def detections_from_json(path: Path) -> dict[str, Detections]:
    return {
        Path(record["image"]).name: Detections.from_json(record["detections"])
        for record in json.loads(path.read_text())
    }


def assert_same_detections(got: Detections, ref: Detections) -> None:
    """Same classes; each reference box has a same-class partner within the tolerances."""
    assert len(ref) > 0
    assert sorted(got.labels.tolist()) == sorted(ref.labels.tolist())
    unused = set(range(len(got)))
    for box, score, label in zip(ref.boxes, ref.scores, ref.labels):
        candidates = [j for j in unused if got.labels[j] == label]
        j = min(candidates, key=lambda k: float(np.abs(got.boxes[k] - box).max()))
        unused.remove(j)
        assert float(np.abs(got.boxes[j] - box).max()) < BOX_TOL_PX, (label, box, got.boxes[j])
        assert abs(float(got.scores[j]) - float(score)) < SCORE_TOL


@pytest.fixture(scope="module")
def sample_dir(sample_images, tmp_path_factory) -> Path:
    """bus.jpg and zidane.jpg alone in a folder, for one CLI run over both."""
    folder = tmp_path_factory.mktemp("samples")
    for image in sample_images:
        shutil.copy(image, folder / image.name)
    return folder


@pytest.fixture(scope="module")
def reference_detections(official_weights, sample_images) -> dict[str, Detections]:
    """The default torch Detector (fused) on CPU: the reference of every backend below."""
    detector = Detector.from_weights(official_weights, config=InferenceConfig(device="cpu"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in detector.model.modules())
    return {p.name: detector(cv2.imread(str(p))) for p in sample_images}


def count_calls(monkeypatch: pytest.MonkeyPatch, cls: type, name: str = "__call__") -> list[int]:
    calls = [0]
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def run_cli(*args) -> int:
    """``predict.py ARGS`` as the command runs it (errors printed, exit code returned)."""
    return exit_code(predict.main, ["--device", "cpu", *args])


@pytest.mark.slow
def test_exported_onnx_detector_matches_torch(
    official_weights, sample_images, reference_detections, tmp_path, monkeypatch
) -> None:
    path = tmp_path / "yolov4-tiny.onnx"
    assert run_cli("--weights", official_weights, "--export-onnx", path) == 0
    meta = onnx_metadata(path)
    assert meta["input_size"] == 416 and meta["phi"] == 0 and len(meta["class_names"]) == 80
    detector = Detector.from_weights(path)
    assert isinstance(detector.model, OnnxRunner) and detector.info.source == "onnx"
    assert detector.class_names == meta["class_names"] and detector.config.img_size == 416
    calls = count_calls(monkeypatch, OnnxRunner)
    for image in sample_images:
        got = detector(cv2.imread(str(image)))
        assert got.class_names == detector.class_names
        assert_same_detections(got, reference_detections[image.name])
    assert calls[0] == len(sample_images)


@pytest.mark.slow
def test_cli_onnxruntime_backend_exports_darknet_weights_on_the_fly(
    official_weights, sample_dir, reference_detections, tmp_path, monkeypatch
) -> None:
    calls = count_calls(monkeypatch, OnnxRunner)
    out = tmp_path / "dets.json"
    rc = run_cli(
        "--weights",
        official_weights,
        "--backend",
        "onnxruntime",
        "--source",
        sample_dir,
        "--no-save",
        "--json",
        out,
    )
    assert rc == 0
    assert calls[0] == len(reference_detections)  # ORT ran every image, torch none
    got = detections_from_json(out)
    assert got.keys() == reference_detections.keys()
    for name, ref in reference_detections.items():
        assert_same_detections(got[name], ref)


@pytest.mark.slow
def test_cli_no_fuse_matches_fused(
    official_weights, sample_dir, reference_detections, tmp_path, monkeypatch
) -> None:
    bn_calls = count_calls(monkeypatch, nn.BatchNorm2d, "forward")
    out = tmp_path / "dets.json"
    rc = run_cli(
        "--weights",
        official_weights,
        "--no-fuse",
        "--source",
        sample_dir,
        "--no-save",
        "--json",
        out,
    )
    assert rc == 0
    assert bn_calls[0] == 19 * len(reference_detections)  # batch norm really ran unfused
    got = detections_from_json(out)
    for name, ref in reference_detections.items():
        assert_same_detections(got[name], ref)


@pytest.mark.slow
def test_cli_onnx_input_size_mismatch_is_an_error(
    official_weights, sample_images, tmp_path, capsys
) -> None:
    path = tmp_path / "m320.onnx"
    assert run_cli("--weights", official_weights, "--img-size", 320, "--export-onnx", path) == 0
    assert OnnxRunner(path).input_size == 320
    capsys.readouterr()
    common = ("--weights", path, "--backend", "onnxruntime", "--source", sample_images[0])
    assert run_cli(*common, "--img-size", 416, "--no-save") == 2
    err = capsys.readouterr().err
    assert "error:" in err and "320" in err and "416" in err
    assert "Traceback" not in err
    # Control: the matching size runs, so the exit code above is the size check's.
    assert run_cli(*common, "--img-size", 320, "--no-save") == 0


def test_cli_export_refuses_old_opset(onnx_models, tmp_path, capsys) -> None:
    weights = tmp_path / "tiny.pth"
    info = ModelInfo(phi=0, phi_name="none", num_classes=NUM_CLASSES, class_names=["a", "b", "c"])
    save_checkpoint(weights, onnx_models[0], info)
    assert run_cli("--weights", weights, "--export-onnx", tmp_path / "x.onnx", "--opset", 16) == 2
    assert "opset 16" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    # Control: the same call with opset 18 works and stores the checkpoint's class names.
    args = ("--weights", weights, "--export-onnx", tmp_path / "y.onnx", "--img-size", 64)
    assert run_cli(*args, "--opset", 18, "--onnx-dynamic") == 0
    assert onnx_metadata(tmp_path / "y.onnx")["class_names"] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--int8", "calib"), "--int8"),
        (("--int8-float", "heads", "--decode"), "--int8-float, --decode"),
        (("--calib-method", "minmax", "--opset", "18"), "--calib-method, --opset"),
    ],
)
def test_export_flags_without_an_export_are_refused(tmp_path, capsys, flags, named) -> None:
    # running a model would ignore them: refused, naming them, before anything is read
    args = ("--weights", tmp_path / "missing.pth", "--save-dir", tmp_path / "out", *flags)
    assert run_cli(*args) == 2
    assert capsys.readouterr().err == (
        f"error: {named}: settings of an export; give --export-onnx PATH too\n"
    )
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("classes", [None, [f"c{i}" for i in range(20)]], ids=["coco", "20"])
def test_onnx_class_count_is_checked_against_the_graph(onnx_models, tmp_path, classes) -> None:
    # 3 classes, no metadata
    path = export_onnx(onnx_models[0], tmp_path / "no_meta.onnx", Geometry(input_size=64))
    with pytest.raises(ValueError, match="class"):
        Detector.from_weights(path, classes=classes)


def test_export_refuses_input_size_not_multiple_of_32(onnx_models, tmp_path) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx(onnx_models[0], tmp_path / "odd.onnx", Geometry(input_size=100))
