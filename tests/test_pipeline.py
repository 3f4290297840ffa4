"""The pipelined predict loop (reader threads, model, writer thread) against the serial one:
the same files, bytes, JSON records and failures in the same order, bounded read-ahead,
failures in background threads raised in the caller's thread with the input's name, and a
clean stop on Ctrl-C. Real OpenCV image and video I/O on a small randomly initialised model."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, exit_code, require_asset

import eval as eval_cli
import predict
from nets.checkpoint import ModelInfo
from nets.yolo import YoloBody
from utils.device import available_cpus, configure_threads
from utils.inference import predict_loop
from utils.inference.export import export_onnx
from utils.inference.onnx_runner import OnnxRunner
from utils.inference.pipeline import OrderedSink, PipelineError, Prefetcher
from utils.inference.predict_loop import OutputOptions, PipelineOptions, run_predictions
from utils.inference.predictor import Detector, InferenceConfig
from utils.sources import read_image, resolve_source

SERIAL = PipelineOptions(prefetch=0)
PIPELINED = PipelineOptions(prefetch=3)
NAMES = ("box", "disc", "ring")


def tiny_detector(**config) -> Detector:
    """phi 0, three classes, 64 px, seeded random weights: a few boxes on any image."""
    torch.manual_seed(0)
    info = ModelInfo(phi=0, phi_name="none", num_classes=3, class_names=NAMES, input_size=64)
    settings = {"device": "cpu", "conf_thresh": 0.2, "max_det": 6, **config}
    return Detector(YoloBody(3), info, config=InferenceConfig(**settings))


def scene(seed: int, width: int, height: int) -> np.ndarray:
    """A gradient with a few filled rectangles, different per seed."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = np.linspace(30, 200, width, dtype=np.uint8)[None, :, None]
    for _ in range(3):
        x, y = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(image, (x, y), (x + 19, y + 15), color, -1)
    return image


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Seven good images (JPEG, PNG, BMP, several sizes) and three bad files among them."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(7):
        ext = (".jpg", ".png", ".jpg", ".bmp")[i % 4]
        assert cv2.imwrite(str(folder / f"img{i}{ext}"), scene(i, 96 + 8 * i, 72 + 4 * i))
    (folder / "img3_corrupt.jpg").write_bytes(b"not an image at all")
    (folder / "img5_empty.png").write_bytes(b"")
    (folder / "img6_cut.jpg").write_bytes((folder / "img2.jpg").read_bytes()[:400])
    return folder


def run(detector: Detector, source: str | Path, out: Path, pipeline: PipelineOptions, **opts):
    opts = OutputOptions(save_dir=out / "save", json_path=out / "dets.json", crop=True, **opts)
    summary = run_predictions(detector, resolve_source(str(source)), opts, pipeline=pipeline)
    return summary, json.loads((out / "dets.json").read_text())


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("heatmap", [False, True])
def test_folder_with_bad_files_matches_serial(folder: Path, tmp_path: Path, heatmap) -> None:
    detector = tiny_detector()
    serial, serial_records = run(detector, folder, tmp_path / "serial", SERIAL, heatmap=heatmap)
    piped, piped_records = run(detector, folder, tmp_path / "piped", PIPELINED, heatmap=heatmap)

    assert piped_records == serial_records
    assert piped.failures == serial.failures  # same messages, same order
    assert [f.split(":")[0] for f in serial.failures] == [
        str(folder / n) for n in ("img3_corrupt.jpg", "img5_empty.png", "img6_cut.jpg")
    ]
    assert (piped.images, piped.detections) == (serial.images, serial.detections)
    saved = tree_bytes(tmp_path / "serial" / "save")
    assert tree_bytes(tmp_path / "piped" / "save") == saved  # annotated images and crops
    crops = [name for name in saved if name.startswith("crops/")]
    assert len(crops) == serial.detections > 0

    # The records are in folder order and hold what the Detector API finds on each image.
    good = sorted(p for p in folder.iterdir() if p.stem.startswith("img") and "_" not in p.stem)
    assert [r["image"] for r in serial_records] == [str(p) for p in good]
    for record, path in zip(serial_records, good):
        assert record["detections"] == detector(read_image(path)).to_json()


@pytest.mark.slow
def test_batches_of_four_find_the_same_boxes(folder: Path, tmp_path: Path) -> None:
    detector = tiny_detector()
    _, one = run(detector, folder, tmp_path / "b1", SERIAL)
    summary, four = run(
        detector, folder, tmp_path / "b4", PipelineOptions(prefetch=4, batch_size=4)
    )
    assert len(summary.failures) == 3
    assert [r["image"] for r in four] == [r["image"] for r in one]
    for a, b in zip(one, four):  # a batched forward differs from batch 1 by float rounding
        assert [d["class_id"] for d in a["detections"]] == [d["class_id"] for d in b["detections"]]
        boxes_a = np.array([d["xyxy"] for d in a["detections"]])
        boxes_b = np.array([d["xyxy"] for d in b["detections"]])
        np.testing.assert_allclose(boxes_a, boxes_b, atol=1e-2)


def write_clip(path: Path, frames: int = 12, size: tuple[int, int] = (96, 64)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(scene(100 + i, *size))
    writer.release()


def decoded_frames(path: Path) -> list[np.ndarray]:
    cap, frames = cv2.VideoCapture(str(path)), []
    while (read := cap.read())[0]:
        frames.append(read[1])
    cap.release()
    return frames


@pytest.mark.slow
def test_video_matches_serial(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    detector = tiny_detector()
    serial, serial_records = run(detector, clip, tmp_path / "serial", SERIAL)
    piped, piped_records = run(detector, clip, tmp_path / "piped", PIPELINED)

    assert piped_records == serial_records
    assert [r["frame"] for r in piped_records] == list(range(12))
    assert piped.frames == serial.frames == 12 and not piped.failures and not piped.warnings
    out_serial = decoded_frames(tmp_path / "serial" / "save" / "clip.mp4")
    out_piped = decoded_frames(tmp_path / "piped" / "save" / "clip.mp4")
    assert len(out_piped) == len(out_serial) == 12
    for a, b in zip(out_serial, out_piped):
        np.testing.assert_array_equal(a, b)
    crops = tree_bytes(tmp_path / "piped" / "save" / "crops")
    assert crops == tree_bytes(tmp_path / "serial" / "save" / "crops") and crops
    assert " fps]" in capsys.readouterr().err  # the bar shows the throughput


def test_progress_bar_shows_images_per_second(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run(tiny_detector(), folder, tmp_path, PIPELINED)
    last = capsys.readouterr().err.rstrip().split("\r")[-1]
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, \d+\.\d fps\]$", last), last


@pytest.mark.parametrize(
    ("count", "elapsed", "text"),
    [
        (150, 6.0, "25.0 fps"),
        (1, 4.0, "0.2 fps"),  # below one per second: still a rate, not seconds per input
        (7, 0.1, "70.0 fps"),
        (0, 3.0, "- fps"),  # nothing done yet
        (5, 0.0, "- fps"),  # no time measured yet
    ],
)
def test_fps_text(count: int, elapsed: float, text: str) -> None:
    assert predict_loop.fps_text(count, elapsed) == text


class FaultyResize(Detector):
    """Resizing fails (not a read error) on images 104 px wide: a bug in a reader thread."""

    def resize(self, image_bgr: np.ndarray):
        if image_bgr.shape[1] == 104:
            raise RuntimeError("resize exploded")
        return super().resize(image_bgr)


class FaultyDecode(Detector):
    """Decoding the outputs fails on 112 px wide images: a bug in the writer thread."""

    def postprocess(self, outputs, metas):
        if metas[0].width == 112:
            raise RuntimeError("decode exploded")
        return super().postprocess(outputs, metas)


@pytest.mark.parametrize(
    "cls, name, message",
    [(FaultyResize, "img1.png", "resize exploded"), (FaultyDecode, "img2.jpg", "decode exploded")],
)
def test_a_failure_in_a_thread_is_raised_with_the_file_name(
    folder: Path, tmp_path: Path, cls, name, message
) -> None:
    base = tiny_detector()
    detector = cls(base.model, base.info, config=base.config)
    with pytest.raises(PipelineError) as caught:
        run(detector, folder, tmp_path, PIPELINED)
    assert str(caught.value) == f"{folder / name}: RuntimeError: {message}"
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert not [t for t in threading.enumerate() if t.name.startswith(("prefetch", "output"))]


class CountingSource:
    """An endless source that records how many items were pulled from it."""

    def __init__(self, limit: int | None = None) -> None:
        self.pulled = 0
        self.limit = limit

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.limit is not None and self.pulled >= self.limit:
            raise StopIteration
        self.pulled += 1
        return self.pulled - 1


def test_prefetch_reads_at_most_depth_ahead_and_keeps_order() -> None:
    source = CountingSource(limit=30)
    leads, seen = [], []

    def prepare(i: int) -> int:
        time.sleep(0.002 * (i % 3))  # later items often finish first
        return i * i

    with Prefetcher(source, prepare, depth=4, workers=3) as prefetcher:
        for consumed, p in enumerate(prefetcher, start=1):
            time.sleep(0.01)  # a slow consumer: the reader runs as far ahead as it may
            leads.append(source.pulled - consumed)
            seen.append((p.item, p.value))
    assert seen == [(i, i * i) for i in range(30)]
    assert max(leads) == 4  # reads ahead, but never more than depth


def test_prefetch_reports_errors_of_prepare_and_of_the_source() -> None:
    def prepare(i: int) -> int:
        if i == 2:
            raise ValueError("bad item")
        return i

    def source():
        yield from range(4)
        raise OSError("disk gone")

    got = []
    with (
        pytest.raises(PipelineError, match=r"^clip\.mp4: OSError: disk gone$"),
        Prefetcher(source(), prepare, depth=2, source="clip.mp4") as prefetcher,
    ):
        for p in prefetcher:
            got.append((p.item, p.value, type(p.error).__name__ if p.error else None))
    assert got == [(0, 0, None), (1, 1, None), (2, None, "ValueError"), (3, 3, None)]


def test_sink_queue_is_bounded_and_ordered() -> None:
    done, in_flight = [], []
    put = 0

    def step(i: int) -> None:
        in_flight.append(put - len(done))
        time.sleep(0.005)
        done.append(i)

    with OrderedSink(step, depth=3, threaded=True) as sink:
        for i in range(20):
            put += 1
            sink.put(i)
    assert done == list(range(20))
    assert max(in_flight) <= 3 + 1  # the queue plus the one being written


def test_ctrl_c_stops_the_threads() -> None:
    """A real SIGINT while the main thread waits on an endless source: KeyboardInterrupt is
    raised there, every thread is joined, and the source was pulled a bounded number of
    times."""
    source = CountingSource()

    def prepare(i: int) -> int:
        time.sleep(0.02)
        return i

    written = []
    main = threading.get_ident()
    timer = threading.Timer(0.3, lambda: signal.pthread_kill(main, signal.SIGINT))
    start = time.monotonic()
    timer.start()
    try:
        with (
            pytest.raises(KeyboardInterrupt),
            OrderedSink(written.append, depth=2, threaded=True) as sink,
            Prefetcher(source, prepare, depth=3, workers=2) as prefetcher,
        ):
            for p in prefetcher:
                sink.put(p.value)
    finally:
        timer.cancel()
    assert time.monotonic() - start < 5
    assert not [t for t in threading.enumerate() if t.name.startswith(("prefetch", "output"))]
    assert written == list(range(len(written)))  # in order, nothing after the stop
    assert source.pulled <= len(written) + 3 + 2 + 1  # written, queued, read ahead, in hand


def test_serial_and_pipelined_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="--prefetch -1: must be 0"):
        PipelineOptions(prefetch=-1)
    with pytest.raises(ValueError, match="--batch-size 0: must be at least 1"):
        replace(PIPELINED, batch_size=0)


@pytest.mark.parametrize(
    ("device", "cpus", "threads", "webcam", "pipelined"),
    [
        ("cpu", 2, 2, False, False),  # the model's threads take every core: serial
        ("cpu", 2, 1, False, True),  # --threads 1 leaves a core to the readers
        ("cpu", 16, 8, False, True),  # hyper-threads beyond torch's one per physical core
        ("cpu", 2, 2, True, True),  # a webcam read waits on the camera, not on a core
        ("cuda", 2, 2, False, True),  # the model runs on the GPU
    ],
)
def test_automatic_prefetch_overlaps_only_where_a_core_is_free(
    monkeypatch, device, cpus, threads, webcam, pipelined
) -> None:
    monkeypatch.setattr(predict_loop, "available_cpus", lambda: cpus)
    options, why = PipelineOptions().resolve(torch.device(device), threads, webcam=webcam)
    assert options.pipelined == pipelined
    assert options.prefetch == (4 if pipelined else 0)
    assert why.startswith("pipelined: " if pipelined else "serial: ")
    for given in (SERIAL, PIPELINED):  # a value on the command line is kept, silently
        assert given.resolve(torch.device(device), threads, webcam=webcam) == (given, "")


@pytest.mark.parametrize(("cpus", "threads"), [(2, 2), (2, 1), (1, 1)])
def test_threads_that_sleep_between_passes_are_overlapped(monkeypatch, cpus, threads) -> None:
    monkeypatch.setattr(predict_loop, "available_cpus", lambda: cpus)
    cpu = torch.device("cpu")
    options, why = PipelineOptions().resolve(cpu, threads, idle_threads_sleep=True)
    assert options.prefetch == 4 and why.startswith("pipelined: ")
    spinning, _ = PipelineOptions().resolve(cpu, threads, idle_threads_sleep=False)
    assert spinning.pipelined == (cpus > threads)


def test_model_threads_of_torch_and_onnx_runtime(tmp_path: Path, restore_threads) -> None:
    torch.set_num_threads(1)
    detector = tiny_detector()
    assert predict_loop.model_threads(detector) == (1, False)  # torch's, spinning
    path = export_onnx(detector.model, tmp_path / "m.onnx", detector.geometry)
    for threads in (1, 2):
        onnx = Detector(
            None, detector.info, config=detector.config, runner=OnnxRunner(path, threads)
        )
        assert predict_loop.model_threads(onnx) == (threads, True)
    default = Detector(None, detector.info, config=detector.config, runner=OnnxRunner(path))
    count, sleeps = predict_loop.model_threads(default)
    assert sleeps and 1 <= count <= available_cpus()


def test_predict_prints_how_a_folder_is_read(folder: Path, restore_threads, capsys) -> None:
    common = ["--source", str(folder), "--no-save", "--device", "cpu", "--img-size", "64"]
    assert predict.main([*common, "--threads", "1"]) == 1  # 1: the folder has bad files
    assert "pipelined: " in capsys.readouterr().err  # one thread leaves a core to the readers
    assert predict.main([*common, "--prefetch", "0"]) == 1
    err = capsys.readouterr().err
    assert "pipelined: " not in err and "serial: " not in err  # given, not chosen: no line


def test_predict_pipelines_an_onnx_model_at_its_threads(
    folder: Path, tmp_path: Path, restore_threads, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(predict_loop, "available_cpus", lambda: 2)  # as many as its threads
    detector = tiny_detector()
    onnx = export_onnx(detector.model, tmp_path / "m.onnx", detector.geometry)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(detector.class_names) + "\n")
    common = ["--source", str(folder), "--no-save", "--weights", str(onnx)]
    common += ["--classes", str(classes)]
    assert predict.main([*common, "--threads", "2"]) == 1  # 1: the folder has bad files
    err = capsys.readouterr().err
    assert "pipelined: the model's threads (2 threads, ONNX Runtime) sleep" in err
    assert " fps]" in err


@pytest.fixture
def restore_threads():
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)


def test_threads_option(restore_threads) -> None:
    assert configure_threads(1, parallel_decode=False) == (1, 1)
    assert configure_threads(2, parallel_decode=True) == (2, 1)  # decoding runs in threads
    assert configure_threads(2, parallel_decode=False) == (2, 2)
    with pytest.raises(ValueError, match="--threads 0: must be at least 1"):
        configure_threads(0, parallel_decode=False)
    # One declaration, both command lines.
    assert predict.build_parser().parse_args(["--threads", "3"]).threads == 3
    assert eval_cli.build_parser().parse_args(["--threads", "3"]).threads == 3
    assert predict.build_parser().parse_args([]).threads is None


def test_predict_cli_rejects_bad_pipeline_settings(
    folder: Path, capsys: pytest.CaptureFixture
) -> None:
    common = ["--source", str(folder), "--no-save", "--device", "cpu"]
    assert exit_code(predict.main, [*common, "--prefetch", "-2"]) == 2
    assert "--prefetch -2: must be 0 (serial) or more" in capsys.readouterr().err
    assert exit_code(predict.main, [*common, "--threads", "0"]) == 2
    assert "--threads 0: must be at least 1" in capsys.readouterr().err


def test_endless_source_is_not_read_to_the_end() -> None:
    """A webcam-like endless source: the consumer stops after 5 and the reader has pulled
    only the read-ahead beyond them."""
    source = CountingSource()
    with Prefetcher(source, lambda i: i, depth=2) as prefetcher:
        items = [p.item for p in itertools.islice(prefetcher, 5)]
    assert items == [0, 1, 2, 3, 4] and 5 <= source.pulled <= 5 + 2


@pytest.mark.slow
def test_ctrl_c_on_predict_py_stops_cleanly_and_keeps_the_json(tmp_path: Path) -> None:
    """SIGINT to a real ``predict.py`` run on a long video: it exits promptly with 130, says
    so, and the JSON holds the frames done, in order from frame 0."""
    weights = require_asset(ROOT / "model_data" / "yolov4-tiny.weights")
    clip = tmp_path / "long.mp4"
    write_clip(clip, frames=1500)
    json_path, save_dir = tmp_path / "dets.json", tmp_path / "out"
    cmd = [sys.executable, "predict.py", "--weights", str(weights), "--source", str(clip)]
    cmd += ["--img-size", "128", "--device", "cpu", "--json", str(json_path)]
    cmd += ["--save-dir", str(save_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (save_dir / "long.part.mp4").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "predict.py did not start writing"
            time.sleep(0.2)
        time.sleep(1.0)  # frames are flowing through every stage
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert "interrupted" in err.decode()
    frames = [r["frame"] for r in json.loads(json_path.read_text())]
    assert frames == list(range(len(frames))) and 0 < len(frames) < 1500
    # the frames done are a whole video under its own name
    check = cv2.VideoCapture(str(save_dir / "long.mp4"))
    assert check.isOpened() and check.get(cv2.CAP_PROP_FRAME_COUNT) >= len(frames) - 8
    check.release()
    assert not (save_dir / "long.part.mp4").exists()


def test_an_annotated_video_that_does_not_read_back_whole_is_a_failure(tmp_path: Path) -> None:
    """OpenCV's writer reports nothing: a full disk shows only as a file without its index."""
    good, final = tmp_path / "a.part.mp4", tmp_path / "a.mp4"
    write_clip(good, frames=6)
    summary = predict_loop.RunSummary()
    predict_loop._finish_video(good, final, 6, summary)
    assert final.is_file() and not good.exists() and summary.failures == []
    cut = tmp_path / "b.part.mp4"
    cut.write_bytes(final.read_bytes()[:200])  # what a full disk leaves
    predict_loop._finish_video(cut, tmp_path / "b.mp4", 6, summary)
    assert summary.failures == [
        f"{tmp_path / 'b.mp4'}: cannot write the annotated video (disk full or not writable?)"
    ]
    assert not cut.exists() and not (tmp_path / "b.mp4").exists()
