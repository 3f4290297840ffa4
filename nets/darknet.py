"""Darknet ``.weights`` / ``.cfg`` import and export for YOLOv4-tiny.

File layout: int32 major, minor, revision; ``seen`` as int64 when ``major * 10 + minor >= 2``
(int32 otherwise); then float32 arrays per convolution in cfg order. A convolution with batch
norm stores beta, gamma, running mean, running var, then its weights (OIHW); one without batch
norm stores bias, then weights. The official file holds exactly what the cfg needs.

The 21 convolutions map onto ``YoloBody`` in the order of ``darknet_layers``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nets.decode import Geometry
from nets.yolo import YoloBody
from utils.errors import InputError
from utils.paths import write_bytes_atomic

logger = logging.getLogger(__name__)

HEADER_INT32 = 3  # major, minor, revision


@dataclass
class DarknetLoadReport:
    """What ``load_darknet_weights`` did: module names loaded and skipped (with the reason)."""

    path: str
    version: tuple[int, int, int]
    seen: int
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    file_num_classes: int | None = None

    def summary(self) -> str:
        lines = [
            f"{self.path}: darknet v{'.'.join(map(str, self.version))}, "
            f"{len(self.loaded)} convolutions loaded"
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


class DarknetFormatError(InputError):
    """A darknet weights file that does not fit the model (header, size, leftover bytes)."""


def darknet_layers(model: YoloBody) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d | None]]:
    """The model's convolutions in darknet cfg order as ``(name, conv, bn or None)``."""
    bb = model.backbone
    blocks = []
    names = ["backbone.conv1", "backbone.conv2"]
    modules = [bb.conv1, bb.conv2]
    for i, block in enumerate([bb.resblock_body1, bb.resblock_body2, bb.resblock_body3], 1):
        for j, conv in enumerate([block.conv1, block.conv2, block.conv3, block.conv4], 1):
            names.append(f"backbone.resblock_body{i}.conv{j}")
            modules.append(conv)
    names += [
        "backbone.conv3",
        "conv_for_P5",
        "yolo_headP5.0",
        "yolo_headP5.1",
        "upsample.upsample.0",
        "yolo_headP4.0",
        "yolo_headP4.1",
    ]
    modules += [
        bb.conv3,
        model.conv_for_P5,
        model.yolo_headP5[0],
        model.yolo_headP5[1],
        model.upsample.upsample[0],
        model.yolo_headP4[0],
        model.yolo_headP4[1],
    ]
    for name, m in zip(names, modules):
        if isinstance(m, nn.Conv2d):
            blocks.append((name, m, None))
        else:
            blocks.append((name, m.conv, m.bn))
    return blocks


OUTPUT_LAYERS = ("yolo_headP5.1", "yolo_headP4.1")


def _layer_floats(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> int:
    return conv.weight.numel() + (4 * bn.num_features if bn is not None else conv.out_channels)


def _read_header(raw: bytes, path: str) -> tuple[tuple[int, int, int], int, int]:
    """Returns ``(version, seen, offset of the first float)``."""
    if len(raw) < 4 * HEADER_INT32 + 4:
        raise DarknetFormatError(f"{path}: {len(raw)} bytes is too short for a darknet header")
    major, minor, revision = (int(v) for v in np.frombuffer(raw, np.int32, HEADER_INT32))
    # Darknet has only ever written major 0 (and 1 in some forks); anything else is not a
    # weights file (or is one from a different endianness).
    if not (0 <= major <= 1 and 0 <= minor < 100 and 0 <= revision < 10_000):
        raise DarknetFormatError(
            f"{path}: not a darknet weights file (header version {major}.{minor}.{revision})"
        )
    if major * 10 + minor >= 2:
        if len(raw) < 20:
            raise DarknetFormatError(f"{path}: {len(raw)} bytes is too short for a darknet header")
        seen = int(np.frombuffer(raw, np.int64, 1, offset=12)[0])
        offset = 20
    else:
        seen = int(np.frombuffer(raw, np.int32, 1, offset=12)[0])
        offset = 16
    return (major, minor, revision), seen, offset


def load_darknet_weights(model: YoloBody, path: str | os.PathLike) -> DarknetLoadReport:
    """Loads darknet ``yolov4-tiny.weights`` into ``model`` in place.

    The file's class count is inferred from its size. When it equals the model's, every
    convolution is loaded; otherwise the two output convolutions are read past and reported
    as skipped (their shapes depend on the class count). Attention blocks have no darknet
    counterpart and keep their initialisation.

    Raises:
        DarknetFormatError: wrong header, truncated file, or bytes left over.
    """
    path = str(path)
    raw = Path(path).read_bytes()
    version, seen, offset = _read_header(raw, path)
    if (len(raw) - offset) % 4:
        raise DarknetFormatError(f"{path}: payload of {len(raw) - offset} bytes is not float32s")
    data = np.frombuffer(raw, np.float32, offset=offset)
    layers = darknet_layers(model)
    body_floats = sum(_layer_floats(c, b) for n, c, b in layers if n not in OUTPUT_LAYERS)
    head_inputs = [c.in_channels for n, c, _ in layers if n in OUTPUT_LAYERS]
    # Each output conv holds out*(in + 1) floats, out = A * (5 + C).
    per_out = sum(i + 1 for i in head_inputs)
    model_out = layers[-1][1].out_channels
    expected = body_floats + per_out * model_out
    file_out_exact = (data.size - body_floats) / per_out
    file_out = int(file_out_exact)
    same_size = data.size == expected
    if not same_size:
        fits = file_out_exact.is_integer() and file_out > 0 and file_out % model.num_anchors == 0
        file_classes = file_out // model.num_anchors - 5 if fits else -1
        if not fits or file_classes < 1:
            need = offset + 4 * expected
            problem = "truncated" if len(raw) < need else "has leftover bytes"
            raise DarknetFormatError(
                f"{path}: file {problem}: {len(raw)} bytes, but a model with "
                f"{model.num_classes} classes needs {need} bytes (and no class count fits)"
            )
    report = DarknetLoadReport(path=path, version=version, seen=seen)
    report.file_num_classes = model.num_classes if same_size else file_classes
    pos = 0
    with torch.no_grad():
        for name, conv, bn in layers:
            if name in OUTPUT_LAYERS and not same_size:
                pos += conv.in_channels * file_out + file_out  # read past; shapes differ
                report.skipped[name] = (
                    f"file has {report.file_num_classes} classes, model {model.num_classes}"
                )
                continue
            params = [bn.bias, bn.weight, bn.running_mean, bn.running_var] if bn else [conv.bias]
            for tensor in [*params, conv.weight]:
                n = tensor.numel()
                tensor.copy_(torch.from_numpy(data[pos : pos + n].copy()).view_as(tensor))
                pos += n
            report.loaded.append(name)
    assert pos == data.size, (pos, data.size)  # guaranteed by the size check above
    for name in model.attention_blocks():
        report.skipped[name] = f"no darknet counterpart for attention {model.phi_name!r}"
    return report


def save_darknet_weights(
    model: YoloBody,
    path: str | os.PathLike,
    version: tuple[int, int, int] = (0, 2, 5),
    seen: int = 0,
) -> None:
    """Writes ``model`` (phi 0 only) as a darknet ``.weights`` file, float32, cfg order."""
    if model.phi != 0:
        raise InputError(
            f"darknet has no {model.phi_name!r} attention layer: "
            "only phi 0 models export to darknet"
        )
    major, minor, _ = version
    header = np.array(version, np.int32).tobytes()
    header += np.array([seen], np.int64 if major * 10 + minor >= 2 else np.int32).tobytes()
    chunks = [header]
    for _, conv, bn in darknet_layers(model):
        params = [bn.bias, bn.weight, bn.running_mean, bn.running_var] if bn else [conv.bias]
        for tensor in [*params, conv.weight]:
            chunks.append(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    write_bytes_atomic(path, b"".join(chunks))


def _conv_section(filters: int, size: int, stride: int = 1, bn: bool = True) -> str:
    if not bn:
        return (
            f"[convolutional]\nsize={size}\nstride={stride}\npad=1\nfilters={filters}\n"
            "activation=linear\n"
        )
    return (
        f"[convolutional]\nbatch_normalize=1\nfilters={filters}\nsize={size}\n"
        f"stride={stride}\npad=1\nactivation=leaky\n"
    )


def _yolo_section(
    mask: tuple[int, ...], anchors: list[tuple[float, float]], classes: int, scale_x_y: float
) -> str:
    anchor_text = ",  ".join(f"{w:g},{h:g}" for w, h in anchors)
    return (
        f"[yolo]\nmask = {','.join(map(str, mask))}\nanchors = {anchor_text}\n"
        f"classes={classes}\nnum={len(anchors)}\njitter=.3\nscale_x_y = {scale_x_y:g}\n"
        "cls_normalizer=1.0\niou_normalizer=0.07\niou_loss=ciou\nignore_thresh = .7\n"
        "truth_thresh = 1\nrandom=0\nresize=1.5\nnms_kind=greedynms\nbeta_nms=0.6\n"
    )


def darknet_cfg(
    model: YoloBody,
    input_size: int,
    anchors: list[tuple[float, float]],
    anchors_mask: list[tuple[int, ...]],
    *,
    scale_x_y: float = 1.05,
) -> str:
    """The yolov4-tiny ``.cfg`` text for ``model`` (phi 0), matching ``save_darknet_weights``;
    ``scale_x_y`` is the grid sensitivity the weights were trained with."""
    sections = [
        f"[net]\nbatch=1\nsubdivisions=1\nwidth={input_size}\nheight={input_size}\n"
        "channels=3\nmomentum=0.9\ndecay=0.0005\n"
    ]
    sections += [_conv_section(32, 3, 2), _conv_section(64, 3, 2)]
    for c in (64, 128, 256):
        sections += [
            _conv_section(c, 3),
            "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n",
            _conv_section(c // 2, 3),
            _conv_section(c // 2, 3),
            "[route]\nlayers = -1,-2\n",
            _conv_section(c, 1),
            "[route]\nlayers = -6,-1\n",
            "[maxpool]\nsize=2\nstride=2\n",
        ]
    out = model.num_anchors * (5 + model.num_classes)
    sections += [
        _conv_section(512, 3),
        _conv_section(256, 1),
        _conv_section(512, 3),
        _conv_section(out, 1, bn=False),
        _yolo_section(anchors_mask[0], anchors, model.num_classes, scale_x_y),
        "[route]\nlayers = -4\n",
        _conv_section(128, 1),
        "[upsample]\nstride=2\n",
        "[route]\nlayers = -1, 23\n",  # 23: the third CSP block's conv4 (feat1)
        _conv_section(256, 3),
        _conv_section(out, 1, bn=False),
        _yolo_section(anchors_mask[1], anchors, model.num_classes, scale_x_y),
    ]
    return "\n".join(sections)


def export_darknet(
    model: YoloBody,
    weights_path: str | os.PathLike,
    cfg_path: str | os.PathLike,
    geometry: Geometry | None = None,
) -> None:
    """Writes ``cfg_path`` and ``weights_path`` so that darknet and OpenCV DNN run the model.

    Args:
        model: a phi 0 model.
        weights_path: the ``.weights`` file to write.
        cfg_path: the ``.cfg`` file to write.
        geometry: the cfg's input side, anchors and masks (None: the defaults at 416).
    """
    geometry = geometry or Geometry()
    save_darknet_weights(model, weights_path)
    cfg = darknet_cfg(
        model,
        geometry.input_size,
        list(geometry.anchors),
        list(geometry.anchors_mask),
        scale_x_y=geometry.scale_x_y,
    )
    write_bytes_atomic(cfg_path, cfg.encode())
