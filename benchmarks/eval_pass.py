"""Evaluation throughput against the model's own speed: ``python -m benchmarks.eval_pass``.

For a trained checkpoint (default: the one ``make demo`` writes) on a test split, in one run:

1. forward only: the model on pre-loaded, letterboxed batches already on the device (the
   ceiling of any evaluation pass at this batch and input size);
2. before: the serial evaluation loop as it was, restated here: images read and letterboxed
   in the loop (``--before-workers 0``), stacked in the main process, then decoded, NMS'd,
   mapped back to the image and collected one image at a time, then scored;
3. after: ``detect_dataset`` + ``score``, what ``eval.py`` runs: loader workers read the next
   batches while the model runs, one ``detect_batch`` call per batch.

Printed: images/s of each, their ratio to forward only with the 0.80 target for "after"
(PASS/FAIL), whether before and after found the same detections and mAP bit for bit, and
after's stage breakdown (loading wait, forward, decode+NMS, scoring). Each round runs the
three in turn on a warm model; images/s are the medians over ``--rounds``, and each ratio is
the median of the rounds' own ratios (a pass against the forward-only run just before it, so
that a shared machine's load changes between rounds cancel out).

Examples:
    make demo && python -m benchmarks.eval_pass
    python -m benchmarks.eval_pass --weights best.pth --data voc --voc-root data/VOCdevkit \\
        --num-images 500 --rounds 3 --json logs/eval_pass.json
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.common import (
    add_checkpoint_options,
    check_at_least,
    checkpoint_and_data,
    finish,
    start,
)
from data.voc import Annotation, load_voc, parse_sets
from nets.checkpoint import ModelInfo, load_model
from nets.decode import Geometry, detect
from utils.classes import read_class_names
from utils.config import CommandParser, add_options, run_cli
from utils.device import DeviceOptions, select_device, synchronize
from utils.errors import InputError
from utils.evaluation.evaluate import (
    Detected,
    EvalConfig,
    EvalReport,
    detect_dataset,
    ground_truth,
    score,
)
from utils.evaluation.metrics import BoxSet
from utils.inference.predictor import class_names_for
from utils.preprocess import resize_image
from utils.sources import ImageReadError, read_image
from utils.timing import time_call

TARGET = 0.80  # the full pass, as a fraction of forward-only images/s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CommandParser(description=__doc__)
    add_checkpoint_options(p)
    p.add_argument("--num-images", type=int, default=0, help="first N images of the split (0: all)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="loader processes of the after path")
    p.add_argument(
        "--before-workers", type=int, default=0, help="loader processes of the before path"
    )
    add_options(
        p,
        DeviceOptions,
        include=("device",),
        defaults={"device": "cpu"},
        helps={"device": "cpu, cuda or auto"},
    )
    p.add_argument("--no-coco", action="store_true", help="score VOC mAP only (both paths)")
    p.add_argument("--rounds", type=int, default=1, help="forward/before/after rounds")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    check_at_least(args, num_images=0, batch_size=1, workers=0, before_workers=0, rounds=1)
    return args


def _letterboxed(annotations: Sequence[Annotation], size: int, letterbox: bool) -> list:
    """(annotation index, RGB CHW uint8 tensor, meta) of every readable image."""
    images = _SerialImages(annotations, size, letterbox)
    samples = (images[i] for i in range(len(images)))
    return [(i, tensor, meta) for i, tensor, meta, error in samples if error is None]


def forward_only(
    model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device
) -> float:
    """Images/s of the bare forward pass over pre-loaded device batches (one warm-up batch)."""
    with torch.inference_mode():
        model(batches[0])
        synchronize(device)

        def run() -> None:
            for batch in batches:
                model(batch)
            synchronize(device)

        seconds, _ = time_call(run)
    return sum(len(b) for b in batches) / seconds


class _SerialImages(torch.utils.data.Dataset):
    def __init__(self, annotations: Sequence[Annotation], size: int, letterbox: bool) -> None:
        self.annotations, self.size, self.letterbox = annotations, size, letterbox

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int):
        try:
            image = read_image(self.annotations[index].image_path, apply_exif=False)
        except ImageReadError as err:
            return index, None, None, str(err)
        canvas, meta = resize_image(image[:, :, ::-1], self.size, self.letterbox)
        return index, torch.from_numpy(canvas.transpose(2, 0, 1).copy()), meta, None


@torch.inference_mode()
def before_detect(
    model: torch.nn.Module,
    annotations: Sequence[Annotation],
    geometry: Geometry,
    cfg: EvalConfig,
    device: torch.device,
) -> Detected:
    """The evaluation loop as it was: a list collate, stacking in the main process, and
    per-image decoding (``detect``'s one ``Detections`` per image, each mapped back on its
    own and copied to the host three times)."""
    loader = DataLoader(
        _SerialImages(annotations, geometry.input_size, cfg.letterbox),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        collate_fn=lambda batch: list(zip(*batch)),
    )
    found, found_images, failures = [], [], []
    sizes = np.zeros((len(annotations), 2), np.int64)
    for indices, images, metas, errors in loader:
        ok = [k for k, e in enumerate(errors) if e is None]
        failures += [e for e in errors if e is not None]
        if not ok:
            continue
        batch = torch.stack([images[k] for k in ok]).to(device).float().div_(255)
        results = detect(
            model(batch),
            geometry,
            conf_thresh=cfg.conf_thresh,
            nms_thresh=cfg.nms_thresh,
            max_det=cfg.max_det or None,
        )
        for k, dets in zip(ok, results):
            sizes[indices[k]] = (metas[k].width, metas[k].height)
            found.append(dets.to_original(metas[k]))
            found_images.append(indices[k])
    gts = ground_truth(annotations, sizes[:, 0] > 0)
    return Detected(BoxSet.from_detections(found, found_images), gts, sizes, failures)


def _same(a: Detected, b: Detected, ra: EvalReport, rb: EvalReport) -> bool:
    fields = ("image", "boxes", "labels", "scores")
    return all(
        np.array_equal(getattr(a.dets, f), getattr(b.dets, f)) for f in fields
    ) and ra.to_json() | {"speed": None} == rb.to_json() | {"speed": None}


@dataclass
class Case:
    """What every round measures: the model on its device, the split and its pre-loaded
    batches (for forward only), and the two evaluation configs."""

    model: torch.nn.Module
    info: ModelInfo
    names: list[str]
    annotations: list[Annotation]
    dataset: str
    device: torch.device
    geometry: Geometry
    cfg: EvalConfig  # after
    before_cfg: EvalConfig
    loaded: list  # (index, tensor, meta) of the readable images
    batches: list[torch.Tensor]


def load_case(args: argparse.Namespace) -> Case:
    """The checkpoint, the split (its first ``--num-images``) and the pre-loaded batches."""
    source = checkpoint_and_data(args)
    device = select_device(args.device)
    names = read_class_names(source.classes) if source.classes else None
    model, info = load_model(args.weights, num_classes=len(names) if names else None)
    names = class_names_for(names, info.class_names, info.num_classes, args.weights)
    annotations = load_voc(source.voc_root, parse_sets(args.split), names).annotations
    annotations = annotations[: args.num_images] if args.num_images else annotations
    if not annotations:
        raise InputError(f"{source.voc_root} {args.split}: no images")
    size = args.img_size or info.input_size
    cfg = EvalConfig(
        img_size=size, batch_size=args.batch_size, workers=args.workers, coco=not args.no_coco
    )
    model.to(device).eval()
    loaded = _letterboxed(annotations, size, cfg.letterbox)
    batches = [
        torch.stack([t for _, t, _ in loaded[i : i + args.batch_size]]).to(device).float().div_(255)
        for i in range(0, len(loaded), args.batch_size)
    ]
    dataset = f"{source.voc_root} {args.split}"
    geometry = info.geometry.at_size(size)
    before_cfg = replace(cfg, workers=args.before_workers)
    return Case(
        model, info, names, annotations, dataset, device, geometry, cfg, before_cfg, loaded, batches
    )


def measure_rounds(case: Case, rounds: int) -> tuple[dict[str, list[float]], list, bool]:
    """Forward only, before and after in turn, ``rounds`` times: their images/s per round,
    after's reports, and whether before and after found the same every round."""
    cfg = case.cfg

    def before() -> tuple[Detected, EvalReport]:
        detected = before_detect(
            case.model, case.annotations, case.geometry, case.before_cfg, case.device
        )
        return detected, score(detected, case.names, case.dataset, cfg.iou_thresh, cfg.coco)

    def after() -> tuple[Detected, EvalReport]:
        detected = detect_dataset(
            case.model, case.annotations, case.geometry, cfg, device=case.device, progress=False
        )
        return detected, score(detected, case.names, case.dataset, cfg.iou_thresh, cfg.coco)

    rates: dict[str, list[float]] = {"forward": [], "before": [], "after": []}
    after_reports: list[EvalReport] = []
    identical = True
    for _ in range(rounds):
        rates["forward"].append(forward_only(case.model, case.batches, case.device))
        seconds, (old, old_report) = time_call(before)
        rates["before"].append(len(case.loaded) / seconds)
        seconds, (new, new_report) = time_call(after)
        rates["after"].append(len(case.loaded) / seconds)
        after_reports.append(new_report)
        identical &= _same(old, new, old_report, new_report)
    return rates, after_reports, identical


def summarize(rates: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per path: the median images/s over the rounds, and the median of each round's ratio to
    that round's forward-only rate (so that load changing between rounds cancels out)."""
    median = {k: statistics.median(v) for k, v in rates.items()}
    ratio = {
        k: statistics.median(r / f for r, f in zip(v, rates["forward"])) for k, v in rates.items()
    }
    return median, ratio


def print_rates(args, median: dict, ratio: dict, rates: dict, passed: bool) -> None:
    labels = {
        "forward": "forward only (pre-loaded batches)",
        "before": f"before: serial loop, per-image decode (workers {args.before_workers})",
        "after": f"after: detect_dataset (workers {args.workers}, batched decode)",
    }
    print(f"{'path':<62}{'images/s':>10}{'x forward':>11}")
    for key, label in labels.items():
        verdict = f"   target >= {TARGET:.2f}: {'PASS' if passed else 'FAIL'}"
        print(
            f"{label:<62}{median[key]:>10.2f}{ratio[key]:>10.2f}x"
            + (verdict if key == "after" else "")
        )
    after_before = statistics.median(a / b for a, b in zip(rates["after"], rates["before"]))
    print(f"after / before: {after_before:.2f}x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    case = load_case(args)
    title = (
        f"eval pass: {len(case.loaded)} images of {case.dataset}, {args.weights} "
        f"({case.info.describe()}), input {case.cfg.img_size}, batch {args.batch_size}, "
        f"device {case.device}, median of {args.rounds} round(s)"
    )
    machine = start(title)
    rates, after_reports, identical = measure_rounds(case, args.rounds)
    median, ratio = summarize(rates)
    speed = sorted(after_reports, key=lambda r: r.speed.wall_s)[len(after_reports) // 2].speed
    passed = ratio["after"] >= TARGET
    print_rates(args, median, ratio, rates, passed)
    print(
        f"before and after identical (detections and every metric): {'yes' if identical else 'NO'}"
        f" (mAP50 VOC12 {after_reports[-1].voc12_map50:.6f})"
    )
    print(f"after, stage breakdown: {speed.format()}")
    report = {
        "machine": machine,
        "weights": args.weights,
        "dataset": case.dataset,
        "images": len(case.loaded),
        "input_size": case.cfg.img_size,
        "batch_size": args.batch_size,
        "device": str(case.device),
        "workers": {"before": args.before_workers, "after": args.workers},
        "rounds": args.rounds,
        "images_per_s": {
            "forward_only": median["forward"],
            "before": median["before"],
            "after": median["after"],
        },
        "ratio_to_forward": {"before": ratio["before"], "after": ratio["after"]},
        "target": TARGET,
        "passed": passed,
        "identical": identical,
        "breakdown": speed.to_json(),
    }
    finish(report, args.json)
    return 0 if identical else 1


if __name__ == "__main__":
    run_cli(main)
