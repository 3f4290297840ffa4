"""Throughput of ``predict.py`` on a folder and a video, serial vs pipelined:
``python -m benchmarks.pipeline``.

Generates ``--num-images`` distinct 810x1080 JPEGs (crops of ``model_data/samples`` at random
scales, flipped and tinted) and a ``--frames``-frame 810x1080 mp4v video from them in a
temporary folder, loads the official COCO weights at 416 on the CPU, and runs the library loop
of ``predict.py`` (``run_predictions``) over them in every configuration below, in a new random
order each round (``--repeats`` rounds, after a discarded warm-up), so that load from other
jobs hits all of them alike. Throughput is inputs per second of the whole loop (reading,
model, drawing, encoding, writing); the median over rounds is reported.

Targets, each against a reference measured in the same run, at torch's default thread count
and again at ``--threads 1`` (which leaves a 2-core machine one core for the background
threads, as a machine with more cores than torch threads, or a GPU, has):

(a) pipelined ``--no-save`` img/s >= 0.9 x the forward-only rate (1000 / median forward ms,
    batch 1, on an already preprocessed input): reading and decoding hidden behind the model;
(b) pipelined img/s >= 1.2 x serial (``--prefetch 0``) img/s, annotated images saved;
(c) the same for the video, in frames per second, annotated video saved;
(d) threads: ``predict.py``'s default (its automatic ``--prefetch``, printed) at the default
    thread count against the same at ``--threads 1``; target: the default is not slower;
(e) real time: ``predict.py``'s default, saving the annotated images (and the video), against
    OpenCV DNN's end-to-end rate on the same 810x1080 files and frames (read, forward, decode,
    NMS; no drawing or writing), measured in every round; target >= 2.0x. Meant for the INT8
    export: ``--weights model_int8.onnx`` (``python -m tools.export --int8``).

Also printed: batch 4 vs batch 1 (pipelined, saving), which decides the ``--batch-size``
default; with ``--amp`` (the model in 16-bit, as ``predict.py --amp``), the serial saving loop
with the float32 model as well, as the reference for the gain. Other processes on the machine
make every figure noisy: the load average before and after is printed with them.

Examples:
    python -m benchmarks.pipeline
    python -m benchmarks.pipeline --num-images 60 --frames 60 --repeats 2 --json logs/pipe.json
    python -m benchmarks.pipeline --amp        # the model in 16-bit, as predict.py --amp
    python -m benchmarks.pipeline --weights m_int8.onnx --only images_pipelined_save \
        video_pipelined_save images_serial_save video_serial_save
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.common import check_at_least, check_files, finish, start
from nets.options import ModelOptions
from utils.config import CommandParser, add_options, run_cli
from utils.device import DeviceOptions, available_cpus, configure_threads, torch_threads
from utils.inference.predict_loop import (
    AUTO_PREFETCH,
    OutputOptions,
    PipelineOptions,
    model_threads,
    run_predictions,
)
from utils.inference.predictor import DEFAULT_WEIGHTS, Detector, InferenceConfig
from utils.paths import OFFICIAL_CFG, OFFICIAL_WEIGHTS, SAMPLES
from utils.sources import Source
from utils.timing import StageTimer, Stats

SIZE = (810, 1080)  # width, height: a phone photo scaled down, portrait
TARGET_NO_SAVE = 0.9  # pipelined --no-save img/s over the forward-only rate
TARGET_SPEEDUP = 1.2  # pipelined over serial, saving
TARGET_THREADS = 1.0  # predict.py's default at the default threads over --threads 1 (saving)
TARGET_REALTIME = 2.0  # predict.py's default, saving, over OpenCV DNN's end-to-end rate
CONF_THRESH, NMS_THRESH = 0.25, 0.45  # OpenCV DNN's detect(), as predict.py's defaults
SERIAL = PipelineOptions(prefetch=0)
PIPELINED = PipelineOptions(prefetch=AUTO_PREFETCH)  # pipelined, at the automatic depth


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` distinct 810x1080 JPEGs from the sample photos: a random crop (40-100 % of
    the side), maybe mirrored, tinted per channel, resized to ``SIZE``."""
    rng = np.random.default_rng(seed)
    samples = [cv2.imread(str(p)) for p in sorted(SAMPLES.glob("*.jpg"))]
    if not samples:
        raise FileNotFoundError(f"{SAMPLES}: no sample photos (`make weights`)")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = samples[i % len(samples)]
        h, w = image.shape[:2]
        scale = rng.uniform(0.4, 1.0)
        ch, cw = int(h * scale), int(w * scale)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = image[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        tint = rng.uniform(0.8, 1.2, 3)
        crop = np.clip(crop * tint, 0, 255).astype(np.uint8)
        out = cv2.resize(crop, SIZE, interpolation=cv2.INTER_AREA)
        path = folder / f"{i:04d}.jpg"
        cv2.imwrite(str(path), out, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def make_video(path: Path, images: list[Path], frames: int, fps: float = 25.0) -> Path:
    """An mp4v video of ``frames`` 810x1080 frames, cycling through ``images``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, SIZE)
    if not writer.isOpened():
        raise OSError(f"{path}: this OpenCV build cannot write mp4v video")
    for i in range(frames):
        writer.write(cv2.imread(str(images[i % len(images)])))
    writer.release()
    return path


@dataclass(frozen=True)
class Config:
    """One measured configuration of the loop."""

    label: str
    video: bool  # the video, else the image folder
    save: bool
    pipeline: PipelineOptions
    threads: int | None  # None: the default
    float32: bool = False  # the model in float32 even under --amp (the reference for it)


FLOAT32_SERIAL = "images_serial_save_float32"  # measured with --amp only


def configs(amp: bool = False) -> dict[str, Config]:
    """Serial and pipelined, images without and with saving and the video, at torch's default
    threads and at ``--threads 1`` (which leaves a 2-core machine a free core for the
    background threads), plus batch 4."""
    out = {}
    for threads, suffix, note in ((None, "", ""), (1, "_threads1", ", --threads 1")):
        for kind, save, tail in (("images", False, "nosave"), ("images", True, "save")):
            for mode, options in (("serial", SERIAL), ("pipelined", PIPELINED)):
                flag = ", --no-save" if not save else ", saving"
                label = f"{kind}, {mode}{flag}{note}"
                out[f"{kind}_{mode}_{tail}{suffix}"] = Config(label, False, save, options, threads)
        for mode, options in (("serial", SERIAL), ("pipelined", PIPELINED)):
            label = f"video, {mode}, saving{note}"
            out[f"video_{mode}_save{suffix}"] = Config(label, True, True, options, threads)
    out["images_pipelined_save_batch4"] = Config(
        "images, pipelined, saving, --batch-size 4",
        False,
        True,
        PipelineOptions(prefetch=AUTO_PREFETCH, batch_size=4),
        None,
    )
    if amp:
        out[FLOAT32_SERIAL] = Config(
            "images, serial, saving, float32", False, True, SERIAL, None, float32=True
        )
    return out


def run_once(detector: Detector, config: Config, data: dict[str, Source], tmp: Path) -> float:
    """Inputs per second of one ``run_predictions`` over the config's source."""
    default_threads = torch.get_num_threads()
    configure_threads(config.threads, parallel_decode=config.pipeline.pipelined)
    save_dir = tmp / "out" if config.save else None
    if save_dir is not None and save_dir.exists():
        shutil.rmtree(save_dir)
    opts = OutputOptions(save_dir=save_dir)
    source = data["video" if config.video else "images"]
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # no progress bars between figures
            start = time.perf_counter()
            summary = run_predictions(detector, source, opts, pipeline=config.pipeline)
            elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(default_threads)
        if save_dir is not None:
            shutil.rmtree(save_dir, ignore_errors=True)
    if summary.failures:
        raise RuntimeError(f"{config.label}: inputs failed: {summary.failures[:3]}")
    return (summary.images + summary.frames) / elapsed


def forward_ms(detector: Detector, image: np.ndarray, runs: int, threads: int) -> Stats:
    """Forward-only latency (batch 1, preprocessed input) at ``threads`` torch threads."""
    with torch_threads(threads):
        batch, _ = detector.preprocess([image])
        timer = StageTimer()
        for i in range(runs + 3):
            with timer.stage("forward", record=i >= 3):
                detector.forward(batch)
    return timer.summary()["forward"]


class OpenCVReference:
    """OpenCV DNN on the darknet cfg + weights (``cv2.dnn_DetectionModel``, plain resize to the
    input size, scale 1/255, swapRB): the end-to-end rate of reading every file or frame and
    detecting (forward, decode, NMS), with OpenCV's own threads, nothing drawn or written."""

    def __init__(self, cfg: str, weights: str, input_size: int) -> None:
        self.model = cv2.dnn_DetectionModel(cv2.dnn.readNetFromDarknet(cfg, weights))
        self.model.setInputParams(size=(input_size, input_size), scale=1 / 255.0, swapRB=True)

    def rate(self, source: Source) -> float:
        """Inputs per second over the images of ``source``, else its first video's frames."""
        before = cv2.getNumThreads()
        cv2.setNumThreads(-1)  # OpenCV's default, as in benchmarks.inference
        try:
            start, count = time.perf_counter(), 0
            if source.images:
                for path in source.images:
                    self.model.detect(cv2.imread(path), CONF_THRESH, NMS_THRESH)
                    count += 1
            else:
                cap = cv2.VideoCapture(source.videos[0])
                while (frame := cap.read())[0]:
                    self.model.detect(frame[1], CONF_THRESH, NMS_THRESH)
                    count += 1
                cap.release()
            return count / (time.perf_counter() - start)
        finally:
            cv2.setNumThreads(before)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CommandParser(description=__doc__)
    add_options(
        p,
        ModelOptions,
        include=("weights", "img_size"),
        defaults={"weights": DEFAULT_WEIGHTS, "img_size": 416},
        helps={"weights": "model to run", "img_size": "network input side"},
    )
    add_options(
        p,
        DeviceOptions,
        include=("amp",),
        helps={"amp": "run the model as predict.py --amp (16-bit) does"},
    )
    p.add_argument("--num-images", type=int, default=150, help="generated 810x1080 JPEGs")
    p.add_argument("--frames", type=int, default=150, help="frames of the generated video")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of every configuration")
    p.add_argument("--forward-runs", type=int, default=30, help="timed forwards per thread count")
    p.add_argument("--only", nargs="+", choices=list(configs(amp=True)), help="measure only these")
    p.add_argument(
        "--opencv-cfg", default=str(OFFICIAL_CFG), help="darknet .cfg of the OpenCV DNN reference"
    )
    p.add_argument(
        "--opencv-weights",
        default=str(OFFICIAL_WEIGHTS),
        help="darknet .weights of the OpenCV DNN reference (the real-time target (e))",
    )
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = p.parse_args(argv)
    check_at_least(args, num_images=1, frames=1, repeats=1, forward_runs=1)
    return args


def check_target(value: float, reference: float, target: float) -> dict:
    """One target's row: ``value`` over ``reference`` against the ``target`` ratio."""
    ratio = value / reference
    return {
        "value": value,
        "reference": reference,
        "ratio": ratio,
        "target": target,
        "met": ratio >= target,
    }


def print_target(name: str, row: dict, unit: str) -> None:
    print(
        f"  {name:<44}{row['value']:>7.1f} vs {row['reference']:>7.1f} {unit:<6} "
        f"{row['ratio']:>5.2f}x (target >= {row['target']:.2f}x)  "
        + ("PASS" if row["met"] else "FAIL")
    )


def pipelining_targets(
    rate: dict[str, float], forward_ms: float, suffix: str
) -> list[tuple[str, str, str, dict]]:
    """Targets (a), (b) and (c) at one thread count (``suffix``: its configurations' suffix,
    ``forward_ms``: its forward-only median) as ``(key, label, unit, row)``, for those whose
    configurations were measured."""
    found = []
    nosave = f"images_pipelined_nosave{suffix}"
    if nosave in rate:
        row = check_target(rate[nosave], 1000 / forward_ms, TARGET_NO_SAVE)
        label = "(a) pipelined --no-save vs forward-only rate"
        found.append((f"a_nosave_vs_forward{suffix}", label, "img/s", row))
    for letter, kind, unit in (("b", "images", "img/s"), ("c", "video", "fps")):
        piped, serial = f"{kind}_pipelined_save{suffix}", f"{kind}_serial_save{suffix}"
        if piped in rate and serial in rate:
            row = check_target(rate[piped], rate[serial], TARGET_SPEEDUP)
            label = f"({letter}) {kind} saved: pipelined vs serial"
            found.append((f"{letter}_{kind}_pipelined_vs_serial{suffix}", label, unit, row))
    return found


def measure(args: argparse.Namespace, chosen: dict[str, Config], detector, exact):
    """Every chosen configuration ``--repeats`` times in a new random order each round (after
    a warm-up round on a few images), with the forward-only latency at the default thread
    count and at 1 thread and OpenCV DNN's end-to-end rates (``opencv_images``,
    ``opencv_video``) before each round; returns the rates and forward medians (ms)."""
    fwd: dict[int, list[float]] = {torch.get_num_threads(): [], 1: []}
    rates: dict[str, list[float]] = {k: [] for k in chosen}
    opencv = OpenCVReference(args.opencv_cfg, args.opencv_weights, args.img_size)
    rates.update(opencv_images=[], opencv_video=[])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        paths = make_images(tmp / "images", args.num_images)
        video = make_video(tmp / "clip.mp4", paths, args.frames)
        data = {
            "images": Source(images=[str(p) for p in paths]),
            "video": Source(videos=[str(video)]),
        }
        warm = {"images": Source(images=[str(p) for p in paths[:4]]), "video": data["video"]}
        image = cv2.imread(str(paths[0]))
        rng = np.random.default_rng(0)
        for config in chosen.values():  # warm-up: every configuration once, on a few images
            if not config.video:
                run_once(exact if config.float32 else detector, config, warm, tmp)
        opencv.rate(warm["images"])
        for _ in range(args.repeats):
            for threads in fwd:
                fwd[threads].append(forward_ms(detector, image, args.forward_runs, threads).median)
            rates["opencv_images"].append(opencv.rate(data["images"]))
            rates["opencv_video"].append(opencv.rate(data["video"]))
            for k in rng.permutation(len(chosen)):
                name = list(chosen)[k]
                model = exact if chosen[name].float32 else detector
                rates[name].append(run_once(model, chosen[name], data, tmp))
    return rates, {t: float(np.median(v)) for t, v in fwd.items()}


def print_rates(args, chosen: dict[str, Config], rates: dict, forward: dict[int, float]) -> None:
    print(f"\nforward only, batch 1, median of {args.repeats} x {args.forward_runs} runs:")
    for threads, ms in forward.items():
        print(f"  torch {threads} thread(s): {ms:.1f} ms = {1000 / ms:.1f} img/s")
    print(f"\nthroughput, median of {args.repeats} rounds (min-max):")
    labels = {
        "opencv_images": ("images, OpenCV DNN end to end, no saving", "img/s"),
        "opencv_video": ("video, OpenCV DNN end to end, no saving", "fps"),
    }
    labels.update({k: (c.label, "fps" if c.video else "img/s") for k, c in chosen.items()})
    for name, (label, unit) in labels.items():
        runs = rates[name]
        print(f"  {label:<44}{np.median(runs):>7.1f} {unit:<6} ({min(runs):.1f}-{max(runs):.1f})")


def realtime_targets(rate: dict[str, float], default_mode: str) -> list[tuple[str, str, str, dict]]:
    """Target (e) for images and video, where measured: ``predict.py``'s default
    (``default_mode``: serial or pipelined), saving, over OpenCV DNN's end-to-end rate."""
    found = []
    for kind, unit in (("images", "img/s"), ("video", "fps")):
        ours, reference = f"{kind}_{default_mode}_save", f"opencv_{kind}"
        if ours in rate and reference in rate:
            row = check_target(rate[ours], rate[reference], TARGET_REALTIME)
            label = f"(e) {kind}: predict.py saving vs OpenCV DNN e2e"
            found.append((f"e_{kind}_vs_opencv", label, unit, row))
    return found


def report_targets(
    rate: dict[str, float],
    forward: dict[int, float],
    default_threads: int,
    detector: Detector | None = None,
) -> dict[str, dict]:
    """Prints and returns every target: (a)-(c) at the default thread count and at 1, then
    (d) and (e); ``forward``: forward-only medians (ms) by thread count; ``detector``: the
    model measured, whose threads decide ``predict.py``'s default (None: torch's)."""
    targets: dict[str, dict] = {}
    print("\ntargets (each against a reference measured in this run):")
    for threads, suffix in ((default_threads, ""), (1, "_threads1")):
        if threads == 1 and default_threads == 1:
            continue
        at = f"{threads} thread{'s' if threads > 1 else ''}"
        spare = available_cpus() > threads
        print(
            f"  torch at {at}"
            + (" (a CPU core free for the background threads):" if spare else ":")
        )
        for key, label, unit, row in pipelining_targets(rate, forward[threads], suffix):
            print_target(label, row, unit)
            targets[key] = row
    # (d): what predict.py runs by default (its automatic --prefetch) at each thread count
    mode = {}
    threads_of, sleep = model_threads(detector) if detector is not None else (None, False)
    for threads, suffix in ((default_threads, ""), (1, "_threads1")):
        threads = threads_of if sleep else threads  # ORT's threads, whatever torch's
        options, why = PipelineOptions().resolve(
            torch.device("cpu"), threads, idle_threads_sleep=sleep
        )
        mode[suffix] = "pipelined" if options.pipelined else "serial"
        print(f"  predict.py's default at {threads} thread(s) here: {why}")
    default_key = f"images_{mode['']}_save"
    one_key = f"images_{mode['_threads1']}_save_threads1"
    if default_key in rate and one_key in rate and default_threads > 1:
        row = check_target(rate[default_key], rate[one_key], TARGET_THREADS)
        print_target(
            f"(d) predict.py default, {default_threads} threads vs --threads 1", row, "img/s"
        )
        targets["d_threads_default_vs_1"] = row
        print(
            f"      forward {forward[1]:.1f} ms at 1 thread, {forward[default_threads]:.1f} ms "
            f"at {default_threads}: {forward[1] / forward[default_threads]:.2f}x"
        )
    for key, label, unit, row in realtime_targets(rate, mode[""]):
        print_target(label, row, unit)
        targets[key] = row
    return targets


def informative_ratios(rate: dict[str, float]) -> dict[str, float]:
    """Batch 4 over batch 1 (pipelined, saving) and, with ``--amp``, the 16-bit model over the
    float32 one (serial, saving), for those measured; printed, no targets."""
    found = {}
    pairs = (
        (
            "batch4_vs_batch1",
            "images_pipelined_save_batch4",
            "images_pipelined_save",
            "batch 4 vs batch 1 (pipelined, saving)",
        ),
        (
            "amp_vs_float32",
            "images_serial_save",
            FLOAT32_SERIAL,
            "--amp vs float32 (serial, saving)",
        ),
    )
    for key, numerator, denominator, label in pairs:
        if numerator in rate and denominator in rate:
            found[key] = rate[numerator] / rate[denominator]
            print(f"  {label}: {found[key]:.2f}x (informative)")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_files(
        args.weights, args.opencv_cfg, args.opencv_weights, hint="model_data files: `make weights`"
    )
    config = InferenceConfig(device="cpu", img_size=args.img_size, amp=args.amp)
    detector = Detector.from_weights(args.weights, config=config)
    exact = Detector.from_weights(args.weights, config=replace(config, amp=False))
    if detector.precision.warning:
        print(f"warning: {detector.precision.warning}", file=sys.stderr)
    chosen = {k: v for k, v in configs(args.amp).items() if not args.only or k in args.only}
    title = (
        f"predict loop throughput: {args.num_images} JPEGs and a {args.frames}-frame mp4v "
        f"video, {SIZE[0]}x{SIZE[1]}, {args.img_size} input, CPU, {detector.precision.name}"
    )
    report: dict = {
        "machine": start(title),
        "images": args.num_images,
        "frames": args.frames,
        "repeats": args.repeats,
        "input_size": args.img_size,
        "precision": detector.precision.name,
    }
    rates, forward = measure(args, chosen, detector, exact)
    print_rates(args, chosen, rates, forward)
    rate = {k: float(np.median(v)) for k, v in rates.items()}
    report["forward_ms_median"] = {str(t): v for t, v in forward.items()}
    report["throughput"] = {
        k: {"median": rate[k], "runs": rates[k], "unit": "frames/s" if c.video else "images/s"}
        for k, c in chosen.items()
    }
    for kind, unit in (("images", "images/s"), ("video", "frames/s")):
        name = f"opencv_{kind}"
        report["throughput"][name] = {"median": rate[name], "runs": rates[name], "unit": unit}
    report["targets"] = report_targets(rate, forward, report["machine"]["torch_threads"], detector)
    report.update(informative_ratios(rate))
    finish(report, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
