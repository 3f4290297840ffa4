"""data.anchor_kmeans: IoU k-means on synthetic shapes, letterbox scaling and the anchors file."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import exit_code
from voc_factory import run_with_file_size_limit

from data.anchor_kmeans import (
    DEFAULT_ANCHORS,
    compute_anchors,
    kmeans_anchors,
    letterbox_box_shapes,
    mean_best_iou,
    wh_iou,
    write_anchors,
)
from data.voc import Annotation
from tools import anchors as anchors_mod
from utils.classes import read_anchors
from utils.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
# six (w, h) shapes at 416 that overlap little with each other, none close to a default anchor
TRUE_CENTRES = np.array([[12, 18], [30, 70], [80, 40], [110, 200], [220, 130], [340, 300]], float)


def cluster_shapes(seed: int = 0, per_cluster: int = 150, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = per_cluster + rng.integers(-50, 50, len(TRUE_CENTRES))  # unequal clusters
    return np.concatenate(
        [c * np.exp(rng.normal(0.0, noise, (n, 2))) for c, n in zip(TRUE_CENTRES, sizes)]
    )


def annotation(boxes: list, width: int, height: int, difficult: list | None = None) -> Annotation:
    boxes_arr = np.array(boxes, np.float32).reshape(-1, 4)
    flags = np.array(difficult if difficult is not None else [False] * len(boxes_arr), bool)
    return Annotation(
        "x.jpg", "x", boxes_arr, np.zeros(len(boxes_arr), np.int64), flags, width, height
    )


def test_wh_iou_matches_a_loop() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.uniform(1, 100, (7, 2)), rng.uniform(1, 100, (4, 2))
    expected = np.empty((7, 4))
    for i, (w1, h1) in enumerate(a):
        for j, (w2, h2) in enumerate(b):
            inter = min(w1, w2) * min(h1, h2)
            expected[i, j] = inter / (w1 * h1 + w2 * h2 - inter)
    np.testing.assert_allclose(wh_iou(a, b), expected, rtol=1e-12)
    assert wh_iou(np.array([[10.0, 20.0]]), np.array([[20.0, 10.0]]))[0, 0] == pytest.approx(1 / 3)


def test_kmeans_recovers_separated_clusters() -> None:
    shapes = cluster_shapes()
    found = kmeans_anchors(shapes, 6, seed=0)
    assert found.shape == (6, 2)
    areas = found.prod(axis=1)
    assert np.all(np.diff(areas) >= 0)  # sorted by area
    # each true centre has its own anchor, close to it
    iou = wh_iou(TRUE_CENTRES, found)
    assert sorted(iou.argmax(axis=1).tolist()) == list(range(6))
    assert iou.max(axis=1).min() > 0.95
    new_iou = mean_best_iou(shapes, found)
    assert new_iou > 0.9
    assert new_iou > mean_best_iou(shapes, DEFAULT_ANCHORS) + 0.1


def test_restarts_escape_local_minima() -> None:
    shapes = cluster_shapes()
    single = [
        mean_best_iou(shapes, kmeans_anchors(shapes, 6, s, num_restarts=1)) for s in range(20)
    ]
    best = [mean_best_iou(shapes, kmeans_anchors(shapes, 6, s)) for s in range(20)]
    assert min(single) < 0.9  # one k-means++ run sometimes puts two centres in one cluster
    assert min(best) > 0.9  # the best of the restarts never does here
    assert all(b >= s for b, s in zip(best, single))  # the first restart is the single run


def test_kmeans_is_deterministic_for_a_seed() -> None:
    shapes = np.random.default_rng(5).uniform(5, 400, (500, 2))  # no structure: init matters
    first = kmeans_anchors(shapes, 6, seed=3)
    np.testing.assert_array_equal(first, kmeans_anchors(shapes, 6, seed=3))
    others = [kmeans_anchors(shapes, 6, seed=s) for s in range(4, 10)]
    assert any(not np.allclose(first, other) for other in others)


def test_update_is_the_median() -> None:
    shapes = np.array([[10, 40], [11, 41], [12, 42], [13, 43], [200, 300]], float)
    np.testing.assert_array_equal(kmeans_anchors(shapes, 1), [[12, 42]])  # the mean is 49.2, 93.2


def test_fewer_boxes_than_anchors_is_an_error() -> None:
    with pytest.raises(ValueError, match="only 3 box"):
        kmeans_anchors(np.array([[10, 10], [20, 30], [40, 50]], float), 6)
    with pytest.raises(ValueError, match="distinct"):
        kmeans_anchors(np.array([[10, 10]] * 5 + [[20, 30]] * 5, float), 3)


def test_letterbox_scaling_by_hand() -> None:
    landscape = annotation([[10, 20, 60, 40], [0, 0, 199, 99]], 200, 100)  # scale 416/200
    portrait = annotation([[5, 5, 30, 105], [0, 0, 8, 8]], 100, 400, [False, True])  # 416/400
    shapes = letterbox_box_shapes([landscape, portrait], 416)
    expected = [[50 * 2.08, 20 * 2.08], [199 * 2.08, 99 * 2.08], [25 * 1.04, 100 * 1.04]]
    np.testing.assert_allclose(shapes, expected, rtol=1e-6)
    with_difficult = letterbox_box_shapes([landscape, portrait], 416, include_difficult=True)
    np.testing.assert_allclose(with_difficult[-1], [8 * 1.04, 8 * 1.04], rtol=1e-6)
    np.testing.assert_allclose(letterbox_box_shapes([portrait], 320), [[20, 80]], rtol=1e-6)


def test_letterbox_reads_the_image_when_size_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), np.zeros((32, 64, 3), np.uint8))  # w 64, h 32
    ann = annotation([[0, 0, 16, 8]], 0, 0)
    ann.image_path = str(path)
    np.testing.assert_allclose(letterbox_box_shapes([ann], 416), [[16 * 6.5, 8 * 6.5]])
    assert letterbox_box_shapes([annotation([], 10, 10)], 416).shape == (0, 2)


def test_anchors_file_round_trips(tmp_path: Path) -> None:
    found = kmeans_anchors(cluster_shapes(), 6, seed=0)
    path = tmp_path / "sub" / "anchors.txt"
    written = write_anchors(path, found)
    assert read_anchors(path) == [tuple(map(float, row)) for row in written]
    np.testing.assert_allclose(written, found, atol=0.5)
    # the defaults come out byte for byte as the shipped file
    write_anchors(tmp_path / "default.txt", DEFAULT_ANCHORS)
    shipped = (ROOT / "model_data" / "yolo_anchors.txt").read_text()
    assert (tmp_path / "default.txt").read_text() == shipped


def write_voc(root: Path, rng: np.random.Generator) -> None:
    folder = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True)
    ids = []
    for n in range(12):
        width, height = (160, 120) if n % 2 else (96, 128)
        objects = ""
        for k in range(6):
            w, h = TRUE_CENTRES[k % 3] / 416 * max(width, height) * rng.uniform(0.95, 1.05)
            name = ("cat", "dog")[k % 2]
            objects += (
                f"<object><name>{name}</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                f"<xmax>{1 + w:.1f}</xmax><ymax>{1 + h:.1f}</ymax></bndbox></object>"
            )
        image_id = f"{n:06d}"
        (folder / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{width}</width><height>{height}</height></size>"
            f"{objects}</annotation>"
        )
        cv2.imwrite(str(folder / "JPEGImages" / f"{image_id}.jpg"), np.zeros((8, 8, 3), np.uint8))
        ids.append(image_id)
    (folder / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")


def test_compute_anchors_and_cli(tmp_path: Path, capsys) -> None:
    voc_root = tmp_path / "VOCdevkit"
    write_voc(voc_root, np.random.default_rng(0))
    report = compute_anchors(voc_root, [("2007", "trainval")], num_anchors=3, seed=0)
    assert report.num_boxes == 72
    assert report.anchors.dtype == np.int64 and report.anchors.shape == (3, 2)
    # the XML boxes were drawn around TRUE_CENTRES[:3] at 416 after letterboxing
    assert wh_iou(TRUE_CENTRES[:3], report.anchors).max(axis=1).min() > 0.9
    assert report.mean_iou > 0.9 > report.default_mean_iou
    assert report.best_share.sum() == pytest.approx(1.0)

    out = tmp_path / "anchors.txt"
    argv = ["--voc-root", str(voc_root), "--sets", "2007:trainval", "--out", str(out)]
    assert anchors_mod.main([*argv, "--num-anchors", "3"]) == 0
    printed = capsys.readouterr().out
    assert f"{report.mean_iou:.4f}" in printed and f"{report.default_mean_iou:.4f}" in printed
    assert read_anchors(out) == [tuple(map(float, row)) for row in report.anchors]
    with pytest.raises(InputError, match="only 72 box"):
        anchors_mod.main([*argv, "--num-anchors", "100"])


def test_cli_checks_its_output_before_clustering(tmp_path: Path, capsys) -> None:
    voc_root = tmp_path / "VOCdevkit"
    write_voc(voc_root, np.random.default_rng(0))
    (tmp_path / "a_folder").mkdir()
    argv = ["--voc-root", str(voc_root), "--sets", "2007:trainval", "--num-anchors", "3"]
    for out in (Path("/proc/anchors.txt"), tmp_path / "a_folder"):
        assert exit_code(anchors_mod.main, [*argv, "--out", out]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"error: {out}: ") and len(captured.err.splitlines()) == 1
        assert "boxes" not in captured.out  # nothing was clustered
    assert list((tmp_path / "a_folder").iterdir()) == []
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_cli_write_failing_at_the_end_is_one_line(tmp_path: Path) -> None:
    """An anchors file that cannot be written after clustering (larger than the file-size
    limit, as on a full disk): one error line naming it, exit code 1, no temporary file."""
    voc_root = tmp_path / "VOCdevkit"
    write_voc(voc_root, np.random.default_rng(0))
    out = tmp_path / "anchors.txt"

    cmd = [sys.executable, "-m", "tools.anchors", "--voc-root", str(voc_root)]
    cmd += ["--sets", "2007:trainval", "--num-anchors", "3", "--out", str(out)]
    result = run_with_file_size_limit(cmd, 16, ROOT)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: {out}: cannot write (File too large)" in result.stderr.splitlines()
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_the_input_size_flag_is_spelled_as_in_train_and_the_old_spelling_still_works() -> None:
    from tools import anchors as anchors_cli

    parser = anchors_cli.build_parser()
    assert parser.parse_args(["--img-size", "288"]).img_size == 288
    assert parser.parse_args(["--input-size", "320"]).img_size == 320
    assert parser.parse_args([]).img_size == 416
    assert "--input-size" not in parser.format_help()


def test_the_output_flag_is_out_and_the_old_spelling_still_works() -> None:
    parser = anchors_mod.build_parser()
    assert parser.parse_args(["--out", "a.txt"]).out == "a.txt"
    assert parser.parse_args(["--output", "b.txt"]).out == "b.txt"
    assert parser.parse_args([]).out == "model_data/yolo_anchors_custom.txt"
    assert "--output" not in parser.format_help()
