"""The export command, ``python -m tools.export``, and its one library entry point
(``utils.inference.export.export``) that ``predict.py --export-onnx`` shares: ONNX fp32 and
INT8 files that ``Detector`` runs, darknet pairs, the settings refused before any work, and
outputs kept off the inputs."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from conftest import exit_code
from voc_factory import run_with_file_size_limit

import predict
from nets.checkpoint import ModelInfo, load_model, save_checkpoint
from nets.yolo import DEFAULT_ANCHORS, YoloBody
from tools import export as export_tool
from utils.errors import InputError
from utils.inference.onnx_runner import OnnxRunner, onnx_metadata
from utils.inference.predictor import Detector
from utils.paths import OutputRefusedError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, YoloBody]:
    """A 3-class phi-0 checkpoint trained at 64 px (random weights), and its model."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = YoloBody(len(NAMES), 0).eval()
    info = ModelInfo(
        phi=0, phi_name="none", num_classes=len(NAMES), class_names=NAMES, input_size=64
    )
    save_checkpoint(folder / "tiny.pth", model, info)
    return folder / "tiny.pth", model


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.jpg"), rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))
    return folder


def tool(*args) -> int:
    return export_tool.main([str(a) for a in args])


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_onnx_export_runs_in_detector_like_the_checkpoint(tiny, tmp_path, capsys) -> None:
    weights, model = tiny
    out = tmp_path / "m.onnx"
    assert tool("--weights", weights, "--out", out, "--img-size", 96) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"exported {out} (opset 17, 96x96, batch 1, raw maps out32/out16")
    assert line.endswith("phi 0 (none) with 3 classes); onnx.checker passed")
    meta = onnx_metadata(out)
    assert (meta["input_size"], meta["class_names"], meta["phi"]) == (96, NAMES, 0)
    assert "quantization" not in meta
    detector = Detector.from_weights(out)
    assert isinstance(detector.model, OnnxRunner) and detector.model.input_size == 96
    assert detector.class_names == NAMES and detector.info.source == "onnx"
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        ref = model(x)
    for got, want in zip(detector.model(x), ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_int8_export_runs_in_detector(tiny, calib, tmp_path, capsys) -> None:
    weights, _ = tiny
    out = tmp_path / "q.onnx"
    args = ("--weights", weights, "--out", out, "--int8", calib, "--calib-images", 2)
    assert tool(*args, "--calib-method", "minmax") == 0
    assert "INT8 (minmax calibration on 2 images, float: heads+first)" in capsys.readouterr().out
    meta = onnx_metadata(out)
    assert meta["class_names"] == NAMES and meta["quantization"]["calibration_images"] == 2
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    detector = Detector.from_weights(out)
    assert detector.class_names == NAMES and detector.model.input_size == 64
    detections = detector(cv2.imread(str(next(calib.iterdir()))))
    assert detections.class_names == NAMES


@pytest.mark.parametrize(
    "settings",
    [[], ["--dynamic-batch", "--decode", "--opset", "18"]],
    ids=["default", "decoded"],
)
def test_predict_shortcut_writes_what_tools_export_writes(tiny, tmp_path, capsys, settings):
    weights, _ = tiny
    common = ["--weights", weights, "--img-size", 96]
    assert tool(*common, "--out", tmp_path / "tool.onnx", *settings) == 0
    tool_line = capsys.readouterr().out.strip()
    shortcut = [*common, "--export-onnx", tmp_path / "predict.onnx", *settings]
    assert exit_code(predict.main, ["--device", "cpu", *shortcut]) == 0
    predict_line = capsys.readouterr().out.strip()
    meta = onnx_metadata(tmp_path / "tool.onnx")
    assert meta["input_size"] == 96 and meta["class_names"] == NAMES
    assert onnx_metadata(tmp_path / "predict.onnx") == meta
    assert predict_line == tool_line.replace("tool.onnx", "predict.onnx")
    tool_graph = onnx.load(str(tmp_path / "tool.onnx")).graph
    predict_graph = onnx.load(str(tmp_path / "predict.onnx")).graph
    assert [o.name for o in predict_graph.output] == [o.name for o in tool_graph.output]


def test_predict_shortcut_keeps_its_old_flag_spellings(tiny, tmp_path) -> None:
    weights, _ = tiny
    out = tmp_path / "old.onnx"
    args = ("--weights", weights, "--export-onnx", out, "--onnx-dynamic", "--onnx-decode")
    assert exit_code(predict.main, ["--device", "cpu", *args]) == 0
    runner_refusal = r"out32/out16"  # decoded: not a raw-map graph
    with pytest.raises(InputError, match=runner_refusal):
        OnnxRunner(out)
    batch = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param != ""  # dynamic


def test_darknet_format_writes_a_pair_that_loads_back(tiny, tmp_path, capsys) -> None:
    weights, model = tiny
    prefix = tmp_path / "dk"
    # a .weights ending names the same prefix (not dk.weights.weights)
    assert tool("--weights", weights, "--format", "darknet", "--out", f"{prefix}.weights") == 0
    line = capsys.readouterr().out.strip()
    assert line == f"wrote {prefix}.cfg and {prefix}.weights (64x64; phi 0 (none) with 3 classes)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dk.cfg", "dk.weights"]
    assert "width=64" in (tmp_path / "dk.cfg").read_text()
    loaded, _ = load_model(tmp_path / "dk.weights", num_classes=3)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(loaded.eval()(x), model(x), strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "darknet", "--int8", "calib"], "--int8: ONNX settings; --format darknet"),
        (["--format", "darknet", "--decode"], "--decode: ONNX settings"),
        (["--int8", "calib", "--decode"], "--int8 quantizes raw-map graphs: leave out --decode"),
        (["--opset", "16"], "--opset 16: must be 17 to 20"),
        (["--opset", "9999"], "--opset 9999: must be 17 to 20"),
        (["--int8", "calib", "--calib-images", "0"], "--calib-images 0: must be at least 1"),
        (["--img-size", "100"], "--img-size 100: must be a positive multiple of 32"),
    ],
)
def test_settings_an_export_cannot_honour_are_refused_first(tmp_path, args, message) -> None:
    """Refused before the weights are read (they do not even exist here)."""
    with pytest.raises(InputError) as excinfo:
        tool("--weights", tmp_path / "missing.pth", "--out", tmp_path / "m.onnx", *args)
    assert str(excinfo.value).startswith(message), str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_outputs_never_land_on_the_inputs(tiny, calib, tmp_path) -> None:
    weights, _ = tiny
    names = tmp_path / "names.cfg"
    names.write_text("\n".join(NAMES) + "\n")
    image = next(calib.iterdir())
    before = {**digests(tmp_path), **digests(calib), "weights": digests(weights.parent)}
    cases = [
        (["--out", weights], f"{weights}: is the input {weights}"),
        (["--out", names, "--classes", names], f"{names}: is the input {names}"),
        (["--out", image, "--int8", calib], f"{image}: lies inside the input {calib};"),
        # darknet: the .cfg of the prefix is the classes file
        (
            ["--format", "darknet", "--out", tmp_path / "names", "--classes", names],
            f"{names}: is the input {names}",
        ),
    ]
    for args, message in cases:
        with pytest.raises(OutputRefusedError) as excinfo:
            tool("--weights", weights, *args)
        assert str(excinfo.value).startswith(f"--out {message}"), str(excinfo.value)
    after = {**digests(tmp_path), **digests(calib), "weights": digests(weights.parent)}
    assert after == before


def test_outputs_are_checked_before_the_weights(tmp_path) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "m.cfg").mkdir()  # the .cfg next to a writable .weights is a folder
    missing = tmp_path / "missing.pth"  # would be an error too, but comes second
    for out, named in [
        ("/proc/m", "/proc/m.weights"),
        (str(tmp_path / "a_file" / "m"), str(tmp_path / "a_file" / "m.weights")),
        (str(tmp_path / "m"), str(tmp_path / "m.cfg")),
    ]:
        with pytest.raises(OutputRefusedError) as excinfo:
            tool("--weights", missing, "--format", "darknet", "--out", out)
        message = str(excinfo.value)
        assert message.startswith(f"{named}: ") and "\n" not in message, message
    assert not (tmp_path / "m.weights").exists()
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):  # control: then the weights
        tool("--weights", missing, "--out", tmp_path / "m.onnx")


def test_anchors_are_taken_where_the_file_stores_none(tiny, tmp_path) -> None:
    weights, model = tiny
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)  # the reference layout: no names, no anchors
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    anchors = tmp_path / "anchors.txt"
    mine = [(w + 1, h + 2) for w, h in DEFAULT_ANCHORS]
    anchors.write_text(", ".join(f"{w},{h}" for w, h in mine))
    out = tmp_path / "a.onnx"
    assert tool("--weights", bare, "--classes", names, "--anchors", anchors, "--out", out) == 0
    assert onnx_metadata(out)["anchors"] == [list(a) for a in mine]
    assert Detector.from_weights(out).info.anchors == tuple(mine)
    # a checkpoint stores the anchors it was trained with: others are refused
    with pytest.raises(InputError, match="stores the anchors"):
        tool("--weights", weights, "--anchors", anchors, "--out", tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt, written", [("onnx", "m"), ("darknet", "m.weights")])
def test_a_write_failing_during_the_export_is_one_line(tiny, tmp_path, fmt, written) -> None:
    """Disk full (here: a file-size limit) while writing: exit 1, one line naming the file,
    nothing left behind."""
    weights, _ = tiny
    cmd = [sys.executable, "-m", "tools.export", "--weights", str(weights)]
    cmd += ["--format", fmt, "--out", str(tmp_path / "m")]
    result = run_with_file_size_limit(cmd, 2048, ROOT)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / written}: cannot write (File too large)"
    ]
    assert list(tmp_path.iterdir()) == []
