"""eval.py scores what it is given, checks what a model says about itself, and refuses input
whose number would mean nothing: boxes partly outside the image are scored as written (the
VOC devkit and pycocotools do not clip), names stored in a checkpoint or export win over
--classes, a split without ground truth of the model's classes is refused, and one checkpoint
given twice is not counted twice."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import exit_code

import eval as eval_cli
from nets.checkpoint import ModelInfo, save_checkpoint
from nets.decode import Geometry
from nets.yolo import DEFAULT_ANCHORS, YoloBody
from tests.voc_factory import make_split, xml_text
from utils.inference.export import export_metadata, export_onnx
from utils.inference.predictor import Detector

NAMES = ["box", "disc", "ring"]
W, H = 96, 72  # every image's size


# --------------------------------------------------------------------------------------------
# a random split whose detections (and some ground truth) reach outside the image


def _random_split(root: Path, seed: int = 0, num_images: int = 30) -> tuple[Path, Path, list]:
    """A VOC tree of ``num_images`` images with random objects of ``NAMES``, some of them
    difficult and some reaching past the image border in the XML; a detections file of
    boxes near the objects and random ones, many partly outside the image. Returns the voc
    root, the detections file and the ground truth as rows ``(image, x1, y1, x2, y2, label,
    difficult)`` in 0-based pixels, exactly as written."""
    rng = np.random.default_rng(seed)
    folder = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    gt_rows, records, ids = [], [], []
    image = np.full((H, W, 3), 90, np.uint8)
    for i in range(num_images):
        image_id = f"{i:06d}"
        ids.append(image_id)
        cv2.imwrite(str(folder / "JPEGImages" / f"{image_id}.jpg"), image)
        objects = []
        for _ in range(rng.integers(1, 5)):
            bw, bh = rng.integers(8, 40, 2)
            x1, y1 = int(rng.integers(-6, W - 4)), int(rng.integers(-6, H - 4))
            x2, y2 = x1 + int(bw), y1 + int(bh)  # 0-based, may pass the border
            label, difficult = int(rng.integers(3)), bool(rng.random() < 0.15)
            gt_rows.append((i, x1, y1, x2, y2, label, difficult))
            objects.append(
                {
                    "name": NAMES[label],
                    "box": (x1 + 1, y1 + 1, x2 + 1, y2 + 1),
                    "difficult": int(difficult),
                }
            )
        (folder / "Annotations" / f"{image_id}.xml").write_text(
            xml_text(f"{image_id}.jpg", W, H, objects)
        )
        detections = []
        for _, *box, label, _ in [r for r in gt_rows if r[0] == i]:
            for _ in range(rng.integers(0, 4)):
                size = np.array([box[2] - box[0], box[3] - box[1]] * 2) + 1
                near = np.array(box, float) + rng.normal(0, 0.12, 4) * size
                near = [*np.minimum(near[:2], near[2:]), *np.maximum(near[:2], near[2:])]
                cls = label if rng.random() < 0.85 else int(rng.integers(3))
                detections.append((near, cls))
        for _ in range(rng.integers(0, 5)):
            x1, y1 = rng.uniform(-20, W - 2), rng.uniform(-20, H - 2)
            detections.append(([x1, y1, x1 + rng.uniform(25, 50), y1 + rng.uniform(25, 50)], 0))
        # partly outside, never entirely (a box of another frame, which is refused)
        detections = [
            (b, c)
            for b, c in detections
            if b[2] >= 0 and b[3] >= 0 and b[0] <= W - 1 and b[1] <= H - 1
        ]
        records.append(
            {
                "image_id": image_id,
                "width": W,
                "height": H,
                "detections": [
                    {
                        "xyxy": [float(v) for v in box],
                        "score": float(rng.random()),
                        "class_id": int(cls),
                        "class_name": NAMES[cls],
                    }
                    for box, cls in detections
                ],
            }
        )
    (folder / "ImageSets" / "Main" / "test.txt").write_text("\n".join(ids) + "\n")
    dets = root / "dets.json"
    dets.write_text(json.dumps(records))
    return root, dets, gt_rows


def _det_rows(dets: Path) -> list[tuple]:
    """The detections file as rows ``(image, x1, y1, x2, y2, score, label)``."""
    return [
        (i, *d["xyxy"], d["score"], d["class_id"])
        for i, r in enumerate(json.loads(dets.read_text()))
        for d in r["detections"]
    ]


def _brute_force_voc(det_rows: list, gt_rows: list, cls: int, thresh: float = 0.5):
    """The VOC devkit's definition for one class, written out loop by loop: detections by
    decreasing score (ties in file order), each taking the ground truth of its image with the
    highest IoU (+1 pixel convention, first on ties, only boxes that overlap); at IoU >= the
    threshold a difficult box is ignored, an unclaimed one a TP, a claimed one an FP; else FP.
    Returns (11-point AP, area AP, npos)."""
    gts = [[*r, False] for r in gt_rows if r[5] == cls]
    npos = sum(1 for g in gts if not g[6])
    dets = sorted([r for r in det_rows if r[6] == cls], key=lambda r: -r[5])
    tp, fp = [], []
    for image, dx1, dy1, dx2, dy2, _, _ in dets:
        best, best_iou = None, -1.0
        for g in gts:
            if g[0] != image:
                continue
            iw = min(dx2, g[3]) - max(dx1, g[1]) + 1
            ih = min(dy2, g[4]) - max(dy1, g[2]) + 1
            if iw > 0 and ih > 0:
                union = (dx2 - dx1 + 1) * (dy2 - dy1 + 1) + (g[3] - g[1] + 1) * (g[4] - g[2] + 1)
                iou = iw * ih / (union - iw * ih)
                if iou > best_iou:
                    best, best_iou = g, iou
        if best is not None and best_iou >= thresh:
            if best[6]:
                continue  # difficult: neither TP nor FP
            tp.append(0 if best[7] else 1)
            fp.append(1 if best[7] else 0)
            best[7] = True
        else:
            tp.append(0)
            fp.append(1)
    ctp, cfp = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
    rec = ctp / npos
    prec = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
    points = [0.0, 0.1, 0.2, 3 * 0.1, 0.4, 0.5, 1 - 4 * 0.1, 1 - 3 * 0.1, 0.8, 0.9, 1.0]
    ap07 = sum(max([p for r, p in zip(rec, prec) if r >= t], default=0.0) for t in points) / 11
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for k in range(len(mpre) - 2, -1, -1):
        mpre[k] = max(mpre[k], mpre[k + 1])
    ap12 = sum(
        (mrec[k] - mrec[k - 1]) * mpre[k] for k in range(1, len(mrec)) if mrec[k] != mrec[k - 1]
    )
    return ap07, ap12, npos


def _pycocotools(det_rows: list, gt_rows: list) -> dict:
    """pycocotools on the boxes as written (difficult as crowd), at most 100 per image."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = {
        "images": [{"id": i} for i in sorted({r[0] for r in gt_rows} | {r[0] for r in det_rows})],
        "annotations": [
            {
                "id": k + 1,
                "image_id": r[0],
                "category_id": r[5],
                "bbox": [r[1], r[2], r[3] - r[1], r[4] - r[2]],
                "area": (r[3] - r[1]) * (r[4] - r[2]),
                "iscrowd": int(r[6]),
            }
            for k, r in enumerate(gt_rows)
        ],
        "categories": [{"id": c, "name": n} for c, n in enumerate(NAMES)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(
            np.array([(r[0], r[1], r[2], r[3] - r[1], r[4] - r[2], r[5], r[6]) for r in det_rows])
        )
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"coco_map": ev.stats[0], "coco_map50": ev.stats[1]}


def _classes(root: Path, names: list[str]) -> Path:
    path = root / f"classes_{'_'.join(names)}.txt"
    path.write_text("\n".join(names) + "\n")
    return path


def _score_args(root: Path, dets: Path, classes: Path, tmp: Path) -> list[str]:
    return [
        "--detections", str(dets), "--classes", str(classes), "--voc-root", str(root),
        "--split", "2007:test", "--save-dir", str(tmp / "out"), "--json", str(tmp / "m.json"),
    ]  # fmt: skip


def test_save_dir_is_numbered_when_it_exists_unless_exist_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, dets, _ = _random_split(tmp_path / "voc", num_images=4)
    args = _score_args(root, dets, _classes(tmp_path, NAMES), tmp_path)
    out = tmp_path / "out"
    for _ in range(2):
        assert exit_code(eval_cli.main, [*args, "--no-coco"]) == 0
    assert sorted(p.name for p in tmp_path.glob("out*")) == ["out", "out2"]
    assert (out / "pr_curves.png").is_file() and (tmp_path / "out2" / "pr_curves.png").is_file()
    (out / "pr_curves.png").unlink()
    assert exit_code(eval_cli.main, [*args, "--no-coco", "--exist-ok"]) == 0
    assert not (tmp_path / "out3").exists()
    assert (out / "pr_curves.png").is_file()  # written again, into the folder itself
    capsys.readouterr()


def test_out_dir_is_a_hidden_alias_of_save_dir(capsys: pytest.CaptureFixture) -> None:
    assert eval_cli.parse_args(["--weights", "a.pth", "--out-dir", "x"]).save_dir == "x"
    assert eval_cli.parse_args(["--weights", "a.pth"]).save_dir == "logs/eval"
    with pytest.raises(SystemExit):
        eval_cli.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--save-dir" in shown and "--out-dir" not in shown


def test_boxes_partly_outside_the_image_score_as_the_devkit_and_pycocotools(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, dets, gt_rows = _random_split(tmp_path / "voc")
    det_rows = _det_rows(dets)
    outside = sum(1 for r in det_rows if r[1] < 0 or r[2] < 0 or r[3] > W - 1 or r[4] > H - 1)
    gt_outside = sum(1 for r in gt_rows if r[1] < 0 or r[2] < 0 or r[3] > W - 1 or r[4] > H - 1)
    assert outside >= 20 and gt_outside >= 5, (outside, gt_outside)  # the case is not trivial
    classes = _classes(tmp_path, NAMES)
    assert exit_code(eval_cli.main, _score_args(root, dets, classes, tmp_path)) == 0
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "m.json").read_text())
    for c, name in enumerate(NAMES):
        ap07, ap12, npos = _brute_force_voc(det_rows, gt_rows, c)
        row = report["per_class"][name]
        assert row["num_gt"] == npos
        assert abs(row["ap_voc07"] - ap07) <= 1e-12, (name, row["ap_voc07"], ap07)
        assert abs(row["ap_voc12"] - ap12) <= 1e-12, (name, row["ap_voc12"], ap12)
    coco = _pycocotools(det_rows, gt_rows)
    assert abs(report["coco_map"] - coco["coco_map"]) <= 1e-12
    assert abs(report["coco_map50"] - coco["coco_map50"]) <= 1e-12
    assert f"{outside} detections with a box partly outside its image, scored as given" in err
    assert f"{gt_outside} ground-truth issues (scored as given)" in err


# --------------------------------------------------------------------------------------------
# classes without ground truth


def test_classes_without_ground_truth_are_named_and_none_at_all_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, dets, _ = _random_split(tmp_path / "voc", num_images=6)
    # a fourth class that no object has: a warning that names it, the mAP of the other three
    four = _classes(tmp_path, [*NAMES, "kite"])
    assert exit_code(eval_cli.main, _score_args(root, dets, four, tmp_path)) == 0
    err = capsys.readouterr().err
    assert "no ground-truth object" in err and "'kite'" in err and "other 3" in err
    # none of the classes has an object: exit 2 before any output, naming the split
    records = json.loads(dets.read_text())
    for record in records:
        for d in record["detections"]:
            d["class_name"] = ["cat", "dog", "emu"][d["class_id"]]
    dets.write_text(json.dumps(records))
    none = _classes(tmp_path, ["cat", "dog", "emu"])
    (tmp_path / "m.json").unlink()
    shutil.rmtree(tmp_path / "out")
    assert exit_code(eval_cli.main, _score_args(root, dets, none, tmp_path)) == 2
    *warnings, error = capsys.readouterr().err.splitlines()
    assert error.startswith("error: ") and "no ground-truth object" in error and "'emu'" in error
    assert "ground-truth issues (object skipped)" in warnings[0]  # objects of unknown classes
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# what a checkpoint or export stores about itself wins


def _checkpoint(path: Path, names: list[str], size: int = 64) -> Path:
    torch.manual_seed(0)
    model = YoloBody(len(names), "none").eval()
    info = ModelInfo(
        phi=0, phi_name="none", num_classes=len(names), class_names=names, input_size=size
    )
    save_checkpoint(path, model, info)
    return path


def _onnx(path: Path, names: list[str], size: int = 64) -> Path:
    torch.manual_seed(0)
    model = YoloBody(len(names), "none").eval()
    info = ModelInfo(
        phi=0, phi_name="none", num_classes=len(names), class_names=names, input_size=size
    )
    return export_onnx(
        model, path, Geometry(input_size=size), metadata=export_metadata(info, names, size)
    )


def _weights_args(root: Path, classes: Path, out: Path) -> list[str]:
    return [
        "--voc-root", str(root), "--split", "2007:test", "--classes", str(classes),
        "--workers", "0", "--device", "cpu", "--no-coco", "--save-dir", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A VOC tree with the classes 'box' and 'disc', and its classes file."""
    return make_split(tmp_path_factory.mktemp("tiny"), num_train=1, num_test=2)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pth", "onnx"])
def test_classes_in_another_order_than_the_model_stores_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny: tuple[Path, Path], kind: str
) -> None:
    root, _ = tiny
    make = _checkpoint if kind == "pth" else _onnx
    weights = make(tmp_path / f"model.{kind}", ["box", "disc"])
    swapped = _classes(tmp_path, ["disc", "box"])
    out = tmp_path / "out"
    assert (
        exit_code(eval_cli.main, ["--weights", str(weights), *_weights_args(root, swapped, out)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"error: {weights}") and len(err.splitlines()) == 1, err
    assert "another order" in err and "'box' in the model, 'disc' in --classes" in err
    assert not out.exists()
    # other names altogether: an error naming both lists
    other = _classes(tmp_path, ["cat", "dog"])
    assert (
        exit_code(eval_cli.main, ["--weights", str(weights), *_weights_args(root, other, out)]) == 2
    )
    err = capsys.readouterr().err
    assert "'box', 'disc'" in err and "'cat', 'dog'" in err
    # the model's own names (or none given): evaluated
    same = _classes(tmp_path, ["box", "disc"])
    assert (
        exit_code(eval_cli.main, ["--weights", str(weights), *_weights_args(root, same, out)]) == 0
    )


@pytest.mark.parametrize("kind", ["pth", "onnx"])
def test_detector_checks_classes_and_anchors_against_the_file(tmp_path: Path, kind: str) -> None:
    make = _checkpoint if kind == "pth" else _onnx
    weights = make(tmp_path / f"model.{kind}", ["box", "disc"])
    with pytest.raises(ValueError, match="another order"):
        Detector.from_weights(weights, classes=["disc", "box"])
    anchors = tmp_path / "anchors.txt"
    anchors.write_text(", ".join(f"{w:g},{h:g}" for w, h in DEFAULT_ANCHORS))
    detector = Detector.from_weights(weights, classes=["box", "disc"], anchors=anchors)
    assert detector.class_names == ["box", "disc"]
    anchors.write_text(", ".join(f"{w + 5:g},{h:g}" for w, h in DEFAULT_ANCHORS))
    with pytest.raises(ValueError, match=r"stores the anchors .* but --anchors gives"):
        Detector.from_weights(weights, anchors=anchors)


def test_onnx_input_size_other_than_exported_is_an_error(tmp_path: Path) -> None:
    weights = _onnx(tmp_path / "model.onnx", ["box", "disc"], size=64)
    from utils.inference.predictor import InferenceConfig

    with pytest.raises(ValueError, match=r"exported at 64.*--img-size 96"):
        Detector.from_weights(weights, config=InferenceConfig(img_size=96))


# --------------------------------------------------------------------------------------------
# one checkpoint given twice


def test_the_same_checkpoint_twice_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny: tuple[Path, Path]
) -> None:
    root, classes = tiny
    first = _checkpoint(tmp_path / "a.pth", ["box", "disc"])
    copy = tmp_path / "copy.pth"
    shutil.copyfile(first, copy)
    link = tmp_path / "link.pth"
    os.symlink(first, link)
    out = tmp_path / "out"
    for second, how in (
        (first, "the same file"),
        (link, "the same file"),
        (copy, "files of identical content"),
    ):
        code = exit_code(
            eval_cli.main,
            ["--weights", str(first), str(second), *_weights_args(root, classes, out)],
        )
        err = capsys.readouterr().err
        assert code == 2 and how in err and str(first) in err and str(second) in err, err
        assert len(err.splitlines()) == 1 and not out.exists()


# --------------------------------------------------------------------------------------------
# EXIF orientation: the frame the annotation is in


def _exif_jpeg(path: Path, width: int, height: int, orientation: int) -> str:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", (width, height), (200, 40, 40)).save(path, exif=exif.tobytes())
    return str(path)


def test_exif_oriented_images_are_read_in_their_annotations_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from data.voc import Annotation
    from utils.evaluation.evaluate import _EvalImages, frame_warnings, read_detections_json
    from utils.sources import read_image

    def annotation(path: str, width: int, height: int) -> Annotation:
        empty = np.zeros((0, 4)), np.zeros(0, int), np.zeros(0, bool)
        return Annotation(path, Path(path).stem, *empty, width, height)

    turned = _exif_jpeg(tmp_path / "turned.jpg", 80, 48, 6)  # shown 48 wide, 80 high
    stored = _exif_jpeg(tmp_path / "stored.jpg", 80, 48, 6)
    square = _exif_jpeg(tmp_path / "square.jpg", 64, 64, 6)
    annotations = [
        annotation(turned, 48, 80),  # annotated as predict.py shows it
        annotation(stored, 80, 48),  # annotated on the stored pixels
        annotation(square, 64, 64),  # cannot tell
    ]
    images = _EvalImages(annotations, 64, True)
    (_, _, rotated, frame0), (_, _, as_stored, frame1), (_, _, _, frame2) = (
        images[i] for i in range(3)
    )
    assert (rotated.width, rotated.height) == (48, 80) == read_image(turned).shape[1::-1]
    assert (as_stored.width, as_stored.height) == (80, 48)
    assert (frame0, frame1, frame2) == ("rotated", "stored", "ambiguous")
    lines = frame_warnings({0: frame0, 1: frame1, 2: frame2}, annotations)
    assert len(lines) == 3 and "check their boxes" in lines[2] and square in lines[2]
    # a detections file of these images: the two not in predict.py's frame are named
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": a.image_id, "detections": []} for a in annotations]))
    detected = read_detections_json(str(dets), annotations, ["box"])
    assert any("2 images with an EXIF orientation" in w and stored in w for w in detected.failures)


def test_a_model_whose_classes_the_split_lacks_is_refused_before_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny: tuple[Path, Path]
) -> None:
    root, _ = tiny  # objects of 'box' and 'disc' only
    weights = _checkpoint(tmp_path / "pets.pth", ["cat", "dog"])
    args = _weights_args(root, tmp_path / "unused.txt", tmp_path / "out")
    args = args[:4] + args[6:]  # no --classes: the checkpoint's names
    assert exit_code(eval_cli.main, ["--weights", str(weights), *args]) == 2
    *_, error = capsys.readouterr().err.splitlines()
    assert error.startswith("error: ") and "no ground-truth object" in error and "'dog'" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_other_label_formats_score_ground_truth_as_given(
    tmp_path: Path, capsys: pytest.CaptureFixture, fmt: str
) -> None:
    """--val-labels in COCO or YOLO keep ground truth that reaches past the image as written,
    so the per-class AP is the devkit's, as with the VOC tree."""
    root, dets, gt_rows = _random_split(tmp_path / "voc")
    images = root / "VOC2007" / "JPEGImages"
    ids = sorted(p.stem for p in images.glob("*.jpg"))
    if fmt == "coco":
        labels = tmp_path / "instances.json"
        payload = {
            "images": [
                {"id": k, "file_name": f"{i}.jpg", "width": W, "height": H}
                for k, i in enumerate(ids)
            ],
            "categories": [{"id": c, "name": n} for c, n in enumerate(NAMES)],
            "annotations": [
                # COCO boxes are continuous: [x, y, w, h] of 0-based inclusive pixels
                {
                    "id": n,
                    "image_id": r[0],
                    "category_id": r[5],
                    "bbox": [r[1], r[2], r[3] - r[1] + 1, r[4] - r[2] + 1],
                    "iscrowd": int(r[6]),
                    "area": 1.0,
                }
                for n, r in enumerate(gt_rows)
            ],
        }
        labels.write_text(json.dumps(payload))
        extra = ["--val-images", str(images)]  # iscrowd is read as VOC's difficult
    else:
        labels = tmp_path / "yolo"
        (labels / "images").mkdir(parents=True)
        (labels / "labels").mkdir()
        for i in ids:
            shutil.copy(images / f"{i}.jpg", labels / "images" / f"{i}.jpg")
        for k, i in enumerate(ids):
            lines = [
                f"{r[5]} {(r[1] + r[3] + 1) / 2 / W!r} {(r[2] + r[4] + 1) / 2 / H!r} "
                f"{(r[3] - r[1] + 1) / W!r} {(r[4] - r[2] + 1) / H!r}"
                for r in gt_rows
                if r[0] == k
            ]
            (labels / "labels" / f"{i}.txt").write_text("\n".join(lines) + "\n")
        extra = []
        gt_rows = [(*r[:6], False) for r in gt_rows]  # YOLO has no difficult flag
    classes = _classes(tmp_path, NAMES)
    args = [
        "--detections", str(dets), "--classes", str(classes), "--val-labels", str(labels),
        *extra, "--save-dir", str(tmp_path / "out"), "--json", str(tmp_path / "m.json"),
    ]  # fmt: skip
    assert exit_code(eval_cli.main, args) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "m.json").read_text())
    det_rows = _det_rows(dets)
    for c, name in enumerate(NAMES):
        _, ap12, npos = _brute_force_voc(det_rows, gt_rows, c)
        row = report["per_class"][name]
        assert row["num_gt"] == npos
        assert abs(row["ap_voc12"] - ap12) <= 1e-6, (name, row["ap_voc12"], ap12)
