"""Run YOLOv4-tiny on images, folders, globs, videos or a webcam.

Examples:
    python predict.py --source model_data/samples
    python predict.py --source clip.mp4 --weights logs/exp/best.pth --json dets.json
    python predict.py --source 0 --show
    python predict.py --source model_data/samples/bus.jpg --benchmark
    python predict.py --source photos --no-save --json - | jq '.[].detections | length'
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

from nets.checkpoint import CheckpointMismatchError, load_model
from nets.darknet import DarknetFormatError
from nets.registry import describe_phis, load_attention_plugins
from utils.classes import read_anchors, read_class_names
from utils.config import HelpFormatter, add_options, argument_group, from_args, run_cli
from utils.device import ThreadConfig, configure_threads
from utils.inference.deploy import onnx_metadata
from utils.inference.export import ExportConfig, calibration_images, export_model
from utils.inference.predict_loop import (
    ATTENTION_DIR,
    CROPS_DIR,
    OutputOptions,
    PipelineOptions,
    benchmark,
    json_to_stdout,
    run_predictions,
)
from utils.inference.predictor import DEFAULT_WEIGHTS, Detector, InferenceConfig, class_names_for
from utils.paths import (
    ROOT,
    SAMPLES,
    OutputPathError,
    check_apart,
    check_output_path,
    check_outputs_distinct,
    write_failure,
)
from utils.sources import (
    ImageReadError,
    Source,
    SourceError,
    increment_path,
    read_image,
    resolve_source,
    source_inputs,
)
from utils.training.config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``InferenceConfig`` and ``OutputOptions`` (defaults and help written there),
    plus the model, output-folder, benchmark and export options of this command."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    src = argument_group(p, "input")
    src.add_argument(
        "--source",
        default=str(SAMPLES.relative_to(ROOT)),
        help="image, folder, glob ('dir/*.jpg'), video file, or webcam index (0) "
        "(default: %(default)s)",
    )
    model = argument_group(p, "model")
    model.add_argument(
        "--weights",
        default=DEFAULT_WEIGHTS,
        help="darknet .weights, our checkpoint, a reference-implementation .pth or an .onnx "
        "export (default: model_data/yolov4-tiny.weights)",
    )
    model.add_argument(
        "--phi",
        default=None,
        help=f"attention block ({describe_phis()}; default: the checkpoint's, 0 for darknet)",
    )
    model.add_argument(
        "--classes",
        default=None,
        help="class-names file (default: the checkpoint's; model_data/coco.names for COCO)",
    )
    model.add_argument("--anchors", default=None, help="anchors file (w,h pairs at the input size)")
    add_options(p, TrainConfig, include=("attention_plugin",))  # as training declares it
    add_options(p, InferenceConfig)
    argument_group(p, "post-processing").add_argument(
        "--classes-filter",
        default=None,
        help="keep only these classes: comma-separated names or ids (e.g. person,car)",
    )
    add_options(p, OutputOptions)
    out = argument_group(p, "output")
    out.add_argument(
        "--save-dir",
        default="logs/predict",
        help="folder for annotated images/videos, incremented if it exists; never an input's "
        "folder or one inside it (default: %(default)s)",
    )
    out.add_argument(
        "--exist-ok",
        action="store_true",
        help="write into --save-dir even if it exists (still never into an input)",
    )
    out.add_argument("--no-save", action="store_true", help="do not write annotated images/videos")
    out.add_argument(
        "--benchmark",
        action="store_true",
        help="time preprocessing, forward and decode+NMS on the first image, then exit",
    )
    out.add_argument(
        "--benchmark-runs", type=int, default=50, help="timed runs for --benchmark (default: 50)"
    )
    add_options(p, ExportConfig)
    add_options(p, PipelineOptions)
    add_options(p, ThreadConfig)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _filter_items(text: str) -> list[str]:
    """The comma-separated items of ``--classes-filter``.

    Raises:
        ValueError: none (an empty or all-blank list would keep no detection at all).
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--classes-filter {text!r}: give one or more class names or ids")
    return items


def _class_filter(text: str | None, names: list[str]) -> tuple[int, ...] | None:
    """``--classes-filter`` as class ids (None: the flag was not given).

    Raises:
        ValueError: an unknown class, or no class at all.
    """
    if text is None:
        return None
    ids = []
    for item in _filter_items(text):
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
    if args.onnx_path:  # --export-onnx
        if args.amp:
            print(
                "error: --export-onnx writes a float32 graph (--int8 for a quantized one); "
                "--amp applies to running a model",
                file=sys.stderr,
            )
            return 2
        return _export_onnx(args)
    if args.int8:
        print("error: --int8 quantizes an export: give --export-onnx PATH too", file=sys.stderr)
        return 2
    if args.benchmark and args.json_path is not None:
        print(
            "error: --benchmark measures speed and writes no detections: drop --json",
            file=sys.stderr,
        )
        return 2
    save_dir = None if args.no_save else increment_path(args.save_dir, args.exist_ok)
    to_stdout = json_to_stdout(args.json_path)
    # with --json -, stdout carries the JSON alone: the summary lines go to stderr
    info = sys.stderr if to_stdout else sys.stdout
    try:
        source = resolve_source(args.source)
        if not args.benchmark:  # outputs are checked before the model loads and the run starts
            _check_outputs(args, source, save_dir)
        if args.anchors is not None:
            read_anchors(args.anchors)  # bad values fail before the model loads
        config = from_args(InferenceConfig, args)
        pipeline = from_args(PipelineOptions, args)
        if args.classes_filter is not None:
            _filter_items(args.classes_filter)  # an empty list fails before the model loads
        load_attention_plugins(args.attention_plugin)
        detector = Detector.from_weights(
            args.weights, phi=args.phi, classes=args.classes, anchors=args.anchors, config=config
        )
        if args.classes_filter is not None:
            filtered = _class_filter(args.classes_filter, detector.class_names)
            detector.config = replace(detector.config, classes_filter=filtered)
        if args.attention_maps and not args.benchmark:
            detector.torch_model("--attention-maps")  # an ONNX graph has no blocks to hook
        model_threads = args.threads or torch.get_num_threads()
        webcam = source.webcam is not None
        pipeline, why = pipeline.resolve(detector.device, model_threads, webcam=webcam)
        configure_threads(args.threads, parallel_decode=pipeline.pipelined)
    except (
        OutputPathError,
        SourceError,
        FileNotFoundError,
        ValueError,
        CheckpointMismatchError,
        DarknetFormatError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if detector.precision.warning:
        print(f"warning: {detector.precision.warning}", file=sys.stderr)
    if args.benchmark and args.benchmark_runs < 1:
        print(f"error: --benchmark-runs must be >= 1, got {args.benchmark_runs}", file=sys.stderr)
        return 2
    if args.benchmark:
        return _benchmark(detector, source, args.benchmark_runs)

    opts = from_args(OutputOptions, args, save_dir=save_dir)
    if why and (len(source.images) > 1 or source.videos or source.webcam is not None):
        print(why, file=sys.stderr)  # how a folder or video is read, when chosen here
    try:
        summary = run_predictions(detector, source, opts, pipeline=pipeline)
    except OutputPathError as err:  # the JSON, written at the end (disk full, permissions)
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    done = f"{summary.images} images" + (
        f", {summary.frames} video frames" if summary.frames else ""
    )
    print(
        f"{done}: {summary.detections} detections ({detector.info.describe()}, "
        f"device {_device_text(detector)})",
        file=info,
    )
    if save_dir is not None and save_dir.is_dir() and any(save_dir.iterdir()):
        print(f"results saved to {save_dir}/", file=info)
    if opts.json_path is not None and not to_stdout:
        print(f"detections written to {opts.json_path}")
    if summary.warnings:
        print(f"{len(summary.warnings)} warning(s):", file=sys.stderr)
        for warning in summary.warnings:
            print(f"  {warning}", file=sys.stderr)
    if summary.failures:
        print(f"{len(summary.failures)} input(s) failed:", file=sys.stderr)
        for failure in summary.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


def _check_outputs(args: argparse.Namespace, source: Source, save_dir: Path | None) -> None:
    """Refuses, before any work, outputs that cannot be written or that could land on an
    input: the annotated images' folder, its crops and attention-map folders, and the JSON
    file, against the source's paths, the weights, the classes and the anchors files.

    Raises:
        OutputPathError: an output that cannot be written or lies on an input.
        ValueError: --attention-maps without a folder to write into.
    """
    inputs = [*source_inputs(args.source, source), args.weights, args.classes, args.anchors]
    json_path = None if json_to_stdout(args.json_path) else args.json_path
    check_outputs_distinct([("--save-dir", save_dir, True), ("--json", json_path, False)])
    if save_dir is not None:
        # the folder asked for, too: an input is refused, not replaced by a numbered sibling
        for folder in dict.fromkeys([Path(args.save_dir), save_dir]):
            check_apart(folder, inputs, flag="--save-dir")
        check_output_path(save_dir, folder=True)
        # a crops or attention folder left by an earlier run may be a link to elsewhere
        for wanted, flag, sub in (
            (args.crop, "--crop", CROPS_DIR),
            (args.attention_maps, "--attention-maps", ATTENTION_DIR),
        ):
            if wanted:
                check_apart(save_dir / sub, inputs, flag=flag)
    if json_path is not None:
        check_apart(json_path, inputs, flag="--json", folder=False)
        check_output_path(json_path)
    if args.attention_maps and save_dir is None:
        raise ValueError("--attention-maps writes into --save-dir; drop --no-save")


def _device_text(detector: Detector) -> str:
    """``cpu`` or ``cpu, bfloat16 autocast`` (with ``--amp``)."""
    dtype = detector.precision.dtype
    return str(detector.device) + ("" if dtype is None else f", {detector.precision.name} autocast")


def _export_onnx(args: argparse.Namespace) -> int:
    """``--export-onnx``: fused model (+ optional decoder) with its metadata, checked; with
    ``--int8`` quantized on calibration images."""
    try:
        cfg = from_args(ExportConfig, args)
        # --source is not read by an export, but an export must never replace it either
        inputs = [args.weights, args.classes, args.anchors, args.source]
        if cfg.int8:
            inputs += source_inputs(cfg.int8, resolve_source(cfg.int8))
        check_apart(cfg.onnx_path, inputs, flag="--export-onnx", folder=False)
        check_output_path(cfg.onnx_path)
        calibration = calibration_images(cfg.int8, cfg.calib_images) if cfg.int8 else []
        names = read_class_names(args.classes) if args.classes else None
        load_attention_plugins(args.attention_plugin)
        model, info = load_model(args.weights, args.phi, len(names) if names else None)
        names = class_names_for(names, info.class_names, info.num_classes, args.weights)
        size = args.input_size or info.input_size
        path = export_model(
            model,
            info,
            names,
            cfg,
            input_size=size,
            calibration=calibration,
            letterbox=args.letterbox,
        )
    except (
        FileNotFoundError,
        ValueError,
        OutputPathError,
        CheckpointMismatchError,
        DarknetFormatError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)  # SourceError is a ValueError
        return 2
    except OSError as err:  # writing the export failed (disk full, permissions)
        print(f"error: {write_failure(err, cfg.onnx_path)}", file=sys.stderr)
        return 1
    kind = "decoded detections" if cfg.decode else "raw maps out32/out16"
    batch = "dynamic batch" if cfg.dynamic_batch else "batch 1"
    precision = ""
    if cfg.int8:
        quant = onnx_metadata(path)["quantization"]
        precision = (
            f", INT8 ({quant['method']} calibration on {quant['calibration_images']} images)"
        )
    print(
        f"exported {path} (opset {cfg.opset}, {size}x{size}, {batch}, {kind}{precision}; "
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
        f"{runs} runs, device {_device_text(detector)}, {detector.info.describe()}"
    )
    print(f"{'stage':<12}{'median ms':>11}{'p10':>9}{'p90':>9}")
    for stage, s in stats.items():
        print(f"{stage:<12}{s['median']:>11.2f}{s['p10']:>9.2f}{s['p90']:>9.2f}")
    print(json.dumps({"benchmark": stats}))
    return 0


if __name__ == "__main__":
    run_cli(main)
