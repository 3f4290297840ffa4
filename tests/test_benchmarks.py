"""The benchmark scripts run end to end and write what they promise (smallest settings; their
timings are not checked here: they are for the scripts' own comparisons, never tests), and
their reports' arithmetic (ratios, verdicts) gives hand-computed results on known numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import bootstrap as benchmark_bootstrap
from benchmarks import common as benchmark_common
from benchmarks import inference as benchmark_inference
from benchmarks import int8 as benchmark_int8
from benchmarks import pipeline as benchmark_pipeline
from benchmarks import roofline
from benchmarks import train as benchmark_train
from nets.registry import attention_names
from utils.errors import InputError


@pytest.mark.slow
def test_benchmark_inference_runs_every_path_and_phi(
    official_weights, official_cfg, sample_images, tmp_path
) -> None:
    out = tmp_path / "bench.json"
    args = ["--runs", "1", "--warmup", "0", "--block", "1", "--phi-runs", "1"]
    args += ["--breakdown-runs", "1"]
    assert benchmark_inference.main([*args, "--no-variants", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["paths"]) == set(benchmark_inference.MAIN_PATHS)
    for path in report["paths"].values():  # --runs 1: one sample, so p10 = median = p90
        for kind in ("end_to_end", "forward"):
            assert path[kind]["p10"] == path[kind]["median"] == path[kind]["p90"], path
    # the same four detections of bus.jpg on every fp32 path of ours
    assert len({report["paths"][p]["detections"] for p in benchmark_inference.FP32_PATHS}) == 1
    assert {"fastest_met", "fastest_fp32_met", "torch_fused_met", "int8_met"} <= set(
        report["targets"]
    )
    for path in ("torch_fused", "onnxruntime", "onnxruntime_int8"):  # before and after
        for variant in ("before", "after"):
            row = report["breakdown"][f"{path}/{variant}"]
            assert row["overhead"] == pytest.approx(row["total"] - row["forward"])
    assert report["breakdown"]["onnxruntime_int8/reduced"]["read"] > 0
    roofline = report["roofline"]
    assert set(roofline["peaks_gflops"]) == {"float32", "bfloat16", "int8"}
    assert 6.5 < roofline["gflop"] < 7.3  # YOLOv4-tiny at 416: 6.9 GFLOP
    assert roofline["paths"]["onnxruntime_int8"]["format"] == "int8"
    assert roofline["paths"]["torch_fused"]["format"] == "float32"
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
            "--out",
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
    # a row per path, each against itself where it is the reference
    lines = capsys.readouterr().out.splitlines()
    table = {line[:14].strip(): line[14:].split() for line in lines if line[:14].strip() in paths}
    assert set(table) == set(paths)
    assert table["ORT fp32"][-1] == "1.00x" and table["PyTorch fp32"][2] == "+0.00"


def test_benchmark_int8_table_on_known_numbers(capsys) -> None:
    """mAP in percent, the VOC12 change against PyTorch's in points, latency over ORT fp32's."""
    rows = {
        "PyTorch fp32": SimpleNamespace(voc07=0.5, voc12=0.52, latency_ms=30.0),
        "ORT fp32": SimpleNamespace(voc07=0.5, voc12=0.52, latency_ms=25.0),
        "ORT INT8": SimpleNamespace(voc07=0.4875, voc12=0.5075, latency_ms=10.0),
    }
    benchmark_int8.print_table(rows)
    table = {line[:14].strip(): line[14:].split() for line in capsys.readouterr().out.splitlines()}
    assert table["PyTorch fp32"] == ["50.00", "52.00", "+0.00", "30.00", "1.20x"]
    assert table["ORT fp32"] == ["50.00", "52.00", "+0.00", "25.00", "1.00x"]
    assert table["ORT INT8"] == ["48.75", "50.75", "-1.25", "10.00", "0.40x"]


def test_benchmark_int8_explains_a_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(InputError, match=r"none\.pth not found$"):
        benchmark_int8.main(["--weights", str(tmp_path / "none.pth")])


def test_benchmark_int8_keeps_out_dir_as_a_hidden_alias(capsys) -> None:
    assert benchmark_int8.parse_args(["--out-dir", "x"]).out == "x"
    assert benchmark_int8.parse_args([]).out == "logs/int8"
    with pytest.raises(SystemExit):
        benchmark_int8.parse_args(["--help"])
    assert "--out-dir" not in capsys.readouterr().out


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


def test_benchmark_int8_explains_a_missing_dataset(tmp_path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")  # never read: the data check comes first
    with pytest.raises(InputError, match=r"no VOCdevkit at .*VOC \(--voc-root\)"):
        benchmark_int8.main(
            ["--weights", str(weights), "--data", "voc", "--voc-root", str(tmp_path / "VOC")]
        )


def test_benchmark_bootstrap_runs_and_agrees_with_the_naive_loop(capsys) -> None:
    args = ["--num-images", "60", "--phis", "2", "--seeds", "2", "--resamples", "100"]
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
    args = ["--num-images", "3", "--frames", "3", "--repeats", "1", "--forward-runs", "1"]
    assert benchmark_pipeline.main([*args, "--img-size", "128", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    opencv = {"opencv_images", "opencv_video"}  # the real-time reference, every round
    assert set(report["throughput"]) == set(benchmark_pipeline.configs()) | opencv
    targets = report["targets"]
    expected = {
        "a_nosave_vs_forward",
        "b_images_pipelined_vs_serial",
        "c_video_pipelined_vs_serial",
    }
    if torch.get_num_threads() > 1:  # again at --threads 1, and the default against it
        expected |= {f"{name}_threads1" for name in expected} | {"d_threads_default_vs_1"}
    expected |= {"e_images_vs_opencv", "e_video_vs_opencv"}
    assert set(targets) == expected
    printed = capsys.readouterr().out
    assert printed.count("PASS") + printed.count("FAIL") == len(targets)


@pytest.mark.slow
def test_benchmark_pipeline_amp_measures_the_float32_loop_beside_it(
    official_weights, tmp_path, capsys
) -> None:
    out = tmp_path / "pipeline.json"
    args = ["--num-images", "2", "--frames", "2", "--repeats", "1", "--forward-runs", "1"]
    args.append("--amp")
    only = ["--only", "images_serial_save", benchmark_pipeline.FLOAT32_SERIAL]
    assert benchmark_pipeline.main([*args, *only, "--img-size", "64", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["precision"] == "bfloat16"
    assert set(report["throughput"]) == set(only[1:]) | {"opencv_images", "opencv_video"}
    assert report["amp_vs_float32"] > 0
    assert "--amp vs float32 (serial, saving): " in capsys.readouterr().out


def test_benchmark_pipeline_targets_on_known_rates() -> None:
    """(a) against 1000 / forward ms, (b) and (c) pipelined over serial; a configuration that
    was not measured gives no target."""
    rate = {
        "images_pipelined_nosave_threads1": 9.5,  # forward 100 ms: 10 img/s
        "images_pipelined_save_threads1": 12.0,
        "images_serial_save_threads1": 10.0,
        "video_pipelined_save_threads1": 11.0,
        "video_serial_save_threads1": 10.0,
        "images_serial_save": 99.0,  # another thread count: not mixed in
    }
    found = benchmark_pipeline.pipelining_targets(rate, 100.0, "_threads1")
    rows = {key: (unit, row["ratio"], row["met"]) for key, _, unit, row in found}
    assert rows == {
        "a_nosave_vs_forward_threads1": ("img/s", pytest.approx(0.95), True),  # >= 0.9
        "b_images_pipelined_vs_serial_threads1": ("img/s", pytest.approx(1.2), True),  # >= 1.2
        "c_video_pipelined_vs_serial_threads1": ("fps", pytest.approx(1.1), False),
    }
    assert benchmark_pipeline.pipelining_targets({"images_serial_save": 5.0}, 50.0, "") == []


def test_benchmark_pipeline_realtime_target_on_known_rates() -> None:
    """(e): predict.py's default mode, saving, over OpenCV DNN's end-to-end rate, >= 2.0."""
    rate = {
        "images_pipelined_save": 50.0,
        "images_serial_save": 40.0,
        "video_pipelined_save": 45.0,
        "opencv_images": 25.0,
        "opencv_video": 25.0,
    }
    found = {key: row for key, _, _, row in benchmark_pipeline.realtime_targets(rate, "pipelined")}
    assert found["e_images_vs_opencv"]["ratio"] == pytest.approx(2.0)
    assert found["e_images_vs_opencv"]["met"]
    assert found["e_video_vs_opencv"]["ratio"] == pytest.approx(1.8)
    assert not found["e_video_vs_opencv"]["met"]
    serial = benchmark_pipeline.realtime_targets(rate, "serial")  # no serial video measured
    assert [(key, row["ratio"]) for key, _, _, row in serial] == [
        ("e_images_vs_opencv", pytest.approx(1.6))
    ]


def test_benchmark_pipeline_informative_ratios(capsys) -> None:
    rate = {
        "images_pipelined_save_batch4": 15.0,
        "images_pipelined_save": 12.0,
        "images_serial_save": 24.0,
        benchmark_pipeline.FLOAT32_SERIAL: 16.0,
    }
    assert benchmark_pipeline.informative_ratios(rate) == {
        "batch4_vs_batch1": 1.25,
        "amp_vs_float32": 1.5,
    }
    assert "batch 4 vs batch 1 (pipelined, saving): 1.25x" in capsys.readouterr().out
    assert benchmark_pipeline.informative_ratios({"images_serial_save": 1.0}) == {}


def test_benchmark_inference_targets_on_known_medians() -> None:
    """Each path's end-to-end median over OpenCV DNN's, against the targets (<= 0.80x for the
    fastest path and the fastest fp32 path, <= 1.00x for PyTorch fused)."""
    e2e = {
        "torch_eager": 60.0,
        "torch_fused": 45.0,
        "onnxruntime": 42.0,
        "onnxruntime_int8": 30.0,
        "opencv_dnn": 50.0,
    }
    results = {k: {"end_to_end": {"median": v}} for k, v in e2e.items()}
    targets = benchmark_inference.targets_report(results)
    assert targets["fastest_path"] == "onnxruntime_int8"
    assert targets["fastest_ratio"] == pytest.approx(0.6) and targets["fastest_met"]
    assert targets["fastest_fp32_path"] == "onnxruntime"
    assert targets["fastest_fp32_ratio"] == pytest.approx(0.84)
    assert not targets["fastest_fp32_met"]
    assert targets["torch_fused_ratio"] == pytest.approx(0.9) and targets["torch_fused_met"]
    assert targets["int8_ratio"] == pytest.approx(0.6) and not targets["int8_met"]  # > 0.45
    results["onnxruntime_int8"]["end_to_end"]["median"] = 22.5
    assert benchmark_inference.targets_report(results)["int8_met"]  # 0.45x: met


def test_benchmark_roofline_on_known_numbers() -> None:
    rows = roofline.roofline_rows(
        {"torch_fused": 22.6, "onnxruntime_int8": 11.7, "opencv_dnn": 34.4},
        {"torch_fused": "float32", "onnxruntime_int8": "int8", "opencv_dnn": "float32"},
        6.91,
        {"float32": 448.0, "bfloat16": 901.0, "int8": 1369.0},
    )
    assert rows["torch_fused"]["floor_ms"] == pytest.approx(15.42, abs=0.01)
    assert rows["torch_fused"]["x_floor"] == pytest.approx(1.465, abs=0.001)
    assert rows["onnxruntime_int8"]["x_floor"] == pytest.approx(2.318, abs=0.001)


def test_benchmark_counts_are_checked_before_any_work() -> None:
    with pytest.raises(InputError, match=r"^--runs 0: must be at least 1; --block 0: must"):
        benchmark_inference.parse_args(["--runs", "0", "--block", "0"])
    with pytest.raises(InputError, match=r"^--num-images 0: must be at least 1$"):
        benchmark_pipeline.parse_args(["--num-images", "0"])
    with pytest.raises(InputError, match=r"^--steps 0: must be at least 1$"):
        benchmark_train.main(["--steps", "0"])


def test_benchmark_cpu_description_from_cpuinfo() -> None:
    """Physical cores are the distinct (physical id, core id) pairs; SIMD flags are those of
    the first processor, in a fixed order."""
    cpuinfo = "\n".join(
        f"processor\t: {n}\nmodel name\t: Test CPU\nflags\t\t: fpu fma avx2\n"
        f"physical id\t: {n // 4}\ncore id\t\t: {n % 4 // 2}\n"
        for n in range(8)
    )  # 2 sockets x 2 cores x 2 hyper-threads
    described = benchmark_common.cpu_description(cpuinfo)
    assert described["physical_cores"] == 4 and described["simd"] == ["avx2", "fma"]
    assert benchmark_common.cpu_description("")["physical_cores"] is None


def test_benchmark_finish_writes_the_report_with_the_load_after(tmp_path, capsys) -> None:
    out = tmp_path / "report.json"
    benchmark_common.finish({"machine": {"cpu": "x"}, "value": 1.5}, str(out))
    report = json.loads(out.read_text())
    assert report["value"] == 1.5 and report["machine"]["cpu"] == "x"
    assert "load_average_after" in report["machine"]
    assert f"written to {out}" in capsys.readouterr().out
