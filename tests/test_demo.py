"""The synthetic demo dataset: VOC layout and format, content, split, determinism and the CLI."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import exit_code

from data import demo
from data.demo import CLASS_NAMES, demo_is_current, generate_demo
from data.voc import Annotation, load_voc, read_image_set
from tools import demo_data

NUM_IMAGES = 100  # enough for difficult and truncated objects to show up
SEED = 0


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo"), num_images=NUM_IMAGES, seed=SEED)


@pytest.fixture(scope="module")
def annotations(demo_root: Path) -> dict[str, list[Annotation]]:
    """Both image sets through the project's VOC reader, which must report no issue."""
    loaded = {}
    for image_set in ("trainval", "test"):
        result = load_voc(demo_root / "VOCdevkit", [("2007", image_set)], CLASS_NAMES)
        assert result.issues == [], [str(issue) for issue in result.issues[:5]]
        loaded[image_set] = result.annotations
    return loaded


def all_annotations(annotations: dict[str, list[Annotation]]) -> list[Annotation]:
    return annotations["trainval"] + annotations["test"]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def read_objects(xml_path: Path) -> tuple[ET.Element, list[dict[str, str]]]:
    root = ET.parse(xml_path).getroot()
    objects = []
    for obj in root.iter("object"):
        fields = {child.tag: (child.text or "") for child in obj if child.tag != "bndbox"}
        fields.update({child.tag: (child.text or "") for child in obj.find("bndbox")})
        objects.append(fields)
    return root, objects


def test_layout(demo_root: Path) -> None:
    folder = demo_root / "VOCdevkit" / "VOC2007"
    ids = [f"{k:06d}" for k in range(1, NUM_IMAGES + 1)]
    assert sorted(p.stem for p in (folder / "Annotations").glob("*.xml")) == ids
    assert sorted(p.stem for p in (folder / "JPEGImages").glob("*.jpg")) == ids
    for name in ("train", "val", "trainval", "test"):
        assert (folder / "ImageSets" / "Main" / f"{name}.txt").is_file()
    assert (demo_root / "classes.txt").read_text().splitlines() == list(CLASS_NAMES)
    assert demo_is_current(demo_root, NUM_IMAGES, SEED)
    assert not demo_is_current(demo_root, NUM_IMAGES, SEED + 1)
    assert not demo_is_current(demo_root, NUM_IMAGES + 1, SEED)


def test_xml_is_standard_voc_with_one_based_integer_boxes(demo_root: Path) -> None:
    folder = demo_root / "VOCdevkit" / "VOC2007"
    for xml_path in sorted((folder / "Annotations").glob("*.xml")):
        root, objects = read_objects(xml_path)
        assert root.tag == "annotation"
        assert root.findtext("folder") == "VOC2007"
        assert root.findtext("filename") == f"{xml_path.stem}.jpg"
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
        assert root.findtext("size/depth") == "3"
        image = cv2.imread(str(folder / "JPEGImages" / f"{xml_path.stem}.jpg"))
        assert image.shape == (height, width, 3)
        assert 1 <= len(objects) <= demo.MAX_OBJECTS
        for obj in objects:
            assert obj["name"] in CLASS_NAMES
            assert obj["pose"] == "Unspecified"
            assert obj["truncated"] in ("0", "1") and obj["difficult"] in ("0", "1")
            # int() rejects "12.0": VOC coordinates are integers.
            xmin, ymin, xmax, ymax = (int(obj[t]) for t in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= xmin < xmax <= width and 1 <= ymin < ymax <= height


def test_voc_reader_loads_every_image_with_boxes_inside(
    demo_root: Path, annotations: dict[str, list[Annotation]]
) -> None:
    assert len(all_annotations(annotations)) == NUM_IMAGES
    for ann in all_annotations(annotations):
        assert len(ann.boxes) >= 1 and Path(ann.image_path).is_file()
        x1, y1, x2, y2 = ann.boxes.T
        assert (x1 >= 0).all() and (y1 >= 0).all()
        assert (x2 <= ann.width - 1).all() and (y2 <= ann.height - 1).all()
        assert (x2 > x1).all() and (y2 > y1).all()


def test_classes_difficult_and_truncated(annotations: dict[str, list[Annotation]]) -> None:
    for image_set, anns in annotations.items():
        labels = np.concatenate([a.labels for a in anns])
        assert set(labels.tolist()) == {0, 1, 2}, image_set
    anns = all_annotations(annotations)
    boxes = np.concatenate([a.boxes for a in anns])
    difficult = np.concatenate([a.difficult for a in anns])
    assert 0.02 <= difficult.mean() <= 0.2, difficult.mean()
    # Every tiny visible box is difficult (pixels spanned = x2 - x1 + 1).
    side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1
    assert difficult[side < demo.DIFFICULT_SIDE].all()
    assert (side < demo.DIFFICULT_SIDE).any()


def test_truncated_objects_touch_the_border(demo_root: Path) -> None:
    touching, total, num_objects = 0, 0, 0
    for xml_path in sorted((demo_root / "VOCdevkit" / "VOC2007" / "Annotations").glob("*.xml")):
        root, objects = read_objects(xml_path)
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
        num_objects += len(objects)
        for obj in (o for o in objects if o["truncated"] == "1"):
            total += 1
            touching += (
                int(obj["xmin"]) == 1
                or int(obj["ymin"]) == 1
                or int(obj["xmax"]) == width
                or int(obj["ymax"]) == height
            )
    assert 0.03 * num_objects <= total <= 0.3 * num_objects, (total, num_objects)
    # Only an occluder hiding the part at the border can pull a truncated box off it.
    assert touching >= 0.9 * total


def test_split_is_disjoint_and_complete(demo_root: Path) -> None:
    voc = demo_root / "VOCdevkit"
    sets = {
        name: read_image_set(voc, "2007", name) for name in ("train", "val", "trainval", "test")
    }
    for name, ids in sets.items():
        assert ids == sorted(set(ids)), name  # sorted, no duplicates
    train, val, trainval, test = (set(sets[n]) for n in ("train", "val", "trainval", "test"))
    assert not train & val and trainval == train | val
    assert not trainval & test
    assert trainval | test == {f"{k:06d}" for k in range(1, NUM_IMAGES + 1)}
    assert len(test) == round(demo.TEST_FRACTION * NUM_IMAGES)
    assert len(val) == round(demo.VAL_FRACTION * NUM_IMAGES)


def box_contrast(image: np.ndarray, box: np.ndarray, ring: int = 4) -> float | None:
    """RGB distance between the mean of the box's central half and of a ring around the box."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box)
    bw, bh = x2 - x1 + 1, y2 - y1 + 1
    inner = image[y1 + bh // 4 : y2 + 1 - bh // 4, x1 + bw // 4 : x2 + 1 - bw // 4]
    outer = np.zeros((height, width), bool)
    outer[max(y1 - ring, 0) : y2 + ring + 1, max(x1 - ring, 0) : x2 + ring + 1] = True
    outer[y1 : y2 + 1, x1 : x2 + 1] = False
    if outer.sum() < 10:
        return None
    return float(np.linalg.norm(inner.reshape(-1, 3).mean(0) - image[outer].mean(0)))


def test_boxes_hold_the_drawn_objects(annotations: dict[str, list[Annotation]]) -> None:
    """The box differs from its surroundings far more often than a random box of the same size."""
    rng = np.random.default_rng(0)
    true_contrast, random_contrast = [], []
    for ann in all_annotations(annotations):
        image = cv2.imread(ann.image_path).astype(np.float32)
        height, width = image.shape[:2]
        for box, difficult in zip(ann.boxes, ann.difficult):
            bw, bh = int(box[2] - box[0]), int(box[3] - box[1])
            if difficult or min(bw, bh) < 11:
                continue
            contrast = box_contrast(image, box)
            if contrast is None:
                continue
            true_contrast.append(contrast)
            x, y = rng.integers(0, width - bw), rng.integers(0, height - bh)
            control = box_contrast(image, np.array([x, y, x + bw, y + bh]))
            if control is not None:
                random_contrast.append(control)
    assert len(true_contrast) >= 100
    hits = np.mean(np.array(true_contrast) > 40)
    control_hits = np.mean(np.array(random_contrast) > 40)
    assert hits >= 0.85, hits
    assert hits >= control_hits + 0.4, (hits, control_hits)


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path: Path) -> None:
    first = tree_bytes(generate_demo(tmp_path / "a", num_images=8, seed=3))
    second = tree_bytes(generate_demo(tmp_path / "b", num_images=8, seed=3))
    other = tree_bytes(generate_demo(tmp_path / "c", num_images=8, seed=4))
    assert first.keys() == second.keys() == other.keys()
    assert first == second
    for suffix in (".jpg", ".xml"):
        names = [name for name in first if name.endswith(suffix)]
        assert names and all(first[name] != other[name] for name in names), suffix


def test_regenerating_fewer_images_leaves_no_stale_files(tmp_path: Path) -> None:
    generate_demo(tmp_path, num_images=6, seed=1)
    generate_demo(tmp_path, num_images=3, seed=1)
    images = sorted(p.name for p in tmp_path.rglob("*.jpg"))
    assert images == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert demo_is_current(tmp_path, 3, 1) and not demo_is_current(tmp_path, 6, 1)


def test_interrupted_generation_is_not_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate_demo(tmp_path, num_images=4, seed=0)
    write_xml = demo._annotation_xml

    def fail_on_third(image_id: str, *args: object) -> bytes:
        if image_id == "000003":
            raise KeyboardInterrupt
        return write_xml(image_id, *args)

    monkeypatch.setattr(demo, "_annotation_xml", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        generate_demo(tmp_path, num_images=4, seed=0)
    assert not demo_is_current(tmp_path, 4, 0)
    monkeypatch.undo()
    assert demo_data.main(["--out", str(tmp_path), "--num-images", "4", "--seed", "0"]) == 0
    assert demo_is_current(tmp_path, 4, 0)
    assert len(list(tmp_path.rglob("*.xml"))) == 4


def test_never_replaces_a_dataset_it_did_not_write(tmp_path: Path) -> None:
    foreign = tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / "keep.xml"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("<annotation/>")
    with pytest.raises(FileExistsError):
        generate_demo(tmp_path, num_images=2)
    assert exit_code(demo_data.main, ["--out", tmp_path, "--num-images", "2"]) == 2
    assert foreign.read_text() == "<annotation/>"


@pytest.mark.parametrize(
    ("num_images", "image_size"), [(0, (160, 320)), (5, (320, 160)), (5, (16, 16))]
)
def test_bad_arguments(tmp_path: Path, num_images: int, image_size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=r"num_images|image_size"):
        generate_demo(tmp_path, num_images=num_images, image_size=image_size)
    assert not (tmp_path / "VOCdevkit").exists()


def test_cli_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    args = ["--out", str(out), "--num-images", "5", "--seed", "2", "--image-size", "96", "128"]
    assert demo_data.main(args) == 0
    first = capsys.readouterr().out
    assert "wrote 5 images" in first
    for name in CLASS_NAMES:
        assert name in first
    xml_path = out / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml"
    stamp = (xml_path.stat().st_mtime_ns, (out / demo.PARAMS_FILE).stat().st_mtime_ns)

    assert demo_data.main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (xml_path.stat().st_mtime_ns, (out / demo.PARAMS_FILE).stat().st_mtime_ns) == stamp

    before = tree_bytes(out)
    assert demo_data.main([*args, "--force"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    assert tree_bytes(out) == before  # regenerated, byte-identical

    assert demo_data.main([*args, "--seed", "3"]) == 0  # other parameters (the last flag wins)
    assert "wrote 5 images" in capsys.readouterr().out
    assert demo_is_current(out, 5, 3, (96, 128)) and not demo_is_current(out, 5, 2, (96, 128))
