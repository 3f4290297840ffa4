# Over 400 lines on purpose: the serial and pipelined loops share each output step here, so one
# behaviour stays in one file.
"""Runs a ``Detector`` over a resolved source and writes what the user asked for.

Outputs: annotated images and videos (same fps and size) in ``save_dir``, optional crops in
``save_dir/crops/<class>/``, optional JSON in the ``predict.py --json`` format (a file, or
standard output for ``-``), optional on-screen window, optional attention-map images in
``save_dir/attention/`` (``utils.inference.attention_output``). No two outputs of one run
share a file: names come from the input's stem, made safe as a path component, with ``_2``,
``_3``... where two inputs would give the same name (``a/x.jpg`` and ``b/x.jpg``, ``x.tif``
next to ``x.jpg``), and the crops and attention maps sit in their own folders, so an input
named like another input's map (``bus_attn_feat1.jpg`` next to ``bus.jpg``) keeps its own.
A file that cannot be read is reported on one line and skipped; the caller sees the count.
A video that yields fewer (or more) frames than its container declares is reported on one
line and its frames are kept. A JSON file that cannot be written raises ``OutputPathError``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch
from tqdm import tqdm

from utils.config import option, rule_problems
from utils.detections import Detections
from utils.device import available_cpus, synchronize
from utils.errors import InputError
from utils.inference.attention_output import AttentionMapWriter
from utils.inference.pipeline import (
    OrderedSink,
    PipelineError,
    Prefetcher,
    Prepared,
    prepare_inline,
)
from utils.inference.predictor import Detector
from utils.paths import (
    OutputPathError,
    safe_component,
    unique_components,
    write_image_atomic,
    write_text_atomic,
)
from utils.preprocess import ResizeMeta
from utils.sources import ImageReadError, Source, SourceError, open_video, read_image
from utils.timing import StageTimer
from utils.visualize import crop_detections, draw_detections, overlay_heatmap

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Reader threads for image files: each decodes one image at a time; two keep the model fed on
# a 2-core machine (benchmarks/pipeline.py) without taking more cores from it. A video decodes
# in one more thread (its frames depend on each other) and is resized in these.
READ_WORKERS = 2

CROPS_DIR = "crops"  # save_dir/crops/<class>/<stem>_<k>.jpg
ATTENTION_DIR = "attention"  # save_dir/attention/<stem>_attn_<point>.jpg
JSON_STDOUT = Path("-")  # --json -: the records go to standard output


def json_to_stdout(path: str | os.PathLike | None) -> bool:
    """Whether ``--json`` names standard output (``-``; a file named ``-`` is given with a
    folder, as ``/abs/path/-``)."""
    return path is not None and Path(path) == JSON_STDOUT


@dataclass(frozen=True)
class OutputOptions:
    save_dir: Path | None  # None: write no images or videos
    json_path: Path | None = option(
        None,
        "write all detections to this JSON file ('-': to standard output, the summary lines "
        "then go to standard error)",
        flag="--json",
        group="output",
        type=Path,
    )
    crop: bool = option(
        False,
        "also save each detection as an image (save_dir/crops/<class>/<stem>_<k>.jpg)",
        group="output",
    )
    show: bool = option(False, "show results in a window (if a display exists)", group="output")
    heatmap: bool = option(
        False, "overlay the max-objectness heatmap under the boxes", group="output"
    )
    attention_maps: bool = option(
        False,
        "also write each attention block's spatial map over the image "
        "(save_dir/attention/<stem>_attn_<point>.jpg) and its channel-weight histogram "
        "(<stem>_attn_<point>_channels.png); image files only, videos run without",
        group="output",
    )


@dataclass(frozen=True)
class PipelineOptions:
    """How ``run_predictions`` overlaps reading, the model and writing.

    Pipelined (``prefetch`` > 0), the next inputs are decoded and resized in background
    threads while the model runs, and the boxes of finished ones are decoded, drawn and
    written in a writer thread; at most ``prefetch`` inputs wait on each side, so memory stays
    bounded. The outputs are the same as the serial path's, in the same order.

    ``prefetch`` None (the default) decides per run (``resolve``): pipelined where a CPU core
    is free for the background threads (the model on CUDA, more CPUs than model threads, or a
    webcam, whose reads wait on the camera) or where the model's threads sleep between passes
    (ONNX Runtime), serial where torch's threads already use every core. There the overlap
    only moves work: on a 2-core CPU the forward pass took 44 -> 53 ms while the readers ran
    beside it, which ate the reading time it hid, and the pipelined loop was no faster than
    the serial one (``python -m benchmarks.pipeline``).

    ``batch_size`` stays 1 by default: on a 2-core CPU one forward of 4 images took as long
    per image as 4 forwards of 1 at one torch thread (88 ms); it was faster only with the
    cores shared with other jobs (fewer thread hand-offs). Batch 1 also keeps the results
    bit-identical to the serial path (a batched forward differs by float rounding);
    ``python -m benchmarks.pipeline`` prints batch 4 against batch 1.
    """

    prefetch: int | None = option(
        None,
        "inputs read ahead of the model in background threads while finished ones are "
        "written in another; 0: one input at a time in one thread (default: 4 where a CPU "
        "core is free for those threads, the model on CUDA or more CPUs than model threads, "
        "an ONNX Runtime model, whose threads sleep between passes, or a webcam; else 0)",
        group="performance",
    )
    batch_size: int = option(
        1,
        "inputs per forward pass (more only helps where a larger batch is faster per image, "
        "as on a GPU)",
        group="performance",
    )

    def __post_init__(self) -> None:
        problems = rule_problems(self, _PIPELINE_RULES)
        if problems:
            raise InputError("invalid pipeline settings: " + "; ".join(problems))

    @property
    def pipelined(self) -> bool:
        """Reading and writing run in background threads (``prefetch`` resolved and > 0)."""
        return bool(self.prefetch)

    def resolve(
        self,
        device: torch.device,
        model_threads: int,
        *,
        webcam: bool = False,
        idle_threads_sleep: bool = False,
    ) -> tuple[PipelineOptions, str]:
        """These options with ``prefetch`` decided for a model on ``device`` running
        ``model_threads`` CPU threads, and why (empty when ``prefetch`` was given).

        ``idle_threads_sleep``: the model's threads give their cores back as soon as a forward
        pass ends (ONNX Runtime as ``OnnxRunner`` opens it, without spinning), so reading and
        writing can run between and beside its passes even where its threads cover every
        core: on 2 cores the INT8 export saved 150 810x1080 photos at 59 img/s pipelined
        against 43 serial, and with 1 model thread (a core left to the readers) at 52: the
        split that paid is both at two. torch's threads spin after each operator instead,
        which made the same overlap slower than serial there (``python -m
        benchmarks.pipeline``).
        """
        if self.prefetch is not None:
            return self, ""
        cpus = available_cpus()
        threads = f"{model_threads} thread{'s' if model_threads != 1 else ''}"
        if device.type == "cuda":
            why = "the model runs on CUDA, so the CPU cores are free to read and write"
        elif webcam:
            why = "webcam frames are read while the model runs (reads wait on the camera)"
        elif cpus > model_threads:
            why = f"{cpus} CPUs for the model's {threads} leave a core to read and write"
        elif idle_threads_sleep:
            why = (
                f"the model's threads ({threads}, ONNX Runtime) sleep between passes, so "
                f"reading and writing share the {cpus} CPUs with them"
            )
        else:
            why = (
                f"serial: the model's {threads} use all {cpus} CPUs, so reading beside it "
                "would only slow it down (--prefetch 4 to overlap anyway)"
            )
            return replace(self, prefetch=0), why
        return replace(self, prefetch=AUTO_PREFETCH), f"pipelined: {why}"


def model_threads(detector: Detector) -> tuple[int, bool]:
    """The CPU threads ``detector``'s model runs on, and whether they sleep when idle (as
    ``PipelineOptions.resolve`` takes them): an ONNX Runtime session's intra-op threads
    (they do not spin), else torch's."""
    runner = detector.model
    threads = getattr(runner, "threads", None)
    if threads is not None:
        return threads, True
    return torch.get_num_threads(), False


AUTO_PREFETCH = 4  # inputs ahead and behind the model when pipelined by default
_PIPELINE_RULES = {
    "prefetch": (lambda v: v is None or v >= 0, "0 (serial) or more"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
}


@dataclass
class RunSummary:
    images: int = 0
    frames: int = 0
    detections: int = 0
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # results kept, but something is off
    records: list[dict] = field(default_factory=list)
    written: set[str] = field(default_factory=set)  # output paths used in this run (casefolded)

    def output_path(self, folder: Path, stem: str, suffix: str) -> Path:
        """``folder/stem.suffix``, or ``stem_2``, ``stem_3``... if this run already wrote it
        (same-named files from different folders, ``a.tif`` next to ``a.jpg``).

        ``stem`` comes from a file name, so it is made one safe path component first (a
        name with a backslash, a control character or 250 bytes stays inside ``folder`` and
        writable); names are compared without case, as macOS and Windows do.
        """
        stem = safe_component(stem, fallback="image")
        name, n = f"{stem}{suffix}", 2
        while str(folder / name).casefold() in self.written:
            name, n = f"{stem}_{n}{suffix}", n + 1
        self.written.add(str(folder / name).casefold())
        return folder / name


class _Window:
    """``cv2.imshow`` that turns itself off where there is no display or GUI backend."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and (sys.platform != "linux" or bool(os.environ.get("DISPLAY")))
        if enabled and not self.enabled:
            print("--show ignored: no display", file=sys.stderr)

    def show(self, image: np.ndarray) -> bool:
        """Shows the frame; returns False when the user pressed q or Esc."""
        if not self.enabled:
            return True
        try:
            cv2.imshow("yolov4-tiny", image)
            return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)
        except cv2.error:
            self.enabled = False
            print("--show ignored: this OpenCV build has no GUI", file=sys.stderr)
            return True


def _record(path: str, image_id: str, dets: Detections, frame: int | None = None) -> dict:
    record = {"image": path, "image_id": image_id, "width": dets.width, "height": dets.height}
    if frame is not None:
        record["frame"] = frame
    record["detections"] = dets.to_json()
    return record


def _render(image: np.ndarray, dets: Detections, heat: np.ndarray | None) -> np.ndarray:
    if heat is not None:
        image = overlay_heatmap(image, heat)
    return draw_detections(image, dets)


@lru_cache(maxsize=4)
def _class_folders(class_names: tuple[str, ...]) -> tuple[str, ...]:
    """A crops folder per class: class names come from files and checkpoints, so each is
    made one safe path component (``../x`` or ``/tmp/x`` stays under ``crops/``), and two
    names that would share a folder get ``-2``, ``-3``..."""
    return tuple(unique_components(class_names))


def _write_image(path: Path, image: np.ndarray, summary: RunSummary) -> bool:
    """Writes through a temporary name; a failure is reported and counted, the run goes on."""
    try:
        write_image_atomic(path, image)
    except OutputPathError as err:
        tqdm.write(f"error: {err}", file=sys.stderr)
        summary.failures.append(str(err))
        return False
    return True


def _save_crops(
    save_dir: Path, stem: str, image: np.ndarray, dets: Detections, summary: RunSummary
) -> None:
    folders = _class_folders(tuple(dets.class_names))
    for i, (crop, label) in enumerate(zip(crop_detections(image, dets), dets.labels)):
        label = int(label)
        name = folders[label] if label < len(folders) else str(label)
        path = summary.output_path(save_dir / CROPS_DIR / name, f"{stem}_{i}", ".jpg")
        _write_image(path, crop, summary)


@dataclass
class _Item:
    """One image or video frame on its way: read and resized -> model -> outputs."""

    path: str  # the image file, or the video (the index for a webcam)
    image: np.ndarray | None = None  # BGR as read; None when it could not be read
    canvas: np.ndarray | None = None  # the network input of ``Detector.resize``
    meta: ResizeMeta | None = None
    frame: int | None = None  # index in the video; None for an image file
    outputs: list[torch.Tensor] | None = None  # the model's raw maps for this input alone
    error: str | None = None  # why it could not be read, reported in its place in the order

    def describe(self) -> str:
        return self.path if self.frame is None else f"{self.path} frame {self.frame}"


@dataclass
class _Outputs:
    """What the output step needs for one run over image files or over one video."""

    detector: Detector
    opts: OutputOptions
    summary: RunSummary
    window: _Window
    bar: tqdm
    draw: bool  # annotated images are needed (saved or shown)
    attention: AttentionMapWriter | None = None
    video: cv2.VideoWriter | None = None  # a video's annotated frames go here
    name: str = ""  # a video's name in frame ids
    crop_stem: str = ""  # a video's output stem, naming its frames' crops
    frames: int = 0  # frames of this video done
    written: int = 0  # frames handed to the video writer
    stopped: bool = False  # the user closed the window


def _write_outputs(item: _Item, out: _Outputs) -> None:
    """The per-input output step, run for every input in input order (in the writer thread
    when pipelined): decode + NMS, the JSON record, the drawing, the annotated image or video
    frame, crops, attention maps, the window. A read failure is reported here, in its place.
    """
    opts, summary, detector = out.opts, out.summary, out.detector
    if item.error is not None:
        tqdm.write(f"error: {item.error}", file=sys.stderr)
        summary.failures.append(item.error)
        out.bar.update(1)
        return
    dets = detector.postprocess(item.outputs, [item.meta])[0]
    heat = detector.heatmap(item.outputs, item.meta) if opts.heatmap and out.draw else None
    summary.detections += len(dets)
    rendered = _render(item.image, dets, heat) if out.draw else None
    if item.frame is None:  # an image file
        stem = Path(item.path).stem
        summary.images += 1
        if opts.json_path is not None:
            summary.records.append(_record(item.path, stem, dets))
        if opts.save_dir is not None:
            suffix = Path(item.path).suffix.lower()
            suffix = suffix if suffix in (".jpg", ".jpeg", ".png", ".bmp") else ".jpg"
            path = summary.output_path(opts.save_dir, stem, suffix)
            _write_image(path, rendered, summary)
            if opts.crop:
                _save_crops(opts.save_dir, path.stem, item.image, dets, summary)
            if out.attention is not None:
                out.attention.write(item.image, path.stem)
        if rendered is not None:
            out.window.show(rendered)
    else:  # a video frame
        summary.frames += 1
        if opts.json_path is not None:
            frame_id = f"{out.name}_{item.frame:06d}"
            summary.records.append(_record(item.path, frame_id, dets, item.frame))
        if opts.crop and opts.save_dir is not None:
            stem = f"{out.crop_stem}_{item.frame:06d}"
            _save_crops(opts.save_dir, stem, item.image, dets, summary)
        if rendered is not None:
            if out.video is not None:
                out.video.write(rendered)
                out.written += 1
            if not out.window.show(rendered):
                out.stopped = True
                return
        out.frames += 1
    out.bar.update(1)


def fps_text(count: int, elapsed_s: float) -> str:
    """Throughput for the progress bar: ``'23.4 fps'`` (inputs per second over the run so
    far, one decimal, also below one per second), ``'- fps'`` before any time has passed."""
    if elapsed_s <= 0 or count <= 0:
        return "- fps"
    return f"{count / elapsed_s:.1f} fps"


class _FpsBar(tqdm):
    """tqdm with ``{fps}`` (``fps_text`` of the inputs done and the time elapsed) for its
    bar format."""

    @property
    def format_dict(self) -> dict:
        values = super().format_dict
        values["fps"] = fps_text(values["n"], values["elapsed"])
        return values


def _progress(total: int | None, desc: str, unit: str, disable: bool = False) -> tqdm:
    """A progress bar showing the throughput in frames (or images) per second, ``fps``."""
    if total:
        layout = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {fps}]"
    else:
        layout = "{desc}: {n_fmt} [{elapsed}, {fps}]"
    return _FpsBar(total=total, desc=desc, unit=unit, disable=disable, bar_format=layout)


@contextmanager
def _stages(
    items: Iterable[T],
    prepare: Callable[[T], _Item],
    out: _Outputs,
    pipeline: PipelineOptions,
    source: str,
) -> Iterator[tuple[Iterable[Prepared[T, _Item]], OrderedSink[_Item]]]:
    """The reading and output stages around the model: background threads when pipelined,
    else both inline. Leaving the ``with`` (also by an error or Ctrl-C) joins every thread."""
    if not pipeline.pipelined:
        with OrderedSink(lambda item: _write_outputs(item, out), depth=0, threaded=False) as sink:
            yield prepare_inline(items, prepare), sink
        return
    # Outputs stay in this thread when they must: a window is driven from the main thread,
    # and attention maps run a forward pass with hooks on the shared model, which must not
    # overlap this thread's forward passes.
    threaded = not out.window.enabled and out.attention is None
    with (
        OrderedSink(
            lambda item: _write_outputs(item, out),
            depth=pipeline.prefetch,
            threaded=threaded,
            name=_Item.describe,
        ) as sink,
        Prefetcher(
            items, prepare, depth=pipeline.prefetch, workers=READ_WORKERS, source=source
        ) as prepared,
    ):
        yield prepared, sink


def _infer(
    detector: Detector,
    prepared: Iterable[Prepared[T, _Item]],
    sink: OrderedSink[_Item],
    out: _Outputs,
    *,
    batch_size: int,
    describe: Callable[[T], str],
) -> None:
    """Runs the model on the prepared inputs, ``batch_size`` at a time, and hands each input
    (or its read failure) to ``sink`` in input order. A read failure (``ImageReadError``) is
    passed on to be reported; any other exception of the reading stage raises
    ``PipelineError`` naming the input."""
    pending: list[_Item] = []

    def flush() -> None:
        ready = [item for item in pending if item.error is None]
        if ready:
            outputs = detector.forward(detector.to_batch([item.canvas for item in ready]))
            for k, item in enumerate(ready):
                item.outputs = outputs if len(ready) == 1 else [o[k : k + 1] for o in outputs]
                item.canvas = None
        for item in pending:
            sink.put(item)
        pending.clear()

    for p in prepared:
        if p.error is None:
            pending.append(p.value)
        elif isinstance(p.error, ImageReadError):
            pending.append(_Item(str(p.item), error=str(p.error)))
        else:
            raise PipelineError.wrap(describe(p.item), p.error)
        if sum(item.error is None for item in pending) >= batch_size:
            flush()
        if out.stopped:
            return
    flush()


def _run_images(
    detector: Detector,
    paths: list[str],
    opts: OutputOptions,
    summary: RunSummary,
    window: _Window,
    attention: AttentionMapWriter | None = None,
    pipeline: PipelineOptions = PipelineOptions(),
) -> None:
    def prepare(path: str) -> _Item:
        image = read_image(path)
        canvas, meta = detector.resize(image)
        return _Item(path, image, canvas, meta)

    draw = opts.save_dir is not None or window.enabled
    bar = _progress(len(paths), "images", "img", disable=len(paths) < 2)
    out = _Outputs(detector, opts, summary, window, bar, draw, attention)
    try:
        with _stages(paths, prepare, out, pipeline, "images") as (prepared, sink):
            _infer(detector, prepared, sink, out, batch_size=pipeline.batch_size, describe=str)
    finally:
        bar.close()


def _read_frames(cap: cv2.VideoCapture) -> Iterator[tuple[int, np.ndarray]]:
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            return
        yield index, frame
        index += 1


def _run_stream(
    detector: Detector,
    video: str | int,
    opts: OutputOptions,
    summary: RunSummary,
    window: _Window,
    attention: AttentionMapWriter | None = None,
    pipeline: PipelineOptions = PipelineOptions(),
) -> None:
    if attention is not None:
        attention.skip_stream()
    try:
        cap, fps, (width, height), count = open_video(video)
    except SourceError as err:
        tqdm.write(f"error: {err}", file=sys.stderr)
        summary.failures.append(str(err))
        return
    name = f"webcam{video}" if isinstance(video, int) else Path(video).stem
    path = str(video)
    writer = None
    crop_stem = name
    if opts.save_dir is not None:
        out_path = summary.output_path(opts.save_dir, name, ".mp4")
        crop_stem = out_path.stem
        # written under a temporary name and renamed once it reads back whole
        part_path = out_path.with_name(out_path.stem + ".part.mp4")
        fourcc = cv2.VideoWriter_fourcc(*"mp4v")
        writer = cv2.VideoWriter(str(part_path), fourcc, fps, (width, height))
        if not writer.isOpened():
            summary.failures.append(f"{out_path}: cannot open video writer")
            tqdm.write(f"error: {out_path}: cannot open video writer", file=sys.stderr)
            writer = None

    def prepare(indexed: tuple[int, np.ndarray]) -> _Item:
        index, frame = indexed
        canvas, meta = detector.resize(frame)
        return _Item(path, frame, canvas, meta, frame=index)

    bar = _progress(count or None, name, "frame")
    draw = writer is not None or window.enabled
    out = _Outputs(detector, opts, summary, window, bar, draw, None, writer, name, crop_stem)
    try:  # the capture is read in a reader thread, joined before it is released
        with _stages(_read_frames(cap), prepare, out, pipeline, path) as (prepared, sink):
            _infer(
                detector,
                prepared,
                sink,
                out,
                batch_size=pipeline.batch_size,
                describe=lambda indexed: f"{path} frame {indexed[0]}",
            )
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
            _finish_video(part_path, out_path, out.written, summary)
    frame_index, stopped = out.frames, out.stopped
    if frame_index == 0 and not isinstance(video, int):
        summary.failures.append(f"{video}: video has no decodable frames")
        tqdm.write(f"error: {video}: video has no decodable frames", file=sys.stderr)
    elif count and frame_index != count and not stopped and not isinstance(video, int):
        problem = f"{video}: read {frame_index} of the {count} frames its container declares"
        if frame_index < count:
            problem += " (truncated or damaged?); the frames read are kept"
        summary.warnings.append(problem)
        tqdm.write(f"warning: {problem}", file=sys.stderr)


def _finish_video(part: Path, final: Path, written: int, summary: RunSummary) -> None:
    """Renames the finished video into place if it reads back with every frame written;
    OpenCV's writer reports no errors, and a full disk leaves a file without its index."""
    check = cv2.VideoCapture(str(part))
    frames = int(check.get(cv2.CAP_PROP_FRAME_COUNT)) if check.isOpened() else -1
    check.release()
    if frames >= written:
        os.replace(part, final)
        return
    part.unlink(missing_ok=True)
    problem = f"{final}: cannot write the annotated video (disk full or not writable?)"
    summary.failures.append(problem)
    tqdm.write(f"error: {problem}", file=sys.stderr)


def run_predictions(
    detector: Detector,
    source: Source,
    opts: OutputOptions,
    *,
    pipeline: PipelineOptions = PipelineOptions(),
) -> RunSummary:
    """Processes every input of ``source``; never raises for one bad input.

    Args:
        pipeline: reading and writing in background threads or serial (both give the same
            outputs in the same order); an unset ``prefetch`` is decided by
            ``PipelineOptions.resolve`` for the detector's device and torch's thread count.

    Raises:
        OutputPathError: the JSON file cannot be written at the end.
        PipelineError: a stage failed unexpectedly (not a bad input); names the input.
    """
    summary = RunSummary()
    window = _Window(opts.show)
    attention = None
    if opts.save_dir is not None:
        opts.save_dir.mkdir(parents=True, exist_ok=True)
        if opts.attention_maps:
            attention = AttentionMapWriter(
                detector, opts.save_dir / ATTENTION_DIR, summary.failures
            )
    threads, sleep = model_threads(detector)
    files, _ = pipeline.resolve(detector.device, threads, idle_threads_sleep=sleep)
    camera, _ = pipeline.resolve(detector.device, threads, webcam=True, idle_threads_sleep=sleep)
    try:
        with detector.torch_threads():
            _run_images(detector, source.images, opts, summary, window, attention, files)
            for video in source.videos:
                _run_stream(detector, video, opts, summary, window, attention, files)
            if source.webcam is not None:
                _run_stream(detector, source.webcam, opts, summary, window, attention, camera)
    finally:  # Ctrl-C on a webcam still leaves the JSON of what was seen (threads joined)
        if opts.json_path is not None:
            write_json(opts.json_path, summary.records)
    return summary


def write_json(path: Path, records: list[dict]) -> None:
    """Writes the records atomically, or to standard output for ``-`` (``json_to_stdout``).

    Raises:
        OutputPathError: the file cannot be written (no temporary file is left).
    """
    text = json.dumps(records, indent=1)
    if json_to_stdout(path):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    write_text_atomic(path, text)


def benchmark(detector: Detector, image: np.ndarray, runs: int = 50, warmup: int = 5) -> dict:
    """Median and spread (ms) of preprocessing, forward and decode+NMS over ``runs`` calls."""
    if runs < 1:
        raise InputError(f"benchmark needs at least one run, got {runs}")
    timer = StageTimer(sync=lambda: synchronize(detector.device))
    for i in range(warmup + runs):
        record = i >= warmup
        with timer.stage("preprocess", record=record):
            batch, metas = detector.preprocess([image])
        with timer.stage("forward", record=record):
            outputs = detector.forward(batch)
        with timer.stage("decode_nms", record=record):
            detector.postprocess(outputs, metas)
        if record:
            timer.add_total("total", ("preprocess", "forward", "decode_nms"))
    return {stage: stats.as_dict() for stage, stats in timer.summary().items()}
