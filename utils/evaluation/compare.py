"""Comparing checkpoints (attention types, seeds) on one split: the table users publish.

When several checkpoints share a phi (different seeds), each phi gets mean ± sample std, and a
difference between two phis is called "within noise" when it is smaller than the sum of their
standard deviations; with a single run per phi the spread is unknown and the table says so.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from data.voc import load_voc, parse_sets
from nets.checkpoint import ModelInfo, load_model
from nets.summary import count_flops, count_parameters
from nets.yolo import YoloBody
from utils.evaluation.evaluate import EvalConfig, detect_dataset, score
from utils.inference.deploy import OnnxRunner
from utils.inference.predict_loop import benchmark
from utils.inference.predictor import Detector, InferenceConfig
from utils.sources import read_image


@dataclass
class Row:
    name: str
    phi: int
    phi_name: str
    params: int
    gflops: float
    latency_ms: float
    voc07: float
    voc12: float
    coco: float | None


@dataclass
class PhiSummary:
    phi: int
    phi_name: str
    runs: int
    voc12_mean: float
    voc12_std: float | None  # None with one run
    voc07_mean: float
    voc07_std: float | None


def summarize_by_phi(rows: list[Row]) -> list[PhiSummary]:
    groups: dict[int, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row.phi].append(row)
    out = []
    for phi in sorted(groups):
        g = groups[phi]
        v12, v07 = [r.voc12 for r in g], [r.voc07 for r in g]
        std = lambda v: statistics.stdev(v) if len(v) > 1 else None  # noqa: E731
        out.append(
            PhiSummary(
                phi,
                g[0].phi_name,
                len(g),
                statistics.fmean(v12),
                std(v12),
                statistics.fmean(v07),
                std(v07),
            )
        )
    return out


def pairwise_verdicts(summaries: list[PhiSummary]) -> list[str]:
    """One line per pair of phis: the mAP50 (VOC12) gap and whether it exceeds the spread."""
    lines = []
    for i, a in enumerate(summaries):
        for b in summaries[i + 1 :]:
            gap = b.voc12_mean - a.voc12_mean
            head = f"{b.phi_name} vs {a.phi_name}: {gap * 100:+.2f} mAP50 points"
            if a.voc12_std is None or b.voc12_std is None:
                lines.append(f"{head} (single run: spread unknown, cannot tell)")
            elif abs(gap) < a.voc12_std + b.voc12_std:
                lines.append(
                    f"{head} (within noise: spread {(a.voc12_std + b.voc12_std) * 100:.2f})"
                )
            else:
                lines.append(
                    f"{head} (larger than the spread {(a.voc12_std + b.voc12_std) * 100:.2f})"
                )
    return lines


def _pm(mean: float, std: float | None) -> str:
    return f"{mean * 100:.2f}" + (f" ± {std * 100:.2f}" if std is not None else "")


def markdown(rows: list[Row], summaries: list[PhiSummary], protocol: str) -> str:
    lines = [
        f"Protocol: {protocol}",
        "",
        "| name | phi | params | GFLOPs | latency ms | mAP50 VOC07 | mAP50 VOC12 | COCO AP |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        coco = f"{r.coco * 100:.2f}" if r.coco is not None else "-"
        lines.append(
            f"| {r.name} | {r.phi} {r.phi_name} | {r.params:,} | {r.gflops:.2f} | "
            f"{r.latency_ms:.1f} | {r.voc07 * 100:.2f} | {r.voc12 * 100:.2f} | {coco} |"
        )
    lines += [
        "",
        "| phi | runs | mAP50 VOC12 (mean ± std) | mAP50 VOC07 (mean ± std) |",
        "|---|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.phi} {s.phi_name} | {s.runs} | {_pm(s.voc12_mean, s.voc12_std)} | "
            f"{_pm(s.voc07_mean, s.voc07_std)} |"
        )
    lines += ["", *[f"- {v}" for v in pairwise_verdicts(summaries)]]
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[Row], protocol: str, out_dir: Path) -> dict[str, Path]:
    """comparison.csv, comparison.md and comparison.png (mean ± std bars per phi)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = summarize_by_phi(rows)
    paths = {
        "csv": out_dir / "comparison.csv",
        "md": out_dir / "comparison.md",
        "png": out_dir / "comparison.png",
    }
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "name",
                "phi",
                "attention",
                "params",
                "gflops",
                "latency_ms",
                "map50_voc07",
                "map50_voc12",
                "coco_map",
            ]
        )
        for r in rows:
            writer.writerow(
                [
                    r.name,
                    r.phi,
                    r.phi_name,
                    r.params,
                    f"{r.gflops:.3f}",
                    f"{r.latency_ms:.2f}",
                    f"{r.voc07:.5f}",
                    f"{r.voc12:.5f}",
                    "" if r.coco is None else f"{r.coco:.5f}",
                ]
            )
    paths["md"].write_text(markdown(rows, summaries, protocol))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(summaries) + 2, 3.5))
    labels = [f"{s.phi} {s.phi_name}\n(n={s.runs})" for s in summaries]
    ax.bar(
        labels,
        [s.voc12_mean * 100 for s in summaries],
        yerr=[(s.voc12_std or 0) * 100 for s in summaries],
        capsize=4,
        color="#4c72b0",
    )
    ax.set_ylabel("mAP@0.5 (VOC2010+ area)")
    ax.set_title("attention comparison (error bars: std over seeds)")
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=90)
    plt.close(fig)
    return paths


def _load_for_evaluation(
    weights: str, cfg: EvalConfig, class_names: list[str] | None, phi: str | None
) -> tuple[torch.nn.Module | OnnxRunner, ModelInfo, list[str], Detector | None]:
    """The model (or ONNX Runtime session), its info and class names; for an ``.onnx`` export
    also the ``Detector`` that runs it (fp32 or INT8, on the CPU)."""
    if str(weights).endswith(".onnx"):
        config = InferenceConfig(input_size=cfg.input_size, device="cpu")
        detector = Detector.from_weights(weights, classes=class_names, config=config)
        return detector.model, detector.info, detector.class_names, detector
    model, info = load_model(weights, phi=phi)
    names = class_names or info.class_names
    if names is None or len(names) != info.num_classes:
        raise ValueError(f"{weights}: pass a classes file with {info.num_classes} names")
    return model, info, list(names), None


def evaluate_checkpoint(
    weights: str,
    voc_root: str,
    split: str,
    cfg,
    *,
    device,
    class_names: list[str] | None = None,
    phi: str | None = None,
):
    """Loads a checkpoint, scores it on ``split`` and measures it.

    Latency is the median end-to-end time (preprocess, forward, decode + NMS) at batch 1 on
    ``device``, over 20 runs on the split's first image.

    Args:
        weights: our checkpoint, a reference ``.pth``, darknet ``.weights`` or an ``.onnx``
            export (run by ONNX Runtime on the CPU).
        voc_root: the VOCdevkit folder.
        split: ``YEAR:SET`` list to score on.
        cfg: an ``EvalConfig`` whose ``input_size`` may be None (the checkpoint's size).
        device: where the model runs.
        class_names: names by class id (default: the checkpoint's).
        phi: required attention block (None: the file's).

    Returns:
        ``(Row, EvalReport)``: the comparison-table row and the full report.
    """
    model, info, names, detector = _load_for_evaluation(weights, cfg, class_names, phi)
    if detector is not None:  # an ONNX export runs on the CPU
        device = torch.device("cpu")
    annotations = load_voc(voc_root, parse_sets(split), names).annotations
    if not annotations:
        raise ValueError(f"{voc_root} {split}: no images")
    size = cfg.input_size or info.input_size
    cfg = replace(cfg, input_size=size)
    model.to(device)
    detected = detect_dataset(model, annotations, info.geometry, cfg, device=device)
    report = score(detected, names, f"{voc_root} {split} at {size}", cfg.iou_thresh, cfg.coco)
    if detector is None:
        detector = Detector(
            model,
            info,
            class_names=names,
            config=InferenceConfig(input_size=size, device=str(device)),
        )
    stats = benchmark(detector, read_image(annotations[0].image_path), runs=20, warmup=3)
    # an ONNX graph has no modules to count: count an unloaded model of its architecture
    architecture = model
    if isinstance(model, OnnxRunner):
        architecture = YoloBody(
            info.num_classes,
            info.phi_name,
            attention_at=info.attention_at,
            attention_args=info.attention_options,
        )
    flops = count_flops(architecture, size) / 1e9
    row = Row(
        str(weights),
        info.phi,
        info.phi_name,
        count_parameters(architecture),
        flops,
        stats["total"]["median"],
        report.voc07_map50,
        report.voc12_map50,
        report.coco.get("coco_map") if report.coco else None,
    )
    return row, report
