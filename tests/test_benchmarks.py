"""The benchmark scripts run end to end and write what they promise (smallest settings; their
numbers are not checked here: timings are for the scripts' own comparisons, never tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from benchmarks import bootstrap as benchmark_bootstrap
from benchmarks import inference as benchmark_inference
from benchmarks import int8 as benchmark_int8
from benchmarks import pipeline as benchmark_pipeline
from benchmarks import train as benchmark_train
from nets.registry import attention_names


@pytest.mark.slow
def test_benchmark_inference_runs_every_path_and_phi(
    official_weights, official_cfg, sample_images, tmp_path
) -> None:
    out = tmp_path / "bench.json"
    args = ["--runs", "1", "--warmup", "0", "--block", "1", "--phi-runs", "1"]
    assert benchmark_inference.main([*args, "--no-variants", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["paths"]) == set(benchmark_inference.MAIN_PATHS)
    for path in report["paths"].values():  # --runs 1: one sample, so p10 = median = p90
        for kind in ("end_to_end", "forward"):
            assert path[kind]["p10"] == path[kind]["median"] == path[kind]["p90"], path
    e2e = {name: path["end_to_end"]["median"] for name, path in report["paths"].items()}
    ratio = report["targets"]["torch_fused_ratio"]
    assert ratio == e2e["torch_fused"] / e2e["opencv_dnn"]
    # the same four detections of bus.jpg on every fp32 path of ours
    assert len({report["paths"][p]["detections"] for p in benchmark_inference.FP32_PATHS}) == 1
    assert {"fastest_met", "fastest_fp32_met", "torch_fused_met"} <= set(report["targets"])
    assert len(report["phi_overhead"]) == len(attention_names())
    for row in report["phi_overhead"].values():
        assert set(row) == set(benchmark_inference.OUR_PATHS)


@pytest.mark.slow
def test_benchmark_int8_on_a_trained_checkpoint(
    tmp_path: Path, capsys, trained_tiny_checkpoint
) -> None:
    root, _, weights = trained_tiny_checkpoint(epochs=3)
    out = tmp_path / "int8.json"
    rc = benchmark_int8.main(
        [
            "--weights",
            weights,
            "--data",
            "voc",
            "--voc-root",
            str(root),
            "--calib-split",
            "2007:trainval",
            "--calib-images",
            "3",
            "--out-dir",
            str(tmp_path / "onnx"),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["calibration"] == {"split": "2007:trainval", "images": 3}
    paths = report["paths"]
    assert set(paths) == {"PyTorch fp32", "ORT fp32", "ORT INT8"}
    assert abs(paths["ORT fp32"]["voc12"] - paths["PyTorch fp32"]["voc12"]) < 1e-3
    assert (tmp_path / "onnx" / "model_int8.onnx").is_file()
    # The table shows the JSON's numbers, latency relative to ORT fp32's and mAP relative to
    # PyTorch's: label, mAP50 VOC07 and VOC12 (%), dVOC12, ms, ratio.
    lines = capsys.readouterr().out.splitlines()
    table = {line[:14].strip(): line[14:].split() for line in lines if line[:14].strip() in paths}
    assert set(table) == set(paths)
    for label, p in paths.items():
        ratio = p["latency_ms"] / paths["ORT fp32"]["latency_ms"]
        d_voc12 = 100 * (p["voc12"] - paths["PyTorch fp32"]["voc12"])
        assert table[label] == [
            f"{100 * p['voc07']:.2f}",
            f"{100 * p['voc12']:.2f}",
            f"{d_voc12:+.2f}",
            f"{p['latency_ms']:.2f}",
            f"{ratio:.2f}x",
        ]
    assert table["ORT fp32"][-1] == "1.00x" and table["PyTorch fp32"][2] == "+0.00"


def test_benchmark_int8_explains_a_missing_checkpoint(tmp_path, capsys) -> None:
    assert benchmark_int8.main(["--weights", str(tmp_path / "none.pth")]) == 2
    assert "none.pth not found" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_train_runs_before_and_after(tmp_path, capsys) -> None:
    args = ["--steps", "1", "--warmup", "0", "--workers", "0", "--no-compile"]
    rc = benchmark_train.main([*args, "--demo-root", str(tmp_path / "d")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "reference" in out and "ours, bfloat16" in out
    line = out.split("max relative difference ")[1].splitlines()[0]
    float32, bfloat16 = (float(m) for m in re.findall(r"(\S+) (?:float32|bfloat16)\b", line))
    assert float32 < 1e-2  # the reference loops compute the same loss
    assert bfloat16 < 5e-2  # bfloat16 rounds the features, not the loss
    assert "train.py's default on this machine: ours" in out


def test_benchmark_int8_explains_a_missing_dataset(tmp_path, capsys) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")  # never read: the data check comes first
    rc = benchmark_int8.main(
        ["--weights", str(weights), "--data", "voc", "--voc-root", str(tmp_path / "VOC")]
    )
    assert rc == 2
    assert "no VOCdevkit at" in capsys.readouterr().err


def test_benchmark_bootstrap_runs_and_agrees_with_the_naive_loop(capsys) -> None:
    args = ["--images", "60", "--phis", "2", "--seeds", "2", "--resamples", "100"]
    benchmark_bootstrap.main([*args, "--naive-resamples", "1", "--dets-per-image", "20"])
    out = capsys.readouterr().out
    assert "2 phis x 2 seeds = 4 checkpoints, 20 detections per image" in out
    assert "target 60 s on a 2-core CPU" in out and "naive loop" in out
    check = next(line for line in out.splitlines() if line.startswith("check: "))
    assert float(check.rsplit(" ", 1)[1]) < 1e-12
    assert "phi 1 vs phi 0: " in out and "95% interval [" in out


@pytest.mark.slow
def test_benchmark_pipeline_reports_every_target(official_weights, tmp_path, capsys) -> None:
    out = tmp_path / "pipeline.json"
    args = ["--images", "3", "--frames", "3", "--repeats", "1", "--forward-runs", "1"]
    assert benchmark_pipeline.main([*args, "--img-size", "128", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["throughput"]) == set(benchmark_pipeline.configs())
    targets = report["targets"]
    expected = {
        "a_nosave_vs_forward",
        "b_images_pipelined_vs_serial",
        "c_video_pipelined_vs_serial",
    }
    if torch.get_num_threads() > 1:  # again at --threads 1, and the default against it
        expected |= {f"{name}_threads1" for name in expected} | {"d_threads_default_vs_1"}
    assert set(targets) == expected
    for target in targets.values():
        assert target["ratio"] == target["value"] / target["reference"]
        assert target["met"] == (target["ratio"] >= target["target"])
    printed = capsys.readouterr().out
    assert printed.count("PASS") + printed.count("FAIL") == len(targets)


@pytest.mark.slow
def test_benchmark_pipeline_amp_measures_the_float32_loop_beside_it(
    official_weights, tmp_path, capsys
) -> None:
    out = tmp_path / "pipeline.json"
    args = ["--images", "2", "--frames", "2", "--repeats", "1", "--forward-runs", "1", "--amp"]
    only = ["--only", "images_serial_save", benchmark_pipeline.FLOAT32_SERIAL]
    assert benchmark_pipeline.main([*args, *only, "--img-size", "64", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["precision"] == "bfloat16"
    rates = {k: v["median"] for k, v in report["throughput"].items()}
    assert (
        report["amp_vs_float32"]
        == rates["images_serial_save"] / rates[benchmark_pipeline.FLOAT32_SERIAL]
    )
    assert "--amp vs float32 (serial, saving): " in capsys.readouterr().out
