"""Run YOLOv4-tiny on images, folders, globs, videos or a webcam.

Examples:
    python predict.py --source model_data/samples
    python predict.py --source clip.mp4 --weights logs/exp/best.pth --json dets.json
    python predict.py --source 0 --show
    python predict.py --source model_data/samples/bus.jpg --benchmark
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from nets.checkpoint import CheckpointMismatchError, load_model
from nets.darknet import DarknetFormatError
from utils.inference.predict_loop import OutputOptions, benchmark, run_predictions
from utils.inference.predictor import DEFAULT_WEIGHTS, Detector, InferenceConfig, class_names_for
from utils.inference.quantize import CALIBRATION_METHODS, DEFAULT_CALIBRATION_IMAGES
from utils.sources import ImageReadError, SourceError, increment_path, read_image, resolve_source


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_argument_group("input")
    src.add_argument(
        "--source",
        default="model_data/samples",
        help="image, folder, glob ('dir/*.jpg'), video file, or webcam index (0)",
    )
    model = p.add_argument_group("model")
    model.add_argument(
        "--weights",
        default=DEFAULT_WEIGHTS,
        help="darknet .weights, our checkpoint, or a reference-implementation .pth",
    )
    model.add_argument(
        "--phi",
        default=None,
        help="attention: 0-4 or none/se/cbam/eca/ca (default: the checkpoint's; 0 for darknet)",
    )
    model.add_argument(
        "--classes",
        default=None,
        help="class-names file (default: the checkpoint's; model_data/coco.names for COCO)",
    )
    model.add_argument("--anchors", default=None, help="anchors file (w,h pairs at the input size)")
    model.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="network input side, a multiple of 32 (default: the checkpoint's; 416 for darknet)",
    )
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    post = p.add_argument_group("post-processing")
    post.add_argument(
        "--conf", type=float, default=0.25, help="score threshold (objectness * class)"
    )
    post.add_argument("--nms", type=float, default=0.45, help="NMS IoU threshold")
    post.add_argument(
        "--no-letterbox", action="store_true", help="plain resize instead of letterbox"
    )
    post.add_argument("--agnostic-nms", action="store_true", help="NMS across classes")
    post.add_argument(
        "--classes-filter",
        default=None,
        help="keep only these classes: comma-separated names or ids (e.g. person,car)",
    )
    post.add_argument("--max-det", type=int, default=300, help="detections kept per image")
    out = p.add_argument_group("output")
    out.add_argument(
        "--save-dir",
        default="logs/predict",
        help="folder for annotated images/videos (incremented if it exists)",
    )
    out.add_argument(
        "--exist-ok", action="store_true", help="write into --save-dir even if it exists"
    )
    out.add_argument("--no-save", action="store_true", help="do not write annotated images/videos")
    out.add_argument("--json", default=None, help="write all detections to this JSON file")
    out.add_argument("--crop", action="store_true", help="also save each detection as an image")
    out.add_argument(
        "--show", action="store_true", help="show results in a window (if a display exists)"
    )
    out.add_argument(
        "--heatmap",
        action="store_true",
        help="overlay the max-objectness heatmap (what attention changes)",
    )
    out.add_argument(
        "--benchmark",
        action="store_true",
        help="time preprocessing, forward and decode+NMS on the first image, then exit",
    )
    out.add_argument("--benchmark-runs", type=int, default=50, help="timed runs for --benchmark")
    dep = p.add_argument_group("deployment")
    dep.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="inference engine (onnxruntime: --weights .onnx, or exported on the fly)",
    )
    dep.add_argument("--no-fuse", action="store_true", help="keep batch norm separate (torch)")
    dep.add_argument(
        "--export-onnx",
        default=None,
        metavar="PATH",
        help="export the model to ONNX at --img-size and exit",
    )
    dep.add_argument("--onnx-dynamic", action="store_true", help="ONNX export: dynamic batch")
    dep.add_argument(
        "--onnx-decode",
        action="store_true",
        help="ONNX export: decoded boxes (B, N, 5+C) instead of raw maps",
    )
    dep.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    dep.add_argument(
        "--int8",
        default=None,
        metavar="CALIB_SOURCE",
        help="ONNX export: quantize to INT8 (ONNX Runtime, static), calibrating activation "
        "ranges on images from this folder, glob or file (use training images)",
    )
    dep.add_argument(
        "--calib-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="--int8: calibration images, spread evenly over the source",
    )
    dep.add_argument(
        "--calib-method",
        choices=CALIBRATION_METHODS,
        default="percentile",
        help="--int8: how activation ranges are chosen from the calibration images",
    )
    return p.parse_args(argv)


def _class_filter(text: str | None, names: list[str]) -> tuple[int, ...] | None:
    if not text:
        return None
    ids = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item.isdigit() and int(item) < len(names):
            ids.append(int(item))
        elif item in names:
            ids.append(names.index(item))
        else:
            raise ValueError(f"--classes-filter: unknown class {item!r}")
    return tuple(ids)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.export_onnx:
        return _export_onnx(args)
    if args.int8:
        print("error: --int8 quantizes an export: give --export-onnx PATH too", file=sys.stderr)
        return 2
    try:
        source = resolve_source(args.source)
        config = InferenceConfig(
            input_size=args.img_size,
            letterbox=not args.no_letterbox,
            conf_thresh=args.conf,
            nms_thresh=args.nms,
            max_det=args.max_det,
            agnostic_nms=args.agnostic_nms,
            device=args.device,
            backend=args.backend,
            fuse=not args.no_fuse,
        )
        detector = Detector.from_weights(args.weights, args.phi, args.classes, args.anchors, config)
        if args.classes_filter:
            filtered = _class_filter(args.classes_filter, detector.class_names)
            detector.config = replace(detector.config, classes_filter=filtered)
    except (
        SourceError,
        FileNotFoundError,
        ValueError,
        CheckpointMismatchError,
        DarknetFormatError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if args.benchmark and args.benchmark_runs < 1:
        print(f"error: --benchmark-runs must be >= 1, got {args.benchmark_runs}", file=sys.stderr)
        return 2
    if args.benchmark:
        return _benchmark(detector, source, args.benchmark_runs)

    save_dir = None if args.no_save else increment_path(args.save_dir, args.exist_ok)
    opts = OutputOptions(
        save_dir=save_dir,
        json_path=Path(args.json) if args.json else None,
        crop=args.crop,
        show=args.show,
        heatmap=args.heatmap,
    )
    try:
        summary = run_predictions(detector, source, opts)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    done = f"{summary.images} images" + (
        f", {summary.frames} video frames" if summary.frames else ""
    )
    print(
        f"{done}: {summary.detections} detections ({detector.info.describe()}, "
        f"device {detector.device})"
    )
    if save_dir is not None:
        print(f"results saved to {save_dir}/")
    if opts.json_path is not None:
        print(f"detections written to {opts.json_path}")
    if summary.failures:
        print(f"{len(summary.failures)} input(s) failed:", file=sys.stderr)
        for failure in summary.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    """``--export-onnx``: fused model (+ optional decoder) with its metadata, checked; with
    ``--int8`` quantized on calibration images."""
    import tempfile

    from utils.classes import read_class_names
    from utils.inference.deploy import export_onnx, onnx_metadata
    from utils.inference.quantize import pick_evenly, quantize_int8

    try:
        calibration = []
        if args.int8:
            if args.onnx_decode:
                raise ValueError("--int8 quantizes raw-map graphs: leave out --onnx-decode")
            if args.calib_images < 1:
                raise ValueError("--calib-images must be at least 1")
            images = resolve_source(args.int8).images
            if not images:
                raise ValueError(f"{args.int8}: no images to calibrate on")
            calibration = pick_evenly(images, args.calib_images)
        names = read_class_names(args.classes) if args.classes else None
        model, info = load_model(args.weights, args.phi, len(names) if names else None)
        names = class_names_for(names, info.class_names, info.num_classes, args.weights)
        size = args.img_size or info.input_size
        meta = {
            "phi": info.phi,
            "phi_name": info.phi_name,
            "class_names": names,
            "anchors": [list(a) for a in info.anchors],
            "anchors_mask": [list(m) for m in info.anchors_mask],
            "input_size": size,
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(
                model,
                Path(tmp) / "fp32.onnx" if args.int8 else args.export_onnx,
                size,
                args.opset,
                args.onnx_dynamic,
                args.onnx_decode,
                info.anchors,
                info.anchors_mask,
                metadata=meta,
            )
            if args.int8:
                path = quantize_int8(
                    path,
                    args.export_onnx,
                    calibration,
                    args.calib_method,
                    letterbox=not args.no_letterbox,
                )
    except (FileNotFoundError, ValueError, CheckpointMismatchError, DarknetFormatError) as err:
        print(f"error: {err}", file=sys.stderr)  # SourceError is a ValueError
        return 2
    kind = "decoded detections" if args.onnx_decode else "raw maps out32/out16"
    batch = "dynamic batch" if args.onnx_dynamic else "batch 1"
    precision = ""
    if args.int8:
        quant = onnx_metadata(path)["quantization"]
        precision = (
            f", INT8 ({quant['method']} calibration on {quant['calibration_images']} images)"
        )
    print(
        f"exported {path} (opset {args.opset}, {size}x{size}, {batch}, {kind}{precision}; "
        f"{info.describe()}); onnx.checker passed"
    )
    return 0


def _benchmark(detector: Detector, source, runs: int) -> int:
    if not source.images:
        print("error: --benchmark needs an image source", file=sys.stderr)
        return 2
    try:
        image = read_image(source.images[0])
    except ImageReadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stats = benchmark(detector, image, runs=runs)
    size = detector.config.input_size
    print(
        f"benchmark: {source.images[0]} ({image.shape[1]}x{image.shape[0]}) at {size}, batch 1, "
        f"{runs} runs, device {detector.device}, {detector.info.describe()}"
    )
    print(f"{'stage':<12}{'median ms':>11}{'p10':>9}{'p90':>9}")
    for stage, s in stats.items():
        print(f"{stage:<12}{s['median']:>11.2f}{s['p10']:>9.2f}{s['p90']:>9.2f}")
    print(json.dumps({"benchmark": stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
