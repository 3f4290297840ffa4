"""Comparing checkpoints (attention types, seeds) on one split: the table users publish.

``evaluate_checkpoint`` scores and measures one checkpoint (a ``Row`` with its per-image
matching); ``training_run`` gives a row the seed and settings its checkpoint was trained with,
by which the bootstrap pairs runs; ``compare_table`` groups the rows by attention block and
turns them into the tables, the paired bootstrap verdicts and the plots.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from dataclasses import replace

import numpy as np
import torch

from data.formats import LabelSource
from nets.checkpoint import ModelInfo, load_model, load_torch_file
from nets.summary import count_flops, count_parameters
from nets.yolo import YoloBody
from utils.errors import InputError
from utils.evaluation.bootstrap import MatchTable

# the table's names stay importable from here, where eval.py and tools.study find them
from utils.evaluation.compare_table import (  # noqa: F401
    CompareConfig,
    PhiSummary,
    Row,
    Verdict,
    group_names,
    markdown,
    pairwise_verdicts,
    size_aps,
    summarize_by_phi,
    write_outputs,
)
from utils.evaluation.evaluate import (
    Detected,
    EvalConfig,
    EvalReport,
    check_ground_truth,
    detect_dataset,
    load_ground_truth,
    score,
)
from utils.inference.onnx_runner import OnnxRunner, onnx_metadata
from utils.inference.predict_loop import benchmark
from utils.inference.predictor import Detector, InferenceConfig, check_class_names
from utils.precision import inference_precision
from utils.sources import read_image

logger = logging.getLogger(__name__)

# a stored training config's fields that say which attention block a run trained: what a
# comparison varies, so left out of the settings two runs must share to be paired by seed
BLOCK_FIELDS = ("phi", "attention_at", "attention_args", "attention_plugin")


def training_run(weights: str, neutral: Collection[str] = ()) -> tuple[int | None, dict | None]:
    """The training seed and settings a checkpoint stores, by which the comparison pairs runs.

    The settings are its stored config less the seed, ``BLOCK_FIELDS`` and ``neutral`` (the
    fields that do not change what a run computes, ``utils.training.config``'s
    ``RESULT_NEUTRAL_FIELDS``, which the callers pass: this layer does not import training).

    Returns:
        ``(seed, settings)``, or ``(None, None)`` for an ONNX export, darknet weights, a
        reference state dict or any checkpoint without a stored seed: such a run is never
        paired with another by seed.
    """
    if str(weights).endswith((".onnx", ".weights")):
        return None, None
    try:
        payload = load_torch_file(weights)
    except ValueError:  # the evaluation itself says what is wrong with the file
        return None, None
    config = payload.get("config") if isinstance(payload, dict) else None
    seed = config.get("seed") if isinstance(config, dict) else None
    if isinstance(seed, bool) or not isinstance(seed, int):
        return None, None
    left_out = {"seed", *BLOCK_FIELDS, *neutral}
    return seed, {k: v for k, v in config.items() if k not in left_out}


def _load_for_evaluation(
    weights: str, cfg: EvalConfig, class_names: list[str] | None, phi: str | None
) -> tuple[torch.nn.Module | OnnxRunner, ModelInfo, list[str], Detector | None]:
    """The model (or ONNX Runtime session), its info and class names; for an ``.onnx`` export
    also the ``Detector`` that runs it (fp32 or INT8, on the CPU)."""
    if str(weights).endswith(".onnx"):
        config = InferenceConfig(img_size=cfg.img_size, device="cpu", amp=cfg.amp)
        detector = Detector.from_weights(weights, phi=phi, classes=class_names, config=config)
        return detector.model, detector.info, detector.class_names, detector
    model, info = load_model(weights, phi=phi)
    if class_names and info.class_names:  # the checkpoint's own names win: no silent reorder
        check_class_names(str(weights), info.class_names, class_names)
    names = class_names or info.class_names
    if names is None or len(names) != info.num_classes:
        raise InputError(f"{weights}: pass a classes file with {info.num_classes} names")
    return model, info, list(names), None


def _runtime(onnx_path: str) -> str:
    """``ONNX`` or ``ONNX INT8``: an export is no seed of the checkpoint it came from."""
    return "ONNX INT8" if onnx_metadata(onnx_path).get("quantization") else "ONNX"


def table_protocol(reports: list, rows: list[Row]) -> str:
    """The comparison's protocol line: the first report's, whose "at <size>" holds for every
    row unless they ran at different sizes (then each group's name carries its size)."""
    protocol = reports[0].protocol
    sizes = [r.input_size for r in rows]
    if len(set(sizes)) > 1:
        protocol = protocol.replace(f" at {sizes[0]}", " at each checkpoint's own size", 1)
    return protocol


def evaluate_checkpoint(
    weights: str,
    voc_root: str,
    split: str,
    cfg,
    *,
    device,
    class_names: list[str] | None = None,
    phi: str | None = None,
    labels: LabelSource | None = None,
):
    """Loads a checkpoint, scores it on ``split`` (or ``labels``) and measures it.

    Latency is the median end-to-end time (preprocess, forward, decode + NMS) at batch 1 on
    ``device``, over 20 runs on the split's first readable image; the CPU forward latency is the
    median forward of those runs when ``device`` is the CPU, else of 10 more runs on the CPU
    (after 3 warm-ups), the deployment path in both cases (``Detector``: BN folded,
    channels-last).
    The row also holds AP50 by object size and the per-image matching the comparison's
    bootstrap resamples.

    Args:
        weights: our checkpoint, a reference ``.pth``, darknet ``.weights`` or an ``.onnx``
            export (run by ONNX Runtime on the CPU).
        voc_root: the VOCdevkit folder.
        split: ``YEAR:SET`` list to score on.
        cfg: an ``EvalConfig`` whose ``img_size`` may be None (the checkpoint's size).
        device: where the model runs.
        class_names: names by class id (default: the checkpoint's).
        phi: required attention block (None: the file's).
        labels: labels to score on instead of ``voc_root``/``split`` (any format, matched to
            the class names by name); their per-file problems are logged as warnings.

    Returns:
        ``(Row, EvalReport)``: the comparison-table row and the full report.
    """
    model, info, names, detector = _load_for_evaluation(weights, cfg, class_names, phi)
    if detector is not None:  # an ONNX export runs on the CPU
        device = torch.device("cpu")
    annotations, dataset = _checked_ground_truth(labels, voc_root, split, names)
    cfg = replace(cfg, img_size=cfg.img_size or info.input_size)
    model.to(device)
    # beside an ONNX Runtime session torch runs at one thread (Detector.torch_threads)
    with detector.torch_threads() if detector is not None else contextlib.nullcontext():
        detected = detect_dataset(model, annotations, info.geometry, cfg, device=device)
    precision = inference_precision(cfg.amp, device)
    protocol = f"{dataset} at {cfg.img_size}" + (
        "" if precision.dtype is None else f", {precision.name} autocast"
    )
    report = score(detected, names, protocol, cfg.iou_thresh, cfg.coco, max_det=cfg.max_det)
    if detector is None:
        config = InferenceConfig(img_size=cfg.img_size, device=str(device), amp=cfg.amp)
        detector = Detector(model, info, class_names=names, config=config)
    image = _first_readable_image(annotations, detected, dataset)
    total_ms, cpu_forward_ms = _latency(detector, model, image, cfg)
    row = _row(str(weights), model, info, detected, report, cfg, total_ms, cpu_forward_ms)
    return row, report


def _checked_ground_truth(
    labels: LabelSource | None, voc_root: str, split: str, names: list[str]
) -> tuple[list, str]:
    """The annotations to score and the data set's name, with what the reader skipped and
    the classes without ground truth logged as warnings, before the model runs.

    Raises:
        InputError: no images, or no ground truth of any class.
    """
    annotations, dataset, warnings = load_ground_truth(labels, voc_root, split, names)
    for line in warnings:
        logger.warning(line)
    if not annotations:
        raise InputError(f"{dataset}: no images")
    for line in check_ground_truth(annotations, names, dataset):
        logger.warning(line)
    return annotations, dataset


def _first_readable_image(annotations: list, detected: Detected, dataset: str) -> np.ndarray:
    """The latency benchmark's input: the split's first image the pass could read.

    Raises:
        InputError: none could be read.
    """
    readable = np.flatnonzero(detected.image_sizes[:, 0] > 0)
    if not len(readable):
        raise InputError(f"{dataset}: none of the {len(annotations)} images can be read")
    return read_image(annotations[readable[0]].image_path)


def _latency(
    detector: Detector, model: torch.nn.Module | OnnxRunner, image: np.ndarray, cfg: EvalConfig
) -> tuple[float, float]:
    """Median end-to-end milliseconds at batch 1 on the detector's device (20 runs after 3
    warm-ups), and the median CPU forward: of those runs on a CPU, else of 10 more there."""
    stats = benchmark(detector, image, runs=20, warmup=3)
    if detector.device.type == "cpu":
        return stats["total"]["median"], stats["forward"]["median"]
    config = InferenceConfig(img_size=cfg.img_size, device="cpu", amp=cfg.amp)
    on_cpu = Detector(model, detector.info, class_names=detector.class_names, config=config)
    cpu_forward = benchmark(on_cpu, image, runs=10, warmup=3)["forward"]["median"]
    return stats["total"]["median"], cpu_forward


def _row(
    weights: str,
    model: torch.nn.Module | OnnxRunner,
    info: ModelInfo,
    detected: Detected,
    report: EvalReport,
    cfg: EvalConfig,
    total_ms: float,
    cpu_forward_ms: float,
) -> Row:
    """The comparison-table row: size and cost of the architecture, the APs, the latencies,
    AP50 by object size and the per-image matching the bootstrap resamples."""
    architecture = model
    if isinstance(model, OnnxRunner):  # no modules to count: an unloaded model of its kind
        architecture = YoloBody(
            info.num_classes,
            info.phi_name,
            attention_at=info.attention_at,
            attention_args=info.attention_options,
        )
    num_classes, size = len(report.class_names), cfg.img_size
    row = Row(
        weights,
        info.phi,
        info.phi_name,
        count_parameters(architecture),
        count_flops(architecture, size) / 1e9,
        total_ms,
        report.voc07_map50,
        report.voc12_map50,
        report.coco.get("coco_map") if report.coco else None,
        cpu_forward_ms=cpu_forward_ms,
        runtime=_runtime(weights) if isinstance(model, OnnxRunner) else "",
        input_size=size,
        matches=MatchTable.from_boxes(
            detected.dets,
            detected.gts,
            num_classes,
            num_images=len(detected.image_sizes),
            images=np.flatnonzero(detected.image_sizes[:, 0] > 0),
            iou_thresh=cfg.iou_thresh,
        ),
    )
    by_size = size_aps(detected.dets, detected.gts, num_classes, cfg.iou_thresh)
    row.ap_small, row.ap_medium, row.ap_large = (by_size[k] for k in ("small", "medium", "large"))
    return row
