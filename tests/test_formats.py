"""Labels in VOC, COCO, YOLO and annotation-line formats: readers, detection, bad input, the
converter's round trips, pycocotools on our COCO files, and training/evaluation through them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from voc_factory import CLASSES, make_voc

from data.formats import (
    LabelSource,
    convert_labels,
    detect_format,
    read_lines,
    role_source,
    train_val_sources,
)
from data.label_io import LabelFormatError, LabelSet
from data.voc import load_voc
from data.yolo_txt import label_path
from tools import convert_labels as convert_cli


def _image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), 127, np.uint8))
    return path


def _issues(labels: LabelSet) -> set[tuple[str, str, str]]:
    return {(i.path, i.problem, i.action) for i in labels.issues}


def _write_coco(path: Path, images: list, annotations: list, categories: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(payload))
    return path


def _coco_set(root: Path) -> Path:
    """``root/annotations/instances_val.json`` + ``root/images/val``: three images (one a
    negative), categories in non-contiguous ids listed out of order, a crowd object, and
    fractional boxes, the box at the right/bottom edge and the full image."""
    for name, (w, h) in {"a.jpg": (64, 48), "b.jpg": (80, 60), "c.jpg": (32, 32)}.items():
        _image(root / "images" / "val" / name, w, h)
    images = [
        {"id": 11, "file_name": "a.jpg", "width": 64, "height": 48},
        {"id": 12, "file_name": "b.jpg", "width": 80, "height": 60},
        {"id": 13, "file_name": "c.jpg", "width": 32, "height": 32},
    ]
    annotations = [
        {"id": 1, "image_id": 11, "category_id": 7, "bbox": [10, 20, 30, 20], "iscrowd": 0},
        {"id": 2, "image_id": 11, "category_id": 3, "bbox": [0, 0, 64, 48], "iscrowd": 1},
        {"id": 3, "image_id": 12, "category_id": 3, "bbox": [10.25, 3.5, 20.125, 7.75]},
        {"id": 4, "image_id": 12, "category_id": 7, "bbox": [0.1, 0.2, 5.3, 6.7]},
        {"id": 5, "image_id": 12, "category_id": 7, "bbox": [53.3, 31.7, 26.7, 28.3]},
    ]
    categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    return _write_coco(root / "annotations" / "instances_val.json", images, annotations, categories)


def _yolo_set(root: Path, names_in: str = "classes") -> Path:
    """``root/images/{train,val}`` with labels; image t1 has no label file (a negative)."""
    _image(root / "images" / "train" / "t0.jpg", 64, 48)
    _image(root / "images" / "train" / "t1.png", 40, 40)
    _image(root / "images" / "val" / "v0.jpg", 64, 48)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "t0.txt").write_text(
        "1 0.5 0.5 0.25 0.5\n\n0 0.125 0.25 0.25 0.5\n"
    )
    (root / "labels" / "val" / "v0.txt").write_text("0 0.5 0.5 1 1\n")
    if names_in == "classes":
        (root / "classes.txt").write_text("box\ndisc\n")
    return root


# ---------------------------------------------------------------- readers


def test_coco_reader_maps_categories_boxes_crowd_and_negatives(tmp_path: Path) -> None:
    json_path = _coco_set(tmp_path / "coco")
    labels = LabelSource(str(json_path)).load()
    assert labels.format == "coco" and labels.split == "val" and labels.issues == []
    assert labels.class_names == ["cat", "dog"]  # category-id order: 3 then 7
    a, b, c = labels.annotations
    assert (a.image_id, a.width, a.height) == ("a", 64, 48)
    assert a.image_path == str(tmp_path / "coco" / "images" / "val" / "a.jpg")
    # [x, y, w, h] covers w pixels: x2 = x + w - 1 in pixel indices
    np.testing.assert_array_equal(a.boxes, [[10, 20, 39, 39], [0, 0, 63, 47]])
    assert a.labels.tolist() == [1, 0] and a.difficult.tolist() == [False, True]
    expected = np.array(
        [
            [10.25, 3.5, 10.25 + 20.125 - 1, 3.5 + 7.75 - 1],
            [0.1, 0.2, 4.4, 5.9],
            [53.3, 31.7, 79, 59],
        ],
        np.float32,
    )
    np.testing.assert_array_equal(b.boxes, expected)
    assert (b.width, b.height) == (80, 60)
    assert len(c.labels) == 0 and (c.width, c.height) == (32, 32)  # a negative, kept
    # with given class names, categories are matched by name
    swapped = LabelSource(str(json_path)).load(["dog", "cat"])
    assert swapped.annotations[0].labels.tolist() == [0, 1]


def test_coco_images_folder_default_and_override(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    _image(root / "val2017" / "x.jpg", 20, 10)  # the COCO 2017 layout
    record = {"id": 1, "file_name": "x.jpg", "width": 20, "height": 10}
    json_path = _write_coco(root / "annotations" / "instances_val2017.json", [record], [], [])
    assert LabelSource(str(json_path)).load().annotations[0].image_path == str(
        root / "val2017" / "x.jpg"
    )
    _image(tmp_path / "elsewhere" / "x.jpg", 20, 10)
    given = LabelSource(str(json_path), images=str(tmp_path / "elsewhere")).load()
    assert given.annotations[0].image_path == str(tmp_path / "elsewhere" / "x.jpg")
    lonely = _write_coco(tmp_path / "lonely" / "t.json", [record], [], [])
    with pytest.raises(LabelFormatError, match=r"lonely/t.json: its images \(first: x.jpg\)"):
        LabelSource(str(lonely)).load()


def test_yolo_folder_reader(tmp_path: Path) -> None:
    root = _yolo_set(tmp_path / "ds")
    assert detect_format(root) == "yolo"
    assert LabelSource(str(root)).splits() == ["train", "val"]
    train = LabelSource(str(root), split="train").load()
    assert train.class_names == ["box", "disc"] and train.issues == []
    t0, t1 = train.annotations
    assert (t0.width, t0.height) == (64, 48)  # from the image header
    # cx 0.5 w 0.25 on 64 px: continuous 24..40 -> pixels 24..39
    np.testing.assert_array_equal(t0.boxes, [[24, 12, 39, 35], [0, 0, 15, 23]])
    assert t0.labels.tolist() == [1, 0] and t0.difficult.tolist() == [False, False]
    assert t1.image_id == "t1" and len(t1.labels) == 0 and (t1.width, t1.height) == (40, 40)
    # one split folder, pointed at directly, is the same data
    direct = LabelSource(str(root / "images" / "train")).load()
    assert [a.image_path for a in direct.annotations] == [a.image_path for a in train.annotations]
    everything = LabelSource(str(root)).load()
    assert len(everything.annotations) == 3
    assert label_path(root / "images" / "train" / "t0.jpg") == root / "labels" / "train" / "t0.txt"
    assert label_path(Path("a/b.jpg")) == Path("a/b.txt")


def test_yolo_data_yaml_and_lists(tmp_path: Path) -> None:
    root = _yolo_set(tmp_path / "ds", names_in="yaml")
    (root / "val.txt").write_text("images/val/v0.jpg\n")  # relative to the list file
    config = {
        "path": "ds",
        "train": "images/train",
        "val": "val.txt",
        "names": {0: "box", 1: "disc"},
    }
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(config))
    assert detect_format(data_yaml) == "yolo"
    train, val = train_val_sources(str(data_yaml))
    assert (train.split, val.split) == ("train", "val")
    train_labels, val_labels = train.load(), val.load()
    assert train_labels.class_names == ["box", "disc"]
    assert [a.image_id for a in train_labels.annotations] == ["t0", "t1"]
    assert [a.image_id for a in val_labels.annotations] == ["v0"]
    np.testing.assert_array_equal(val_labels.annotations[0].boxes, [[0, 0, 63, 47]])
    # names as a list, a list of entries, and the list file on its own
    config.update(names=["box", "disc"], train=["images/train", "images/val"])
    data_yaml.write_text(yaml.safe_dump(config))
    assert len(LabelSource(str(data_yaml), split="train").load().annotations) == 3
    listed = LabelSource(str(root / "val.txt"))
    assert listed.kind == "yolo"
    assert [a.image_id for a in listed.load(["box", "disc"]).annotations] == ["v0"]
    # no names anywhere: a clear error asking for them
    with pytest.raises(LabelFormatError, match="no class names"):
        LabelSource(str(root / "val.txt")).load()


def test_voc_folder_reader_matches_load_voc(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOCdevkit", num_images=4)
    folder = root / "VOC2007"
    reference = load_voc(root, [("2007", "trainval")], CLASSES).annotations
    for path in (folder, root, folder / "ImageSets" / "Main" / "trainval.txt"):
        labels = LabelSource(str(path)).load()
        assert labels.class_names == CLASSES and labels.issues == []  # names from the XMLs
        for got, want in zip(labels.annotations, reference, strict=True):
            np.testing.assert_array_equal(got.boxes, want.boxes)
            assert got.labels.tolist() == want.labels.tolist()
            assert got.difficult.tolist() == want.difficult.tolist()
            assert got.image_path == want.image_path


def test_lines_reader_checks_images_and_bounds(tmp_path: Path) -> None:
    image = _image(tmp_path / "img" / "a.jpg", 40, 30)
    lines = tmp_path / "train.txt"
    lines.write_text(f"{image} 1,1,10,10,0 30,20,50,40,1\n{tmp_path / 'gone.jpg'} 1,1,5,5,0\n")
    assert detect_format(lines) == "lines"
    labels = read_lines(lines, ["a", "b"])
    (ann,) = labels.annotations
    np.testing.assert_array_equal(ann.boxes, [[0, 0, 9, 9], [29, 19, 39, 29]])
    assert (ann.width, ann.height) == (40, 30)
    assert _issues(labels) == {
        (str(image), f"1 boxes outside the image (in {lines})", "box clipped"),
        (str(tmp_path / "gone.jpg"), f"image missing (in {lines})", "image skipped"),
    }
    with pytest.raises(LabelFormatError, match="class ids only"):
        read_lines(lines, None)


# ---------------------------------------------------------------- detection


def test_format_detection(tmp_path: Path) -> None:
    voc = make_voc(tmp_path / "VOCdevkit", num_images=1)
    yolo = _yolo_set(tmp_path / "yolo")
    json_path = _coco_set(tmp_path / "coco")
    listing = tmp_path / "list.txt"
    listing.write_text("images/a.jpg\nimages/b.png\n")
    lines = tmp_path / "2007_train.txt"
    lines.write_text("/data/x 1.jpg 1,2,3,4,0\n/data/y.jpg\n")
    table = {
        voc: "voc",
        voc / "VOC2007": "voc",
        voc / "VOC2007" / "ImageSets" / "Main" / "trainval.txt": "voc",
        yolo: "yolo",
        yolo / "images" / "val": "yolo",
        json_path: "coco",
        listing: "yolo",
        lines: "lines",
    }
    for path, fmt in table.items():
        assert detect_format(path) == fmt, path
    (yolo / "Annotations").mkdir()
    (yolo / "JPEGImages").mkdir()
    label_file = yolo / "labels" / "train" / "t0.txt"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    odd = tmp_path / "notes.md"
    odd.write_text("x")
    unknown_txt = tmp_path / "words.txt"
    unknown_txt.write_text("hello world\n")
    cases = {
        yolo: "ambiguous: both VOC",
        tmp_path / "coco" / "images": "unknown: neither",
        label_file: "one YOLO label file",
        empty: "the file is empty",
        odd: "unknown: a .md file",
        unknown_txt: "lines are neither",
    }
    for path, why in cases.items():
        with pytest.raises(LabelFormatError) as err:
            detect_format(path)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and why in message, message
        assert "--label-format" in message and "--from" in message
        assert all(f"{fmt}: " in message for fmt in ("voc", "coco", "yolo", "lines"))
    # the override reads what detection refuses
    assert len(LabelSource(str(yolo), "yolo").load().annotations) == 3
    with pytest.raises(FileNotFoundError, match="nowhere: labels path not found"):
        detect_format(tmp_path / "nowhere")


def test_train_and_val_splits_of_one_source(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOCdevkit", num_images=3)
    folder = root / "VOC2007"
    sets = folder / "ImageSets" / "Main"
    # VOC2007's sets: training reads trainval, and test is no validation split
    (sets / "test.txt").write_text("000002\n")
    train, val = train_val_sources(str(folder))
    assert (train.split, val) == ("trainval", None)
    # sets that are neither: reading all of it would mix them
    (sets / "trainval.txt").rename(sets / "part1.txt")
    with pytest.raises(LabelFormatError, match="splits part1, test but none named train/"):
        train_val_sources(str(folder))
    (sets / "train.txt").write_text("000000\n000001\n")
    (sets / "val.txt").write_text("000002\n")
    train, val = train_val_sources(str(folder))
    assert (train.split, val.split) == ("train", "val")
    assert [a.image_id for a in val.load(CLASSES).annotations] == ["000002"]
    json_path = _coco_set(tmp_path / "coco")
    train, val = train_val_sources(str(json_path))
    assert train.split is None and val is None
    assert role_source(str(folder), "val").split == "val"
    assert role_source(str(folder), "val", split="test").split == "test"  # eval.py --split
    with pytest.raises(LabelFormatError, match="no split 'tst' \\(it has: part1, test, train, val"):
        role_source(str(folder), "val", split="tst")


def test_split_names_of_exported_data_sets(tmp_path: Path) -> None:
    """Roboflow-style YOLO splits (train/valid/test), and a converter's single "all" split."""
    yolo = tmp_path / "yolo"
    for split in ("train", "valid", "test"):
        _image(yolo / "images" / split / f"{split}.jpg", 40, 30)
        (yolo / "labels" / split).mkdir(parents=True)
        (yolo / "labels" / split / f"{split}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (yolo / "classes.txt").write_text("thing\n")
    train, val = train_val_sources(str(yolo))
    assert (train.split, val.split) == ("train", "valid")
    assert [a.image_id for a in val.load().annotations] == ["valid"]
    (yolo / "images" / "train").rename(yolo / "images" / "part1")
    with pytest.raises(LabelFormatError, match="splits part1, test, valid but none named train"):
        train_val_sources(str(yolo))
    one = make_voc(tmp_path / "one", num_images=2, image_set="all")
    train, val = train_val_sources(str(one / "VOC2007"))
    assert (train.split, val) == ("all", None)
    assert role_source(str(one / "VOC2007"), "val").split == "all"  # given as the val source


# ---------------------------------------------------------------- bad input


def test_coco_bad_records_are_reported_and_skipped(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    _image(root / "images" / "ok.jpg", 40, 30)
    images = [
        {"id": 1, "file_name": "ok.jpg", "width": 40, "height": 30},
        {"id": 2, "file_name": "missing.jpg", "width": 40, "height": 30},
        {"id": 3, "file_name": "../outside.jpg", "width": 40, "height": 30},
        {"file_name": "no_id.jpg"},
        {"id": 1, "file_name": "ok.jpg"},
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 9, "bbox": [1, 1, 10, 10]},
        {"id": 3, "image_id": 77, "category_id": 1, "bbox": [1, 1, 10, 10]},
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 10]},
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [30, 20, 20, 20]},
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, "x", 3, 4]},
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [50, 50, 5, 5]},
        {"id": 8, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]},
        "not an object",
    ]
    json_path = _write_coco(root / "labels.json", images, annotations, [{"id": 1, "name": "a"}])
    labels = LabelSource(str(json_path), images=str(root / "images")).load()
    src = str(json_path)
    assert _issues(labels) == {
        (
            str(root / "images" / "missing.jpg"),
            f"image missing (image 2 of {src})",
            "image skipped",
        ),
        (src, "image 3: file_name '../outside.jpg' leaves the images folder (..)", "image skipped"),
        (src, "image record 3 lacks an id or a file_name", "image skipped"),
        (src, "image id 1 repeated", "image skipped"),
        (src, "annotation 2: unknown category id 9", "box dropped"),
        (src, "annotation 3: unknown image id 77", "box dropped"),
        (src, "annotation 4: bbox [1, 1, 0, 10] has no area", "box dropped"),
        (src, "annotation 5: bbox [30, 20, 20, 20] reaches outside the image", "box clipped"),
        (src, "annotation 6: bbox [1, 'x', 3, 4] is not 4 numbers", "box dropped"),
        (src, "annotation 7: bbox [50, 50, 5, 5] lies outside the image", "box dropped"),
        (src, "annotation record 8 is not an object", "box dropped"),
    }
    (ann,) = labels.annotations
    np.testing.assert_array_equal(ann.boxes, [[1, 1, 10, 10], [30, 20, 39, 29]])
    # a file that is not COCO at all is an error naming it (and where JSON broke)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [\n  {"id": 1,,}]}')
    with pytest.raises(LabelFormatError, match=r"broken.json: not valid JSON \(line 2 column"):
        LabelSource(str(broken)).load()
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(LabelFormatError, match=r"list\.json: not a COCO annotation file"):
        LabelSource(str(listing)).load()


def test_yolo_bad_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _image(root / "images" / "a.jpg", 100, 50)
    _image(root / "images" / "b.jpg", 100, 50)
    (root / "images" / "c.jpg").write_bytes(b"not an image")
    (root / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("x\ny\n")
    rows = [
        "0 0.5 0.5 0.2 0.2",  # kept
        "0 0.5 0.5",  # too few values
        "0 0.5 abc 0.2 0.2",  # not a number
        "5 0.5 0.5 0.2 0.2",  # unknown class id
        "1.5 0.5 0.5 0.2 0.2",  # not an integer class
        "0 0.5 0.5 0 0.2",  # no area
        "1 0.95 0.5 0.2 0.2",  # reaches outside: clipped
        "1 1.5 0.5 0.2 0.2",  # wholly outside: dropped
        "0 0.5 0.5 0.001 0.2",  # a tenth of a pixel wide
        "1 0.1 0.1 0.3 0.1 0.2 0.4",  # a polygon: its box
        "0 nan 0.5 0.2 0.2",  # not finite
    ]
    a_labels = root / "labels" / "a.txt"
    a_labels.write_text("\n".join(rows) + "\n")
    (root / "labels" / "b.txt").write_bytes(b"\xff\xfe\x00bad")
    labels = LabelSource(str(root)).load()
    f = str(a_labels)
    assert _issues(labels) == {
        (f"{f}:2", "malformed line '0 0.5 0.5' (expected: class cx cy w h)", "box dropped"),
        (f"{f}:3", "malformed line '0 0.5 abc 0.2 0.2' (expected: class cx cy w h)", "box dropped"),
        (f"{f}:4", "class id 5 is not one of the 2 classes (0..1)", "box dropped"),
        (f"{f}:5", "class id 1.5 is not one of the 2 classes (0..1)", "box dropped"),
        (f"{f}:6", "box '0 0.5 0.5 0 0.2' has no area", "box dropped"),
        (f"{f}:7", "box '1 0.95 0.5 0.2 0.2' reaches outside the image", "box clipped"),
        (f"{f}:8", "box '1 1.5 0.5 0.2 0.2' lies outside the image", "box dropped"),
        (f"{f}:9", "box '0 0.5 0.5 0.001 0.2' is less than one pixel wide or high", "box dropped"),
        (f"{f}:11", "non-finite number in '0 nan 0.5 0.2 0.2'", "box dropped"),
        (f, "1 polygons", "read as their boxes"),
        (str(root / "labels" / "b.txt"), labels.issues[-2].problem, "image skipped"),
        (str(root / "images" / "c.jpg"), labels.issues[-1].problem, "image skipped"),
    }
    assert "label file cannot be read" in labels.issues[-2].problem
    (ann,) = labels.annotations
    np.testing.assert_allclose(
        ann.boxes, [[40, 20, 59, 29], [85, 20, 99, 29], [10, 5, 29, 19]], atol=1e-4
    )
    assert ann.labels.tolist() == [0, 1, 1]
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("names: [a, b\ntrain: x")
    with pytest.raises(LabelFormatError, match=r"bad\.yaml: data YAML cannot be read"):
        LabelSource(str(bad_yaml)).load()
    gone = tmp_path / "gone.yaml"
    gone.write_text(yaml.safe_dump({"train": "nowhere", "names": ["a"]}))
    with pytest.raises(LabelFormatError, match="nowhere: no such images folder or list"):
        LabelSource(str(gone)).load()


def test_voc_folder_bad_files_are_reported_and_skipped(tmp_path: Path) -> None:
    folder = make_voc(tmp_path / "VOCdevkit", num_images=4) / "VOC2007"
    (folder / "JPEGImages" / "000001.jpg").unlink()  # XML without its image
    (folder / "Annotations" / "000002.xml").unlink()  # image without its XML
    (folder / "Annotations" / "000003.xml").write_text("<annotation><object>")
    _image(folder / "JPEGImages" / "extra.jpg", 8, 8)  # no XML, in no set
    sets = folder / "ImageSets" / "Main"
    (sets / "trainval.txt").write_text("000000\n../secret\n000001\n000002\n000003\nghost\n")
    split = LabelSource(str(folder), split="trainval").load(CLASSES)
    assert [a.image_id for a in split.annotations] == ["000000"]
    problems = {(Path(p).name, what, action) for p, what, action in _issues(split)}
    assert problems == {
        ("trainval.txt:2", "image id is a path, not a file name ('../secret')", "skipped"),
        ("000001.jpg", "image missing for annotation", "skipped"),
        ("000002.xml", "annotation missing for image", "skipped"),
        ("000003.xml", split.issues[3].problem, "skipped"),
        ("ghost.xml", "annotation and image missing", "skipped"),
    }
    assert split.issues[3].problem.startswith("XML does not parse")
    everything = LabelSource(str(folder)).load(CLASSES)  # no split: every XML
    assert [a.image_id for a in everything.annotations] == ["000000"]
    assert {Path(i.path).name for i in everything.issues} == {
        "000001.jpg",
        "000002.jpg",
        "000003.xml",
        "extra.jpg",
    }
    with pytest.raises(LabelFormatError, match=r"no image set 'val' \(this folder has: trainval\)"):
        LabelSource(str(folder), split="val").load()


def test_missing_listed_image_is_skipped(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.jpg", 20, 20)
    listing = tmp_path / "list.txt"
    listing.write_text("images/a.jpg\nimages/gone.jpg\n")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("")  # a negative, not an unlabelled set
    labels = LabelSource(str(listing)).load(["x"])
    assert [a.image_id for a in labels.annotations] == ["a"]
    assert _issues(labels) == {
        (str(tmp_path / "images" / "gone.jpg"), "image missing", "image skipped")
    }


# ---------------------------------------------------------------- conversion


def _assert_same(got: LabelSet, want: LabelSet, *, difficult: bool = True) -> None:
    assert got.class_names == want.class_names
    assert [a.image_id for a in got.annotations] == [a.image_id for a in want.annotations]
    for g, w in zip(got.annotations, want.annotations):
        np.testing.assert_array_equal(g.boxes, w.boxes, err_msg=g.image_id)
        assert g.boxes.dtype == np.float32
        assert g.labels.tolist() == w.labels.tolist()
        assert (g.width, g.height) == (w.width, w.height)
        if difficult:
            assert g.difficult.tolist() == w.difficult.tolist()
        else:
            assert not g.difficult.any()  # YOLO has no difficult flag
        assert Path(g.image_path).read_bytes() == Path(w.image_path).read_bytes()


def _cycle(start: Path, formats: list[str], out: Path, **kwargs) -> None:
    """Converts ``start`` through ``formats`` (back to its own), checking each step."""
    original = LabelSource(str(start)).load(kwargs.get("class_names"))
    assert original.num_objects > 0 and original.issues == []
    source, seen_yolo = start, False
    for k, fmt in enumerate(formats):
        target = out / f"{k}_{fmt}"
        labels, report = convert_labels(source, fmt, target, **kwargs)
        assert labels.issues == [] and report.issues == []
        assert report.images == len(original.annotations)
        seen_yolo |= fmt == "yolo"
        source = {"voc": target, "yolo": target, "coco": report.files[0]}[fmt]
        back = LabelSource(str(source)).load()
        _assert_same(back, original, difficult=not seen_yolo)


def test_round_trip_voc_coco_yolo_and_back(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOCdevkit", num_images=4)
    voc = root / "VOC2007"
    assert LabelSource(str(voc)).load().annotations[1].difficult.any()
    # VOC -> COCO -> YOLO -> VOC and VOC -> YOLO -> COCO -> VOC: every reader and writer
    _cycle(voc, ["coco", "yolo", "voc"], tmp_path / "a")
    _cycle(voc, ["yolo", "coco", "voc"], tmp_path / "b")


def test_round_trip_of_fractional_coco_boxes(tmp_path: Path) -> None:
    json_path = _coco_set(tmp_path / "coco")
    # COCO -> VOC -> YOLO -> COCO with fractional boxes, edge boxes and the crowd flag
    _cycle(json_path, ["voc", "yolo", "coco"], tmp_path / "c")
    xml = (tmp_path / "c" / "0_voc" / "Annotations" / "b.xml").read_text()
    assert "<xmin>11.25</xmin>" in xml and "<xmax>80</xmax>" in xml  # VOC's 1-based pixels


def test_round_trip_from_yolo(tmp_path: Path) -> None:
    root = _yolo_set(tmp_path / "ds")
    _cycle(root, ["voc", "coco", "yolo"], tmp_path / "d")


def test_yolo_keeps_arbitrary_float32_boxes(tmp_path: Path) -> None:
    """Normalising divides by the image size; the file's digits and the float32 store give
    the boxes back bit for bit, near 0 and the far edge included."""
    from data.formats import write_labels
    from data.label_io import annotation

    rng = np.random.default_rng(0)
    annotations = []
    for k, (w, h) in enumerate([(37, 29), (333, 97), (640, 480), (8192, 61)]):
        image = _image(tmp_path / "src" / f"i{k}.png", w, h)
        x1 = np.concatenate(
            [[0, 1e-5, 3e-4], rng.uniform(1e-5, 0.015, 20), rng.uniform(0, w / 2, 40)]
        )
        y1 = np.concatenate(
            [[0, 2e-5, 0.5], rng.uniform(1e-5, 0.015, 20), rng.uniform(0, h / 2, 40)]
        )
        x2 = np.concatenate([[w - 1, w - 1.5, 1], rng.uniform(w / 2, w - 1, 60)])
        y2 = np.concatenate([[h - 1, 7.25, h - 1], rng.uniform(h / 2, h - 1, 60)])
        boxes = np.stack([x1, y1, x2, y2], 1).astype(np.float32)
        rows = [(tuple(map(float, b)), 0, False) for b in boxes]
        annotations.append(annotation(str(image), f"i{k}", rows, (w, h)))
    labels = LabelSet(annotations, [], ["thing"], "generated", "coco")
    write_labels(labels, "yolo", tmp_path / "yolo", split="train")
    back = LabelSource(str(tmp_path / "yolo")).load()
    assert back.issues == []
    for got, want in zip(back.annotations, annotations, strict=True):
        np.testing.assert_array_equal(got.boxes, want.boxes)


def test_coco_output_loads_in_pycocotools(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root = make_voc(tmp_path / "VOCdevkit", num_images=4)
    _, report = convert_labels(root / "VOC2007", "coco", tmp_path / "out", split="trainval")
    json_path = tmp_path / "out" / "annotations" / "instances_trainval.json"
    assert report.files == [json_path]
    coco = COCO(str(json_path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES
    assert len(coco.getImgIds()) == 4 and len(coco.getAnnIds()) == 6
    crowd = coco.loadAnns(coco.getAnnIds(iscrowd=True))
    assert len(crowd) == 1 and crowd[0]["image_id"] == 2  # the difficult object of image 1
    first = load_voc(root, [("2007", "trainval")], CLASSES).annotations[0]
    x1, y1, x2, y2 = first.boxes[0].tolist()
    assert coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]["bbox"] == [
        x1,
        y1,
        x2 - x1 + 1,
        y2 - y1 + 1,
    ]
    # the ground truth as detections scores a perfect AP: the file is valid for COCOeval
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in coco.loadAnns(coco.getAnnIds(iscrowd=False))
    ]
    evaluator = COCOeval(coco, coco.loadRes(dets), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, -1]  # IoU 0.5, all areas, 100 dets
    assert np.all(precision[precision > -1] == 1.0)


def test_convert_cli(tmp_path: Path, capsys) -> None:
    json_path = _coco_set(tmp_path / "coco")
    out = tmp_path / "yolo"
    assert convert_cli.main([str(json_path), "--to", "yolo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"read 3 images, 5 objects, 2 classes (cat, dog) from {json_path} (coco)" in text
    assert f"wrote 3 images, 3 label files, 5 objects as yolo into {out}:" in text
    assert "1 difficult objects written as ordinary ones" in text
    names = yaml.safe_load((out / "data.yaml").read_text())
    assert names == {"val": "images/val", "nc": 2, "names": {0: "cat", 1: "dog"}}
    assert sorted(os.listdir(out / "labels" / "val")) == ["a.txt", "b.txt", "c.txt"]
    assert (out / "labels" / "val" / "c.txt").read_text() == ""  # the negative
    # per-file issues are printed; a bad source is an error naming it
    (out / "labels" / "val" / "a.txt").write_text("9 0.5 0.5 0.1 0.1\n")
    assert convert_cli.main([str(out), "--to", "voc", "--out", str(tmp_path / "v")]) == 0
    text = capsys.readouterr().out
    assert "a.txt:1: class id 9 is not one of the 2 classes (0..1) (box dropped)" in text
    with pytest.raises(LabelFormatError, match=f"^{re.escape(str(tmp_path))}: unknown"):
        convert_cli.main([str(tmp_path), "--to", "voc", "--out", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------- training and evaluation


def test_load_data_from_labels(tmp_path: Path) -> None:
    from utils.training.config import TrainConfig
    from utils.training.setup import eval_label_source, load_data

    train_json = _coco_set(tmp_path / "coco")
    # the val file lists the same categories in another id order: matched by name
    val_json = _write_coco(
        tmp_path / "coco" / "annotations" / "instances_val2.json",
        [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]}],
        [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
    )
    cfg = TrainConfig(
        train_labels=str(train_json),
        val_labels=str(val_json),
        val_images=str(tmp_path / "coco" / "images" / "val"),
    )
    data = load_data(cfg)
    assert data.class_names == ["cat", "dog"] and len(data.train) == 3
    assert data.val[0].labels.tolist() == [1]  # "dog"
    assert data.val_name == f"{val_json} (coco)" and data.train_name == f"{train_json} (coco)"
    assert eval_label_source(cfg).path == str(val_json)
    with pytest.raises(ValueError, match="has no val split: give --val-labels"):
        eval_label_source(TrainConfig(train_labels=str(train_json)))
    with pytest.raises(ValueError, match="give one"):
        load_data(TrainConfig(train_labels=str(train_json), train_lines="x.txt"))
    with pytest.raises(ValueError, match="--label-format 'csv': must be one of"):
        TrainConfig(label_format="csv")
    # a checkpoint's config from before these fields still builds, with the old meaning
    old = {k: v for k, v in TrainConfig(train_lines="t.txt").__dict__.items() if "labels" not in k}
    old = {k: v for k, v in old.items() if k not in ("train_images", "val_images", "label_format")}
    assert TrainConfig(**old) == TrainConfig(train_lines="t.txt")


def test_eval_and_study_parsers_take_label_flags() -> None:
    import eval as eval_cli
    from tools import study

    args = eval_cli.build_parser().parse_args(
        [
            "--weights",
            "w.pth",
            "--val-labels",
            "v.json",
            "--val-images",
            "img",
            "--label-format",
            "coco",
        ]
    )
    assert (args.val_labels, args.val_images, args.label_format) == ("v.json", "img", "coco")
    args = study.build_parser().parse_args(["--train-labels", "d.yaml", "--label-format", "yolo"])
    assert (args.train_labels, args.label_format) == ("d.yaml", "yolo")


@pytest.mark.slow
def test_train_on_yolo_and_evaluate_on_coco(tmp_path: Path) -> None:
    import eval as eval_cli
    from utils.training.config import TrainConfig
    from utils.training.fit import fit

    voc = make_voc(tmp_path / "VOCdevkit", num_images=6, size=(96, 80)) / "VOC2007"
    (voc / "ImageSets" / "Main" / "train.txt").write_text("000000\n000001\n000002\n000003\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("000004\n000005\n")
    for split in ("train", "val"):
        convert_labels(voc, "yolo", tmp_path / "yolo", split=split)
    coco_val = convert_labels(voc, "coco", tmp_path / "coco", split="val")[1].files[0]
    data_yaml = tmp_path / "yolo" / "data.yaml"
    assert set(yaml.safe_load(data_yaml.read_text())) == {"train", "val", "nc", "names"}
    result = fit(
        TrainConfig(
            train_labels=str(data_yaml),
            img_size=64,
            epochs=1,
            max_iters=2,
            freeze_epochs=0,
            batch_size=2,
            freeze_batch_size=2,
            weights="none",
            workers=0,
            eval_period=1,
            log_dir=str(tmp_path / "runs"),
        )
    )
    assert result.final_report is not None and result.final_report.num_images == 2
    last = result.run_dir / "weights" / "last.pth"
    metrics = tmp_path / "metrics.json"
    code = eval_cli.main(
        [
            "--weights",
            str(last),
            "--val-labels",
            str(coco_val),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-coco",
            "--save-dir",
            str(tmp_path / "eval"),
            "--json",
            str(metrics),
        ]
    )
    assert code == 0
    report = json.loads(metrics.read_text())
    assert report["num_images"] == 2 and report["num_instances"] == 3
    assert report["protocol"].startswith(f"{coco_val} (coco) at 64 |")


def test_a_file_that_is_no_image_list_is_refused_as_yolo(tmp_path: Path) -> None:
    json_path = _coco_set(tmp_path / "coco")
    with pytest.raises(LabelFormatError, match=r"not a YOLO image list .*entry 1, '"):
        LabelSource(str(json_path), "yolo").load(["a"])
