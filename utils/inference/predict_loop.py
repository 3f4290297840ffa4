"""Runs a ``Detector`` over a resolved source and writes what the user asked for.

Outputs: annotated images and videos (same fps and size) in ``save_dir``, optional crops,
optional JSON in the ``predict.py --json`` format, optional on-screen window.
A file that cannot be read is reported on one line and skipped; the caller sees the count.
A video that yields fewer (or more) frames than its container declares is reported on one
line and its frames are kept. A JSON file that cannot be written raises ``OutputPathError``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from utils.config import option
from utils.detections import Detections
from utils.device import synchronize
from utils.inference.predictor import Detector
from utils.paths import write_text_atomic
from utils.sources import ImageReadError, Source, SourceError, open_video, read_image
from utils.timing import StageTimer
from utils.visualize import crop_detections, draw_detections, overlay_heatmap

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputOptions:
    save_dir: Path | None  # None: write no images or videos
    json_path: Path | None = option(
        None, "write all detections to this JSON file", flag="--json", group="output", type=Path
    )
    crop: bool = option(
        False, "also save each detection as an image (save_dir/crops/<class>/)", group="output"
    )
    show: bool = option(False, "show results in a window (if a display exists)", group="output")
    heatmap: bool = option(
        False, "overlay the max-objectness heatmap under the boxes", group="output"
    )


@dataclass
class RunSummary:
    images: int = 0
    frames: int = 0
    detections: int = 0
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # results kept, but something is off
    records: list[dict] = field(default_factory=list)
    written: set[str] = field(default_factory=set)  # output names used in this run

    def output_path(self, folder: Path, stem: str, suffix: str) -> Path:
        """``folder/stem.suffix``, or ``stem_2``, ``stem_3``... if this run already wrote it
        (same-named files from different folders, ``a.tif`` next to ``a.jpg``)."""
        name, n = f"{stem}{suffix}", 2
        while name in self.written:
            name, n = f"{stem}_{n}{suffix}", n + 1
        self.written.add(name)
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


def _detect(
    detector: Detector, image: np.ndarray, heatmap: bool
) -> tuple[Detections, np.ndarray | None]:
    """Detections and, when asked, the objectness heatmap of the same forward pass."""
    if not heatmap:
        return detector(image), None
    batch, metas = detector.preprocess([image])
    outputs = detector.forward(batch)
    return detector.postprocess(outputs, metas)[0], detector.heatmap(outputs, metas[0])


def _render(image: np.ndarray, dets: Detections, heat: np.ndarray | None) -> np.ndarray:
    if heat is not None:
        image = overlay_heatmap(image, heat)
    return draw_detections(image, dets)


def _save_crops(save_dir: Path, stem: str, image: np.ndarray, dets: Detections) -> None:
    for i, (crop, name) in enumerate(zip(crop_detections(image, dets), dets.names)):
        folder = save_dir / "crops" / name
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{stem}_{i}.jpg"), crop)


def _run_images(
    detector: Detector, paths: list[str], opts: OutputOptions, summary: RunSummary, window: _Window
) -> None:
    for path in tqdm(paths, desc="images", unit="img", disable=len(paths) < 2):
        try:
            image = read_image(path)
        except ImageReadError as err:
            tqdm.write(f"error: {err}", file=sys.stderr)
            summary.failures.append(str(err))
            continue
        draw = opts.save_dir is not None or window.enabled
        dets, heat = _detect(detector, image, opts.heatmap and draw)
        stem = Path(path).stem
        summary.images += 1
        summary.detections += len(dets)
        if opts.json_path is not None:
            summary.records.append(_record(path, stem, dets))
        rendered = _render(image, dets, heat) if draw else None
        if opts.save_dir is not None:
            suffix = Path(path).suffix.lower()
            suffix = suffix if suffix in (".jpg", ".jpeg", ".png", ".bmp") else ".jpg"
            out = summary.output_path(opts.save_dir, stem, suffix)
            if not cv2.imwrite(str(out), rendered):
                tqdm.write(f"error: {out}: cannot write image", file=sys.stderr)
                summary.failures.append(f"{out}: cannot write image")
            if opts.crop:
                _save_crops(opts.save_dir, out.stem, image, dets)
        if rendered is not None:
            window.show(rendered)


def _run_stream(
    detector: Detector, video: str | int, opts: OutputOptions, summary: RunSummary, window: _Window
) -> None:
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
        out = summary.output_path(opts.save_dir, name, ".mp4")
        crop_stem = out.stem
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            summary.failures.append(f"{out}: cannot open video writer")
            tqdm.write(f"error: {out}: cannot open video writer", file=sys.stderr)
            writer = None
    bar = tqdm(total=count or None, desc=name, unit="frame")
    frame_index = 0
    stopped = False  # by the user, in the window
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            draw = writer is not None or window.enabled
            dets, heat = _detect(detector, frame, opts.heatmap and draw)
            summary.frames += 1
            summary.detections += len(dets)
            if opts.json_path is not None:
                frame_id = f"{name}_{frame_index:06d}"
                summary.records.append(_record(path, frame_id, dets, frame_index))
            if opts.crop and opts.save_dir is not None:
                _save_crops(opts.save_dir, f"{crop_stem}_{frame_index:06d}", frame, dets)
            if draw:
                rendered = _render(frame, dets, heat)
                if writer is not None:
                    writer.write(rendered)
                if not window.show(rendered):
                    stopped = True
                    break
            frame_index += 1
            bar.update(1)
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
    if frame_index == 0 and not isinstance(video, int):
        summary.failures.append(f"{video}: video has no decodable frames")
        tqdm.write(f"error: {video}: video has no decodable frames", file=sys.stderr)
    elif count and frame_index != count and not stopped and not isinstance(video, int):
        problem = f"{video}: read {frame_index} of the {count} frames its container declares"
        if frame_index < count:
            problem += " (truncated or damaged?); the frames read are kept"
        summary.warnings.append(problem)
        tqdm.write(f"warning: {problem}", file=sys.stderr)


def run_predictions(detector: Detector, source: Source, opts: OutputOptions) -> RunSummary:
    """Processes every input of ``source``; never raises for one bad input.

    Raises:
        OutputPathError: the JSON file cannot be written at the end.
    """
    summary = RunSummary()
    window = _Window(opts.show)
    if opts.save_dir is not None:
        opts.save_dir.mkdir(parents=True, exist_ok=True)
    try:
        _run_images(detector, source.images, opts, summary, window)
        for video in source.videos:
            _run_stream(detector, video, opts, summary, window)
        if source.webcam is not None:
            _run_stream(detector, source.webcam, opts, summary, window)
    finally:  # Ctrl-C on a webcam still leaves the JSON of what was seen
        if opts.json_path is not None:
            write_json(opts.json_path, summary.records)
    return summary


def write_json(path: Path, records: list[dict]) -> None:
    """Writes the records atomically.

    Raises:
        OutputPathError: the file cannot be written (no temporary file is left).
    """
    write_text_atomic(path, json.dumps(records, indent=1))


def benchmark(detector: Detector, image: np.ndarray, runs: int = 50, warmup: int = 5) -> dict:
    """Median and spread (ms) of preprocessing, forward and decode+NMS over ``runs`` calls."""
    if runs < 1:
        raise ValueError(f"benchmark needs at least one run, got {runs}")
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
