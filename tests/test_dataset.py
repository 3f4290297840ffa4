"""Training/eval samples, augmentation geometry, mosaic/mixup, randomness, bad input."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler
from voc_factory import CLASSES, make_voc, xml_text

from data.annotation_lines import load_annotation_lines
from data.augment import AugmentConfig, clip_and_filter, hflip, mixup, mosaic, random_place
from data.check import check_images
from data.dataset import EpochSampler, MosaicMixup, VOCDetection, collate
from data.voc import (
    discover_classes,
    load_voc,
    parse_sets,
    parse_voc_xml,
    read_image_set,
)
from data.xml_safe import ForbiddenXMLError, parse_xml_bytes, read_xml

RGB = {"box": [255, 0, 0], "disc": [0, 255, 255]}  # voc_factory draws BGR red and yellow-cyan


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return make_voc(tmp_path / "VOCdevkit", num_images=8)


def _dataset(voc: Path, **kwargs) -> VOCDetection:
    result = load_voc(voc, [("2007", "trainval")], CLASSES)
    assert not result.issues
    return VOCDetection(result.annotations, input_size=96, **kwargs)


def _color_inside(image_chw: torch.Tensor, box: list[float]) -> np.ndarray:
    """Median RGB in the central part of a box (robust to borders and JPEG)."""
    x1, y1, x2, y2 = box
    cx1, cx2 = int(x1 + 0.3 * (x2 - x1)), int(np.ceil(x2 - 0.3 * (x2 - x1)))
    cy1, cy2 = int(y1 + 0.3 * (y2 - y1)), int(np.ceil(y2 - 0.3 * (y2 - y1)))
    patch = image_chw[:, cy1:cy2, cx1:cx2].reshape(3, -1).numpy()
    return np.median(patch, axis=1)


# ------------------------------------------------------------------------- VOC reading


def test_voc_coordinates_become_zero_based_and_difficult_is_kept(voc: Path) -> None:
    xml = (voc / "VOC2007" / "Annotations" / "000001.xml").read_text()
    result = load_voc(voc, [("2007", "trainval")], CLASSES)
    ann = next(a for a in result.annotations if a.image_id == "000001")
    first = xml.split("<xmin>")[1].split("</xmin>")[0]
    assert ann.boxes[0, 0] == float(first) - 1
    assert ann.difficult.tolist() == [False, True]
    assert len(ann.without_difficult().boxes) == 1


def test_parse_sets() -> None:
    assert parse_sets("2007:trainval, 2012:trainval") == [
        ("2007", "trainval"),
        ("2012", "trainval"),
    ]
    with pytest.raises(ValueError, match="YEAR:SET"):
        parse_sets("2007")


def test_bad_annotations_are_reported_not_fatal(voc: Path) -> None:
    ann_dir = voc / "VOC2007" / "Annotations"
    (ann_dir / "000002.xml").write_text("<annotation><size>")  # does not parse
    (ann_dir / "000003.xml").write_text(
        xml_text(
            "000003.jpg",
            128,
            96,
            [
                {"name": "box", "box": (-5, 10, 300, 50)},  # outside: clipped
                {"name": "disc", "box": (40, 40, 39, 60)},  # negative width: dropped
                {"name": "unicorn", "box": (10, 10, 20, 20)},  # unknown class: skipped
            ],
        )
    )
    (voc / "VOC2007" / "JPEGImages" / "000004.jpg").unlink()  # image missing
    (ann_dir / "000005.xml").unlink()  # annotation missing for an image
    (ann_dir / "000006.xml").write_text(
        "<annotation><size><width>128</width><height>96</height></size>"
        "<object><name>box</name></object>"  # no bndbox
        "<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
        "</object></annotation>"  # no name
    )
    result = load_voc(voc, [("2007", "trainval")], CLASSES)
    by_problem = {(Path(i.path).name, i.action) for i in result.issues}
    assert ("000002.xml", "skipped") in by_problem
    assert ("000003.xml", "box clipped") in by_problem
    assert ("000003.xml", "box dropped") in by_problem
    assert ("000003.xml", "object skipped") in by_problem
    assert ("000004", "skipped") in by_problem
    assert ("000005.xml", "skipped") in by_problem
    fields = [i for i in result.issues if Path(i.path).name == "000006.xml"]
    assert [i.action for i in fields] == ["object skipped", "object skipped"]
    assert "lacks name or bndbox" in fields[0].problem
    assert len(result.annotations) == 5
    ann = next(a for a in result.annotations if a.image_id == "000003")
    assert ann.boxes.tolist() == [[0.0, 9.0, 127.0, 49.0]]


def test_reference_annotation_lines(tmp_path: Path) -> None:
    lines = tmp_path / "2007_train.txt"
    lines.write_text(
        "/data/my img/1.jpg 10,20,30,40,0 5,5,50,60,2\n/data/2.jpg\n/d/3.jpg 1,1,1,9,0\n"
    )
    result = load_annotation_lines(lines, num_classes=3)
    assert [a.image_path for a in result.annotations] == [
        "/data/my img/1.jpg",
        "/data/2.jpg",
        "/d/3.jpg",
    ]
    assert result.annotations[0].boxes.tolist() == [[9, 19, 29, 39], [4, 4, 49, 59]]
    assert result.annotations[0].labels.tolist() == [0, 2]
    assert len(result.annotations[1].boxes) == 0
    assert [i.action for i in result.issues] == ["box dropped"]


def test_unreadable_difficult_flags_are_reported(voc: Path) -> None:
    flags = ["abc", "2", "nan", "-1", "1.0", "TRUE", "false", ""]
    objects = [
        {"name": "box", "box": (1 + 10 * k, 1, 8 + 10 * k, 8), "difficult": flag}
        for k, flag in enumerate(flags)
    ]
    xml = voc / "VOC2007" / "Annotations" / "000002.xml"
    xml.write_text(xml_text("000002.jpg", 128, 96, objects))
    result = load_voc(voc, [("2007", "trainval")], CLASSES)
    ann = next(a for a in result.annotations if a.image_id == "000002")
    assert ann.difficult.tolist() == [False, False, False, False, True, True, False, False]
    assert [(Path(i.path).name, i.action) for i in result.issues] == [
        ("000002.xml", "treated as not difficult")
    ] * 4
    assert all("difficult flag" in i.problem for i in result.issues)
    assert "'abc'" in result.issues[0].problem


def test_image_set_ids_that_are_paths_are_refused(voc: Path) -> None:
    # a readable pair outside VOC2007/: "../../outside/x" names both of its files
    outside = voc / "outside"
    outside.mkdir()
    folder = voc / "VOC2007"
    shutil.copy(folder / "Annotations" / "000001.xml", outside / "x.xml")
    shutil.copy(folder / "JPEGImages" / "000001.jpg", outside / "x.jpg")
    set_file = folder / "ImageSets" / "Main" / "trainval.txt"
    bad = ["../../outside/x", f"{outside}/x", "..\\..\\outside\\x", "..", "C:x"]
    set_file.write_text(set_file.read_text() + "".join(f"{b} 1\n" for b in bad))
    result = load_voc(voc, [("2007", "trainval")], CLASSES)
    assert [a.image_id for a in result.annotations] == [f"{i:06d}" for i in range(8)]
    assert [i.path for i in result.issues] == [f"{set_file}:{9 + n}" for n in range(len(bad))]
    assert {i.action for i in result.issues} == {"skipped"}
    assert all(repr(b) in i.problem for b, i in zip(bad, result.issues, strict=True))
    assert read_image_set(voc, "2007", "trainval") == [f"{i:06d}" for i in range(8)]


def test_xml_filename_that_is_a_path_is_not_followed(tmp_path: Path) -> None:
    xml = tmp_path / "VOC" / "Annotations" / "a.xml"
    xml.parent.mkdir(parents=True)
    xml.write_text(xml_text("../../../etc/passwd", 128, 96, []))
    ann, issues = parse_voc_xml(xml, CLASSES)
    assert ann is not None
    assert ann.image_path == str(tmp_path / "VOC" / "JPEGImages" / "a.jpg")
    assert [i.action for i in issues] == ["filename ignored"]


@pytest.mark.parametrize("size", [("inf", "96"), ("-128", "96")])
def test_unusable_xml_size_is_reported(tmp_path: Path, size: tuple[str, str]) -> None:
    xml = tmp_path / "a.xml"
    xml.write_text(xml_text("a.jpg", 128, 96, []).replace("<width>128", f"<width>{size[0]}", 1))
    ann, issues = parse_voc_xml(xml, CLASSES, image_path="a.jpg")
    assert ann is not None and (ann.width, ann.height) == (0, 0)
    assert [i.action for i in issues] == ["size ignored"]


BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [\n<!ENTITY lol "lol">\n'
    + "".join(
        f'<!ENTITY lol{n} "{("&lol" + (str(n - 1) if n > 1 else "") + ";") * 10}">\n'
        for n in range(1, 10)
    )
    + "]>\n<annotation><object><name>&lol9;</name></object></annotation>\n"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY secret SYSTEM "{uri}">]>\n'
    "<annotation><filename>&secret;</filename><object><name>box</name>"
    "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
    "</object></annotation>\n"
)
INTERNAL_ENTITY = (
    '<!DOCTYPE annotation [<!ENTITY cls "unicorn">]>\n'
    "<annotation><object><name>&cls;</name>"
    "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
    "</object></annotation>\n"
)


@pytest.mark.parametrize("kind", ["billion laughs", "external entity", "internal entity"])
def test_xml_with_a_dtd_is_refused_and_skipped(voc: Path, kind: str) -> None:
    secret = voc / "secret.txt"
    secret.write_text("000001.jpg")
    text = {
        "billion laughs": BILLION_LAUGHS,
        "external entity": EXTERNAL_ENTITY.replace("{uri}", secret.as_uri()),
        "internal entity": INTERNAL_ENTITY,
    }[kind]
    xml = voc / "VOC2007" / "Annotations" / "000002.xml"
    xml.write_text(text)
    with pytest.raises(ForbiddenXMLError, match="DOCTYPE"):
        read_xml(xml)
    result = load_voc(voc, [("2007", "trainval")], CLASSES)
    assert [(Path(i.path).name, i.action) for i in result.issues] == [("000002.xml", "skipped")]
    assert "DTD" in result.issues[0].problem
    assert "000002" not in {a.image_id for a in result.annotations}
    assert len(result.annotations) == 7
    assert discover_classes(voc, [("2007", "trainval")]) == sorted(CLASSES)


def test_read_xml_builds_the_same_tree_as_elementtree(voc: Path) -> None:
    xml = voc / "VOC2007" / "Annotations" / "000001.xml"
    ours, theirs = read_xml(xml), ET.parse(xml).getroot()
    assert ET.tostring(ours) == ET.tostring(theirs)
    with pytest.raises(ET.ParseError):
        parse_xml_bytes(b"<annotation><name>&undeclared;</name></annotation>")
    with pytest.raises(ET.ParseError):
        parse_xml_bytes(b"<annotation>")


# ------------------------------------------------------------------------- samples


def test_eval_sample_is_letterboxed_with_boxes_on_objects(voc: Path) -> None:
    ds = _dataset(voc, train=False, include_difficult=True)
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 96, 96) and image.dtype == torch.uint8
        for cls, *box in target.tolist():
            expected = RGB[CLASSES[int(cls)]]
            assert np.abs(_color_inside(image, box) - np.array(expected)).max() < 40


def test_train_samples_keep_boxes_on_objects(voc: Path) -> None:
    # colours stay checkable without HSV gains and blends; mosaic and placement stay on
    cfg = AugmentConfig(hsv_gains=(0.0, 0.0, 0.0), mosaic_p=0.5, mixup_p=0.0)
    ds = MosaicMixup(_dataset(voc, train=True, cfg=cfg, seed=3))
    checked = 0
    for epoch in range(3):
        for i in range(len(ds)):
            image, target = ds[(epoch, i)]
            assert image.shape == (3, 96, 96)
            for cls, *box in target.tolist():
                x1, y1, x2, y2 = box
                assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
                if (x2 - x1) < 6 or (y2 - y1) < 6:
                    continue  # too small to sample a colour reliably
                expected = RGB[CLASSES[int(cls)]]
                color = _color_inside(image, box)
                assert np.abs(color - np.array(expected)).max() < 40, (epoch, i, box)
                checked += 1
    assert checked > 20


def test_clip_and_filter_drops_degenerate_and_low_visibility() -> None:
    boxes = np.array([[-10, 0, 10, 10], [5, 5, 5.5, 20], [0, 0, 50, 50]], np.float32)
    labels = np.array([0, 1, 2])
    out, lab = clip_and_filter(boxes, labels, (0, 0, 40, 40), AugmentConfig())
    assert lab.tolist() == [0, 2] and out.tolist() == [[0, 0, 10, 10], [0, 0, 40, 40]]
    out, lab = clip_and_filter(boxes, labels, (0, 0, 40, 40), AugmentConfig(min_visibility=0.6))
    assert lab.tolist() == [2]


def test_hflip_moves_boxes_with_pixels() -> None:
    image = np.zeros((20, 40, 3), np.uint8)
    image[5:10, 2:8] = 255
    # boxes hold inclusive pixel indices (VOC): columns 2..7 and rows 5..9
    flipped, boxes, labels = hflip(image, np.array([[2, 5, 7, 9]], np.float32), np.array([1]))
    assert boxes.tolist() == [[32, 5, 37, 9]] and labels.tolist() == [1]
    assert (flipped[5:10, 32:38] == 255).all() and flipped[:, 38:].max() == 0


def test_random_place_ranges() -> None:
    rng = np.random.default_rng(0)
    image = np.full((100, 200, 3), 200, np.uint8)
    sizes = []
    for _ in range(200):
        out, _, _ = random_place(
            image, np.array([[0, 0, 199, 99]], np.float32), np.array([0]), 128, AugmentConfig(), rng
        )
        assert out.shape == (128, 128, 3)
        ys, xs = np.nonzero(np.abs(out.astype(int) - 128).max(2) > 20)
        sizes.append(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) if len(xs) else 0)
    sizes = np.array(sizes) / 128
    assert sizes.min() < 0.4 and sizes.max() >= 0.99  # scale U(0.25, 2): some fill the canvas


def test_mosaic_places_four_images_in_quadrants() -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    parts = []
    for c in colors:
        image = np.zeros((64, 64, 3), np.uint8)
        image[:] = c
        parts.append((image, np.array([[0, 0, 63, 63]], np.float32), np.array([colors.index(c)])))
    cfg = AugmentConfig(hsv_gains=(0, 0, 0), flip_p=0.0, mosaic_scale=(1.0, 1.0), jitter=0.0)
    canvas, boxes, labels = mosaic(parts, 128, cfg, np.random.default_rng(1))
    assert sorted(labels.tolist()) == [0, 1, 2, 3]
    for box, label in zip(boxes, labels):
        x1, y1, x2, y2 = box.astype(int)
        assert (canvas[(y1 + y2) // 2, (x1 + x2) // 2] == colors[label]).all()


# ------------------------------------------------------------------------- randomness


def _batches(ds, epochs: int, workers: int, seed_sampler: int = 0) -> list[torch.Tensor]:
    sampler = EpochSampler(SequentialSampler(ds))
    loader = DataLoader(
        ds,
        batch_size=4,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append(torch.cat([images for images, _ in loader]))
    return out


@pytest.fixture
def same_image_dataset(voc: Path) -> MosaicMixup:
    """Eight copies of one image: any difference between samples is the augmentation's."""
    result = load_voc(voc, [("2007", "trainval")], CLASSES)
    copies = [result.annotations[0]] * 8
    return MosaicMixup(VOCDetection(copies, input_size=96, train=True, seed=5))


def test_every_sample_and_worker_draws_different_numbers(same_image_dataset) -> None:
    (images,) = _batches(same_image_dataset, epochs=1, workers=2)
    flat = images.flatten(1).float()
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            assert not torch.equal(flat[i], flat[j]), (i, j)  # the lineage bug: equal pairs


def test_every_epoch_draws_different_numbers(same_image_dataset) -> None:
    first, second = _batches(same_image_dataset, epochs=2, workers=2)
    assert all(not torch.equal(a, b) for a, b in zip(first, second))


def test_reproducible_for_a_seed_whatever_the_workers(same_image_dataset) -> None:
    with_workers = _batches(same_image_dataset, epochs=2, workers=2)
    without = _batches(same_image_dataset, epochs=2, workers=0)
    assert all(torch.equal(a, b) for a, b in zip(with_workers, without))
    same_image_dataset.dataset.seed = 6
    other_seed = _batches(same_image_dataset, epochs=1, workers=0)
    assert not torch.equal(other_seed[0], without[0])


def test_mosaic_switch_closes_strong_augmentation(voc: Path) -> None:
    cfg = AugmentConfig(mosaic_p=1.0, mixup_p=0.0)
    ds = MosaicMixup(_dataset(voc, train=True, cfg=cfg), close_epoch=2)
    assert ds.active(1) and not ds.active(2)
    ds.close()
    assert not ds.active(0)


# ------------------------------------------------------------------------- bad images


def test_corrupt_image_in_training_is_skipped_not_fatal(voc: Path, caplog) -> None:
    jpeg = voc / "VOC2007" / "JPEGImages"
    (jpeg / "000002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ds = _dataset(voc, train=True)
    loader = DataLoader(MosaicMixup(ds), batch_size=4, collate_fn=collate)
    for epoch in range(2):
        ds.set_epoch(epoch)
        assert sum(len(images) for images, _ in loader) == 8
    assert "000002.jpg" in caplog.text


def test_zero_byte_image_is_dropped_at_construction(voc: Path) -> None:
    (voc / "VOC2007" / "JPEGImages" / "000005.jpg").write_bytes(b"")
    ds = _dataset(voc, train=True)
    assert len(ds) == 7 and "0 bytes" in ds.issues[0].problem


def test_deep_check_reports_each_kind(voc: Path) -> None:
    jpeg = voc / "VOC2007" / "JPEGImages"
    image = cv2.imread(str(jpeg / "000000.jpg"))
    _, buf = cv2.imencode(".jpg", image)
    (jpeg / "000001.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])  # truncated
    cv2.imwrite(str(jpeg / "000002.png"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    (jpeg / "000002.jpg").unlink()
    cv2.imwrite(str(jpeg / "000003.png"), cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))
    (jpeg / "000003.jpg").unlink()
    cv2.imwrite(str(jpeg / "000004.png"), image.astype(np.uint16) * 257)
    (jpeg / "000004.jpg").unlink()
    cv2.imwrite(str(jpeg / "000005.jpg"), cv2.resize(image, (64, 48)))  # XML says 128x96
    result = load_voc(voc, [("2007", "trainval")], CLASSES)
    issues = {Path(i.path).name: i for i in check_images(result.annotations, workers=2)}
    assert issues["000001.jpg"].action == "skipped"
    assert issues["000002.png"].problem == "grayscale image"
    assert issues["000003.png"].problem == "image has an alpha channel"
    assert issues["000004.png"].action == "converted to 8-bit"
    assert "XML size 128x96 but image is 64x48" in issues["000005.jpg"].problem
    assert "000000.jpg" not in issues


def test_mixup_blends_half_and_half_and_keeps_all_boxes() -> None:
    a = (np.full((8, 8, 3), 200, np.uint8), np.array([[0, 0, 4, 4]], np.float32), np.array([0]))
    b = (np.full((8, 8, 3), 100, np.uint8), np.array([[1, 1, 7, 7]], np.float32), np.array([1]))
    image, boxes, labels = mixup(a, b)
    assert (image == 150).all()
    assert boxes.tolist() == [[0, 0, 4, 4], [1, 1, 7, 7]] and labels.tolist() == [0, 1]


def test_malformed_annotation_line_tokens_are_reported(tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("a.jpg 1,2,3,4\nb.jpg nan,1,5,5,0 2,2,9,9,1\n")
    result = load_annotation_lines(lines, num_classes=2)
    assert [a.image_path for a in result.annotations] == ["a.jpg", "b.jpg"]
    assert result.annotations[1].labels.tolist() == [1]
    assert len(result.issues) == 2


def test_annotated_images_ignore_exif_rotation(tmp_path: Path) -> None:
    from PIL import Image

    from utils.sources import read_image

    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (30, 60), (200, 10, 10)).save(path, exif=exif)
    assert read_image(path).shape[:2] == (30, 60)  # a photo viewer's orientation
    assert read_image(path, apply_exif=False).shape[:2] == (60, 30)  # the stored pixels


def test_unreadable_images_are_replaced_by_readable_ones(voc: Path) -> None:
    jpeg = voc / "VOC2007" / "JPEGImages"
    for image_id in ("000000", "000001", "000002", "000003", "000004", "000005", "000006"):
        (jpeg / f"{image_id}.jpg").write_bytes(b"\xff\xd8 corrupt")
    ds = _dataset(voc, train=True)
    for epoch in range(30):  # 7 of 8 images are bad: the 8th must always come back
        image, _ = ds[(epoch, epoch % 8)]
        assert image.shape == (3, 96, 96)
    assert ds.bad == set(range(7))
