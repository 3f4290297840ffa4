"""predict.py keeps its outputs apart from its inputs and from each other: an output folder or
file on an input is refused before any work, names from data never leave the output folder,
no output of a run overwrites another, ``--json -`` is standard output, and an anchors file
with sides that are not finite and positive is refused (also by training)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import exit_code, require_asset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from voc_factory import make_split

import predict
import train
from nets.checkpoint import load_matching, load_model, save_checkpoint
from nets.yolo import DEFAULT_ANCHORS, YoloBody
from utils.classes import read_anchors
from utils.training.anchor_choice import resolve_anchors

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "model_data" / "yolov4-tiny.weights"
COCO_NAMES = REPO / "model_data" / "coco.names"
BUS = REPO / "model_data" / "samples" / "bus.jpg"
ZIDANE = REPO / "model_data" / "samples" / "zidane.jpg"
SIZE = "160"  # the smallest input that still finds the bus and its people


@pytest.fixture(autouse=True)
def _assets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test needs the official weights and samples; runs start in an empty folder so
    that a stray relative output (a file named ``-``) shows up there."""
    for path in (WEIGHTS, COCO_NAMES, BUS, ZIDANE):
        require_asset(path)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def run_cli(*args: str | Path, weights: Path = WEIGHTS) -> int:
    """predict.py's exit code at the small input size on the CPU."""
    return exit_code(
        predict.main, ["--weights", weights, "--device", "cpu", "--img-size", SIZE, *args]
    )


def small_copy(src: Path, dst: Path, width: int = 200) -> Path:
    image = cv2.imread(str(src))
    height = round(image.shape[0] * width / image.shape[1])
    dst.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(dst), cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))
    return dst


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- outputs vs inputs


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    small_copy(BUS, folder / "bus.jpg")
    small_copy(ZIDANE, folder / "zidane.jpg", 240)
    return folder


@pytest.mark.parametrize(
    ("source", "save_dir"),
    [
        ("{p}", "{p}"),  # the folder itself, the reported case
        ("{p}/bus.jpg", "{p}"),  # a folder that holds the input file
        ("{p}/*.jpg", "{p}"),  # a pattern's matched files
        ("{p}/*.jpg", "{p}/annotated"),  # inside the folder a pattern searches
        ("{p}", "{p}/annotated"),  # inside the input folder
        ("{p}/bus.jpg", "{p}/.."),  # a folder above the input
    ],
)
def test_a_save_dir_on_the_source_is_refused_before_any_work(
    photos: Path, source: str, save_dir: str, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(photos.parent)
    source, save_dir = source.format(p=photos), save_dir.format(p=photos)
    assert run_cli("--source", source, "--save-dir", save_dir, "--exist-ok", "--crop") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --save-dir ") and "input" in err and len(err.splitlines()) == 1
    assert snapshot(photos.parent) == before  # nothing written, nothing created


def test_a_save_dir_holding_a_video_source_is_refused(tmp_path: Path, capsys) -> None:
    clip = tmp_path / "videos" / "clip.avi"
    clip.parent.mkdir()
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    for i in range(2):
        writer.write(np.full((48, 64, 3), 90 * i, np.uint8))
    writer.release()
    before = snapshot(tmp_path)
    assert run_cli("--source", clip, "--save-dir", clip.parent, "--exist-ok") == 2
    assert "--save-dir" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_model_files_are_inputs_too(photos: Path, tmp_path: Path, capsys) -> None:
    """The classes and anchors files (and the weights) are inputs: no output folder holds
    them and no output file is one of them."""
    names = tmp_path / "model" / "names.txt"
    names.parent.mkdir()
    names.write_text(COCO_NAMES.read_text())
    anchors = tmp_path / "model" / "anchors.txt"
    anchors.write_text(", ".join(f"{w},{h}" for w, h in DEFAULT_ANCHORS))
    before = snapshot(tmp_path)
    bus = photos / "bus.jpg"
    common = ("--source", bus, "--classes", names, "--anchors", anchors)
    assert run_cli(*common, "--save-dir", names.parent, "--exist-ok") == 2
    assert f"--save-dir {names.parent}: contains the input" in capsys.readouterr().err
    assert run_cli(*common, "--no-save", "--json", anchors) == 2
    assert f"--json {anchors}: is the input {anchors}" in capsys.readouterr().err
    assert run_cli(*common, "--no-save", "--json", bus) == 2
    assert f"--json {bus}: is the input" in capsys.readouterr().err
    assert run_cli("--classes", names, "--export-onnx", names) == 2
    assert f"--export-onnx {names}: is the input" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_an_output_apart_from_the_inputs_still_runs(photos: Path, tmp_path: Path) -> None:
    """The refusal is about overlap only: a sibling folder (and an existing one, with
    --exist-ok) is written as before, and the photos are left as they were."""
    before = snapshot(photos)
    out = tmp_path / "out"
    out.mkdir()
    assert run_cli("--source", photos, "--save-dir", out, "--exist-ok") == 0
    assert files_under(out) == {"bus.jpg", "zidane.jpg"}
    assert snapshot(photos) == before


# --------------------------------------------------------------------------- names from data


def hostile_names(tmp_path: Path) -> tuple[Path, str, str]:
    """A COCO names file whose 'person' is a relative path climbing out of the output folder
    and whose 'bus' is an absolute path."""
    names = COCO_NAMES.read_text().split("\n")
    climbing, absolute = "../../escaped_person", str(tmp_path / "absolute_bus")
    names[0], names[5] = climbing, absolute
    path = tmp_path / "hostile.names"
    path.write_text("\n".join(names))
    return path, climbing, absolute


def test_crops_stay_in_their_class_folder_whatever_the_class_name(tmp_path: Path) -> None:
    names, climbing, absolute = hostile_names(tmp_path)
    source = small_copy(BUS, tmp_path / "in" / "bus.jpg")
    save_dir, json_path = tmp_path / "run" / "out", tmp_path / "dets.json"
    args = ("--source", source, "--classes", names, "--crop", "--json", json_path)
    assert run_cli(*args, "--save-dir", save_dir) == 0
    written = files_under(tmp_path) - {"hostile.names", "in/bus.jpg", "dets.json"}
    assert written and all(name.startswith("run/out/") for name in written), written
    crops = [p for p in (save_dir / "crops").rglob("*") if p.is_file()]
    assert crops and all(p.parent.parent == save_dir / "crops" for p in crops)
    folders = {p.parent.name for p in crops}
    assert len(folders) == 2, folders
    assert any(f.endswith("escaped_person") for f in folders), folders
    assert any(f.endswith("absolute_bus") for f in folders), folders
    # the JSON keeps the names as the classes file gives them
    found = {d["class_name"] for r in json.loads(json_path.read_text()) for d in r["detections"]}
    assert found == {climbing, absolute}


def test_crop_and_output_names_from_odd_file_names_are_safe(tmp_path: Path) -> None:
    """A file name may hold what is a separator elsewhere (a backslash) or be long enough
    that a suffix pushes it past the file system's limit; outputs use the safe form."""
    folder = tmp_path / "in"
    small_copy(BUS, folder / "a\\b.jpg")
    small_copy(BUS, folder / ("p" * 240 + ".jpg"))
    save_dir = tmp_path / "out"
    assert run_cli("--source", folder, "--save-dir", save_dir, "--crop") == 0
    names = [p.name for p in save_dir.rglob("*") if p.is_file()]
    assert "a_b.jpg" in names and len(names) > 1
    # no separator of any platform, and room for suffixes under the 255-byte limit
    assert all("\\" not in name and len(name.encode()) <= 220 for name in names), names


# --------------------------------------------------------------------------- outputs vs outputs


@pytest.fixture(scope="module")
def cbam_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official weights with an (untrained) CBAM block at the default points: a model
    that has attention maps to write, without training one."""
    require_asset(WEIGHTS)
    base, info = load_model(WEIGHTS)
    torch.manual_seed(0)
    model = YoloBody(base.num_classes, "cbam")
    assert load_matching(model, base.state_dict()).mismatched == {}
    path = tmp_path_factory.mktemp("cbam") / "cbam.pth"
    save_checkpoint(path, model, dataclasses.replace(info, phi=model.phi, phi_name="cbam"))
    return path


@pytest.mark.slow
def test_an_input_named_like_an_attention_map_keeps_its_annotated_copy(
    cbam_weights: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    small_copy(BUS, folder / "bus.jpg", 180)
    small_copy(ZIDANE, folder / "bus_attn_feat1.jpg", 320)  # another photo, not a map
    save_dir = tmp_path / "out"
    assert (
        run_cli(
            "--source", folder, "--save-dir", save_dir, "--attention-maps", weights=cbam_weights
        )
        == 0
    )
    stems = ("bus", "bus_attn_feat1")
    maps = {
        f"{s}_attn_{p}{end}"
        for s in stems
        for p in ("feat1", "feat2", "upsample")
        for end in (".jpg", "_channels.png")
    }
    written = files_under(save_dir)
    # every output of the run is there: none was written over another
    assert len(written) == len(stems) + len(maps)
    assert {"bus.jpg", "bus_attn_feat1.jpg"} <= written
    annotated = cv2.imread(str(save_dir / "bus_attn_feat1.jpg"))
    assert annotated.shape == cv2.imread(str(folder / "bus_attn_feat1.jpg")).shape
    bus_map = next(p for p in save_dir.rglob("bus_attn_feat1.jpg") if p.parent != save_dir)
    assert cv2.imread(str(bus_map)).shape == cv2.imread(str(folder / "bus.jpg")).shape


def test_inputs_with_one_stem_get_an_output_each(tmp_path: Path) -> None:
    """a/x.jpg and b/x.jpg (a pattern over subfolders), x.jpg and x.png, and X.jpg next to
    x.jpg: one annotated output each, with names that differ also without case (macOS and
    Windows file systems would merge X.jpg and x.jpg)."""
    root = tmp_path / "in"
    small_copy(BUS, root / "a" / "x.jpg", 160)
    small_copy(ZIDANE, root / "b" / "x.jpg", 200)
    small_copy(ZIDANE, root / "b" / "x.png", 240)
    small_copy(BUS, root / "c" / "X.jpg", 120)
    save_dir = tmp_path / "out"
    assert run_cli("--source", f"{root}/*/*", "--save-dir", save_dir, "--crop") == 0
    top = [p for p in save_dir.iterdir() if p.is_file()]
    assert len(top) == 4 and len({p.name.casefold() for p in top}) == 4, top
    widths = sorted(cv2.imread(str(p)).shape[1] for p in top)
    assert widths == [120, 160, 200, 240]
    crops = [str(p.relative_to(save_dir)).casefold() for p in save_dir.rglob("crops/*/*")]
    assert len(crops) == len(set(crops))


# --------------------------------------------------------------------------- --json -


def test_json_dash_is_standard_output_alone(tmp_path: Path, capsys) -> None:
    assert run_cli("--source", BUS, "--no-save", "--json", "-") == 0
    captured = capsys.readouterr()
    records = json.loads(captured.out)  # nothing but the JSON on stdout
    assert [r["image_id"] for r in records] == ["bus"] and records[0]["detections"]
    assert "1 images" in captured.err
    assert list(Path.cwd().iterdir()) == []  # no file named '-'


# --------------------------------------------------------------------------- anchors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10,14, 23,27, 37,58, 81,82, 135,169, 0,319", "anchor 6 has width 0"),
        ("10,14, 23,27, 37,58, 81,82, 135,169, 344,-319", "anchor 6 has height -319"),
        ("10,14, 23,27, 37,nan, 81,82, 135,169, 344,319", "anchor 3 has height nan"),
        ("inf,14, 23,27, 37,58, 81,82, 135,169, 344,319", "anchor 1 has width inf"),
        ("0 0 0 0 0 0 0 0 0 0 0 0", "anchor 1 has width 0"),
    ],
)
def test_anchors_that_are_not_finite_and_positive_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "anchors.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{path}: {message}"):
        read_anchors(path)


def test_anchors_count_is_checked_where_known(tmp_path: Path) -> None:
    path = tmp_path / "anchors.txt"
    path.write_text("10,14, 23,27, 37,58, 81,82")
    assert len(read_anchors(path)) == 4
    with pytest.raises(ValueError, match=f"^{path}: 4 anchors, but the model uses 6$"):
        read_anchors(path, count=6)


def test_predict_refuses_a_negative_anchor_naming_file_and_value(tmp_path: Path, capsys):
    path = tmp_path / "neg.txt"
    path.write_text("10,14, 23,27, 37,58, 81,82, 135,169, -344,319")
    assert run_cli("--source", BUS, "--anchors", path, "--save-dir", tmp_path / "out") == 2
    assert capsys.readouterr().err == (
        f"error: {path}: anchor 6 has width -344; anchor sides are pixels, finite and > 0\n"
    )
    assert not (tmp_path / "out").exists()
    path.write_text("10,14, 23,27, 37,58, 81,82")
    assert run_cli("--source", BUS, "--anchors", path, "--no-save") == 2
    assert "4 anchors, but the model uses 6" in capsys.readouterr().err


def test_training_reads_anchors_files_through_the_same_check(tmp_path: Path, capsys) -> None:
    """All-zero anchors trained with box and class loss exactly 0: now refused before the run
    folder exists."""
    path = tmp_path / "zeros.txt"
    path.write_text(" ".join(["0"] * 12))
    with pytest.raises(ValueError, match=f"^{path}: anchor 1 has width 0"):
        resolve_anchors(str(path), [], 416)
    voc_root, classes = make_split(tmp_path / "data", num_train=2, num_test=1)
    args = ["--voc-root", voc_root, "--train-sets", "2007:trainval", "--val-set", "2007:test"]
    args += ["--classes", classes, "--img-size", "64", "--epochs", "1", "--weights", "none"]
    args += ["--workers", "0", "--log-dir", tmp_path / "logs", "--anchors", path]
    assert exit_code(train.main, args) == 2
    assert f"error: {path}: anchor 1 has width 0" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


finite = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pairs=st.lists(st.tuples(finite, finite), min_size=1, max_size=12))
def test_valid_anchors_round_trip_exactly(tmp_path: Path, pairs) -> None:
    path = tmp_path / "anchors.txt"
    path.write_text(", ".join(f"{w!r},{h!r}" for w, h in pairs))
    assert read_anchors(path) == pairs


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_any_anchors_file_gives_anchors_or_one_clear_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "anchors.txt"
    path.write_bytes(data)
    try:
        anchors = read_anchors(path)
    except ValueError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
        return
    assert anchors and all(math.isfinite(v) and v > 0 for pair in anchors for v in pair)
