"""The inference fast path: the reused input canvas against the fresh letterbox, the reduced
JPEG decode and its rule, the ``--amp`` hint and the roofline arithmetic of
``benchmarks.inference``. Real OpenCV, torch and ONNX Runtime on small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import roofline
from nets.checkpoint import ModelInfo
from nets.yolo import YoloBody
from utils import precision
from utils.device import TORCH_THREADS_BESIDE_ONNX, torch_threads
from utils.inference.export import export_onnx
from utils.inference.onnx_runner import OnnxRunner
from utils.inference.predict_loop import OutputOptions, run_predictions
from utils.inference.predictor import Detector, InferenceConfig
from utils.precision import AMP_CACHE_FILE, AMP_HINT_ENV, amp_cache_entry, amp_hint, amp_hint_text
from utils.preprocess import InputCanvas, decode_reduction, preprocess_bgr, to_tensor
from utils.sources import (
    ImageReadError,
    jpeg_size,
    read_image,
    read_image_reduced,
    resolve_source,
)

SIZE = 64


def tiny_detector(**config) -> Detector:
    torch.manual_seed(0)
    model = YoloBody(2, 0)
    info = ModelInfo(phi=0, phi_name="none", num_classes=2, class_names=["a", "b"])
    return Detector(model, info, config=InferenceConfig(img_size=SIZE, device="cpu", **config))


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_jpeg(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


# --------------------------------------------------------------------------- input canvas


@pytest.mark.parametrize("letterbox", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_input_canvas_equals_the_fresh_letterbox_bit_for_bit(letterbox, channels_last) -> None:
    canvas = InputCanvas(SIZE, letterbox, channels_last=channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # tall, wide, square, tiny and extreme shapes in turn: the padding moves between calls
    for k, (h, w) in enumerate([(120, 90), (40, 200), (64, 64), (3, 2), (500, 7), (120, 90)]):
        image = random_image(h, w, seed=k)
        tensor, meta = canvas(image)
        reference, reference_meta = preprocess_bgr(image, SIZE, letterbox)
        assert meta == reference_meta
        assert torch.equal(tensor, to_tensor([reference]))
        assert tensor.is_contiguous(memory_format=fmt)


def test_input_canvas_reuses_its_buffers() -> None:
    canvas = InputCanvas(SIZE)
    first, _ = canvas(random_image(100, 50))
    second, _ = canvas(random_image(50, 100, seed=1))
    assert first.data_ptr() == second.data_ptr()  # overwritten, not reallocated


def test_detector_input_canvas_follows_its_settings() -> None:
    detector = tiny_detector()
    first = detector.input_canvas()
    assert detector.input_canvas() is first and first.channels_last  # torch on the CPU: NHWC
    detector.config = InferenceConfig(img_size=96, device="cpu", letterbox=False)
    canvas = detector.input_canvas()
    assert canvas is not first and (canvas.input_size, canvas.letterbox) == (96, False)
    tensor, meta = canvas(random_image(50, 80))
    assert tensor.shape == (1, 3, 96, 96) and meta.pad_x == meta.pad_y == 0


def assert_call_matches_the_three_stages(detector: Detector, image: np.ndarray) -> None:
    """``detector(image)`` (reused input buffers) gives exactly what preprocess, forward and
    postprocess give one after another."""
    batch, metas = detector.preprocess([image])
    expected = detector.postprocess(detector.forward(batch), metas)[0]
    got = detector(image)
    assert len(expected) > 0
    np.testing.assert_array_equal(got.boxes, expected.boxes)
    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(got.labels, expected.labels)


def test_detector_call_matches_the_three_stages() -> None:
    detector = tiny_detector(conf_thresh=0.01)
    for k, (h, w) in enumerate([(120, 90), (90, 120)]):
        assert_call_matches_the_three_stages(detector, random_image(h, w, seed=k))


def test_onnx_runtime_detector_call_matches_the_three_stages(tmp_path: Path) -> None:
    torch_detector = tiny_detector(conf_thresh=0.01)
    path = export_onnx(torch_detector.model, tmp_path / "m.onnx", torch_detector.geometry)
    config = InferenceConfig(img_size=SIZE, device="cpu", conf_thresh=0.01, backend="onnxruntime")
    detector = Detector(None, torch_detector.info, config=config, runner=OnnxRunner(path))
    assert_call_matches_the_three_stages(detector, random_image(100, 70))


class ThreadRecordingRunner:
    """The ONNX Runtime session's place in a Detector: records torch's thread count at each
    call and runs the real raw-map graph."""

    def __init__(self, runner: OnnxRunner) -> None:
        self.runner, self.torch_threads = runner, []
        self.threads = runner.threads

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        self.torch_threads.append(torch.get_num_threads())
        return self.runner(batch)


def test_torch_threads_restores_the_setting_even_on_error() -> None:
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with pytest.raises(RuntimeError), torch_threads(target):
        assert torch.get_num_threads() == target
        raise RuntimeError
    assert torch.get_num_threads() == before


def test_torch_runs_one_thread_beside_an_onnx_runtime_session(tmp_path: Path) -> None:
    torch_detector = tiny_detector(conf_thresh=0.01)
    path = export_onnx(torch_detector.model, tmp_path / "m.onnx", torch_detector.geometry)
    runner = ThreadRecordingRunner(OnnxRunner(path))
    detector = Detector(None, torch_detector.info, config=torch_detector.config, runner=runner)
    before = torch.get_num_threads()
    with torch_threads(2):  # as on a 2-core machine, whatever this one has
        detector(random_image(100, 70))
        image = write_jpeg(tmp_path / "a.jpg", random_image(90, 120))
        opts = OutputOptions(save_dir=tmp_path / "out")
        summary = run_predictions(detector, resolve_source(str(image)), opts)
        assert summary.images == 1 and torch.get_num_threads() == 2
        # a PyTorch model keeps torch's threads: it is what they run
        with torch_detector.torch_threads():
            assert torch.get_num_threads() == 2
    assert runner.torch_threads == [TORCH_THREADS_BESIDE_ONNX] * 2
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------------- reduced decode


@pytest.mark.parametrize(
    ("width", "height", "letterbox", "factor"),
    [
        (810, 1080, True, 2),  # 1080 / 416 = 2.6: half scale still covers 416
        (1664, 1000, True, 4),  # exactly four times the input on the longer side
        (1663, 1000, True, 2),  # a pixel short of four times
        (831, 600, True, 1),  # under twice the input: full scale
        (416, 416, True, 1),
        (2000, 700, False, 1),  # stretched: the shorter side decides (700 < 832)
        (2000, 900, False, 2),
    ],
)
def test_decode_reduction(width, height, letterbox, factor) -> None:
    assert decode_reduction(width, height, 416, letterbox) == factor


def test_jpeg_size_reads_the_frame_header(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "a.jpg", random_image(37, 91))
    raw = path.read_bytes()
    assert jpeg_size(raw) == (91, 37)
    assert jpeg_size(np.frombuffer(raw, np.uint8)) == (91, 37)
    _, png = cv2.imencode(".png", random_image(5, 5))
    assert jpeg_size(png.tobytes()) is None  # not a JPEG
    assert jpeg_size(raw[:20]) is None  # the header cut before the frame
    assert jpeg_size(b"") is None


def test_read_image_reduced_maps_boxes_to_the_full_image(tmp_path: Path) -> None:
    image = cv2.resize(random_image(30, 40), (400, 300), interpolation=cv2.INTER_NEAREST)
    path = write_jpeg(tmp_path / "big.jpg", image)
    reduced, original = read_image_reduced(path, SIZE)  # 400 / 64 = 6.25: quarter scale
    assert original == (400, 300) and reduced.shape == (75, 100, 3)
    small = write_jpeg(tmp_path / "small.jpg", random_image(60, 100))
    full, size = read_image_reduced(small, SIZE)  # 100 / 64 < 2: full scale
    np.testing.assert_array_equal(full, read_image(small))
    assert size == (100, 60)
    detector = tiny_detector(conf_thresh=0.01)
    dets = detector(reduced, original)
    assert dets.width == 400 and dets.height == 300  # in the full image's pixels
    assert len(dets) and dets.boxes[:, 2].max() <= 399 and dets.boxes[:, 3].max() <= 299
    _, meta = InputCanvas(SIZE)(reduced, original)
    assert meta == preprocess_bgr(image, SIZE)[1]  # the full-size path's layout


def test_read_image_reduced_reports_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ImageReadError, match=r"bad\.jpg"):
        read_image_reduced(bad, SIZE)
    with pytest.raises(ImageReadError, match=r"missing\.jpg"):
        read_image_reduced(tmp_path / "missing.jpg", SIZE)


# --------------------------------------------------------------------------- --amp hint


def write_cache(folder: Path, speedups: dict[str, float]) -> Path:
    path = folder / AMP_CACHE_FILE
    path.write_text(json.dumps({amp_cache_entry(k): v for k, v in speedups.items()}))
    return path


@pytest.fixture(autouse=True)
def _amp_hint_on(monkeypatch) -> None:
    """The suite turns the --amp line off (conftest); here it is what is tested."""
    monkeypatch.delenv(AMP_HINT_ENV, raising=False)


def test_amp_hint_is_off_when_the_environment_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(AMP_HINT_ENV, "0")
    monkeypatch.setattr(precision, "measure_amp_speedup", lambda forward, example: 1 / 0)
    model, example = nn.Conv2d(3, 4, 3), torch.rand(1, 3, 8, 8)
    assert amp_hint(model, example, "k", native=True, cache_dir=tmp_path) is None


def test_amp_hint_says_a_cached_speedup(tmp_path: Path) -> None:
    model = nn.Conv2d(3, 4, 3)
    example = torch.rand(1, 3, 8, 8)
    path = write_cache(tmp_path, {"fast": 1.678, "slow": 0.9})
    line = amp_hint(model, example, "fast", native=True, cache_dir=tmp_path)
    assert line.startswith("note: --amp is available") and "1.68x faster" in line
    assert f"measured earlier on this CPU, cached in {path}" in line and "\n" not in line
    before = path.read_text()
    assert amp_hint(model, example, "slow", native=True, cache_dir=tmp_path) is None  # < 1.1x
    assert path.read_text() == before  # read, not measured again


def test_amp_hint_measures_once_and_caches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(precision, "busy_load", lambda: None)  # a quiet machine
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    example = torch.rand(1, 3, 32, 32)
    first = amp_hint(model, example, "tiny conv", native=True, cache_dir=tmp_path)
    path = tmp_path / AMP_CACHE_FILE
    ((entry, speedup),) = json.loads(path.read_text()).items()
    assert entry == amp_cache_entry("tiny conv") and speedup > 0
    # said only where it pays; either way the number comes from this one measurement
    assert (first is None) == (speedup < 1.1)
    assert first is None or "measured now in" in first
    before = path.read_text()
    second = amp_hint(model, example, "tiny conv", native=True, cache_dir=tmp_path)
    assert (second is None) == (first is None) and path.read_text() == before
    path.write_text("{not json")  # a damaged cache: measured again and rewritten
    amp_hint(model, example, "tiny conv", native=True, cache_dir=tmp_path)
    assert set(json.loads(path.read_text())) == {entry}


def test_a_speedup_measured_on_a_busy_machine_is_said_but_not_cached(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(precision, "busy_load", lambda: 3.5)
    monkeypatch.setattr(precision, "measure_amp_speedup", lambda forward, example: 1.5)
    line = amp_hint(
        nn.Conv2d(3, 4, 3), torch.rand(1, 3, 8, 8), "k", native=True, cache_dir=tmp_path
    )
    assert "1.50x faster" in line and "load average was 3.5: not cached" in line
    assert not (tmp_path / AMP_CACHE_FILE).exists()  # measured again next time


def test_busy_load_reads_the_load_average_per_cpu(monkeypatch) -> None:
    monkeypatch.setattr(precision.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(precision.os, "getloadavg", lambda: (0.9, 0.0, 0.0))
    assert precision.busy_load() is None  # below 0.5 per CPU
    monkeypatch.setattr(precision.os, "getloadavg", lambda: (1.0, 0.0, 0.0))
    assert precision.busy_load() == 1.0


def test_amp_hint_is_silent_without_native_bfloat16(tmp_path: Path) -> None:
    model = nn.Conv2d(3, 4, 3)
    assert amp_hint(model, torch.rand(1, 3, 8, 8), "k", native=False, cache_dir=tmp_path) is None
    assert not (tmp_path / AMP_CACHE_FILE).exists()  # nothing measured, nothing written


def test_detector_amp_hint_only_for_float32_torch_on_the_cpu(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "busy_load", lambda: None)
    tiny_detector().amp_hint(native=True)  # measured and cached under the model's key
    cache = tmp_path / "yolov4-tiny-attention"
    key = "phi 0 (none) with 2 classes, 64 px, fused True"
    assert amp_cache_entry(key) in json.loads((cache / AMP_CACHE_FILE).read_text())
    write_cache(cache, {key: 2.0})
    assert "2.00x faster" in tiny_detector().amp_hint(native=True)
    assert tiny_detector().amp_hint(native=False) is None
    assert tiny_detector(amp=True).amp_hint(native=True) is None  # already on
    torch_detector = tiny_detector()
    path = export_onnx(torch_detector.model, tmp_path / "m.onnx", torch_detector.geometry)
    config = InferenceConfig(img_size=SIZE, device="cpu", backend="onnxruntime")
    onnx = Detector(None, torch_detector.info, config=config, runner=OnnxRunner(path))
    assert onnx.amp_hint(native=True) is None  # an ONNX graph keeps its own format


def test_amp_hint_text() -> None:
    text = amp_hint_text(1.678, "measured now in 0.3 s")
    assert "1.68x faster" in text and "(measured now in 0.3 s)" in text
    assert "\n" not in text


# --------------------------------------------------------------------------- roofline


def test_gemm_and_floor_arithmetic() -> None:
    assert roofline.gemm_gflops(1000, 2.0) == pytest.approx(1.0)  # 2e9 operations in 2 s
    assert roofline.floor_ms(6.9, 138.0) == pytest.approx(50.0)
    rows = roofline.roofline_rows(
        {"fp32": 100.0, "int8": 20.0, "other": 5.0},
        {"fp32": "float32", "int8": "int8", "other": "float16"},
        6.9,
        {"float32": 138.0, "int8": 690.0},
    )
    assert set(rows) == {"fp32", "int8"}  # no float16 peak measured: left out
    assert rows["fp32"]["floor_ms"] == pytest.approx(50.0)
    assert rows["fp32"]["x_floor"] == pytest.approx(2.0)
    assert rows["int8"]["x_floor"] == pytest.approx(2.0)


def test_conv_gflops_counts_multiply_adds() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 32x32x8 outputs of 27 terms
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 9 terms each
        nn.Flatten(),
        nn.Linear(8 * 32 * 32, 10),
    )
    expected = 2 * (32 * 32 * 8 * 27 + 32 * 32 * 8 * 9 + 10 * 8 * 32 * 32)
    assert roofline.conv_gflops(model, 32) == pytest.approx(expected / 1e9)


def test_peaks_are_measured_for_every_format() -> None:
    peaks = roofline.matmul_peaks(size=128, runs=1)
    assert set(peaks) == set(roofline.FORMATS) and all(v > 0 for v in peaks.values())
