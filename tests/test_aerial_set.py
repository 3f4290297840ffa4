"""``python -m tools.aerial_set``: tiles the deepforest wheel's aerial crops into a VOC set."""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import exit_code

from data.voc import load_voc, parse_sets
from tools import aerial_set


def _wheel(path: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    """A zip laid out as the wheel: each crop a PNG and a VOC XML with one box per 40 px."""
    with zipfile.ZipFile(path, "w") as wheel:
        for crop, (w, h) in sizes.items():
            image = np.full((h, w, 3), 90, np.uint8)
            _, png = cv2.imencode(".png", image)
            objects = "".join(
                f"<object><name>Tree</name><bndbox><xmin>{x}</xmin><ymin>{y}</ymin>"
                f"<xmax>{x + 20}</xmax><ymax>{y + 20}</ymax></bndbox></object>"
                for x in range(5, w - 20, 40)
                for y in range(5, h - 20, 40)
            )
            wheel.writestr(f"deepforest/data/{crop}.png", png.tobytes())
            wheel.writestr(f"deepforest/data/{crop}.xml", f"<annotation>{objects}</annotation>")
    return path


def test_tile_starts_cover_the_side() -> None:
    assert aerial_set.tile_starts(100, 128, 96) == [0]
    assert aerial_set.tile_starts(300, 128, 96) == [0, 96, 172]  # last flush with the end
    assert aerial_set.tile_starts(300, 128, 128) == [0, 128, 256]  # a 44 px tile at the end
    assert aerial_set.tile_starts(270, 128, 128) == [0, 128]  # 14 px strip left out


def test_crop_boxes_keeps_boxes_mostly_inside() -> None:
    boxes = np.array([[10, 10, 30, 30], [110, 10, 130, 30], [120, 10, 140, 30]], float)
    kept = aerial_set.crop_boxes(boxes, 0, 0, 128, 128)
    assert kept.tolist() == [[10, 10, 30, 30], [110, 10, 128, 30]]  # the 3rd: 8/20 inside
    edge = aerial_set.crop_boxes(np.array([[95.0, 10, 125, 30]]), 100, 0, 128, 128)
    assert edge.tolist() == [[1, 10, 25, 30]]  # VOC pixels start at 1
    assert aerial_set.crop_boxes(boxes, 100, 0, 128, 128).tolist() == [
        [10, 10, 30, 30],
        [20, 10, 40, 30],
    ]


def test_builds_a_split_by_crop_and_never_overwrites(tmp_path, capsys) -> None:
    sizes = {c: (300, 260) for c in aerial_set.TRAIN_CROPS}
    sizes |= {c: (200, 140) for c in aerial_set.TEST_CROPS}
    wheel = _wheel(tmp_path / "df.whl", sizes)
    out = tmp_path / "aerial"
    argv = ["--wheel", wheel, "--out", out, "--tile", "128", "--stride", "96"]
    assert exit_code(aerial_set.main, argv) == 0
    sets = {
        s: load_voc(out, parse_sets(f"2007:{s}"), ["Tree"]).annotations for s in ("train", "test")
    }
    assert len(sets["train"]) == 9 and len(sets["test"]) == 3 * 2  # 3x3; 2x1 per test crop
    crop_of = lambda a: Path(a.image_path).stem.rsplit("_", 2)[0]  # noqa: E731
    assert {crop_of(a) for a in sets["train"]} == set(aerial_set.TRAIN_CROPS)
    assert {crop_of(a) for a in sets["test"]} == set(aerial_set.TEST_CROPS)
    assert all(len(a.boxes) for a in sets["train"])
    assert (out / "classes.txt").read_text() == "Tree\n"
    before = (out / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text()
    assert exit_code(aerial_set.main, argv) == 2  # an existing folder is refused
    assert "exists" in capsys.readouterr().err
    assert (out / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text() == before


@pytest.mark.parametrize("bad", [["--tile", "16"], ["--stride", "500"]])
def test_refuses_bad_tiles(tmp_path, bad) -> None:
    wheel = _wheel(tmp_path / "df.whl", {})
    assert exit_code(aerial_set.main, ["--wheel", wheel, "--out", tmp_path / "o", *bad]) == 2
    assert not (tmp_path / "o").exists()


def test_refuses_a_wheel_without_the_crops(tmp_path, capsys) -> None:
    wheel = _wheel(tmp_path / "df.whl", {})
    assert exit_code(aerial_set.main, ["--wheel", wheel, "--out", tmp_path / "o"]) == 2
    assert "deepforest/data/" in capsys.readouterr().err
