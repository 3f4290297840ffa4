"""data.split on a tiny VOC tree generated in tmp_path."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import exit_code

from data.split import SPLIT_NAMES, list_pairs, split_counts, split_dataset, split_ids
from data.voc import load_voc
from tools import split as split_cli
from utils.paths import OutputRefusedError

CLASSES = ("bird", "cat", "dog")
NUM_IMAGES = 50


@dataclass
class Tree:
    folder: Path  # the VOC<year> folder
    objects: dict[str, list[str]]  # valid image id -> class names of its objects

    def expected_counts(self, ids: list[str]) -> dict[str, int]:
        counts = Counter(name for i in ids for name in self.objects[i])
        return {c: counts.get(c, 0) for c in CLASSES}


def write_xml(path: Path, names: list[str], size: int = 32) -> None:
    objects = "".join(
        f"<object><name>{name}</name><difficult>{k % 2}</difficult><bndbox>"
        f"<xmin>{2 + k}</xmin><ymin>3</ymin><xmax>{12 + k}</xmax><ymax>20</ymax></bndbox></object>"
        for k, name in enumerate(names)
    )
    path.write_text(
        f"<annotation><filename>{path.stem}.jpg</filename><size><width>{size}</width>"
        f"<height>{size}</height><depth>3</depth></size>{objects}</annotation>"
    )


@pytest.fixture()
def tree(tmp_path: Path) -> Tree:
    folder = tmp_path / "VOCdevkit" / "VOCcustom"
    (folder / "Annotations").mkdir(parents=True)
    (folder / "JPEGImages").mkdir()
    rng = np.random.default_rng(123)
    image = np.full((32, 32, 3), 127, np.uint8)
    objects = {}
    for n in range(NUM_IMAGES):
        image_id = f"img_{n:03d}"
        names = [str(c) for c in rng.choice(CLASSES, size=n % 4)]  # n % 4 == 0: no objects
        write_xml(folder / "Annotations" / f"{image_id}.xml", names)
        cv2.imwrite(str(folder / "JPEGImages" / f"{image_id}.jpg"), image)
        objects[image_id] = names
    # left out: an XML without image, an image without XML, an XML that does not parse
    write_xml(folder / "Annotations" / "orphan_xml.xml", ["cat"])
    cv2.imwrite(str(folder / "JPEGImages" / "orphan_image.jpg"), image)
    (folder / "Annotations" / "broken.xml").write_text("<annotation><object>")
    cv2.imwrite(str(folder / "JPEGImages" / "broken.jpg"), image)
    return Tree(folder, objects)


def read_set(folder: Path, name: str) -> list[str]:
    return (folder / "ImageSets" / "Main" / f"{name}.txt").read_text().split()


def test_split_is_complete_disjoint_and_respects_ratios(tree: Tree) -> None:
    result = split_dataset(tree.folder, ratios=(0.7, 0.1, 0.2), seed=0)
    files = {name: read_set(tree.folder, name) for name in SPLIT_NAMES}
    assert files == result.splits
    train, val, test = (set(files[n]) for n in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (35, 5, 10)
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(tree.objects)  # the orphans and the broken XML left out
    assert files["trainval"] == sorted(train | val)
    assert all(files[n] == sorted(files[n]) for n in SPLIT_NAMES)
    problems = {(Path(i.path).name, i.action) for i in result.issues}
    assert {("orphan_xml.xml", "skipped"), ("orphan_image.jpg", "skipped")} <= problems
    assert any(Path(i.path).name == "broken.xml" for i in result.issues)
    assert result.class_names == list(CLASSES)  # discovered from the XMLs


def test_counts_match_the_generated_objects(tree: Tree) -> None:
    result = split_dataset(tree.folder, seed=3)
    for name in SPLIT_NAMES:
        assert result.counts[name] == tree.expected_counts(result.splits[name])
    assert sum(result.counts["trainval"].values()) > 0


def test_deterministic_for_a_seed_and_different_for_another(tree: Tree) -> None:
    first = split_dataset(tree.folder, seed=7).splits
    again = split_dataset(tree.folder, seed=7, overwrite=True).splits
    other = split_dataset(tree.folder, seed=8, overwrite=True).splits
    assert first == again
    assert first["test"] != other["test"]
    assert read_set(tree.folder, "test") == other["test"]


def test_an_image_in_two_formats_counts_once(tree: Tree) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    for suffix in (".png", ".bmp"):
        cv2.imwrite(str(tree.folder / "JPEGImages" / f"img_001{suffix}"), image)
    pairs, _ = list_pairs(tree.folder)
    assert pairs["img_001"].name == "img_001.jpg"  # the one data.voc.load_voc reads
    assert list(pairs) == sorted([*tree.objects, "broken"])  # broken.xml is parsed later


def test_split_ids_ignores_input_order() -> None:
    ids = [f"{n:04d}" for n in range(30)]
    assert split_ids(ids, seed=1) == split_ids(ids[::-1], seed=1)


def test_existing_sets_are_not_overwritten_without_force(tree: Tree) -> None:
    split_dataset(tree.folder, seed=0)
    before = read_set(tree.folder, "train")
    with pytest.raises(FileExistsError, match=r"train\.txt"):
        split_dataset(tree.folder, seed=5)
    assert read_set(tree.folder, "train") == before


@pytest.mark.parametrize(
    ("num_images", "ratios", "expected"),
    [
        (10, (0.7, 0.1, 0.2), [7, 1, 2]),
        (7, (0.7, 0.1, 0.2), [5, 1, 1]),  # 4.9, 0.7, 1.4 -> remainders go to train and val
        (3, (0.5, 0.5, 0.0), [2, 1, 0]),
        (1, (0.7, 0.1, 0.2), [1, 0, 0]),
        (0, (0.7, 0.1, 0.2), [0, 0, 0]),
    ],
)
def test_split_counts(num_images: int, ratios: tuple, expected: list[int]) -> None:
    assert split_counts(num_images, ratios) == expected


BAD_RATIOS = [
    (0.7, 0.2, 0.2),
    (1.2, -0.1, -0.1),
    (math.nan, 0.5, 0.5),
    (math.inf, 0.0, 0.0),
    (0.0, 0.0, 0.0),
    (0.5, 0.5),
    (0.5, 0.25, 0.25, 0.0),
]


@pytest.mark.parametrize("ratios", BAD_RATIOS)
def test_bad_ratios_are_an_error(tree: Tree, ratios: tuple) -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        split_dataset(tree.folder, ratios=ratios)
    assert not (tree.folder / "ImageSets").exists()
    with pytest.raises(ValueError, match=r"ratios \["):
        split_counts(32, ratios)
    with pytest.raises(ValueError, match=r"ratios \["):
        split_ids([f"{n}" for n in range(32)], ratios)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nan,0.5,0.5", "finite"),
        ("0.5,inf,0.5", "finite"),
        ("0,0,0", "all zero"),
        ("1,1,-1", ">= 0"),
        ("0.5,0.5,0.5", "sum to 1"),
        ("0.5,0.5", "TRAIN,VAL,TEST"),
    ],
)
def test_main_refuses_bad_ratios_like_other_argument_errors(
    tree: Tree, capsys, text: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        split_cli.main(["--folder", str(tree.folder), "--ratios", text])
    assert exit_info.value.code == 2  # argparse's code for bad arguments
    err = capsys.readouterr().err
    assert "--ratios" in err and repr(text) in err and message in err
    assert not (tree.folder / "ImageSets").exists()


def test_main_refuses_a_negative_seed(tree: Tree, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        split_cli.main(["--folder", str(tree.folder), "--seed", "-1"])
    assert exit_info.value.code == 2
    assert "--seed" in capsys.readouterr().err
    assert not (tree.folder / "ImageSets").exists()


def test_an_xml_with_a_dtd_is_left_out_and_its_names_not_counted(tree: Tree) -> None:
    (tree.folder / "Annotations" / "img_001.xml").write_text(
        '<!DOCTYPE annotation [<!ENTITY c "unicorn">]>\n'
        "<annotation><object><name>&c;</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>\n"
    )
    result = split_dataset(tree.folder)
    assert result.class_names == list(CLASSES)
    assert "img_001" not in result.splits["trainval"] + result.splits["test"]
    refused = [i for i in result.issues if Path(i.path).name == "img_001.xml"]
    assert [i.action for i in refused] == ["skipped"] and "DTD" in refused[0].problem


def test_written_sets_load_with_data_voc(tree: Tree) -> None:
    result = split_dataset(tree.folder, seed=0)
    loaded = load_voc(tree.folder.parent, [("custom", "test")], CLASSES)
    assert [a.image_id for a in loaded.annotations] == result.splits["test"]
    assert loaded.issues == []


def test_main_prints_counts(tree: Tree, tmp_path: Path, capsys) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")  # birds are then unknown: skipped and reported
    voc_root = str(tree.folder.parent)
    argv = ["--voc-root", voc_root, "--year", "custom", "--classes", str(classes), "--seed", "2"]
    assert split_cli.main([*argv, "--ratios", "0.6,0.2,0.2"]) == 0
    out = capsys.readouterr().out
    splits = {name: read_set(tree.folder, name) for name in SPLIT_NAMES}
    assert [len(splits[n]) for n in ("train", "val", "test")] == [30, 10, 10]
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["class"] == list(SPLIT_NAMES)
    for cls in ("cat", "dog"):
        expected = [str(tree.expected_counts(splits[n])[cls]) for n in SPLIT_NAMES]
        assert rows[cls] == expected
    assert "bird" not in rows
    assert rows["images"] == [str(len(splits[n])) for n in SPLIT_NAMES]
    # a second run needs --force; --folder names the dataset folder directly
    with pytest.raises(OutputRefusedError, match="--force"):
        split_cli.main(argv)
    assert split_cli.main(["--folder", str(tree.folder), "--force", "--seed", "2"]) == 0
    assert "bird" in capsys.readouterr().out


def test_main_reports_missing_folder(tmp_path: Path, capsys) -> None:
    assert exit_code(split_cli.main, ["--folder", tmp_path / "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Annotations" in err and len(err.splitlines()) == 1
