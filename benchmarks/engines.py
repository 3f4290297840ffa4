"""The paths ``benchmarks.inference`` times, each as an ``Engine``: our ``Detector`` (eager,
fused, ONNX Runtime fp32 and INT8, plus non-default variants), OpenCV DNN on the darknet files,
and the same paths for random-weight models of every attention block."""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import torch
from torch import nn

from nets.checkpoint import ModelInfo, load_model
from nets.decode import Geometry
from nets.registry import attention_names
from nets.yolo import YoloBody
from utils.classes import read_class_names
from utils.device import torch_threads
from utils.inference.export import export_onnx
from utils.inference.onnx_runner import OnnxRunner
from utils.inference.predictor import (
    Detector,
    InferenceConfig,
)
from utils.inference.quantize import quantize_int8
from utils.paths import COCO_CLASSES
from utils.sources import read_image_reduced, resolve_source

INPUT_SIZE = 416  # the input size of the reference numbers and of the targets
CONF_THRESH, NMS_THRESH = 0.25, 0.45  # as InferenceConfig's defaults and the OpenCV reference
OBJECTNESS_PRIOR_BIAS = -4.6  # sigmoid = 1 %: random models then give the same (empty) NMS load


@dataclass
class Engine:
    """One measured path: ``end_to_end()`` returns the number of detections."""

    name: str
    label: str
    end_to_end: Callable[[], int]
    forward: Callable[[], object]
    variant: bool = False  # not a library default; measured to judge a suggested change
    number_format: str = "float32"  # what its forward computes in: float32, bfloat16 or int8
    detector: Detector | None = None  # ours; None for OpenCV DNN


class WithTorchThreads:
    """Calls ``fn`` with torch at ``threads`` threads (``utils.device.torch_threads``)."""

    def __init__(self, fn: Callable, threads: int) -> None:
        self.fn, self.threads = fn, threads

    def __call__(self):
        with torch_threads(self.threads):
            return self.fn()


def ort_runner(
    model: nn.Module,
    folder: Path,
    input_size: int,
    threads: int | None,
    spinning: bool = False,
    int8_calibration: list[str] | None = None,
) -> OnnxRunner:
    """What ``Detector`` builds for ``backend="onnxruntime"`` (or for an ``--int8`` export),
    with explicit thread settings; ``spinning`` turns ORT's busy-waiting threads back on."""
    import onnxruntime as ort

    path = export_onnx(
        model,
        path=folder / f"model_{len(list(folder.iterdir()))}.onnx",
        geometry=Geometry(input_size=input_size),
    )
    if int8_calibration:  # minmax: random models may have constant tensors (no histogram)
        path = quantize_int8(
            path,
            out_path=path.with_name(path.stem + "_int8.onnx"),
            calibration_paths=int8_calibration,
            method="minmax",
        )
    runner = OnnxRunner(path, threads=threads)
    if spinning:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        runner.session = ort.InferenceSession(str(path), options, providers=runner.providers())
    return runner


def detector_engine(
    name: str,
    label: str,
    detector: Detector,
    image_path: str,
    variant: bool = False,
    reduced_decode: bool = False,
) -> Engine:
    """Our ``Detector`` on ``image_path``: end to end reads the JPEG with ``cv2.imread`` (or,
    ``reduced_decode``, with ``read_image_reduced``, the opt-in that changes the model's
    input) and calls the detector; forward runs the network on a kept input."""
    batch, _ = detector.preprocess([cv2.imread(image_path)])
    size = detector.config.img_size

    def end_to_end() -> int:
        if reduced_decode:
            image, original = read_image_reduced(image_path, size, detector.config.letterbox)
            return len(detector(image, original))
        return len(detector(cv2.imread(image_path)))

    def forward():
        return detector.forward(batch)

    number_format = "int8" if "int8" in name else detector.precision.name
    return Engine(name, label, end_to_end, forward, variant, number_format, detector)


def opencv_engine(cfg: str, weights: str, image_path: str, input_size: int) -> Engine:
    """OpenCV DNN as ``cv2.dnn_DetectionModel`` (end to end) and ``Net.forward`` (forward)."""
    model = cv2.dnn_DetectionModel(cv2.dnn.readNetFromDarknet(cfg, weights))
    model.setInputParams(size=(input_size, input_size), scale=1 / 255.0, swapRB=True)
    net = cv2.dnn.readNetFromDarknet(cfg, weights)  # its own net: no shared input blob
    out_names = net.getUnconnectedOutLayersNames()
    blob = cv2.dnn.blobFromImage(
        cv2.imread(image_path), 1 / 255.0, (input_size, input_size), swapRB=True, crop=False
    )

    def end_to_end() -> int:
        class_ids, _, _ = model.detect(cv2.imread(image_path), CONF_THRESH, NMS_THRESH)
        return len(class_ids)

    def forward():
        net.setInput(blob)
        return net.forward(out_names)

    return Engine("opencv_dnn", f"OpenCV DNN {cv2.__version__} (darknet)", end_to_end, forward)


def official_engines(
    args: argparse.Namespace, folder: Path, variants: bool
) -> tuple[list[Engine], Detector]:
    """The five paths of the comparison (and variants); also returns the fused Detector."""
    cpu = InferenceConfig(img_size=INPUT_SIZE, device="cpu")
    names = read_class_names(COCO_CLASSES)
    model, info = load_model(args.weights)
    eager = Detector(copy.deepcopy(model), info, class_names=names, config=replace(cpu, fuse=False))
    fused = Detector(copy.deepcopy(model), info, class_names=names, config=cpu)
    ort_config = replace(cpu, backend="onnxruntime")

    def ort_detector(threads: int | None, spinning: bool = False, int8=None) -> Detector:
        runner = ort_runner(model, folder, INPUT_SIZE, threads, spinning, int8)
        return Detector(None, info, class_names=names, config=ort_config, runner=runner)

    image = args.image
    calibration = resolve_source(args.calib).images
    int8 = ort_detector(args.threads, int8=calibration)
    engines = [
        detector_engine("torch_eager", "PyTorch eager (unfused)", eager, image),
        detector_engine("torch_fused", "PyTorch fused (default)", fused, image),
        detector_engine(
            "onnxruntime", "ONNX Runtime (Detector)", ort_detector(args.threads), image
        ),
        detector_engine(
            "onnxruntime_int8", f"ONNX Runtime INT8 ({len(calibration)} calib)", int8, image
        ),
        opencv_engine(args.cfg, args.weights, image, INPUT_SIZE),
    ]
    if not variants:
        return engines, fused
    label = "ORT INT8, reduced JPEG decode"
    engines.append(
        detector_engine("onnxruntime_int8_reduced", label, int8, image, True, reduced_decode=True)
    )
    cores = os.cpu_count() or 1
    nchw = Detector(copy.deepcopy(model), info, class_names=names, config=cpu)
    nchw.memory_format = torch.contiguous_format
    nchw.model = nchw.model.to(memory_format=nchw.memory_format)
    engines.append(detector_engine("torch_fused_nchw", "PyTorch fused, NCHW", nchw, image, True))
    amp = Detector(copy.deepcopy(model), info, class_names=names, config=replace(cpu, amp=True))
    label = f"PyTorch fused, --amp ({amp.precision.name})"
    engines.append(detector_engine("torch_fused_amp", label, amp, image, True))
    one_thread = detector_engine("torch_fused_1t", "PyTorch fused, 1 thread", fused, image, True)
    one_thread.end_to_end = WithTorchThreads(one_thread.end_to_end, 1)
    one_thread.forward = WithTorchThreads(one_thread.forward, 1)
    engines.append(one_thread)
    engines.append(
        detector_engine(
            "onnxruntime_cores", f"ORT intra_op={cores}", ort_detector(cores), image, True
        )
    )
    engines.append(
        detector_engine(
            "onnxruntime_spin",
            "ORT threads spinning",
            ort_detector(args.threads, spinning=True),
            image,
            True,
        )
    )
    return engines, fused


def random_model(phi: int, num_classes: int = 80) -> YoloBody:
    """Seeded random weights (the layers shared by all phis are identical), objectness bias at
    a 1 % prior so that every phi leaves NMS the same small load."""
    torch.manual_seed(0)
    model = YoloBody(num_classes, phi).eval()
    with torch.no_grad():
        for head in (model.yolo_headP5, model.yolo_headP4):
            head[1].bias.view(model.num_anchors, -1)[:, 4] = OBJECTNESS_PRIOR_BIAS
    return model


def phi_engines(args: argparse.Namespace, folder: Path, phis: list[int]) -> list[Engine]:
    names = [f"class{i}" for i in range(80)]
    calibration = resolve_source(args.calib).images
    cpu = InferenceConfig(img_size=INPUT_SIZE, device="cpu")
    engines = []
    for phi in phis:
        model = random_model(phi)
        info = ModelInfo(phi=phi, phi_name=attention_names()[phi], num_classes=80, source="random")
        detectors = {
            "torch_eager": Detector(
                copy.deepcopy(model), info, class_names=names, config=replace(cpu, fuse=False)
            ),
            "torch_fused": Detector(copy.deepcopy(model), info, class_names=names, config=cpu),
            "onnxruntime": Detector(
                None,
                info,
                class_names=names,
                config=replace(cpu, backend="onnxruntime"),
                runner=ort_runner(model, folder, INPUT_SIZE, args.threads),
            ),
            "onnxruntime_int8": Detector(
                None,
                info,
                class_names=names,
                config=replace(cpu, backend="onnxruntime"),
                runner=ort_runner(
                    model, folder, INPUT_SIZE, args.threads, int8_calibration=calibration
                ),
            ),
        }
        for path, detector in detectors.items():
            engines.append(detector_engine(f"phi{phi}/{path}", path, detector, args.image))
    return engines
