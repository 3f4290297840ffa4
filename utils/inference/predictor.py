"""The Python inference API: load once, call on BGR images, get boxes, scores and labels.

from utils.inference.predictor import Detector
detector = Detector.from_weights("model_data/yolov4-tiny.weights")
detections = detector(cv2.imread("model_data/samples/bus.jpg"))
for box, score, name in zip(detections.boxes, detections.scores, detections.names):
    ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from nets.checkpoint import ModelInfo, load_model
from nets.decode import detect
from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK, YoloBody
from utils.classes import read_anchors, read_class_names
from utils.device import select_device
from utils.inference.deploy import fuse_model
from utils.paths import COCO_CLASSES, OFFICIAL_WEIGHTS
from utils.preprocess import ResizeMeta, boxes_to_original, preprocess_bgr, to_tensor

DEFAULT_WEIGHTS = str(OFFICIAL_WEIGHTS)


def class_names_for(
    given: list[str] | None, stored: list[str] | None, num_classes: int | None, source: str
) -> list[str]:
    """Class names: given, else stored in the file, else COCO's for an 80-class model.

    Raises:
        ValueError: none of these applies (the message names ``source``).
    """
    names = given or stored
    if not names and num_classes == 80 and os.path.isfile(COCO_CLASSES):
        names = read_class_names(COCO_CLASSES)
    if not names:
        what = f"{num_classes} classes" if num_classes else "no class names stored in it"
        raise ValueError(f"{source}: {what}; pass a classes file")
    return list(names)


@dataclass(frozen=True)
class InferenceConfig:
    """Inference settings; every default in one place."""

    input_size: int | None = None  # network input side (multiple of 32); None: the checkpoint's
    letterbox: bool = True  # keep aspect ratio with grey padding; False = plain resize
    conf_thresh: float = 0.25  # minimum objectness * class probability
    nms_thresh: float = 0.45  # IoU above which a lower-scored box is suppressed
    max_det: int = 300  # detections kept per image after NMS
    agnostic_nms: bool = False  # NMS across classes instead of per class
    classes_filter: tuple[int, ...] | None = None  # keep only these class ids
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    backend: str = "torch"  # torch or onnxruntime
    fuse: bool = True  # fold batch norm into convolutions (torch backend)


@dataclass
class Detections:
    """Detections of one image, in original-image pixels (0-based, xyxy)."""

    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64 class ids
    class_names: list[str] = field(repr=False, default_factory=list)
    width: int = 0
    height: int = 0

    @property
    def names(self) -> list[str]:
        return [self.class_names[k] if k < len(self.class_names) else str(k) for k in self.labels]

    def __len__(self) -> int:
        return len(self.scores)

    def to_json(self) -> list[dict]:
        """Rows of the ``predict.py --json`` format."""
        return [
            {
                "xyxy": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "class_id": int(label),
                "class_name": name,
            }
            for box, score, label, name in zip(self.boxes, self.scores, self.labels, self.names)
        ]


class Detector:
    """A loaded model plus its pre- and post-processing.

    The three stages are public so that they can be timed separately
    (``preprocess`` -> ``forward`` -> ``postprocess``); ``__call__`` runs all three.
    """

    def __init__(
        self,
        model: YoloBody | None,
        info: ModelInfo,
        class_names: list[str],
        config: InferenceConfig | None = None,
        runner=None,
    ) -> None:
        config = config or InferenceConfig()
        if config.input_size is None:
            config = replace(config, input_size=info.input_size)
        self.config = config
        if self.config.input_size % 32 or self.config.input_size <= 0:
            raise ValueError(f"input size {self.config.input_size} is not a multiple of 32")
        if len(class_names) != info.num_classes:
            raise ValueError(
                f"{len(class_names)} class names given for a model with {info.num_classes} classes"
            )
        self.device = select_device(self.config.device)
        self.memory_format = torch.contiguous_format
        self.info = info
        self.class_names = class_names
        if runner is not None:  # ONNX Runtime (or any callable with the model's contract)
            self.device = torch.device("cpu")
            self.model = runner
        elif self.config.backend == "onnxruntime":
            self.model = _onnx_runner_for(model, info, self.config.input_size)
            self.device = torch.device("cpu")
        else:
            model = model.to(self.device).eval()
            self.model = fuse_model(model) if self.config.fuse else model
            # NHWC lets oneDNN run convolutions and max-pools without layout conversions:
            # measured 29 -> 22 ms per forward at 416 on a 2-core CPU (benchmark_inference)
            self.memory_format = (
                torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
            )
            self.model = self.model.to(memory_format=self.memory_format)

    @classmethod
    def from_weights(
        cls,
        weights: str | os.PathLike = DEFAULT_WEIGHTS,
        phi: int | str | None = None,
        classes: str | os.PathLike | list[str] | None = None,
        anchors: str | os.PathLike | None = None,
        config: InferenceConfig | None = None,
    ) -> Detector:
        """Loads darknet ``.weights``, our checkpoint or a reference ``.pth``.

        Class names come from ``classes`` (a file or a list), else from the checkpoint, else
        ``model_data/coco.names`` for an 80-class darknet file.
        """
        names = read_class_names(classes) if isinstance(classes, (str, Path)) else classes
        num_classes = len(names) if names else None
        if str(weights).endswith(".onnx"):
            return cls._from_onnx(weights, names, anchors, config)
        model, info = load_model(weights, phi=phi, num_classes=num_classes)
        names = class_names_for(names, info.class_names, info.num_classes, str(weights))
        if anchors is not None:
            info.anchors = read_anchors(anchors)
        return cls(model, info, list(names), config)

    @classmethod
    def _from_onnx(cls, path, names, anchors, config) -> Detector:
        from utils.inference.deploy import OnnxRunner, onnx_metadata

        meta = onnx_metadata(path)
        runner = OnnxRunner(path)
        masks = [tuple(m) for m in meta.get("anchors_mask", [])] or list(DEFAULT_ANCHORS_MASK)
        graph_classes = runner.out_channels // len(masks[0]) - 5 if runner.out_channels else None
        names = class_names_for(names, meta.get("class_names"), graph_classes, str(path))
        if graph_classes is not None and len(names) != graph_classes:
            raise ValueError(
                f"{path} predicts {graph_classes} classes, but {len(names)} class names were given"
            )
        anchors_list = [tuple(a) for a in meta.get("anchors", [])] or list(DEFAULT_ANCHORS)
        size = runner.input_size or meta.get("input_size", 416)
        info = ModelInfo(
            meta.get("phi", 0),
            meta.get("phi_name", "none"),
            len(names),
            list(names),
            anchors_list,
            masks,
            size,
            source="onnx",
        )
        if anchors is not None:
            info.anchors = read_anchors(anchors)
        config = config or InferenceConfig()
        if runner.input_size and config.input_size not in (None, runner.input_size):
            raise ValueError(
                f"{path} was exported at {runner.input_size}; "
                f"--img-size {config.input_size} cannot be used with it"
            )
        return cls(None, info, list(names), replace(config, backend="onnxruntime"), runner=runner)

    def preprocess(self, images_bgr: list[np.ndarray]) -> tuple[torch.Tensor, list[ResizeMeta]]:
        """BGR uint8 images -> (B, 3, S, S) float tensor on the device, and their metas."""
        canvases, metas = zip(
            *(
                preprocess_bgr(im, self.config.input_size, self.config.letterbox)
                for im in images_bgr
            )
        )
        batch = to_tensor(list(canvases)).to(self.device, non_blocking=True)
        return batch.contiguous(memory_format=self.memory_format), list(metas)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Raw maps, one per level (see ``YoloBody``)."""
        return self.model(batch)

    @torch.inference_mode()
    def postprocess(self, outputs: list[torch.Tensor], metas: list[ResizeMeta]) -> list[Detections]:
        """Decode, filter, NMS and map boxes back to each original image."""
        cfg = self.config
        results = detect(
            outputs,
            self.info.anchors,
            self.info.anchors_mask,
            cfg.input_size,
            cfg.conf_thresh,
            cfg.nms_thresh,
            cfg.max_det,
            cfg.agnostic_nms,
            cfg.classes_filter,
        )
        detections = []
        for res, meta in zip(results, metas):
            boxes = boxes_to_original(res["boxes"].float(), meta)
            detections.append(
                Detections(
                    boxes.cpu().numpy(),
                    res["scores"].float().cpu().numpy(),
                    res["labels"].cpu().numpy(),
                    self.class_names,
                    meta.width,
                    meta.height,
                )
            )
        return detections

    def predict_batch(self, images_bgr: list[np.ndarray]) -> list[Detections]:
        batch, metas = self.preprocess(images_bgr)
        return self.postprocess(self.forward(batch), metas)

    def __call__(self, image_bgr: np.ndarray) -> Detections:
        return self.predict_batch([image_bgr])[0]

    def objectness_map(self, image_bgr: np.ndarray) -> np.ndarray:
        """Max objectness probability over anchors and levels, as (H, W) float32 in [0, 1] on
        the original image's pixel grid: where the model thinks there is an object.
        """
        batch, (meta,) = self.preprocess([image_bgr])
        return self.heatmap(self.forward(batch), meta)

    @torch.inference_mode()
    def heatmap(self, outputs: list[torch.Tensor], meta: ResizeMeta) -> np.ndarray:
        """``objectness_map`` from raw maps already computed (batch of one)."""
        size = self.config.input_size
        heat = torch.zeros(size, size, device=outputs[0].device)
        for out in outputs:
            _, _, h, w = out.shape
            obj = out.view(len(self.info.anchors_mask[0]), -1, h, w)[:, 4].sigmoid().amax(0)
            obj = torch.nn.functional.interpolate(
                obj[None, None], size=(size, size), mode="nearest"
            )
            heat = torch.maximum(heat, obj[0, 0])
        x0, y0 = meta.pad_x, meta.pad_y
        x1 = x0 + round(meta.width * meta.scale_x)
        y1 = y0 + round(meta.height * meta.scale_y)
        crop = heat[y0:y1, x0:x1].cpu().numpy()
        return cv2.resize(crop, (meta.width, meta.height), interpolation=cv2.INTER_LINEAR)


def _onnx_runner_for(model: YoloBody, info: ModelInfo, input_size: int):
    """Exports ``model`` (fused, batch 1) to a temporary ONNX file and opens it in ORT."""
    import tempfile

    from utils.inference.deploy import OnnxRunner, export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", input_size)
        return OnnxRunner(path)
