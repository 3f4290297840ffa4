"""CPU inference speed of YOLOv4-tiny, batch 1: ``python -m benchmarks.inference``.

Measures in one run, on the same image, with the official COCO darknet weights at 416:

1. PyTorch eager: our ``Detector`` with ``fuse=False`` (``torch.inference_mode``);
2. PyTorch fused: our default ``Detector`` (batch norm folded into the convolutions);
3. ONNX Runtime: our ``Detector`` with the ``onnxruntime`` backend (fused graph, exported here);
4. ONNX Runtime INT8: the same graph quantized by ``utils.inference.quantize``
   (``predict.py --int8``), calibrated (minmax) on the images in ``--calib`` (for its latency:
   its accuracy is measured on a trained model by ``python -m benchmarks.int8``);
5. OpenCV DNN 4.x on the darknet cfg + weights through ``cv2.dnn_DetectionModel`` (plain resize
   to 416, scale 1/255, swapRB, conf 0.25, NMS 0.45): the reference that the speed targets
   are ratios of (see ``TARGET_FASTEST``, ``TARGET_TORCH_FUSED``).

Each path is timed end to end (``cv2.imread`` of the JPEG every iteration, preprocessing,
forward, decode, NMS) and forward only (network on an already preprocessed input). The paths run
round-robin, each round in a new random order, so that load from other jobs on the machine hits
all of them alike (``--block N``: N iterations per turn, the first of each turn discarded, which
keeps one runtime's still-spinning threads out of the next one's timings); warm-up iterations
are discarded and the median, p10 and p90 of ``--runs`` iterations are reported. Variants that
are not library defaults (NCHW layout, other thread settings) run in the same loop so that a
suggested library change can be judged on them.

Targets, each end-to-end median over OpenCV DNN's in the same run: the fastest path <= 0.80x,
PyTorch fused (float32, the default) <= 1.00x, ONNX Runtime INT8 <= 0.45x.

Then the end-to-end breakdown (``--no-breakdown`` skips it): for PyTorch fused, ONNX Runtime and
INT8, the median of each stage (JPEG read, preprocess, forward, decode + NMS, and what no stage
accounts for) timed inside the end-to-end loop, before (a fresh canvas and input tensor per
image, as ``Detector.preprocess``, torch at its own thread count) and after
(``Detector.__call__``: its reused ``InputCanvas``, and torch at one thread beside an ONNX
Runtime session), and for INT8 with the opt-in reduced JPEG decode; the overhead is total -
forward.

Then the roofline (``--no-roofline`` skips it): float32 and bfloat16 (torch ``mm``) and INT8
(ONNX Runtime ``MatMulInteger``) matrix-multiply peaks measured now, the model's GFLOPs, and each
path's forward median as a multiple of its floor (GFLOPs / its format's peak).

Then, with random weights (80 classes), the latency that the attention blocks add (phi 1-4 over
phi 0) on the eager, fused, ONNX Runtime and INT8 paths, forward only and end to end; ``--profile``
prints the operators that take the time in the fused PyTorch forward.

Examples:
    python -m benchmarks.inference
    python -m benchmarks.inference --runs 100 --json logs/bench_inference.json --profile
    python -m benchmarks.inference --threads 1 --no-phi --block 5
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import check_at_least, check_files, finish, start
from benchmarks.engines import INPUT_SIZE, Engine, official_engines, phi_engines
from benchmarks.roofline import FORMATS, PEAK_SIZE, conv_gflops, matmul_peaks, roofline_rows
from nets.options import ModelOptions
from nets.registry import attention_names
from utils.config import CommandParser, add_options, run_cli
from utils.device import ThreadConfig
from utils.inference.predictor import (
    DEFAULT_WEIGHTS,
    Detector,
)
from utils.paths import OFFICIAL_CFG, SAMPLES
from utils.sources import read_image_reduced
from utils.timing import StageTimer

DEFAULT_CFG = str(OFFICIAL_CFG)
DEFAULT_IMAGE = str(SAMPLES / "bus.jpg")
DEFAULT_CALIB = str(SAMPLES)
# Reference numbers measured on the CI machine type (2-core AVX2 CPU), ms per image at 416,
# batch 1.
REFERENCE_MS = {
    "opencv_dnn_end_to_end": 75.0,  # OpenCV 4.14 DNN, bus.jpg
    "torch_eager_forward": 90.0,  # plain PyTorch eager forward of the lineage model
    "fp32_floor_forward": 61.0,  # 6.9 GFLOP at the measured ~113 GFLOP/s fp32 GEMM peak
}
# Speed targets: end-to-end median as a fraction of OpenCV DNN's, measured in the same run.
TARGET_FASTEST = 0.8  # the fastest of our paths
TARGET_TORCH_FUSED = 1.0  # our default Detector
TARGET_INT8 = 0.45  # the INT8 export (ONNX Runtime), full-resolution decode
MAIN_PATHS = ("torch_eager", "torch_fused", "onnxruntime", "onnxruntime_int8", "opencv_dnn")
OUR_PATHS = MAIN_PATHS[:4]
FP32_PATHS = MAIN_PATHS[:3]


def measure(
    engines: list[Engine], runs: int, warmup: int, block: int = 1, seed: int = 0
) -> dict[str, dict]:
    """Round-robin timing: every round runs every engine once, in a new random order, so that
    machine load falls on all engines alike. A turn is ``block`` iterations of one engine (end
    to end, then forward only); with ``block`` > 1 the first of each turn is not recorded, which
    keeps what the previous engine left behind (threads still spinning, cold caches) out.

    Returns:
        Per engine ``{"end_to_end": stats, "forward": stats, "detections": n}``, stats in ms;
        ``runs`` samples each after ``warmup`` discarded ones.
    """
    timers = {e.name: StageTimer() for e in engines}
    detections = {}
    rng = np.random.default_rng(seed)
    seen = dict.fromkeys(timers, 0)
    while min(t.count("forward") for t in timers.values()) < runs:
        for k in rng.permutation(len(engines)):
            engine, timer = engines[k], timers[engines[k].name]
            for j in range(block + (block > 1)):
                seen[engine.name] += 1
                keep = seen[engine.name] > warmup and (block == 1 or j > 0)
                keep = keep and timer.count("forward") < runs
                with timer.stage("end_to_end", record=keep):
                    detections[engine.name] = engine.end_to_end()
                with timer.stage("forward", record=keep):
                    engine.forward()
    results = {}
    for name, timer in timers.items():
        stats = timer.summary()
        results[name] = {
            "end_to_end": stats["end_to_end"].as_dict(),
            "forward": stats["forward"].as_dict(),
            "detections": detections[name],
        }
    return results


# --------------------------------------------------------------------------- overhead

BREAKDOWN_STAGES = ("read", "preprocess", "forward", "decode_nms")


def timed_pass(detector: Detector, image_path: str, variant: str, timer: StageTimer, keep: bool):
    """One end-to-end pass, stage by stage. ``variant``: ``before`` (a fresh canvas and input
    tensor per image, as ``Detector.preprocess`` makes them, and torch at its own thread count:
    the library's path until the reused buffers and ``Detector.torch_threads``), ``after``
    (``Detector.__call__``'s: the reused ``InputCanvas``, within ``torch_threads``, which gives
    torch one thread beside an ONNX Runtime session) or ``reduced`` (after, with the opt-in
    reduced JPEG decode)."""
    threads = detector.torch_threads() if variant != "before" else contextlib.nullcontext()
    with threads, timer.stage("total", record=keep):
        with timer.stage("read", record=keep):
            if variant == "reduced":
                image, original = read_image_reduced(image_path, INPUT_SIZE)
            else:
                image, original = cv2.imread(image_path), None
        with timer.stage("preprocess", record=keep):
            if variant == "before":
                batch, metas = detector.preprocess([image])
            else:
                batch, meta = detector.input_canvas()(image, original)
                metas = [meta]
        with timer.stage("forward", record=keep):
            outputs = detector.forward(batch)
        with timer.stage("decode_nms", record=keep):
            detector.postprocess(outputs, metas)


def measure_breakdown(
    engines: list[Engine], image_path: str, runs: int, warmup: int, seed: int = 1
) -> dict[str, dict]:
    """Where the end-to-end time goes, per path and variant (before / after the reused input
    buffers and torch's thread setting; reduced decode for INT8), timed inside the end-to-end
    loop (a stage timed alone runs with warm caches and reads low), all interleaved in random
    order.

    Returns:
        ``{"<path>/<variant>": {stage: median ms, ..., "total", "overhead", "other"}}``:
        ``overhead`` is total - forward, ``other`` what no stage accounts for (Python).
    """
    by_name = {e.name: e for e in engines}
    cases = [
        (path, variant)
        for path in ("torch_fused", "onnxruntime", "onnxruntime_int8")
        for variant in ("before", "after") + (("reduced",) if path.endswith("int8") else ())
    ]
    timers = {case: StageTimer() for case in cases}
    rng = np.random.default_rng(seed)
    for i in range(warmup + runs):
        for k in rng.permutation(len(cases)):
            path, variant = cases[k]
            for j in range(2):  # the first of a turn warms this path's threads back up
                keep = i >= warmup and j == 1
                detector = by_name[path].detector
                timed_pass(detector, image_path, variant, timers[cases[k]], keep)
    report = {}
    for (path, variant), timer in timers.items():
        med = {stage: stats.median for stage, stats in timer.summary().items()}
        med["overhead"] = med["total"] - med["forward"]
        med["other"] = med["total"] - sum(med[s] for s in BREAKDOWN_STAGES)
        report[f"{path}/{variant}"] = med
    return report


def print_breakdown(report: dict[str, dict], labels: dict[str, str]) -> None:
    columns = (*BREAKDOWN_STAGES, "other", "total", "overhead")
    print(f"{'path / variant':<40}" + "".join(f"{c:>11}" for c in columns))
    for key, row in report.items():
        path, variant = key.split("/")
        name = f"{labels[path]}, {variant}"
        print(f"{name:<40}" + "".join(f"{row[c]:>11.2f}" for c in columns))
    for path in ("torch_fused", "onnxruntime", "onnxruntime_int8"):
        before, after = report[f"{path}/before"], report[f"{path}/after"]
        print(
            f"  {labels[path]}: overhead {before['overhead']:.2f} -> {after['overhead']:.2f} ms "
            f"({after['overhead'] / before['overhead']:.2f}x)"
        )


# --------------------------------------------------------------------------- roofline


def print_roofline(rows: dict[str, dict], peaks: dict, gflop: float, labels: dict) -> None:
    print(
        f"\nroofline: {gflop:.2f} GFLOP per forward (convolutions); {PEAK_SIZE}x{PEAK_SIZE} "
        "matrix-multiply peaks measured now: "
        + ", ".join(f"{f} {peaks[f]:.0f} G{'OP' if f == 'int8' else 'FLOP'}/s" for f in FORMATS)
    )
    print(f"  {'path':<34}{'format':>9}{'floor ms':>10}{'fwd ms':>8}{'x floor':>9}")
    for path, row in rows.items():
        print(
            f"  {labels[path]:<34}{row['format']:>9}{row['floor_ms']:>10.1f}"
            f"{row['forward_ms']:>8.1f}{row['x_floor']:>8.2f}x"
        )


# --------------------------------------------------------------------------- profile


def profile_forward(detector: Detector, image_path: str, runs: int, top: int) -> list[dict]:
    """Top operators by self CPU time over ``runs`` fused forwards (per forward)."""
    from torch.profiler import ProfilerActivity, profile

    batch, _ = detector.preprocess([cv2.imread(image_path)])
    for _ in range(3):
        detector.forward(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            detector.forward(batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "calls_per_forward": e.count / runs,
            "self_ms_per_forward": e.self_cpu_time_total / 1000 / runs,
            "percent": 100 * e.self_cpu_time_total / total,
        }
        for e in events[:top]
    ]


# --------------------------------------------------------------------------- report


def print_table(results: dict[str, dict], engines: list[Engine], opencv_e2e: float) -> None:
    head = (
        f"{'path':<32}{'e2e med':>8}{'p10':>7}{'p90':>7} |{'fwd med':>8}{'p10':>7}{'p90':>7}"
        f" |{'x OpenCV':>9}{'dets':>5}"
    )
    print(head)
    print("-" * len(head))
    shown_variants = False
    for engine in engines:
        if engine.variant and not shown_variants:
            print("variants (not library defaults):")
            shown_variants = True
        r = results[engine.name]
        e2e, fwd = r["end_to_end"], r["forward"]
        print(
            f"{engine.label:<32}{e2e['median']:>8.1f}{e2e['p10']:>7.1f}{e2e['p90']:>7.1f} |"
            f"{fwd['median']:>8.1f}{fwd['p10']:>7.1f}{fwd['p90']:>7.1f} |"
            f"{e2e['median'] / opencv_e2e:>8.2f}x{r['detections']:>5}"
        )


def targets_report(results: dict[str, dict]) -> dict:
    opencv = results["opencv_dnn"]["end_to_end"]["median"]
    ours = {k: results[k]["end_to_end"]["median"] / opencv for k in OUR_PATHS}
    fastest = min(ours, key=ours.get)
    fp32 = min(FP32_PATHS, key=ours.get)
    return {
        "fastest_path": fastest,
        "fastest_ratio": ours[fastest],
        "fastest_target": TARGET_FASTEST,
        "fastest_met": ours[fastest] <= TARGET_FASTEST,
        "fastest_fp32_path": fp32,
        "fastest_fp32_ratio": ours[fp32],
        "fastest_fp32_met": ours[fp32] <= TARGET_FASTEST,
        "torch_fused_ratio": ours["torch_fused"],
        "torch_fused_target": TARGET_TORCH_FUSED,
        "torch_fused_met": ours["torch_fused"] <= TARGET_TORCH_FUSED,
        "int8_ratio": ours["onnxruntime_int8"],
        "int8_target": TARGET_INT8,
        "int8_met": ours["onnxruntime_int8"] <= TARGET_INT8,
    }


def phi_report(results: dict[str, dict], phis: list[int]) -> dict:
    """Per phi and path: median ms and the overhead over phi 0 (ms and %)."""
    report = {}
    for phi in phis:
        name = attention_names()[phi]
        report[f"{phi} ({name})"] = row = {}
        for path in OUR_PATHS:
            row[path] = {}
            for kind in ("forward", "end_to_end"):
                ms = results[f"phi{phi}/{path}"][kind]["median"]
                base = results[f"phi0/{path}"][kind]["median"]
                row[path][kind] = {
                    "median_ms": ms,
                    "overhead_ms": ms - base,
                    "overhead_percent": 100 * (ms - base) / base,
                }
    return report


def print_phi_report(report: dict) -> None:
    paths = OUR_PATHS
    print(f"{'phi':<10}" + "".join(f"|{p:^29}" for p in paths))
    print(f"{'':<10}" + f"|{'fwd ms (+ms)':>14}{'e2e ms (+ms)':>15}" * len(paths))
    for phi, row in report.items():
        cells = ""
        for path in paths:
            fwd, e2e = row[path]["forward"], row[path]["end_to_end"]
            cells += f"|{fwd['median_ms']:>6.1f} ({fwd['overhead_ms']:+5.1f})"
            cells += f"{e2e['median_ms']:>7.1f} ({e2e['overhead_ms']:+5.1f})"
        print(f"{phi:<10}{cells}")


def print_targets(results: dict[str, dict], targets: dict, engines: list[Engine]) -> None:
    """Each target as met or MISSED, then the stored reference numbers next to this run's."""
    opencv_e2e = results["opencv_dnn"]["end_to_end"]["median"]
    label = {e.name: e.label for e in engines}
    print("\ntargets, end-to-end median / OpenCV DNN's:")
    print(
        f"  fastest path <= {TARGET_FASTEST:.2f}x: {label[targets['fastest_path']]} "
        f"{targets['fastest_ratio']:.2f}x  {'met' if targets['fastest_met'] else 'MISSED'}"
    )
    print(
        f"  fastest fp32 path (no accuracy change) <= {TARGET_FASTEST:.2f}x: "
        f"{label[targets['fastest_fp32_path']]} {targets['fastest_fp32_ratio']:.2f}x  "
        f"{'met' if targets['fastest_fp32_met'] else 'MISSED'}"
    )
    print(
        f"  PyTorch fused <= {TARGET_TORCH_FUSED:.2f}x: {targets['torch_fused_ratio']:.2f}x  "
        f"{'met' if targets['torch_fused_met'] else 'MISSED'}"
    )
    print(
        f"  ONNX Runtime INT8 <= {TARGET_INT8:.2f}x: {targets['int8_ratio']:.2f}x  "
        f"{'met' if targets['int8_met'] else 'MISSED'}"
    )
    best_forward = min(results[k]["forward"]["median"] for k in FP32_PATHS)
    print("reference (measured on the CI machine type, a 2-core AVX2 CPU) vs here:")
    print(
        f"  OpenCV DNN end to end ~{REFERENCE_MS['opencv_dnn_end_to_end']:.0f} ms"
        f" | here {opencv_e2e:.1f} ms"
    )
    print(
        f"  PyTorch eager forward ~{REFERENCE_MS['torch_eager_forward']:.0f} ms"
        f" | here {results['torch_eager']['forward']['median']:.1f} ms"
    )
    print(
        f"  fp32 compute floor    ~{REFERENCE_MS['fp32_floor_forward']:.0f} ms"
        f" | our best forward here {best_forward:.1f} ms"
    )


def print_profile(top: list[dict]) -> None:
    print("\nPyTorch fused forward, top operators by self CPU time (per forward):")
    print(f"  {'operator':<34}{'calls':>6}{'self ms':>9}{'%':>7}")
    for row in top:
        print(
            f"  {row['op']:<34}{row['calls_per_forward']:>6.0f}"
            f"{row['self_ms_per_forward']:>9.2f}{row['percent']:>7.1f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CommandParser(description=__doc__)
    p.add_argument("--runs", type=int, default=50, help="timed iterations per path")
    p.add_argument("--warmup", type=int, default=5, help="discarded iterations per path")
    p.add_argument(
        "--block",
        type=int,
        default=5,
        help="iterations per turn of a path, the first dropped (1: strict round-robin, noisier: "
        "each call then follows another runtime whose threads may still be spinning)",
    )
    p.add_argument("--image", default=DEFAULT_IMAGE, help="JPEG read from disk every iteration")
    p.add_argument(
        "--calib",
        default=DEFAULT_CALIB,
        help="INT8 calibration images (folder, glob or file) for the ONNX Runtime INT8 path",
    )
    add_options(
        p,
        ModelOptions,
        include=("weights",),
        defaults={"weights": DEFAULT_WEIGHTS},
        helps={"weights": "official darknet .weights"},
    )
    p.add_argument("--cfg", default=DEFAULT_CFG, help="darknet .cfg of --weights (for OpenCV DNN)")
    add_options(
        p,
        ThreadConfig,
        helps={"threads": "torch, OpenCV and ORT intra-op threads (default: each library's own)"},
    )
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    p.add_argument(
        "--profile", action="store_true", help="top operators of the fused PyTorch forward"
    )
    p.add_argument("--profile-top", type=int, default=15, help="operators shown by --profile")
    p.add_argument("--no-variants", action="store_true", help="skip the non-default variants")
    p.add_argument("--no-phi", action="store_true", help="skip the attention-overhead section")
    p.add_argument(
        "--no-breakdown", action="store_true", help="skip the end-to-end stage breakdown"
    )
    p.add_argument("--breakdown-runs", type=int, default=30, help="timed passes per breakdown case")
    p.add_argument(
        "--no-roofline", action="store_true", help="skip the matrix-multiply peaks and floors"
    )
    p.add_argument(
        "--phi-runs", type=int, default=20, help="timed iterations per path in the phi section"
    )
    args = p.parse_args(argv)
    check_at_least(args, runs=1, phi_runs=1, block=1, warmup=0, breakdown_runs=1)
    return args


def measure_official(args: argparse.Namespace, folder: Path, report: dict) -> Detector:
    """The official-weights section: every path (and variant) timed, the table and the
    targets printed and added to ``report``; returns the fused Detector for ``--profile``."""
    engines, fused = official_engines(args, folder, not args.no_variants)
    print(
        f"\nofficial COCO weights; {args.runs} runs after {args.warmup} warm-ups, paths "
        f"interleaved in random order, {args.block} iteration(s) per turn; ms per image"
    )
    print("e2e = cv2.imread + preprocess + forward + decode + NMS; fwd = network only")
    results = measure(engines, args.runs, args.warmup, args.block)
    print_table(results, engines, results["opencv_dnn"]["end_to_end"]["median"])
    targets = targets_report(results)
    report.update(paths=results, targets=targets, reference_ms=REFERENCE_MS)
    print_targets(results, targets, engines)
    labels = {e.name: e.label for e in engines}
    if not args.no_breakdown:
        print(
            f"\nend-to-end breakdown, median ms of {args.breakdown_runs} passes per case timed "
            "stage by stage inside the loop; before: a fresh canvas and input tensor per "
            "image, torch at its own threads; after: the reused InputCanvas, torch at 1 "
            "thread beside ONNX Runtime; reduced: opt-in reduced JPEG decode "
            "(changes the model's input)"
        )
        breakdown = measure_breakdown(engines, args.image, args.breakdown_runs, 2)
        report["breakdown"] = breakdown
        print_breakdown(breakdown, labels)
    if not args.no_roofline:
        peaks = matmul_peaks(threads=args.threads)
        gflop = conv_gflops(fused.torch_model("the GFLOP count"), INPUT_SIZE)
        forward = {e.name: results[e.name]["forward"]["median"] for e in engines}
        rows = roofline_rows(forward, {e.name: e.number_format for e in engines}, gflop, peaks)
        report["roofline"] = {"gflop": gflop, "peaks_gflops": peaks, "paths": rows}
        print_roofline(rows, peaks, gflop, labels)
    return fused


def measure_phis(args: argparse.Namespace, folder: Path, report: dict) -> None:
    """The attention-overhead section: random-weight models of every phi, timed alike."""
    phis = list(range(len(attention_names())))
    print(
        f"\nattention overhead: random weights, 80 classes, {INPUT_SIZE}, "
        f"{args.phi_runs} runs, interleaved as above; median ms (+ms over phi 0)"
    )
    engines = phi_engines(args, folder, phis)
    phi_results = measure(engines, args.phi_runs, min(args.warmup, 2), args.block)
    report["phi_overhead"] = phi_report(phi_results, phis)
    report["phi_paths"] = phi_results
    print_phi_report(report["phi_overhead"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_files(args.image, args.weights, args.cfg, hint="model_data files: `make weights`")
    image = cv2.imread(args.image)
    title = (
        f"YOLOv4-tiny {INPUT_SIZE}, batch 1, CPU: {args.image} ({image.shape[1]}x{image.shape[0]})"
    )
    report: dict = {
        "machine": start(title, args.threads, onnxruntime=True),
        "runs": args.runs,
        "warmup": args.warmup,
        "block": args.block,
        "image": args.image,
    }
    with tempfile.TemporaryDirectory() as tmp:
        fused = measure_official(args, Path(tmp), report)
        if args.profile:
            top = profile_forward(fused, args.image, runs=10, top=args.profile_top)
            report["profile_torch_fused_forward"] = top
            print_profile(top)
        if not args.no_phi:
            measure_phis(args, Path(tmp), report)
    finish(report, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
