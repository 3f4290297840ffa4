"""``tools.check_data``: every problem of a data set listed up front, in VOC and in the other
label formats train.py reads, with what training will do about it and an exit code that says
whether anything will be skipped."""

from __future__ import annotations

from pathlib import Path

from conftest import exit_code
from voc_factory import make_split

from tools import check_data, convert_labels, preview


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
        f.write("9 0.5 0.5 0.2 0.2\n")  # no class 9: a second issue in the same file
    images = sorted((out / "images").rglob("*.jpg"))
    images[1].unlink()
    images[1].write_bytes(b"not a jpeg")  # a hard link replaced, the source set untouched
    capsys.readouterr()

    assert check_data.main(["--labels", str(out), "--workers", "1"]) == 1  # one image skipped
    summary = capsys.readouterr().out  # one line per kind of issue, naming its first files
    assert f"1 issue (box clipped): box reaches outside the image; 1 file: {labels[0]}:" in summary
    assert f"1 issue (image skipped): not a decodable image; 1 file: {images[1]}" in summary
    assert "3 issue(s) in 2 file(s)" in summary  # lines of one label file count as one file
    assert check_data.main(["--labels", str(out), "--workers", "1", "--verbose"]) == 1
    printed = capsys.readouterr().out  # every issue on its own line, then the summary
    assert f"{labels[0]}:" in printed and "reaches outside the image (box clipped)" in printed
    assert f"{images[1]}: not a decodable image" in printed
    assert printed.endswith(summary.split("\n", 1)[1])
    # --quick skips decoding, but YOLO labels need each image's size: its header shows it
    assert check_data.main(["--labels", str(out), "--quick"]) == 1


def test_an_unusable_labels_path_is_one_error(tmp_path: Path, capsys) -> None:
    assert exit_code(check_data.main, ["--labels", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nowhere'}")


def test_classes_that_name_no_object_fail_the_check(tmp_path: Path, capsys) -> None:
    voc_root, _ = make_split(tmp_path / "voc", 2, 2)
    other = tmp_path / "zebra.txt"
    other.write_text("zebra\n")
    args = ["--voc-root", str(voc_root), "--sets", "2007:trainval", "--classes", str(other)]
    assert check_data.main([*args, "--quick"]) == 1
    assert "no object of these classes in any image" in capsys.readouterr().out


def test_preview_writes_its_grid_or_says_why_not(tmp_path: Path, capsys) -> None:
    voc_root, _ = make_split(tmp_path / "voc", 2, 2)
    args = ["--voc-root", str(voc_root), "--img-size", "64", "--num", "2"]
    out = tmp_path / "new" / "grid.jpg"  # its folder is created
    assert preview.main([*args, "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    assert "classes found in the XMLs: " in capsys.readouterr().out  # no VOC names assumed
    blocked = tmp_path / "file"
    blocked.write_text("")
    for bad, why in ((blocked / "g.jpg", "is not a folder"), (tmp_path / "g.gif2", ".gif2")):
        assert exit_code(preview.main, [*args, "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {bad}") and why in err, err
        assert not bad.exists()
