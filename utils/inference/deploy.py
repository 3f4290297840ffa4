"""Deployment: batch-norm folding, ONNX export, and an ONNX Runtime runner.

``fuse_model`` folds every BatchNorm that follows a convolution into it (outputs equal the
unfused model's within float rounding). ``export_onnx`` writes opset >= 17 graphs, raw maps or
decoded boxes, optionally with a dynamic batch. ``OnnxRunner`` runs such a graph with the same
call contract as the model: a (B, 3, S, S) tensor in, raw maps out.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from nets.backbone import BasicConv
from nets.blocks import CoordAttention
from nets.decode import Geometry, decode_outputs
from utils.errors import InputError


class FusedConv(nn.Module):
    """A ``BasicConv`` after folding: one convolution (the BN is its bias) and an in-place
    LeakyReLU in one module call; saves about 0.4 ms of the 20 ms forward at 416 on a 2-core
    CPU against conv + Identity + LeakyReLU modules (19 of them)."""

    def __init__(self, conv: nn.Conv2d, negative_slope: float) -> None:
        super().__init__()
        self.conv, self.negative_slope = conv, negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x), self.negative_slope, inplace=True)


def fuse_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with conv + BN pairs folded: every ``BasicConv``
    becomes a ``FusedConv``; coordinate attention's 1x1 conv absorbs its BN, and every module
    with a ``fold_batchnorm()`` method (BAM, cbam_plus's branches, non-local) folds its own."""
    fused = copy.deepcopy(model).eval()
    for parent in list(fused.modules()):
        for name, child in parent.named_children():
            if isinstance(child, BasicConv) and isinstance(child.bn, nn.BatchNorm2d):
                conv = fuse_conv_bn_eval(child.conv, child.bn)
                setattr(parent, name, FusedConv(conv, child.activation.negative_slope))
        if isinstance(parent, CoordAttention) and isinstance(parent.bn, nn.BatchNorm2d):
            parent.conv_1x1 = fuse_conv_bn_eval(parent.conv_1x1, parent.bn)
            parent.bn = nn.Identity()
        fold = getattr(parent, "fold_batchnorm", None)  # attention blocks that know their pairs
        if callable(fold):
            fold()
    return fused


class DecodedModel(nn.Module):
    """Model + decoder in one graph: (B, 3, S, S) -> (B, N, 5 + C) as ``decode_outputs``."""

    def __init__(self, model: nn.Module, geometry: Geometry) -> None:
        super().__init__()
        self.model, self.geometry = model, geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return decode_outputs(self.model(x), self.geometry)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    geometry: Geometry | None = None,
    *,
    opset: int = 17,
    dynamic_batch: bool = False,
    decode: bool = False,
    fuse: bool = True,
    metadata: dict | None = None,
) -> Path:
    """Exports to ONNX and checks the file with ``onnx.checker``.

    Args:
        model: the model (not changed; a fused or plain eval-mode copy is exported on CPU).
        path: the ``.onnx`` file to write (folders are created).
        geometry: the input side of the graph, and with ``decode`` the anchors and masks of
            the decoder (None: the defaults at 416).
        opset: ONNX opset, 17 or newer.
        dynamic_batch: a symbolic batch dimension instead of batch 1.
        decode: put the decoder in the graph.
        fuse: fold batch norm into the convolutions first.
        metadata: JSON-serialisable model description stored in the file (``onnx_metadata``).

    Returns:
        ``path``. The graph takes ``images`` (B, 3, S, S) float RGB in [0, 1] and returns
        ``out32`` and ``out16`` (raw maps, stride 32 and 16), or with ``decode`` a single
        ``detections`` (B, N, 5 + C): cx, cy, w, h in input pixels, objectness, class
        probabilities.

    Raises:
        ValueError: opset below 17, or an input side that is not a positive multiple of 32.
    """
    import onnx

    geometry = geometry or Geometry()
    input_size = geometry.input_size
    if opset < 17:
        raise InputError(f"opset {opset}: 17 or newer is required")
    if input_size <= 0 or input_size % 32:
        raise InputError(f"input size {input_size} is not a positive multiple of 32")
    net = fuse_model(model) if fuse else copy.deepcopy(model).eval()
    names = ["out32", "out16"]
    if decode:
        net = DecodedModel(net, geometry).eval()
        names = ["detections"]
    axes = None
    if dynamic_batch:
        axes = {"images": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            net.cpu(),
            torch.zeros(1, 3, input_size, input_size),
            str(path),
            opset_version=opset,
            input_names=["images"],
            output_names=names,
            dynamic_axes=axes,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    if metadata:
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        onnx.save(graph, str(path))
    onnx.checker.check_model(graph)
    return path


METADATA_KEY = "yolov4_tiny_attention"


def _check_onnx_file(path: str) -> None:
    """Raises FileNotFoundError or ValueError (one line naming ``path``) for a missing or
    empty file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: empty file, not an ONNX model")


def onnx_metadata(path: str | os.PathLike) -> dict:
    """What ``export_onnx`` stored about the model (phi, classes, anchors, input size), or {}.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty, truncated, corrupt or not ONNX (one line naming the file).
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = str(path)
    _check_onnx_file(path)
    try:
        graph = onnx.load(path, load_external_data=False)
    except DecodeError:
        raise InputError(
            f"{path}: cannot read as an ONNX model: the file is truncated, corrupt or of "
            "another format"
        ) from None
    for entry in graph.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return {}


class OnnxRunner:
    """Runs an exported raw-map graph with ONNX Runtime; called like the model.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file ONNX Runtime cannot load (empty, truncated, corrupt, not ONNX),
            or a graph without the raw outputs (one line naming the file).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        _check_onnx_file(str(path))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # spinning workers fight torch's and OpenCV's threads during pre/post-processing:
        # measured 33 -> 30 ms end to end and a p90 of 80 -> 31 ms on a 2-core CPU
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=self.providers())
        except Exception as err:  # ORT's own exception types (InvalidProtobuf, Fail, ...)
            problem = str(err).rsplit("failed:", 1)[-1].strip() or type(err).__name__
            raise InputError(f"{path}: ONNX Runtime cannot load it: {problem}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.output_names != ["out32", "out16"]:
            raise InputError(
                f"{path}: expected raw outputs out32/out16, got {self.output_names}"
                " (export without --onnx-decode for the onnxruntime backend)"
            )
        out32 = self.session.get_outputs()[0].shape[1]
        self.out_channels = out32 if isinstance(out32, int) else None
        shape = self.session.get_inputs()[0].shape
        self.input_size = shape[2] if isinstance(shape[2], int) else None
        self.dynamic_batch = not isinstance(shape[0], int)

    @staticmethod
    def providers() -> list[str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        if not self.dynamic_batch and len(array) != 1:
            outs = [self.session.run(self.output_names, {self.input_name: a[None]}) for a in array]
            return [torch.from_numpy(np.concatenate([o[k] for o in outs])) for k in range(2)]
        return [
            torch.from_numpy(o)
            for o in self.session.run(self.output_names, {self.input_name: array})
        ]

    training = False  # the model contract of evaluation (``model.training``, ``.eval()``)

    def eval(self) -> OnnxRunner:
        return self

    def train(self, mode: bool = True) -> OnnxRunner:
        if mode:
            raise InputError("an ONNX graph cannot be trained")
        return self

    def to(self, *_args, **_kwargs) -> OnnxRunner:
        return self
