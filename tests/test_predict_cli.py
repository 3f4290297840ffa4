"""Smoke tests of predict.py, run in-process as the command runs (``run_cli(predict.main)``)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import exit_code, require_asset
from voc_factory import run_with_file_size_limit

import predict
from utils.inference.predictor import Detector, InferenceConfig
from utils.visualize import draw_detections, overlay_heatmap

REPO = Path(__file__).resolve().parents[1]

WEIGHTS = REPO / "model_data" / "yolov4-tiny.weights"
COCO_NAMES = REPO / "model_data" / "coco.names"
BUS = REPO / "model_data" / "samples" / "bus.jpg"
ZIDANE = REPO / "model_data" / "samples" / "zidane.jpg"

RECORD_KEYS = {"image", "image_id", "width", "height", "detections"}
DETECTION_KEYS = {"xyxy", "score", "class_id", "class_name"}


@pytest.fixture(autouse=True)
def _assets_and_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test needs the official weights and samples; relative defaults need the repo cwd."""
    for path in (WEIGHTS, COCO_NAMES, BUS, ZIDANE):
        require_asset(path)
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def detector_224() -> Detector:
    require_asset(WEIGHTS)
    config = InferenceConfig(img_size=224, device="cpu")
    # Explicit names: module fixtures run before the per-test chdir to the repository.
    return Detector.from_weights(WEIGHTS, classes=COCO_NAMES, config=config)


def run_cli(*args: str | Path) -> int:
    """predict.py's exit code with the official weights on the CPU."""
    return exit_code(predict.main, ["--weights", WEIGHTS, "--device", "cpu", *args])


def load_json(path: Path) -> list[dict]:
    records = json.loads(path.read_text())
    assert isinstance(records, list)
    return records


def check_record(record: dict, width: int, height: int, frame: int | None = None) -> None:
    """The documented --json format, with every box inside the image."""
    expected = RECORD_KEYS | ({"frame"} if frame is not None else set())
    assert set(record) == expected
    assert isinstance(record["image"], str) and isinstance(record["image_id"], str)
    assert (record["width"], record["height"]) == (width, height)
    if frame is not None:
        assert record["frame"] == frame
    assert isinstance(record["detections"], list)
    for det in record["detections"]:
        assert set(det) == DETECTION_KEYS
        x1, y1, x2, y2 = det["xyxy"]
        assert all(isinstance(v, float | int) for v in det["xyxy"])
        assert 0 <= x1 <= x2 <= width - 1, det
        assert 0 <= y1 <= y2 <= height - 1, det
        assert 0.0 < det["score"] <= 1.0
        assert isinstance(det["class_id"], int) and 0 <= det["class_id"] < 80
        assert isinstance(det["class_name"], str) and det["class_name"]


def best_score(record: dict, name: str) -> float:
    return max((d["score"] for d in record["detections"] if d["class_name"] == name), default=0.0)


def small_copy(src: Path, dst: Path, width: int) -> Path:
    image = cv2.imread(str(src))
    height = round(image.shape[0] * width / image.shape[1])
    assert cv2.imwrite(str(dst), cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))
    return dst


# --------------------------------------------------------------------------- one photo


def test_single_photo_full_size(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_dir, json_path = tmp_path / "out", tmp_path / "dets.json"
    code = run_cli("--source", BUS, "--save-dir", save_dir, "--json", json_path)
    out = capsys.readouterr().out
    assert code == 0
    assert "1 images" in out and str(save_dir) in out

    original = cv2.imread(str(BUS))
    annotated = cv2.imread(str(save_dir / "bus.jpg"))
    assert annotated is not None, list(save_dir.iterdir())
    assert annotated.shape == original.shape == (1080, 810, 3)
    # Boxes and labels are drawn: far more change than JPEG re-encoding alone.
    changed = np.abs(annotated.astype(int) - original.astype(int)).max(axis=2) > 60
    assert changed.mean() > 0.005

    records = load_json(json_path)
    assert len(records) == 1
    record = records[0]
    check_record(record, 810, 1080)
    assert record["image"] == str(BUS) and record["image_id"] == "bus"
    assert best_score(record, "person") > 0.5
    assert best_score(record, "bus") > 0.5
    names = [line.strip() for line in COCO_NAMES.read_text().splitlines() if line.strip()]
    for det in record["detections"]:
        assert det["class_name"] == names[det["class_id"]]


# --------------------------------------------------------------------------- folders


def test_folder_with_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    small_copy(BUS, folder / "bus.jpg", 240)
    small_copy(ZIDANE, folder / "zidane.png", 320)
    (folder / "bad.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    (folder / "readme.txt").write_text("ignored")
    save_dir, json_path = tmp_path / "out", tmp_path / "dets.json"

    code = run_cli(
        "--source", folder, "--img-size", "224", "--save-dir", save_dir, "--json", json_path
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "bad.jpg" in captured.err
    assert "1 input(s) failed" in captured.err
    assert "2 images" in captured.out

    assert sorted(p.name for p in save_dir.iterdir()) == ["bus.jpg", "zidane.png"]
    for name in ("bus.jpg", "zidane.png"):
        written = cv2.imread(str(save_dir / name))
        assert written is not None and written.shape == cv2.imread(str(folder / name)).shape
    records = load_json(json_path)
    assert [Path(r["image"]).name for r in records] == ["bus.jpg", "zidane.png"]
    assert [r["image_id"] for r in records] == ["bus", "zidane"]
    check_record(records[0], 240, 320)
    check_record(records[1], 320, 180)
    assert best_score(records[0], "person") > 0.3
    assert best_score(records[1], "person") > 0.3


def test_existing_save_dir_is_incremented(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = small_copy(BUS, tmp_path / "bus.jpg", 120)
    save_dir = tmp_path / "out"
    save_dir.mkdir()
    (save_dir / "keep.txt").write_text("older run")
    assert run_cli("--source", image, "--img-size", "160", "--save-dir", save_dir) == 0
    assert f"results saved to {tmp_path / 'out2'}" in capsys.readouterr().out
    assert sorted(p.name for p in save_dir.iterdir()) == ["keep.txt"]
    assert (tmp_path / "out2" / "bus.jpg").is_file()

    code = run_cli(
        "--source", image, "--img-size", "160", "--save-dir", save_dir, "--exist-ok", "--no-save"
    )
    assert code == 0
    assert not (tmp_path / "out3").exists()
    assert sorted(p.name for p in save_dir.iterdir()) == ["keep.txt"]


# --------------------------------------------------------------------------- videos


def _write_clip(path: Path, frames: int = 8, size: tuple[int, int] = (160, 120)) -> list:
    """A short clip of the bus photo sliding across a grey frame; returns the frames."""
    w, h = size
    bus = cv2.resize(cv2.imread(str(BUS)), (90, 120), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, size)
    assert writer.isOpened()
    written = []
    for i in range(frames):
        frame = np.full((h, w, 3), 110, np.uint8)
        x = 5 * i
        frame[:, x : x + 90] = bus
        writer.write(frame)
        written.append(frame)
    writer.release()
    return written


def _read_all(path: Path) -> tuple[list[np.ndarray], float, tuple[int, int], int]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, fps, size, count


@pytest.mark.slow
def test_video(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clip = tmp_path / "clip.mp4"
    _write_clip(clip)
    inputs, in_fps, in_size, _ = _read_all(clip)
    assert len(inputs) == 8 and in_size == (160, 120)
    save_dir, json_path = tmp_path / "out", tmp_path / "dets.json"

    code = run_cli(
        "--source", clip, "--img-size", "224", "--save-dir", save_dir, "--json", json_path
    )
    assert code == 0
    assert "8 video frames" in capsys.readouterr().out

    out_path = save_dir / "clip.mp4"
    assert out_path.is_file()
    outputs, fps, size, count = _read_all(out_path)
    assert size == (160, 120)
    assert fps == pytest.approx(in_fps, rel=0.02) and fps == pytest.approx(12.0, rel=0.02)
    assert count == 8 and len(outputs) == 8

    records = load_json(json_path)
    assert len(records) == 8
    for i, record in enumerate(records):
        check_record(record, 160, 120, frame=i)
        assert record["image"] == str(clip)
        assert record["image_id"] == f"clip_{i:06d}"
    assert any(best_score(r, "person") > 0.5 for r in records)
    # Frames with detections carry drawn boxes, beyond codec noise.
    for record, before, after in zip(records, inputs, outputs):
        diff = np.abs(after.astype(int) - before.astype(int)).max(axis=2)
        if record["detections"]:
            assert (diff > 80).mean() > 0.01


def test_video_that_does_not_open(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is a text file, not a video\n" * 40)
    json_path = tmp_path / "dets.json"
    code = run_cli("--source", fake, "--save-dir", tmp_path / "out", "--json", json_path)
    err = capsys.readouterr().err
    assert code == 1
    assert str(fake) in err
    assert load_json(json_path) == []
    assert not (tmp_path / "out" / "fake.mp4").exists()


# --------------------------------------------------------------------------- argument errors


def test_missing_source(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere" / "photo.jpg"
    save_dir = tmp_path / "out"
    code = run_cli("--source", missing, "--save-dir", save_dir)
    err = capsys.readouterr().err
    assert code == 2
    assert str(missing) in err
    assert not save_dir.exists()


def test_wrong_phi(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run_cli("--source", BUS, "--phi", "foo", "--save-dir", tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 2
    assert "foo" in err
    for valid in ("0=none", "1=se", "2=cbam", "3=eca", "4=ca"):
        assert valid in err


def test_unknown_class_filter(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = run_cli("--source", BUS, "--classes-filter", "person,unicorn", "--no-save")
    assert code == 2
    assert "unicorn" in capsys.readouterr().err


def test_img_size_not_multiple_of_32(capsys: pytest.CaptureFixture) -> None:
    code = run_cli("--source", BUS, "--img-size", "100", "--no-save")
    assert code == 2
    assert "multiple of 32" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*:RuntimeWarning")  # numpy: mean of an empty slice
def test_benchmark_zero_runs_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    code = run_cli("--source", BUS, "--img-size", "160", "--benchmark", "--benchmark-runs", "0")
    assert code == 2
    assert "benchmark-runs" in capsys.readouterr().err


# --------------------------------------------------------------------------- options


def test_classes_filter_person(tmp_path: Path) -> None:
    json_path = tmp_path / "dets.json"
    code = run_cli(
        "--source",
        BUS,
        "--img-size",
        "224",
        "--classes-filter",
        "person",
        "--no-save",
        "--json",
        json_path,
    )
    assert code == 0
    (record,) = load_json(json_path)
    check_record(record, 810, 1080)
    assert record["detections"], "expected people in bus.jpg"
    assert {d["class_name"] for d in record["detections"]} == {"person"}
    assert {d["class_id"] for d in record["detections"]} == {0}

    # By id, several classes: bus (5) comes back too.
    code = run_cli(
        "--source",
        BUS,
        "--img-size",
        "224",
        "--classes-filter",
        "0,bus",
        "--no-save",
        "--json",
        json_path,
    )
    assert code == 0
    (record,) = load_json(json_path)
    assert {d["class_name"] for d in record["detections"]} == {"person", "bus"}


def test_crop(tmp_path: Path) -> None:
    save_dir, json_path = tmp_path / "out", tmp_path / "dets.json"
    code = run_cli(
        "--source",
        BUS,
        "--img-size",
        "224",
        "--crop",
        "--save-dir",
        save_dir,
        "--json",
        json_path,
    )
    assert code == 0
    (record,) = load_json(json_path)
    dets = record["detections"]
    assert dets
    crops_dir = save_dir / "crops"
    assert {p.name for p in crops_dir.iterdir()} == {d["class_name"] for d in dets}
    for i, det in enumerate(dets):
        crop_path = crops_dir / det["class_name"] / f"bus_{i}.jpg"
        crop = cv2.imread(str(crop_path))
        assert crop is not None, crop_path
        x1, y1, x2, y2 = det["xyxy"]
        # Box sides in pixels, within rounding of the 2-decimal JSON values.
        assert abs(crop.shape[1] - (x2 - x1 + 1)) <= 2, (crop.shape, det)
        assert abs(crop.shape[0] - (y2 - y1 + 1)) <= 2, (crop.shape, det)
    assert sum(1 for _ in crops_dir.rglob("*.jpg")) == len(dets)


def test_heatmap(tmp_path: Path, detector_224: Detector) -> None:
    image_path = small_copy(BUS, tmp_path / "bus.png", 270)  # PNG: exact comparisons
    image = cv2.imread(str(image_path))
    plain_dir, heat_dir = tmp_path / "plain", tmp_path / "heat"
    assert run_cli("--source", image_path, "--img-size", "224", "--save-dir", plain_dir) == 0
    code = run_cli("--source", image_path, "--img-size", "224", "--heatmap", "--save-dir", heat_dir)
    assert code == 0
    plain = cv2.imread(str(plain_dir / "bus.png"))
    heat = cv2.imread(str(heat_dir / "bus.png"))
    assert heat is not None and heat.shape == image.shape
    dets = detector_224(image)
    np.testing.assert_array_equal(plain, draw_detections(image, dets))
    expected = draw_detections(overlay_heatmap(image, detector_224.objectness_map(image)), dets)
    assert np.abs(heat.astype(int) - expected.astype(int)).max() <= 1
    assert np.abs(heat.astype(int) - plain.astype(int)).mean() > 20  # the overlay is visible


@pytest.mark.parametrize("letterbox", [True, False])
def test_objectness_map(letterbox: bool) -> None:
    detector = Detector.from_weights(
        WEIGHTS, config=InferenceConfig(img_size=224, letterbox=letterbox, device="cpu")
    )
    image = cv2.imread(str(BUS))
    heat = detector.objectness_map(image)
    assert heat.shape == image.shape[:2] == (1080, 810)
    assert heat.dtype == np.float32
    assert np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() > 0.5  # there are objects
    # Objectness is higher on the detected objects than on average.
    x1, y1, x2, y2 = (int(v) for v in detector(image).boxes[0])
    assert heat[y1:y2, x1:x2].max() > heat.mean()

    wide = cv2.resize(image, (300, 100))  # aspect ratio far from square
    assert detector.objectness_map(wide).shape == (100, 300)


def test_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_dir = tmp_path / "out"
    code = run_cli(
        "--source",
        BUS,
        "--img-size",
        "160",
        "--benchmark",
        "--benchmark-runs",
        "2",
        "--save-dir",
        save_dir,
    )
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert any(line.startswith("benchmark:") and "2 runs" in line for line in lines)
    stats = json.loads(lines[-1])["benchmark"]
    assert set(stats) == {"preprocess", "forward", "decode_nms", "total"}
    for stage, s in stats.items():
        # the table prints the JSON's numbers, columns in the order of its header
        row = next(line for line in lines if line.startswith(stage))
        assert row.split()[1:] == [f"{s[k]:.2f}" for k in ("median", "p10", "p90")], row
        assert s["p10"] <= s["median"] <= s["p90"], (stage, s)
    # Each run's total is its three stages back to back; over 2 runs a median is the mean.
    parts = sum(stats[stage]["median"] for stage in ("preprocess", "forward", "decode_nms"))
    assert abs(stats["total"]["median"] - parts) < 1e-6
    assert not save_dir.exists()  # benchmarking writes nothing


def test_no_letterbox_finds_bus(tmp_path: Path) -> None:
    json_path = tmp_path / "dets.json"
    code = run_cli("--source", BUS, "--no-letterbox", "--no-save", "--json", json_path)
    assert code == 0
    (record,) = load_json(json_path)
    check_record(record, 810, 1080)
    assert best_score(record, "bus") > 0.5


# --------------------------------------------------------------------------- Python API


def test_python_api() -> None:
    detector = Detector.from_weights()  # the defaults: official weights, COCO names
    assert len(detector.class_names) == 80 and detector.class_names[0] == "person"
    image = cv2.imread(str(BUS))
    dets = detector(image)
    n = len(dets)
    assert n >= 2
    assert dets.boxes.shape == (n, 4) and np.issubdtype(dets.boxes.dtype, np.floating)
    assert dets.scores.shape == (n,) and np.issubdtype(dets.scores.dtype, np.floating)
    assert dets.labels.shape == (n,) and np.issubdtype(dets.labels.dtype, np.integer)
    assert dets.names == [detector.class_names[k] for k in dets.labels]
    assert (dets.width, dets.height) == (810, 1080)
    assert np.all(np.diff(dets.scores) <= 0) or n == 1  # sorted best first
    assert "bus" in dets.names and "person" in dets.names
    assert dets.scores[dets.names.index("bus")] > 0.5
    assert (dets.boxes[:, 0] <= dets.boxes[:, 2]).all()
    assert (dets.boxes[:, 1] <= dets.boxes[:, 3]).all()
    assert dets.boxes.min() >= 0 and dets.boxes[:, 2].max() <= 809
    assert dets.boxes[:, 3].max() <= 1079
    # to_json is what --json writes.
    rows = dets.to_json()
    assert len(rows) == n and set(rows[0]) == DETECTION_KEYS
    assert rows[0] == {
        "xyxy": [round(float(v), 2) for v in dets.boxes[0]],
        "score": round(float(dets.scores[0]), 5),
        "class_id": int(dets.labels[0]),
        "class_name": dets.names[0],
    }
    # Batch and single calls agree.
    (batched,) = detector.predict_batch([image])
    np.testing.assert_allclose(batched.boxes, dets.boxes, atol=1e-3)


def test_same_names_from_different_folders_do_not_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "in"  # the output folder may not lie in the folder a pattern searches
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        small_copy(BUS, root / sub / "img.jpg", 160)
    small_copy(ZIDANE, root / "a" / "img.png", 160)
    save_dir = tmp_path / "out"
    code = run_cli("--source", f"{root}/*/img.*", "--img-size", "160", "--save-dir", save_dir)
    assert code == 0
    assert sorted(p.name for p in save_dir.iterdir()) == ["img.jpg", "img.png", "img_2.jpg"]


# --------------------------------------------------------------------------- outputs and inputs


def _folder_with_a_bad_image(root: Path) -> Path:
    """A folder whose processing would print an error naming bad.jpg: a run that never
    starts prints nothing about it."""
    folder = root / "in"
    folder.mkdir()
    small_copy(BUS, folder / "bus.jpg", 160)
    (folder / "bad.jpg").write_bytes(b"not an image" * 20)
    return folder


@pytest.mark.parametrize("target", ["proc", "folder", "under_a_file"])
def test_unwritable_json_fails_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture, target: str
) -> None:
    folder = _folder_with_a_bad_image(tmp_path)
    (tmp_path / "a_file").write_text("x")
    json_path = {
        "proc": Path("/proc/dets.json"),
        "folder": tmp_path / "dets",
        "under_a_file": tmp_path / "a_file" / "dets.json",
    }[target]
    if target == "folder":
        json_path.mkdir()
    save_dir = tmp_path / "out"
    code = run_cli("--source", folder, "--save-dir", save_dir, "--json", json_path)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {json_path}"), captured.err
    assert "bad.jpg" not in captured.err and "images" not in captured.out  # no run
    assert not save_dir.exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_unwritable_save_dir_fails_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = _folder_with_a_bad_image(tmp_path)
    (tmp_path / "a_file").write_text("x")
    for save_dir in (tmp_path / "a_file" / "out", Path("/proc/out")):
        code = run_cli("--source", folder, "--save-dir", save_dir)
        captured = capsys.readouterr()
        assert code == 2
        assert captured.err.strip() == captured.err.strip().splitlines()[0]
        assert captured.err.startswith(f"error: {save_dir}") and "bad.jpg" not in captured.err
    # --exist-ok writes into the folder itself: a file there is not one
    code = run_cli("--source", folder, "--save-dir", tmp_path / "a_file", "--exist-ok")
    assert code == 2
    assert "a_file: exists and is not a folder" in capsys.readouterr().err


def test_export_onnx_to_an_unwritable_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "folder.onnx").mkdir()
    for target in (Path("/proc/model.onnx"), tmp_path / "folder.onnx"):
        assert run_cli("--img-size", "64", "--export-onnx", target) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {target}") and len(err.strip().splitlines()) == 1
    assert list((tmp_path / "folder.onnx").iterdir()) == []


@pytest.mark.slow
def test_json_write_failing_at_the_end_is_one_line(tmp_path: Path) -> None:
    """A JSON that cannot be written when the run ends (here: larger than the file-size limit,
    as on a full disk) is one error line naming it, exit code 1, no temporary file left."""
    json_path = tmp_path / "dets.json"

    cmd = [sys.executable, "predict.py", "--weights", str(WEIGHTS), "--device", "cpu"]
    cmd += ["--source", str(BUS), "--img-size", "160", "--conf", "0.01", "--no-save"]
    cmd += ["--json", str(json_path)]
    result = run_with_file_size_limit(cmd, 2048, REPO)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: {json_path}: cannot write (File too large)" in result.stderr.splitlines()
    assert not json_path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, flags",
    [
        (["--conf", "2"], ["--conf"]),
        (["--conf", "-1"], ["--conf"]),
        (["--conf", "nan"], ["--conf"]),
        (["--nms", "1.5"], ["--nms"]),
        (["--max-det", "-1"], ["--max-det"]),
        (["--img-size", "0"], ["--img-size"]),
        (["--conf", "nan", "--nms", "0", "--max-det", "0"], ["--conf", "--nms", "--max-det"]),
    ],
)
def test_inference_settings_out_of_range(
    capsys: pytest.CaptureFixture, args: list[str], flags: list[str]
) -> None:
    assert run_cli("--source", BUS, "--no-save", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid inference settings") and len(err.splitlines()) == 1
    assert all(f"{flag} " in err for flag in flags), err


def test_inference_config_lists_every_bad_field() -> None:
    with pytest.raises(ValueError) as excinfo:
        InferenceConfig(img_size=100, conf_thresh=float("nan"), nms_thresh=1.5, max_det=-1)
    message = str(excinfo.value)
    for part in ("--img-size 100", "--conf nan", "--nms 1.5", "--max-det -1"):
        assert part in message
    with pytest.raises(ValueError, match="--classes-filter"):
        InferenceConfig(classes_filter=())
    with pytest.raises(ValueError, match="--backend"):
        InferenceConfig(backend="tensorrt")
    config = InferenceConfig(conf_thresh=0.0, nms_thresh=1.0, max_det=1, classes_filter=(0,))
    with pytest.raises(ValueError, match="--max-det 0"):  # replace() checks too
        dataclasses.replace(config, max_det=0)


@pytest.mark.parametrize("text", [",", "", " , ,"])
def test_empty_classes_filter_is_an_error(capsys: pytest.CaptureFixture, text: str) -> None:
    assert run_cli("--source", BUS, "--classes-filter", text, "--no-save") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --classes-filter") and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def garbage_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model files that cannot be loaded: empty, random and truncated .onnx, random .pth."""
    from nets.decode import Geometry
    from nets.yolo import YoloBody
    from utils.inference.export import export_onnx

    folder = tmp_path_factory.mktemp("garbage_models")
    good = export_onnx(YoloBody(1, 0), folder / "good.onnx", Geometry().at_size(64))
    rng = np.random.default_rng(0)
    files = {
        "empty.onnx": b"",
        "random.onnx": rng.bytes(4096),
        "truncated.onnx": good.read_bytes()[: good.stat().st_size // 2],
        "random.pth": rng.bytes(4096),
    }
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    return {name: folder / name for name in files}


@pytest.mark.parametrize("name", ["empty.onnx", "random.onnx", "truncated.onnx", "random.pth"])
def test_garbage_model_file_is_one_line(
    capsys: pytest.CaptureFixture, garbage_models: dict[str, Path], name: str
) -> None:
    path = garbage_models[name]
    code = exit_code(predict.main, ["--weights", path, "--source", BUS, "--no-save"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {path}: ") and len(err.splitlines()) == 1, err
    assert "weights_only" not in err and "Traceback" not in err


def _truncated_avi(path: Path, frames: int = 12, keep: float = 0.5) -> int:
    """An MJPG .avi written by OpenCV, then cut to ``keep`` of its bytes (its index, at the
    end, is lost; the header still declares every frame); returns the frames left readable."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    assert writer.isOpened()
    bus = cv2.resize(cv2.imread(str(BUS)), (90, 120), interpolation=cv2.INTER_AREA)
    for i in range(frames):
        frame = np.full((120, 160, 3), 110, np.uint8)
        frame[:, 5 * i : 5 * i + 90] = bus
        writer.write(frame)
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    cap = cv2.VideoCapture(str(path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    readable = 0
    while cap.read()[0]:
        readable += 1
    cap.release()
    assert 0 < readable < frames
    return readable


def test_truncated_video_is_reported_and_its_frames_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    clip = tmp_path / "cut.avi"
    readable = _truncated_avi(clip)
    json_path = tmp_path / "dets.json"
    code = run_cli("--source", clip, "--img-size", "160", "--no-save", "--json", json_path)
    captured = capsys.readouterr()
    assert code == 0
    assert f"{readable} video frames" in captured.out
    expected = f"{clip}: read {readable} of the 12 frames its container declares"
    warnings = [line for line in captured.err.splitlines() if expected in line]
    assert warnings and warnings[0].startswith("warning: "), captured.err
    assert "1 warning(s)" in captured.err
    records = load_json(json_path)
    assert [r["frame"] for r in records] == list(range(readable))


def test_complete_video_has_no_frame_count_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    clip = tmp_path / "whole.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for _ in range(5):
        writer.write(np.full((48, 64, 3), 90, np.uint8))
    writer.release()
    assert run_cli("--source", clip, "--img-size", "64", "--no-save") == 0
    captured = capsys.readouterr()
    assert "5 video frames" in captured.out and "warning" not in captured.err
