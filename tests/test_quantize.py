"""INT8 through ONNX Runtime static quantization (utils/inference/quantize.py, ``--int8`` of
``python -m tools.export`` and ``predict.py --export-onnx``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from conftest import exit_code

import predict
from nets.decode import Geometry
from nets.yolo import YoloBody
from utils.inference.export import export_onnx
from utils.inference.onnx_runner import OnnxRunner, onnx_metadata
from utils.inference.predictor import Detector, InferenceConfig
from utils.inference.quantize import pick_evenly, quantize_int8


def _images(folder: Path, count: int, size: int = 96) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}.jpg"
        cv2.imwrite(str(path), rng.integers(0, 256, (size, size + 16, 3), dtype=np.uint8))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def fp32_graph(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("int8")
    return export_onnx(
        YoloBody(3, 1), folder / "fp32.onnx", Geometry(input_size=64), metadata={"phi": 1}
    )


def test_pick_evenly_spreads_and_keeps_order() -> None:
    paths = [f"{i}.jpg" for i in range(10)]
    assert pick_evenly(paths, 3) == ["0.jpg", "4.jpg", "9.jpg"]  # ends included
    assert pick_evenly(paths, 20) == paths


def test_quantized_graph_is_int8_with_fp32_heads_and_metadata(fp32_graph, tmp_path) -> None:
    calibration = _images(tmp_path / "calib", 4)
    broken = tmp_path / "calib" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    out = quantize_int8(
        fp32_graph, tmp_path / "int8.onnx", [*calibration, str(broken)], method="minmax"
    )

    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    weights_int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert ops.count("QuantizeLinear") > 10 and len(weights_int8) >= 18  # the other BasicConvs
    producers = {o: n for n in graph.node for o in n.output}
    first = next(n for n in graph.node if n.op_type == "Conv")
    assert first.input[0] == "images"  # the first convolution: float, on the float input
    for name in ("out32", "out16"):  # heads: plain fp32 convolution on dequantized input
        head = producers[name]
        assert head.op_type == "Conv"
    for conv in (first, producers["out32"], producers["out16"]):
        weight = next(t for t in graph.initializer if t.name == conv.input[1])
        assert weight.data_type == onnx.TensorProto.FLOAT
    meta = onnx_metadata(out)
    assert meta["phi"] == 1
    assert meta["quantization"]["calibration_images"] == 4
    assert meta["quantization"]["skipped_images"] == 1  # reported, not fatal
    assert meta["quantization"]["method"] == "minmax"

    runner, reference = OnnxRunner(out), OnnxRunner(fp32_graph)
    x = torch.from_numpy(cv2.imread(calibration[0])[None]).float()
    x = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2), size=(64, 64)) / 255
    got, ref = runner(x), reference(x)
    for a, b in zip(got, ref):
        assert a.shape == b.shape and a.dtype == torch.float32
        # close to fp32, but not equal: it really runs in 8 bits
        assert 0 < float((a - b).abs().mean()) < 0.1 * float(b.std())


def test_an_unreadable_calibration_image_is_reported_once(tmp_path, caplog) -> None:
    meta = {"phi": 1, "class_names": ["a", "b", "c"]}  # names: the held-out check needs them
    graph = export_onnx(YoloBody(3, 1), tmp_path / "m.onnx", Geometry(input_size=64), metadata=meta)
    calibration = _images(tmp_path / "calib", 6)
    broken = tmp_path / "calib" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    # both methods calibrate on the same images (auto), each counting the broken one
    out = quantize_int8(
        graph,
        tmp_path / "int8.onnx",
        [*calibration[:5], str(broken)],
        check_paths=calibration[5:],
        method="auto",
        keep_float=("heads", "first"),
    )
    quant = onnx_metadata(out)["quantization"]
    assert set(quant["tried"]) == {"minmax heads+first", "percentile heads+first"}
    assert quant["calibration_images"] == 5 and quant["skipped_images"] == 1
    said = [r.getMessage() for r in caplog.records if "not used for calibration" in r.getMessage()]
    assert len(said) == 1 and "broken.jpg" in said[0]


def test_histogram_calibration_falls_back_to_minmax_on_a_constant_tensor(
    fp32_graph, tmp_path, caplog
) -> None:
    # in this random SE model some activation is 0 on every image: no histogram range
    out = quantize_int8(fp32_graph, tmp_path / "int8.onnx", _images(tmp_path / "c", 2))
    assert onnx_metadata(out)["quantization"]["method"] == "minmax"
    assert "percentile calibration failed" in caplog.text


def test_quantize_refuses_what_it_cannot_do(fp32_graph, tmp_path) -> None:
    with pytest.raises(ValueError, match="calibration method"):
        quantize_int8(fp32_graph, tmp_path / "a.onnx", ["x.jpg"], method="magic")
    with pytest.raises(ValueError, match="no calibration images"):
        quantize_int8(fp32_graph, tmp_path / "a.onnx", [])
    missing = [str(tmp_path / "gone.jpg")]
    with pytest.raises(ValueError, match="none of the 1 calibration images"):
        quantize_int8(fp32_graph, tmp_path / "b.onnx", missing)
    assert not (tmp_path / "b.onnx").exists()
    torch.manual_seed(0)
    decoded = export_onnx(
        YoloBody(3, 0), tmp_path / "dec.onnx", Geometry(input_size=64), decode=True
    )
    with pytest.raises(ValueError, match="raw-map export"):
        quantize_int8(decoded, tmp_path / "c.onnx", _images(tmp_path / "c", 1))


def test_cli_int8_errors_name_the_problem(tmp_path, capsys) -> None:
    calib = tmp_path / "calib"
    _images(calib, 2)
    weights = tmp_path / "w.pth"
    from nets.checkpoint import ModelInfo, save_checkpoint

    torch.manual_seed(0)
    info = ModelInfo(phi=0, phi_name="none", num_classes=3, class_names=["a", "b", "c"])
    save_checkpoint(weights, YoloBody(3, 0), info)
    out = tmp_path / "m.onnx"
    base = ["--weights", str(weights), "--img-size", "64", "--export-onnx", str(out)]
    assert exit_code(predict.main, [*base, "--int8", str(calib), "--onnx-decode"]) == 2
    assert "leave out --decode" in capsys.readouterr().err
    assert exit_code(predict.main, ["--weights", str(weights), "--int8", str(calib)]) == 2
    assert "--export-onnx" in capsys.readouterr().err
    assert exit_code(predict.main, [*base, "--int8", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not out.exists()
    assert exit_code(predict.main, [*base, "--int8", str(calib), "--calib-images", "1"]) == 0
    assert "calibration on 1 images, float: heads+first)" in capsys.readouterr().out
    assert onnx_metadata(out)["class_names"] == ["a", "b", "c"]


@pytest.mark.slow
def test_int8_official_weights_keep_the_detections(
    official_weights, sample_images, tmp_path
) -> None:
    """Calibrated on the two sample photos: every confident fp32 detection is found again."""
    calib = tmp_path / "calib"
    calib.mkdir()
    for image in sample_images:
        shutil.copy(image, calib / image.name)
    out = tmp_path / "int8.onnx"
    rc = predict.main(
        ["--weights", str(official_weights), "--export-onnx", str(out), "--int8", str(calib)]
    )
    assert rc == 0
    int8 = Detector.from_weights(out)
    fp32 = Detector.from_weights(official_weights, config=InferenceConfig(device="cpu"))
    checked = 0
    for image in sample_images:
        bgr = cv2.imread(str(image))
        ref, got = fp32(bgr), int8(bgr)
        confident = ref.scores >= 0.5
        checked += confident.sum()
        for box, label in zip(ref.boxes[confident], ref.labels[confident]):
            same = got.boxes[got.labels == label]
            assert len(same), f"{image.name}: class {label} lost"
            assert _iou(box, same).max() >= 0.8
        assert abs(len(got) - len(ref)) <= max(2, len(ref) // 3)
    assert checked >= 4  # bus: 2 people and the bus; zidane: 1 person


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)
