"""``tools.check_data``: every problem of a data set listed up front, in VOC and in the other
label formats train.py reads, with what training will do about it and an exit code that says
whether anything will be skipped."""

from __future__ import annotations

from pathlib import Path

from voc_factory import make_split

from tools import check_data, convert_labels


def test_a_clean_voc_set_passes(tmp_path: Path, capsys) -> None:
    voc_root, classes = make_split(tmp_path / "voc", 4, 2)
    args = ["--voc-root", str(voc_root), "--sets", "2007:trainval", "--classes", str(classes)]
    assert check_data.main([*args, "--workers", "1"]) == 0
    assert "4 annotated images" in capsys.readouterr().out


def test_yolo_labels_are_checked_like_voc(tmp_path: Path, capsys) -> None:
    voc_root, _ = make_split(tmp_path / "voc", 4, 2)
    out = tmp_path / "yolo"
    src = str(voc_root / "VOC2007")
    assert convert_labels.main([src, "--split", "trainval", "--to", "yolo", "--out", str(out)]) == 0
    labels = sorted((out / "labels").rglob("*.txt"))
    with labels[0].open("a") as f:
        f.write("0 0.5 0.5 2.0 0.3\n")  # twice the image's width
    images = sorted((out / "images").rglob("*.jpg"))
    images[1].unlink()
    images[1].write_bytes(b"not a jpeg")  # a hard link replaced, the source set untouched
    capsys.readouterr()

    assert check_data.main(["--labels", str(out), "--workers", "1"]) == 1  # one image skipped
    printed = capsys.readouterr().out
    assert f"{labels[0]}:" in printed and "reaches outside the image (box clipped)" in printed
    assert str(images[1]) in printed and "skipped" in printed
    # --quick skips decoding, but YOLO labels need each image's size: its header shows it
    assert check_data.main(["--labels", str(out), "--quick"]) == 1


def test_an_unusable_labels_path_is_one_error(tmp_path: Path, capsys) -> None:
    assert check_data.main(["--labels", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nowhere'}")
