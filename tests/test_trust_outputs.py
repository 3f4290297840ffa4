"""Outputs named as single files (eval.py and predict.py ``--json``, eval's ``--out-dir``) and
converter outputs inside a source's data set never land on what the command reads."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import exit_code, require_asset
from voc_factory import make_split, tiny_train_config

import eval as eval_cli
import predict
from nets.checkpoint import ModelInfo, save_checkpoint
from nets.yolo import YoloBody
from tools import convert_labels as convert_cli
from utils.paths import (
    OutputPathError,
    OutputRefusedError,
    check_output_path,
    check_outputs_distinct,
    write_text_atomic,
)
from utils.training.fit import fit

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "model_data" / "yolov4-tiny.weights"
BUS = REPO / "model_data" / "samples" / "bus.jpg"


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A VOC tree, its classes file and an untrained checkpoint of its classes."""
    root, classes = make_split(tmp_path_factory.mktemp("tiny"), num_train=1, num_test=2)
    names = classes.read_text().split()
    weights = root.parent / "model" / "w.pth"
    weights.parent.mkdir()
    info = ModelInfo(
        phi=0, phi_name="none", num_classes=len(names), class_names=names, input_size=64
    )
    save_checkpoint(weights, YoloBody(len(names), "none").eval(), info)
    return root, classes, weights


def _eval_args(root: Path, classes: Path, weights: Path, *extra: object) -> list[str]:
    return [
        "--weights", str(weights), "--voc-root", str(root), "--split", "2007:test",
        "--classes", str(classes), "--workers", "0", "--device", "cpu", "--no-coco",
        *map(str, extra),
    ]  # fmt: skip


def test_eval_outputs_on_its_inputs_are_refused_before_any_work(
    tiny: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, classes, weights = tiny
    xml = next((root / "VOC2007" / "Annotations").glob("*.xml"))
    before = {**_digests(root), **_digests(weights.parent), "classes": classes.read_text()}
    cases = [
        ("--json", weights),  # the checkpoint being evaluated
        ("--json", classes),
        ("--json", xml),  # a ground-truth file inside the VOCdevkit
        ("--save-dir", root / "VOC2007"),  # an input folder: never a numbered sibling instead
        ("--save-dir", root),
    ]
    for flag, target in cases:
        code = exit_code(eval_cli.main, _eval_args(root, classes, weights, flag, target))
        err = capsys.readouterr().err
        assert code == 2, (flag, target, err)
        assert err.startswith(f"error: {flag} {target}: ") and "input" in err, err
    after = {**_digests(root), **_digests(weights.parent), "classes": classes.read_text()}
    assert after == before
    assert not any(p.name.startswith("VOC20072") for p in root.iterdir())


def test_eval_json_beside_a_coco_file_may_be_new_but_not_one_of_its_files(
    tiny: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, classes, weights = tiny
    coco = tmp_path / "c"
    code = convert_cli.main(
        [str(root / "VOC2007"), "--split", "test", "--to", "coco", "--out", str(coco)]
    )
    assert code == 0, capsys.readouterr().err
    labels = next((coco / "annotations").glob("*.json"))
    image = next((coco / "images").rglob("*.jpg"))
    for target in (labels, image):
        args = ["--weights", weights, "--val-labels", labels, "--classes", classes]
        args += ["--device", "cpu", "--workers", "0", "--no-coco", "--json", target]
        args += ["--save-dir", tmp_path / "plots"]
        before = target.read_bytes()
        assert exit_code(eval_cli.main, list(map(str, args))) == 2
        assert "input" in capsys.readouterr().err
        assert target.read_bytes() == before


@pytest.mark.slow
def test_predict_json_on_an_image_of_the_source_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    require_asset(WEIGHTS)
    photos = tmp_path / "photos"
    photos.mkdir()
    image = photos / "bus.jpg"
    cv2.imwrite(str(image), cv2.resize(cv2.imread(str(BUS)), (120, 160)))
    before = image.read_bytes()
    argv = ["--weights", str(WEIGHTS), "--device", "cpu", "--img-size", "160"]
    argv += ["--source", str(photos), "--no-save", "--json", str(image)]
    assert exit_code(predict.main, argv) == 2
    assert "lies inside the input" in capsys.readouterr().err
    assert image.read_bytes() == before
    # a new file name in the folder cannot be one of its inputs
    argv[-1] = str(photos / "detections.json")
    assert exit_code(predict.main, argv) == 0
    assert json.loads((photos / "detections.json").read_text())[0]["image_id"] == "bus"


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((48, 64, 3), 90, np.uint8))


def test_converting_one_split_into_its_own_data_set_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An output inside the source's data set would join its other splits."""
    yolo = tmp_path / "y"
    for split in ("train", "val"):
        for k in range(2):
            _image(yolo / "images" / split / f"{split}{k}.jpg")
            (yolo / "labels" / split).mkdir(parents=True, exist_ok=True)
            (yolo / "labels" / split / f"{split}{k}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (yolo / "classes.txt").write_text("cat\n")
    before = _digests(yolo)
    for out in (yolo / "images" / "train", yolo / "v"):
        with pytest.raises(OutputRefusedError, match="lies inside the input"):
            convert_cli.main([str(yolo / "images" / "val"), "--to", "voc", "--out", str(out)])
    assert _digests(yolo) == before
    code = convert_cli.main(
        [str(yolo / "images" / "val"), "--to", "voc", "--out", str(tmp_path / "v")]
    )
    assert code == 0, capsys.readouterr().err


# ------------------------------------------------------------------ outputs among themselves


def test_a_device_or_pipe_named_as_an_output_is_refused_not_replaced(tmp_path: Path) -> None:
    """A write through a temporary name and a rename would replace the node itself (as root,
    ``--json /dev/full`` became a plain file)."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(OutputRefusedError, match="not a regular file"):
        check_output_path(pipe)
    with pytest.raises(OutputPathError, match="not a regular file"):
        write_text_atomic(pipe, "{}")
    assert stat.S_ISFIFO(pipe.lstat().st_mode)


def test_two_outputs_on_one_path_are_refused(
    tiny: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, classes, weights = tiny
    both = tmp_path / "out" / "m.json"
    code = exit_code(
        eval_cli.main, _eval_args(root, classes, weights, "--json", both, "--save-dir", both)
    )
    assert code == 2 and "name one path" in capsys.readouterr().err
    assert not both.exists()
    with pytest.raises(OutputRefusedError, match="lies inside the file --json"):
        check_outputs_distinct([("--json", both, False), ("--save-dir", both / "x", True)])
    check_outputs_distinct([("--save-dir", both.parent, True), ("--json", both, False)])


@pytest.mark.slow
def test_predict_refuses_what_would_land_on_inputs_or_on_another_output(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    require_asset(WEIGHTS)
    photos = tmp_path / "imgs"
    photos.mkdir()
    image = photos / "bus.jpg"
    cv2.imwrite(str(image), cv2.resize(cv2.imread(str(BUS)), (120, 160)))
    anchors = tmp_path / "anchors.txt"
    anchors.write_text("10,14, 23,27, 37,58, 81,82, 135,169, 344,319\n")
    before = _digests(tmp_path)
    base = ["--weights", str(WEIGHTS), "--device", "cpu", "--img-size", "160"]
    cases = [
        ["--source", photos, "--save-dir", photos],  # without --exist-ok: not imgs2 instead
        ["--source", image, "--save-dir", tmp_path / "o.json", "--json", tmp_path / "o.json"],
        ["--source", image, "--export-onnx", image],  # an export never replaces the source
        ["--source", image, "--anchors", anchors, "--export-onnx", anchors],
        ["--source", image, "--benchmark", "--json", "-"],  # no detections: stdout stays clean
    ]  # fmt: skip
    for case in cases:
        assert exit_code(predict.main, [*base, *map(str, case)]) == 2, case
        assert capsys.readouterr().err.startswith("error: ")
    assert _digests(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anchors.txt", "imgs"]


def test_checkpoints_of_one_run_are_not_two_runs(
    tiny: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``best.pth`` and ``last.pth`` of one run (the same stored settings and seed), or two
    files of identical weights, would be counted as two seeds of a block."""
    root, classes, _ = tiny
    names = classes.read_text().split()
    info = ModelInfo(
        phi=0, phi_name="none", num_classes=len(names), class_names=names, input_size=64
    )
    config = asdict(tiny_train_config(root, classes))
    torch.manual_seed(1)
    save_checkpoint(tmp_path / "best.pth", YoloBody(len(names), "none"), info, config=config)
    torch.manual_seed(2)
    save_checkpoint(tmp_path / "last.pth", YoloBody(len(names), "none"), info, config=config)
    torch.manual_seed(0)
    same = YoloBody(len(names), "none")
    save_checkpoint(tmp_path / "a.pth", same, info, note="a")
    save_checkpoint(tmp_path / "b.pth", same, info, note="b")
    for pair, why in [
        (("best.pth", "last.pth"), "one training run"),
        (("a.pth", "b.pth"), "identical weights"),
    ]:
        args = ["--weights", *(str(tmp_path / p) for p in pair), "--voc-root", str(root)]
        args += ["--split", "2007:test", "--classes", str(classes), "--device", "cpu"]
        assert exit_code(eval_cli.main, [*args, "--save-dir", str(tmp_path / "o")]) == 2
        assert why in capsys.readouterr().err
    other = asdict(tiny_train_config(root, classes, seed=1))
    save_checkpoint(tmp_path / "seed1.pth", YoloBody(len(names), "none"), info, config=other)
    assert (
        eval_cli.check_weights([str(tmp_path / "best.pth"), str(tmp_path / "seed1.pth")], None)
        is None
    )


def test_a_run_folder_inside_the_data_is_refused_before_it_exists(
    tiny: tuple[Path, Path, Path], capsys: pytest.CaptureFixture
) -> None:
    root, classes, _ = tiny
    before = _digests(root)
    log_dir = root / "VOC2007"
    cfg = tiny_train_config(root, classes, log_dir=str(log_dir), name="JPEGImages")
    with pytest.raises(OutputRefusedError, match="lies inside the input"):
        fit(cfg)
    assert _digests(root) == before
    assert not any(p.name.startswith("JPEGImages2") for p in log_dir.iterdir())
