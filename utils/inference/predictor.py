"""The Python inference API: load once, call on BGR images, get boxes, scores and labels.

from utils.inference.predictor import Detector
detector = Detector.from_weights("model_data/yolov4-tiny.weights")
detections = detector(cv2.imread("model_data/samples/bus.jpg"))
for box, score, name in zip(detections.boxes, detections.scores, detections.names):
    ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from nets.attention_maps import AttentionMap, capture_attention
from nets.checkpoint import ModelInfo, check_request, load_model
from nets.decode import SCALE_X_Y, Geometry, detect
from nets.fuse import fuse_model
from nets.options import IMG_SIZE_MUST, ModelOptions, valid_img_size
from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK, YoloBody
from utils.classes import read_anchors, read_class_names
from utils.config import Rule, option, rule_problems, shared
from utils.detections import Detections
from utils.device import TORCH_THREADS_BESIDE_ONNX, DeviceOptions, select_device, torch_threads
from utils.errors import InputError
from utils.paths import COCO_CLASSES, OFFICIAL_WEIGHTS
from utils.precision import AMP_TORCH_ONLY, amp_hint, autocast, inference_precision
from utils.preprocess import InputCanvas, ResizeMeta, preprocess_bgr, to_tensor

DEFAULT_WEIGHTS = str(OFFICIAL_WEIGHTS)


def class_names_for(
    given: list[str] | None, stored: list[str] | None, num_classes: int | None, source: str
) -> list[str]:
    """Class names: stored in the file, else given, else COCO's for an 80-class model.

    What a checkpoint or export stores about itself wins: names given as well must be the
    stored ones in the stored order. The same names in another order are refused rather than
    remapped, because a ``class_id`` written by ``predict.py`` or read back by ``eval.py``
    would then mean another class than the same id in the classes file the user gave.

    Raises:
        ValueError: none of these applies, or the given names contradict the stored ones
            (the message names ``source`` and both values).
    """
    if given and stored:
        check_class_names(source, stored, given)
    names = given or stored
    if not names and num_classes == 80 and os.path.isfile(COCO_CLASSES):
        names = read_class_names(COCO_CLASSES)
    if not names:
        what = f"{num_classes} classes" if num_classes else "no class names stored in it"
        raise InputError(f"{source}: {what}; pass a classes file")
    return list(names)


def _names_text(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} names)"


def check_class_names(source: str, stored: Sequence[str], given: Sequence[str]) -> None:
    """Raises ValueError unless ``given`` (the classes flag) is ``stored`` (the names the
    checkpoint or export ``source`` holds), in the same order; the message names both."""
    stored, given = list(stored), list(given)
    if stored == given:
        return
    if len(stored) != len(given):
        raise InputError(
            f"{source} stores {_names_text(stored)}, but --classes gives {_names_text(given)}"
        )
    k = next(i for i, (a, b) in enumerate(zip(stored, given)) if a != b)
    if sorted(stored) == sorted(given):
        raise InputError(
            f"{source}: --classes lists the model's class names in another order (class {k} is "
            f"{stored[k]!r} in the model, {given[k]!r} in --classes): every id would be read "
            f"as the wrong class; omit --classes (the model's names {_names_text(stored)} are "
            "used) or list them in the model's order"
        )
    raise InputError(
        f"{source} stores the class names {_names_text(stored)}, but --classes gives "
        f"{_names_text(given)} (class {k}: {stored[k]!r} vs {given[k]!r}); omit --classes to "
        "use the model's names"
    )


def check_anchors(
    source: str, stored: Sequence[Sequence[float]], given: Sequence[Sequence[float]]
) -> None:
    """Raises ValueError unless the anchors of an anchors flag equal those ``source`` stores
    (to 1e-3 pixel: files written with fewer digits still agree); the message names both."""
    a = np.asarray(stored, np.float64).reshape(-1, 2)
    b = np.asarray(given, np.float64).reshape(-1, 2)
    if a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-3):
        return
    show = lambda v: ", ".join(f"{w:g},{h:g}" for w, h in v.tolist())  # noqa: E731
    raise InputError(
        f"{source} stores the anchors {show(a)}, but --anchors gives {show(b)}; the model "
        "was trained with its own: omit --anchors"
    )


BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class InferenceConfig:
    """Inference settings; every default in one place.

    Checked when made (here and through ``dataclasses.replace``): a ValueError lists every
    field outside its range by its ``predict.py`` flag.
    """

    img_size: int | None = shared(ModelOptions, "img_size", None)
    letterbox: bool = option(
        True, "keep the aspect ratio with grey padding (else a plain resize)", group="model"
    )
    scale_xy: float | None = option(
        None,
        "grid sensitivity of the box centres (default: the weights': stored in our checkpoints "
        "and exports, 1.05 for darknet files, 1.0 for reference-implementation .pth files)",
        group="model",
    )
    conf_thresh: float = option(
        0.25, "score threshold (objectness * class)", flag="--conf", group="post-processing"
    )
    nms_thresh: float = option(
        0.45,
        "IoU above which a lower-scored box is suppressed",
        flag="--nms",
        group="post-processing",
    )
    max_det: int = option(300, "detections kept per image after NMS", group="post-processing")
    agnostic_nms: bool = option(
        False, "NMS across classes instead of per class", group="post-processing"
    )
    classes_filter: tuple[int, ...] | None = None  # keep only these class ids
    device: str = shared(DeviceOptions, "device", "auto")
    backend: str = option(
        "torch",
        "inference engine (onnxruntime: --weights .onnx, or exported on the fly)",
        group="deployment",
        choices=BACKENDS,
    )
    fuse: bool = option(True, "fold batch norm into the convolutions (torch)", group="deployment")
    amp: bool = shared(DeviceOptions, "amp", False, group="deployment")

    def __post_init__(self) -> None:
        problems = rule_problems(self, _INFERENCE_RULES)
        if self.amp and self.backend != "torch":
            problems.append(AMP_TORCH_ONLY)
        if problems:
            raise InputError("invalid inference settings: " + "; ".join(problems))


# field -> (check, what it must be); messages use each field's flag
_INFERENCE_RULES: dict[str, Rule] = {
    "img_size": (lambda v: v is None or valid_img_size(v), IMG_SIZE_MUST),
    "scale_xy": (lambda v: v is None or 1 <= v <= 2, "in [1, 2]"),
    "conf_thresh": (lambda v: 0 <= v <= 1, "a score in [0, 1]"),
    "nms_thresh": (lambda v: 0 < v <= 1, "an IoU in (0, 1]"),
    "max_det": (lambda v: v >= 1, "at least 1"),
    "classes_filter": (
        lambda v: v is None or (len(v) > 0 and all(i >= 0 for i in v)),
        "None or one or more class ids",
    ),
    "backend": (lambda v: v in BACKENDS, f"one of {', '.join(BACKENDS)}"),
}


class Detector:
    """A loaded model plus its pre- and post-processing.

    The three stages are public so that they can be timed separately
    (``preprocess`` -> ``forward`` -> ``postprocess``); ``__call__`` runs all three, on the
    CPU into input buffers it reuses (``input_canvas``), so call it from one thread at a time.

    Args:
        model: the network (None when ``runner`` is given).
        info: what the model is; its anchors and masks decode the outputs.
        class_names: names by class id (default: ``info.class_names``).
        config: inference settings; ``img_size`` None takes ``info.input_size``.
        runner: a callable with the model's contract (batch in, raw maps out) run instead
            of ``model``, such as an ``OnnxRunner``.

    Raises:
        ValueError: an input size that is not a multiple of 32, or class names that do not
            match the model's class count.
    """

    def __init__(
        self,
        model: YoloBody | None,
        info: ModelInfo,
        *,
        class_names: Sequence[str] | None = None,
        config: InferenceConfig | None = None,
        runner=None,
    ) -> None:
        config = config or InferenceConfig()
        if config.img_size is None:
            config = replace(config, img_size=info.input_size)
        self.config = config
        class_names = list(class_names if class_names is not None else info.class_names or [])
        if len(class_names) != info.num_classes:
            raise InputError(
                f"{len(class_names)} class names given for a model with {info.num_classes} classes"
            )
        self.device = select_device(self.config.device)
        self.memory_format = torch.contiguous_format
        self.info = info
        self.class_names = class_names
        if runner is not None and config.amp:
            raise InputError(AMP_TORCH_ONLY)
        self.precision = inference_precision(config.amp, self.device)
        self._canvas: InputCanvas | None = None  # the one-image input buffers, made on first use
        if runner is not None:  # ONNX Runtime (or any callable with the model's contract)
            self.device = torch.device("cpu")
            self.model = runner
        elif self.config.backend == "onnxruntime":
            self.model = _onnx_runner_for(model, self.geometry)
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

    @property
    def geometry(self) -> Geometry:
        """The model's anchors and masks at the configured input size."""
        geometry = self.info.geometry.at_size(self.config.img_size)
        if self.config.scale_xy is not None:
            geometry = replace(geometry, scale_x_y=self.config.scale_xy)
        return geometry

    @classmethod
    def from_weights(
        cls,
        weights: str | os.PathLike = DEFAULT_WEIGHTS,
        *,
        phi: int | str | None = None,
        classes: str | os.PathLike | list[str] | None = None,
        anchors: str | os.PathLike | None = None,
        config: InferenceConfig | None = None,
        onnx_threads: int | None = None,
    ) -> Detector:
        """Loads darknet ``.weights``, our checkpoint, a reference ``.pth`` or an ONNX export.

        Args:
            weights: the file to load.
            phi: required attention block (None: the file's).
            classes: a classes file or a list of names; else the names stored in the file,
                else ``model_data/coco.names`` for an 80-class darknet file.
            anchors: an anchors file replacing the stored (or default) anchors.
            config: inference settings.
            onnx_threads: intra-op threads of an ONNX export's session (None: ONNX
                Runtime's default, one per physical core).

        Raises:
            FileNotFoundError, ValueError, CheckpointMismatchError: unreadable or mismatching
                inputs (the message names them).
        """
        names = read_class_names(classes) if isinstance(classes, (str, Path)) else classes
        num_classes = len(names) if names else None
        if str(weights).endswith(".onnx"):
            return cls._from_onnx(weights, names, anchors, config, phi, onnx_threads)
        model, info = load_model(weights, phi=phi, num_classes=num_classes)
        names = class_names_for(names, info.class_names, info.num_classes, str(weights))
        info = replace(info, class_names=names)
        if anchors is not None and info.source == "checkpoint":  # stores its own anchors
            check_anchors(str(weights), info.anchors, read_anchors(anchors))
        if anchors is not None:
            info = replace(info, anchors=read_anchors(anchors, count=len(info.anchors)))
        return cls(model, info, config=config)

    @classmethod
    def _from_onnx(cls, path, names, anchors, config, phi=None, threads=None) -> Detector:
        from utils.inference.onnx_runner import OnnxRunner, onnx_metadata

        meta = onnx_metadata(path)
        runner = OnnxRunner(path, threads=threads)
        masks = [tuple(m) for m in meta.get("anchors_mask", [])] or list(DEFAULT_ANCHORS_MASK)
        graph_classes = runner.out_channels // len(masks[0]) - 5 if runner.out_channels else None
        names = class_names_for(names, meta.get("class_names"), graph_classes, str(path))
        if graph_classes is not None and len(names) != graph_classes:
            raise InputError(
                f"{path} predicts {graph_classes} classes, but {len(names)} class names were given"
            )
        if anchors is not None and meta.get("anchors"):
            check_anchors(str(path), meta["anchors"], read_anchors(anchors))
        if anchors is not None:
            stored = meta.get("anchors") or DEFAULT_ANCHORS
            anchors_list = read_anchors(anchors, count=len(stored))
        else:
            anchors_list = [tuple(a) for a in meta.get("anchors", [])] or list(DEFAULT_ANCHORS)
        info = ModelInfo(
            phi=meta.get("phi", 0),
            phi_name=meta.get("phi_name", "none"),
            num_classes=len(names),
            class_names=names,
            anchors=anchors_list,
            anchors_mask=masks,
            input_size=runner.input_size or meta.get("input_size", 416),
            source="onnx",
            attention_at=meta.get("attention_at"),
            attention_args=meta.get("attention_args") or {},
            scale_x_y=meta.get("scale_x_y", SCALE_X_Y),  # exports before it was stored: ours
        )
        check_request(str(path), info, phi, None)  # --phi is checked against the graph too
        config = config or InferenceConfig()
        if runner.input_size and config.img_size not in (None, runner.input_size):
            raise InputError(
                f"{path} was exported at {runner.input_size}; "
                f"--img-size {config.img_size} cannot be used with it"
            )
        config = replace(config, backend="onnxruntime")
        return cls(None, info, config=config, runner=runner)

    def preprocess(self, images_bgr: list[np.ndarray]) -> tuple[torch.Tensor, list[ResizeMeta]]:
        """BGR uint8 images -> (B, 3, S, S) float tensor on the device, and their metas.

        The same as ``to_batch`` of each image's ``resize``, the two halves that the
        pipelined ``predict.py`` runs in different threads."""
        canvases, metas = zip(*(self.resize(im) for im in images_bgr))
        return self.to_batch(list(canvases)), list(metas)

    def resize(self, image_bgr: np.ndarray) -> tuple[np.ndarray, ResizeMeta]:
        """One image -> its RGB uint8 network-input canvas and meta: the OpenCV-only half of
        ``preprocess`` (no torch op, so reader threads run it without starting torch thread
        pools of their own)."""
        return preprocess_bgr(image_bgr, self.config.img_size, self.config.letterbox)

    def to_batch(self, canvases: list[np.ndarray]) -> torch.Tensor:
        """Canvases of ``resize`` -> the (B, 3, S, S) float input tensor on the device."""
        batch = to_tensor(canvases).to(self.device, non_blocking=True)
        return batch.contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Raw maps, one per level (see ``YoloBody``), float32 (also under ``--amp``)."""
        dtype = self.precision.dtype
        with autocast(self.device, dtype):
            outputs = self.model(batch)
        return outputs if dtype is None else [o.float() for o in outputs]

    @torch.inference_mode()
    def postprocess(self, outputs: list[torch.Tensor], metas: list[ResizeMeta]) -> list[Detections]:
        """Decode, filter, NMS and map boxes back to each original image.

        Args:
            outputs: the raw maps of ``forward``, per level (B, A*(5+C), H, W).
            metas: per image, how ``preprocess`` resized it.

        Returns:
            Per image its ``Detections``: boxes (N, 4) float32 xyxy in 0-based original
            pixels, scores (N,) float32, labels (N,) int64, best first.
        """
        cfg = self.config
        results = detect(
            outputs,
            self.geometry,
            conf_thresh=cfg.conf_thresh,
            nms_thresh=cfg.nms_thresh,
            max_det=cfg.max_det,
            agnostic=cfg.agnostic_nms,
            classes=cfg.classes_filter,
            class_names=self.class_names,
        )
        return [dets.to_original(meta) for dets, meta in zip(results, metas)]

    def predict_batch(self, images_bgr: list[np.ndarray]) -> list[Detections]:
        if len(images_bgr) == 1:
            return [self(images_bgr[0])]
        batch, metas = self.preprocess(images_bgr)
        return self.postprocess(self.forward(batch), metas)

    def __call__(
        self, image_bgr: np.ndarray, original_size: tuple[int, int] | None = None
    ) -> Detections:
        """Detections on one BGR image, boxes in its pixels.

        Args:
            image_bgr: uint8 (H, W, 3) as cv2 reads it.
            original_size: ``(width, height)`` of the full-size image when ``image_bgr`` was
                decoded at a reduced scale (``utils.sources.read_image_reduced``): boxes are
                then in the full-size image's pixels.
        """
        if self.device.type != "cpu":
            if original_size is not None:
                raise InputError("original_size: reduced decoding is for the CPU input path")
            batch, metas = self.preprocess([image_bgr])
            return self.postprocess(self.forward(batch), metas)[0]
        with self.torch_threads():
            batch, meta = self.input_canvas()(image_bgr, original_size)
            return self.postprocess(self.forward(batch), [meta])[0]

    def torch_threads(self) -> contextlib.AbstractContextManager:
        """A context in which torch has the threads this Detector's stages want: unchanged
        for a PyTorch model; for an ONNX Runtime session ``TORCH_THREADS_BESIDE_ONNX`` (torch
        then only pre- and post-processes, and more threads compete with the session's)."""
        if isinstance(self.model, torch.nn.Module):
            return contextlib.nullcontext()
        return torch_threads(TORCH_THREADS_BESIDE_ONNX)

    def amp_hint(self, native: bool | None = None) -> str | None:
        """The line saying that ``--amp`` is available and how much faster it measured, where
        this Detector runs the PyTorch model in float32 on a CPU with native bfloat16
        (``native``: that capability; None: this CPU's); else None. See
        ``utils.precision.amp_hint`` for what the measurement costs (once per model and CPU).
        """
        if not isinstance(self.model, YoloBody) or self.device.type != "cpu":
            return None
        if self.precision.dtype is not None:
            return None
        size = self.config.img_size
        example = torch.rand(1, 3, size, size).contiguous(memory_format=self.memory_format)
        key = f"{self.info.describe()}, {size} px, fused {self.config.fuse}"
        return amp_hint(self.model, example, key, native=native)

    def input_canvas(self) -> InputCanvas:
        """The reused one-image input buffers of ``__call__`` (preprocessing without a fresh
        canvas and tensor per image, the same values bit for bit as ``preprocess``). Each
        call of the canvas overwrites the tensor it returned before: one thread only."""
        wanted = (
            self.config.img_size,
            self.config.letterbox,
            self.memory_format == torch.channels_last,
        )
        canvas = self._canvas
        if canvas is None or (canvas.input_size, canvas.letterbox, canvas.channels_last) != wanted:
            self._canvas = InputCanvas(*wanted[:2], channels_last=wanted[2])
        return self._canvas

    def objectness_map(self, image_bgr: np.ndarray) -> np.ndarray:
        """Max objectness probability over anchors and levels, as (H, W) float32 in [0, 1] on
        the original image's pixel grid: where the model thinks there is an object.
        """
        batch, (meta,) = self.preprocess([image_bgr])
        return self.heatmap(self.forward(batch), meta)

    def attention_maps(self, image_bgr: np.ndarray) -> dict[str, AttentionMap]:
        """What each attention block attends to on this image, by insertion point.

        One forward pass with forward hooks registered for the call only (removed afterwards,
        also on error); the model's outputs are unchanged. Spatial maps are at each point's
        resolution in network-input (letterbox) coordinates, ``AttentionMap.to_original``
        maps them onto the image; see ``nets.attention_maps`` for what each block records.
        A point whose block records no map (a plugin block without a recipe) is absent; a
        model without attention (phi 0) gives ``{}``.

        Raises:
            ValueError: this Detector runs an ONNX graph, which has no hookable blocks.
        """
        model = self.torch_model("attention maps")
        batch, (meta,) = self.preprocess([image_bgr])
        # in the detections' format (16-bit under --amp)
        precision = autocast(self.device, self.precision.dtype)
        with torch.inference_mode(), capture_attention(model) as capture, precision:
            model(batch)
        (raw,) = capture.maps() or [{}]
        size = self.config.img_size
        return {
            point: AttentionMap(point, m.block, m.spatial, m.channels, m.spatial_kind, size, meta)
            for point, m in raw.items()
        }

    def torch_model(self, purpose: str) -> YoloBody:
        """The PyTorch model, for ``purpose`` that needs its modules.

        Raises:
            ValueError: this Detector runs ONNX Runtime (the message names ``purpose``).
        """
        if not isinstance(self.model, YoloBody):
            raise InputError(
                f"{purpose} need the PyTorch model, but this Detector runs an ONNX graph "
                f"(backend {self.config.backend!r}); load the checkpoint (.pth) or darknet "
                "weights with backend 'torch'"
            )
        return self.model

    @torch.inference_mode()
    def heatmap(self, outputs: list[torch.Tensor], meta: ResizeMeta) -> np.ndarray:
        """``objectness_map`` from raw maps already computed (batch of one)."""
        size = self.config.img_size
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


def _onnx_runner_for(model: YoloBody, geometry: Geometry):
    """Exports ``model`` (fused, batch 1, raw maps at ``geometry.input_size``) to a temporary
    ONNX file and opens it in ORT."""
    import tempfile

    from utils.inference.export import export_onnx
    from utils.inference.onnx_runner import OnnxRunner

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", geometry)
        return OnnxRunner(path)
