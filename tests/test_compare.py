"""Attention comparison: per-phi spread, noise verdicts, outputs, and the whole study."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from voc_factory import CLASSES, make_split, run_with_file_size_limit, tiny_train_config

import eval as eval_cli
from tools.study import run_study
from utils.evaluation.compare import Row, pairwise_verdicts, summarize_by_phi, write_outputs
from utils.evaluation.evaluate import EvalConfig

ROOT = Path(__file__).resolve().parents[1]


def _row(name: str, phi: int, voc12: float) -> Row:
    return Row(name, phi, ["none", "se", "cbam"][phi], 1, 1.0, 1.0, voc12 + 0.02, voc12, None)


def test_mean_std_and_noise_verdicts(tmp_path: Path) -> None:
    rows = [
        _row("a", 0, 0.70),
        _row("b", 0, 0.72),
        _row("c", 0, 0.74),
        _row("d", 1, 0.71),
        _row("e", 1, 0.73),
        _row("f", 1, 0.75),
        _row("g", 2, 0.90),
        _row("h", 2, 0.91),
        _row("i", 2, 0.92),
    ]
    summaries = summarize_by_phi(rows)
    assert [s.runs for s in summaries] == [3, 3, 3]
    assert abs(summaries[0].voc12_mean - 0.72) < 1e-12
    assert abs(summaries[0].voc12_std - 0.02) < 1e-12  # sample std
    verdicts = pairwise_verdicts(summaries)
    assert "se vs none: +1.00 mAP50 points (within noise" in verdicts[0]
    assert "cbam vs none: +19.00 mAP50 points (larger than the spread" in verdicts[1]
    single = pairwise_verdicts(summarize_by_phi([_row("a", 0, 0.7), _row("b", 1, 0.8)]))
    assert "cannot tell" in single[0]
    paths = write_outputs(rows, "test protocol", tmp_path)
    md = paths["md"].read_text()
    assert "Protocol: test protocol" in md and "72.00 ± 2.00" in md and "within noise" in md
    with open(paths["csv"]) as f:
        assert len(list(csv.DictReader(f))) == 9
    assert paths["png"].stat().st_size > 1000


@pytest.mark.slow
def test_study_end_to_end_on_tiny_data(tmp_path: Path) -> None:
    root, classes = make_split(tmp_path, num_train=8, num_test=3)
    base = tiny_train_config(root, classes)
    out = tmp_path / "study"
    paths = run_study(base, ["none", "se"], [0, 1], out, EvalConfig(input_size=64, workers=0))
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["phi0_seed0", "phi0_seed1", "phi1_seed0", "phi1_seed1"]
    md = paths["md"].read_text()
    assert "| 0 none | 2 |" in md and "| 1 se | 2 |" in md and " ± " in md
    assert "se vs none" in md
    # a second call reuses the finished runs instead of training again
    mtime = (out / "phi0_seed0" / "weights" / "last.pth").stat().st_mtime
    run_study(base, ["none", "se"], [0, 1], out, EvalConfig(input_size=64, workers=0))
    assert (out / "phi0_seed0" / "weights" / "last.pth").stat().st_mtime == mtime
    # eval.py compares the same checkpoints in one call, and writes JSON per run
    weights = [str(out / n / "weights" / "last.pth") for n in names]
    report = tmp_path / "metrics.json"
    code = eval_cli.main(
        [
            "--weights",
            *weights,
            "--voc-root",
            str(root),
            "--split",
            "2007:test",
            "--classes",
            str(classes),
            "--workers",
            "0",
            "--no-coco",
            "--out-dir",
            str(tmp_path / "cmp"),
            "--json",
            str(report),
        ]
    )
    assert code == 0
    assert (tmp_path / "cmp" / "comparison.md").is_file()
    assert set(json.loads(report.read_text())["runs"]) == set(weights)


@pytest.mark.slow
def test_eval_single_checkpoint_and_detection_file_agree(
    tmp_path: Path, trained_tiny_checkpoint
) -> None:
    import predict

    root, classes, weights = trained_tiny_checkpoint(epochs=2)
    common = [
        "--voc-root",
        str(root),
        "--split",
        "2007:test",
        "--classes",
        str(classes),
        "--workers",
        "0",
    ]
    metrics = tmp_path / "m.json"
    assert (
        eval_cli.main(
            [
                "--weights",
                weights,
                *common,
                "--json",
                str(metrics),
                "--out-dir",
                str(tmp_path / "e1"),
            ]
        )
        == 0
    )
    m = json.loads(metrics.read_text())
    assert {
        "voc07_map50",
        "voc12_map50",
        "coco_map",
        "coco_map50",
        "coco_map75",
        "precision",
        "recall",
        "num_images",
        "num_instances",
        "per_class",
        "protocol",
    } <= set(m)
    assert m["num_images"] == 4 and set(m["per_class"]) <= set(CLASSES)
    for row in m["per_class"].values():
        assert {"ap_voc07", "ap_voc12", "num_gt", "precision", "recall"} <= set(row)
    assert "11-point" in m["protocol"] and "difficult" in m["protocol"]
    assert (tmp_path / "e1" / "pr_curves.png").is_file()
    assert (tmp_path / "e1" / "ap_per_class.png").is_file()

    dets = tmp_path / "dets.json"
    images = root / "VOC2007" / "JPEGImages"
    test_ids = (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()
    only_test = tmp_path / "test_images"
    only_test.mkdir()
    for image_id in test_ids:
        (only_test / f"{image_id}.jpg").write_bytes((images / f"{image_id}.jpg").read_bytes())
    assert (
        predict.main(
            [
                "--source",
                str(only_test),
                "--weights",
                weights,
                "--conf",
                "0.001",
                "--nms",
                "0.5",
                "--max-det",
                "100",
                "--no-save",
                "--json",
                str(dets),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sum(len(r["detections"]) for r in json.loads(dets.read_text())) > 0
    from_file = tmp_path / "f.json"
    assert (
        eval_cli.main(
            [
                "--detections",
                str(dets),
                *common,
                "--json",
                str(from_file),
                "--out-dir",
                str(tmp_path / "e2"),
            ]
        )
        == 0
    )
    f = json.loads(from_file.read_text())
    assert abs(f["voc12_map50"] - m["voc12_map50"]) < 1e-3
    assert abs(f["voc07_map50"] - m["voc07_map50"]) < 1e-3


def test_eval_detection_file_is_refused_or_warned_about_in_one_line(tmp_path: Path, capsys) -> None:
    """eval.py --detections: a file it cannot score is one error line naming the file (exit
    code 2); what it reads in a way the file does not say is a warning with a count."""
    from data.voc import load_voc, parse_sets

    root, classes = make_split(tmp_path, num_train=1, num_test=3)
    annotations = load_voc(root, parse_sets("2007:test"), CLASSES).annotations
    records = [
        {
            "image": a.image_path,
            "image_id": a.image_id,
            "width": a.width,
            "height": a.height,
            "detections": [
                {"xyxy": b.tolist(), "score": 0.9, "class_id": int(k), "class_name": CLASSES[k]}
                for b, k in zip(a.boxes, a.labels)
            ],
        }
        for a in annotations
    ]
    dets, metrics = tmp_path / "dets.json", tmp_path / "m.json"
    args = ["--detections", str(dets), "--voc-root", str(root), "--classes", str(classes)]
    args += ["--no-coco", "--out-dir", str(tmp_path / "out"), "--json", str(metrics)]

    def run(payload) -> tuple[int, str]:
        dets.write_text(payload if isinstance(payload, str) else json.dumps(payload))
        code = eval_cli.main(args)
        return code, capsys.readouterr().err

    assert run(records) == (0, "")  # the ground truth itself
    assert json.loads(metrics.read_text())["voc12_map50"] == 1.0
    # before: scored, with VOC and COCO AP disagreeing about the NaN box
    broken = json.loads(json.dumps(records))
    broken[1]["detections"][0]["xyxy"][2] = float("nan")
    nan = f"error: {dets}: 1 detection with a NaN or infinite coordinate (record 1)\n"
    assert run(broken) == (2, nan)
    # before: the JSON parser's message, without the file
    bad_json = f"error: {dets}: not valid JSON (Expecting value at line 1 column 2)\n"
    assert run("[,") == (2, bad_json)
    # a box past the right edge of its image: clipped, with a warning
    wide = json.loads(json.dumps(records))
    wide[0]["detections"][0]["xyxy"][2] = 200.0
    clipped = f"{dets}: 1 detection with a box partly outside its image, clipped to it (record 0)"
    assert run(wide) == (0, f"warning: {clipped}\n")


@pytest.mark.slow
def test_eval_scores_onnx_exports_like_the_checkpoint(
    tmp_path: Path, trained_tiny_checkpoint
) -> None:
    """eval.py takes .onnx files (fp32 or INT8 exports) next to checkpoints."""
    import predict

    root, _, weights = trained_tiny_checkpoint(epochs=3)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export = ["--weights", weights, "--img-size", "64", "--device", "cpu"]
    assert predict.main([*export, "--export-onnx", str(fp32)]) == 0
    calibration = str(root / "VOC2007" / "JPEGImages")
    assert predict.main([*export, "--export-onnx", str(int8), "--int8", calibration]) == 0
    out = tmp_path / "cmp"
    rc = eval_cli.main(
        [
            "--weights",
            weights,
            str(fp32),
            str(int8),
            "--voc-root",
            str(root),
            "--split",
            "2007:test",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--out-dir",
            str(out),
            "--json",
            str(tmp_path / "m.json"),
        ]
    )
    assert rc == 0
    runs = json.loads((tmp_path / "m.json").read_text())["runs"]
    pth, onnx_fp32, onnx_int8 = (runs[w] for w in (weights, str(fp32), str(int8)))
    assert pth["voc12_map50"] > 0  # something to compare
    assert abs(onnx_fp32["voc12_map50"] - pth["voc12_map50"]) < 1e-3
    assert onnx_fp32["num_images"] == onnx_int8["num_images"] == 4
    with (out / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len({r["params"] for r in rows}) == 1  # same architecture, counted for the .onnx too
    # one CSV row per model, the INT8 one included, with the score the JSON has
    assert set(runs) == {weights, str(fp32), str(int8)}
    expected = sorted(f"{m['voc12_map50']:.5f}" for m in (pth, onnx_fp32, onnx_int8))
    assert sorted(r["map50_voc12"] for r in rows) == expected


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_split(tmp_path_factory.mktemp("tiny_voc"), num_train=1, num_test=2)


def _eval_args(voc_root: Path, classes: Path, out: Path) -> list[str]:
    return [
        "--voc-root",
        str(voc_root),
        "--split",
        "2007:test",
        "--classes",
        str(classes),
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-coco",
        "--out-dir",
        str(out),
    ]


@pytest.mark.parametrize("name", ["empty.onnx", "random.onnx", "truncated.onnx", "random.pth"])
def test_eval_garbage_model_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny_voc: tuple[Path, Path], name: str
) -> None:
    from nets.decode import Geometry
    from nets.yolo import YoloBody
    from utils.inference.deploy import export_onnx

    rng = np.random.default_rng(0)
    if name == "truncated.onnx":
        good = export_onnx(YoloBody(2, 0), tmp_path / "good.onnx", Geometry().at_size(64))
        payload = good.read_bytes()[: good.stat().st_size // 2]
    else:
        payload = b"" if name == "empty.onnx" else rng.bytes(4096)
    path = tmp_path / name
    path.write_bytes(payload)
    code = eval_cli.main(["--weights", str(path), *_eval_args(*tiny_voc, tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {path}: ") and len(err.splitlines()) == 1, err
    assert "weights_only" not in err and "Traceback" not in err


def test_eval_checks_its_outputs_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny_voc: tuple[Path, Path]
) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "m.json").mkdir()
    missing = tmp_path / "missing.pth"  # an error too, but only once the outputs are fine
    args = _eval_args(*tiny_voc, tmp_path / "out")
    for json_path in (Path("/proc/m.json"), tmp_path / "a_file" / "m.json", tmp_path / "m.json"):
        assert eval_cli.main(["--weights", str(missing), *args, "--json", str(json_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {json_path}: ") and len(err.splitlines()) == 1, err
    out_dir = tmp_path / "a_file" / "eval"
    args = _eval_args(*tiny_voc, out_dir)
    assert eval_cli.main(["--weights", str(missing), *args]) == 2
    assert capsys.readouterr().err.startswith(f"error: {out_dir}: ")
    assert eval_cli.main(["--detections", str(missing), *args]) == 2
    assert capsys.readouterr().err.startswith(f"error: {out_dir}: ")
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_eval_json_write_failing_at_the_end_is_one_line(
    tmp_path: Path, tiny_voc: tuple[Path, Path]
) -> None:
    """Metrics that cannot be written once scored (larger than the file-size limit, as on a
    full disk): one error line naming the file, exit code 1, no temporary file left."""
    from nets.checkpoint import ModelInfo, save_checkpoint
    from nets.yolo import YoloBody

    weights = tmp_path / "untrained.pth"
    info = ModelInfo(0, "none", len(CLASSES), tuple(CLASSES), input_size=64)
    save_checkpoint(weights, YoloBody(len(CLASSES), 0), info)
    json_path = tmp_path / "m.json"

    cmd = [sys.executable, "eval.py", "--weights", str(weights), "--json", str(json_path)]
    cmd += _eval_args(*tiny_voc, tmp_path / "out")
    result = run_with_file_size_limit(cmd, 64, ROOT, env={"MPLCONFIGDIR": str(tmp_path)})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: {json_path}: cannot write (File too large)" in result.stderr.splitlines()
    assert not json_path.exists() and not list(tmp_path.glob("*.tmp"))
