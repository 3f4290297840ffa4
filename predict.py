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

from data.options import DataOptions
from nets.options import ModelOptions
from nets.registry import load_attention_plugins
from utils.classes import read_anchors
from utils.config import (
    CommandParser,
    add_alias,
    add_options,
    argument_group,
    from_args,
    run_cli,
)
from utils.device import ThreadConfig, configure_threads
from utils.errors import InputError
from utils.inference.export import ExportConfig, export
from utils.inference.predict_loop import (
    ATTENTION_DIR,
    CROPS_DIR,
    OutputOptions,
    PipelineOptions,
    RunSummary,
    benchmark,
    json_to_stdout,
    model_threads,
    run_predictions,
)
from utils.inference.predictor import DEFAULT_WEIGHTS, Detector, InferenceConfig
from utils.paths import (
    COCO_CLASSES,
    ROOT,
    SAMPLES,
    SaveDirOptions,
    check_apart,
    check_output_path,
    check_outputs_distinct,
    check_save_dir,
)
from utils.sources import (
    Source,
    increment_path,
    read_image,
    resolve_source,
    source_inputs,
)


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``InferenceConfig`` and ``OutputOptions`` (defaults and help written there),
    plus the model, output-folder, benchmark and export options of this command."""
    p = CommandParser(description=__doc__)
    src = argument_group(p, "input")
    src.add_argument(
        "--source",
        default=str(SAMPLES.relative_to(ROOT)),
        help="image, folder, glob ('dir/*.jpg'), video file, or webcam index (0) "
        "(default: %(default)s)",
    )
    add_options(
        p,
        ModelOptions,
        include=("weights", "phi", "attention_plugin", "anchors"),
        helps={
            "weights": "darknet .weights, our checkpoint, a reference-implementation .pth or an "
            ".onnx export (default: model_data/yolov4-tiny.weights)"
        },
    )
    add_options(
        p,
        DataOptions,
        include=("classes",),
        helps={
            "classes": "class-names file (default: the checkpoint's; model_data/coco.names for "
            "COCO)"
        },
    )
    add_options(p, InferenceConfig)
    argument_group(p, "post-processing").add_argument(
        "--classes-filter",
        default=None,
        help="keep only these classes: comma-separated names or ids (e.g. person,car)",
    )
    add_options(p, OutputOptions)
    _add_output_flags(p)
    argument_group(p, "export").add_argument(
        "--export-onnx",
        dest="onnx_path",
        default=None,
        metavar="PATH",
        help="export the model to ONNX at --img-size and exit (as python -m tools.export)",
    )
    add_options(p, ExportConfig, exclude=("format", "out"))  # the ONNX settings of the export
    add_alias(p, "--onnx-decode", "--decode")
    add_alias(p, "--onnx-dynamic", "--dynamic-batch")
    add_options(p, PipelineOptions)
    add_options(p, ThreadConfig)
    return p


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    """The results folder and the speed measurement, this command's own output flags."""
    out = argument_group(p, "output")
    add_options(
        p,
        SaveDirOptions,
        defaults={"save_dir": "logs/predict"},
        helps={
            "save_dir": "folder for annotated images/videos, numbered (DIR2, ...) if it exists; "
            "never an input's folder or one inside it"
        },
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed flags, ``--weights`` defaulting to the darknet COCO weights."""
    args = build_parser().parse_args(argv)
    if args.weights is None:  # not the parser's default: --help shows it relative to the repo
        args.weights = DEFAULT_WEIGHTS
    return args


def _filter_items(text: str) -> list[str]:
    """The comma-separated items of ``--classes-filter``.

    Raises:
        InputError: none (an empty or all-blank list would keep no detection at all).
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InputError(f"--classes-filter {text!r}: give one or more class names or ids")
    return items


def _class_filter(text: str | None, names: list[str]) -> tuple[int, ...] | None:
    """``--classes-filter`` as class ids (None: the flag was not given).

    Raises:
        InputError: an unknown class, or no class at all.
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
            raise InputError(f"--classes-filter: unknown class {item!r}")
    return tuple(ids)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    _check_flags(args)
    if args.onnx_path:  # --export-onnx
        return _export_onnx(args)
    save_dir = None if args.no_save else increment_path(args.save_dir, args.exist_ok)
    source = resolve_source(args.source)
    if not args.benchmark:  # outputs are checked before the model loads and the run starts
        _check_outputs(args, source, save_dir)
    detector, pipeline, why = _load_detector(args, source)
    if detector.precision.warning:
        print(f"warning: {detector.precision.warning}", file=sys.stderr)
    if hint := detector.amp_hint():  # float32 on a CPU where bfloat16 pays: say so
        print(hint, file=sys.stderr)
    if args.benchmark:
        return _benchmark(detector, source, args.benchmark_runs)
    opts = from_args(OutputOptions, args, save_dir=save_dir)
    if why and (len(source.images) > 1 or source.videos or source.webcam is not None):
        print(why, file=sys.stderr)  # how a folder or video is read, when chosen here
    # a JSON that cannot be written at the end raises OutputPathError (exit 1)
    summary = run_predictions(detector, source, opts, pipeline=pipeline)
    return _summarize(summary, detector, args.json_path, save_dir)


def _check_flags(args: argparse.Namespace) -> None:
    """Refuses flags that contradict each other, before anything is read.

    Raises:
        InputError: naming the flags and what to do instead.
    """
    if args.onnx_path:
        if args.amp:
            raise InputError(
                "--export-onnx writes a float32 graph (--int8 for a quantized one); "
                "--amp applies to running a model"
            )
        return
    defaults = ExportConfig()
    export_only = [  # flags of the export that running a model would silently ignore
        f"--{field.replace('_', '-')}"
        for field in (
            "int8",
            "int8_float",
            "calib_method",
            "calib_images",
            "decode",
            "dynamic_batch",
            "opset",
        )
        if getattr(args, field) != getattr(defaults, field)
    ]
    if export_only:
        raise InputError(
            f"{', '.join(export_only)}: settings of an export; give --export-onnx PATH too"
        )
    if args.benchmark and args.json_path is not None:
        raise InputError("--benchmark measures speed and writes no detections: drop --json")
    if args.benchmark and args.benchmark_runs < 1:
        raise InputError(f"--benchmark-runs {args.benchmark_runs}: must be at least 1")


def _load_detector(
    args: argparse.Namespace, source: Source
) -> tuple[Detector, PipelineOptions, str | None]:
    """The detector with its class filter, the pipeline chosen for it and the source, and
    why that pipeline (None where the flags chose it). Values that can be checked without the
    model (anchors, settings, the filter's syntax) are checked before it loads.

    Raises:
        UserError: an unreadable or mismatching model, anchors or classes file, or a setting
            out of range (the message names it).
    """
    if args.anchors is not None:
        read_anchors(args.anchors)  # bad values fail before the model loads
    config = from_args(InferenceConfig, args)
    pipeline = from_args(PipelineOptions, args)
    if args.classes_filter is not None:
        _filter_items(args.classes_filter)  # an empty list fails before the model loads
    load_attention_plugins(args.attention_plugin)
    detector = Detector.from_weights(
        args.weights,
        phi=args.phi,
        classes=args.classes,
        anchors=args.anchors,
        config=config,
        onnx_threads=args.threads,  # an export's session takes --threads too
    )
    if args.classes_filter is not None:
        filtered = _class_filter(args.classes_filter, detector.class_names)
        detector.config = replace(detector.config, classes_filter=filtered)
    if args.attention_maps and not args.benchmark:
        detector.torch_model("--attention-maps")  # an ONNX graph has no blocks to hook
    threads, sleep = model_threads(detector)
    if not sleep:  # torch's threads, which --threads sets below
        threads = args.threads or threads
    webcam = source.webcam is not None
    pipeline, why = pipeline.resolve(
        detector.device, threads, webcam=webcam, idle_threads_sleep=sleep
    )
    configure_threads(args.threads, parallel_decode=pipeline.pipelined)
    return detector, pipeline, why


def _summarize(
    summary: RunSummary, detector: Detector, json_path: str | None, save_dir: Path | None
) -> int:
    """Prints what the run did, its warnings and the inputs that failed; returns the exit
    code (1 when an input failed). With ``--json -`` the summary goes to standard error,
    standard output carrying the JSON alone."""
    to_stdout = json_to_stdout(json_path)
    info = sys.stderr if to_stdout else sys.stdout
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
    if json_path is not None and not to_stdout:
        print(f"detections written to {json_path}")
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
        OutputRefusedError: an output that cannot be written or lies on an input.
        InputError: --attention-maps without a folder to write into.
    """
    # the COCO names file is read when a model stores no names and --classes is not given
    classes = args.classes or COCO_CLASSES
    inputs = [*source_inputs(args.source, source), args.weights, classes, args.anchors]
    json_path = None if json_to_stdout(args.json_path) else args.json_path
    check_outputs_distinct([("--save-dir", save_dir, True), ("--json", json_path, False)])
    if save_dir is not None:
        check_save_dir(args.save_dir, save_dir, inputs)
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
        raise InputError("--attention-maps writes into --save-dir; drop --no-save")


def _device_text(detector: Detector) -> str:
    """``cpu`` or ``cpu, bfloat16 autocast`` (with ``--amp``)."""
    dtype = detector.precision.dtype
    return str(detector.device) + ("" if dtype is None else f", {detector.precision.name} autocast")


def _export_onnx(args: argparse.Namespace) -> int:
    """``--export-onnx PATH``: the ONNX export of ``python -m tools.export``, from this
    command's model flags. ``--source`` is not read, but an export never replaces it either."""
    result = export(
        from_args(ModelOptions, args),
        from_args(ExportConfig, args, out=args.onnx_path),
        classes=args.classes,
        letterbox=args.letterbox,
        out_flag="--export-onnx",
        inputs=[args.source],
    )
    print(result.describe())
    return 0


def _benchmark(detector: Detector, source: Source, runs: int) -> int:
    """``--benchmark``: the stage times on the source's first image, as a table and as JSON.

    Raises:
        InputError: the source has no image (a video or a webcam).
        ImageReadError: the image cannot be read.
    """
    if not source.images:
        raise InputError("--benchmark needs an image source")
    image = read_image(source.images[0])
    stats = benchmark(detector, image, runs=runs)
    size = detector.config.img_size
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
