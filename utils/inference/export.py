"""Exporting a model: everything that writes an export.

``export`` is the one entry point (``python -m tools.export`` and ``predict.py --export-onnx``
both call it): it checks the outputs, loads the weights and writes, as ``ExportConfig`` says,
one ONNX file (fp32 raw maps or decoded boxes, or INT8 through ``utils.inference.quantize``)
with the metadata (``export_metadata``) that lets ``Detector`` and ``eval.py`` run it without
the checkpoint, or a darknet ``.cfg`` + ``.weights`` pair (``nets.darknet.export_darknet``).
``export_onnx`` and ``export_model`` are its ONNX steps for a model already loaded.
``utils.inference.onnx_runner`` reads and runs what this writes.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from nets.checkpoint import ModelInfo, load_model
from nets.darknet import export_darknet
from nets.decode import Geometry, decode_outputs
from nets.fuse import fuse_model
from nets.options import ModelOptions, check_img_size
from nets.registry import load_attention_plugins
from nets.yolo import YoloBody
from utils.classes import read_anchors, read_class_names
from utils.config import option
from utils.errors import InputError, UserError
from utils.inference.onnx_runner import METADATA_KEY, onnx_metadata
from utils.inference.predictor import check_anchors, class_names_for
from utils.inference.quantize import (
    AUTO_START,
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_FLOAT,
    FLOAT_GROUPS,
    MEASURED_LOSSES,
    TARGET_LOSS,
    HeldOutCheck,
    pick_evenly,
    quantize_int8,
    split_holdout,
)
from utils.paths import (
    COCO_CLASSES,
    check_apart,
    check_output_path,
    write_bytes_atomic,
    write_failure,
)
from utils.sources import resolve_source, source_inputs

EXPORT_FORMATS = ("onnx", "darknet")
MIN_OPSET = 17
MAX_OPSET = 20  # the newest the TorchScript ONNX exporter of torch 2.x writes


@dataclass(frozen=True)
class ExportConfig:
    """What an export writes and how; every default in one place. ``python -m tools.export``
    takes every field as a flag; ``predict.py --export-onnx PATH`` all but ``format`` and
    ``out`` (its flag gives the path)."""

    format: str = option(
        "onnx",
        "onnx: one .onnx file (fp32, or INT8 with --int8); darknet: a .cfg and .weights pair "
        "that darknet and OpenCV DNN run (phi 0 only)",
        group="export",
        choices=EXPORT_FORMATS,
    )
    out: str | None = option(
        None,
        "the file to write; darknet: the path prefix, .cfg and .weights are added",
        group="export",
        metavar="PATH",
    )
    dynamic_batch: bool = option(
        False, "ONNX: a dynamic batch dimension instead of batch 1", group="export"
    )
    decode: bool = option(
        False, "ONNX: decoded boxes (B, N, 5+C) instead of raw maps", group="export"
    )
    opset: int = option(MIN_OPSET, f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}", group="export")
    int8: str | None = option(
        None,
        "ONNX: quantize to INT8 (ONNX Runtime, static), calibrating activation ranges on "
        "images from this folder, glob or file (use training images); every 5th is held out "
        "and INT8 is measured against float on them",
        group="export",
        metavar="CALIB_SOURCE",
    )
    calib_images: int = option(
        DEFAULT_CALIBRATION_IMAGES,
        "--int8: calibration images, spread evenly over the source",
        group="export",
    )
    calib_method: str = option(
        "auto",
        "--int8: how activation ranges are chosen from the calibration images (auto: each "
        "method, keeping the one closest to the float model on the held-out images)",
        group="export",
        choices=(*CALIBRATION_METHODS, "auto"),
    )
    int8_float: str = option(
        "auto",
        f"--int8: node groups kept in float, comma-separated, of {', '.join(FLOAT_GROUPS)}; "
        f"auto: {','.join(DEFAULT_FLOAT)}, and early too (the layers at 1/2 and 1/4 of the "
        "input side: 1.7-1.9x the INT8 forward time) only where the held-out check misses "
        f"the {TARGET_LOSS:.0f}-point target without them",
        group="export",
    )

    @property
    def float_groups(self) -> tuple[str, ...] | str:
        """``--int8-float`` as ``parse_float_groups`` reads it."""
        return parse_float_groups(self.int8_float)

    def __post_init__(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise InputError(f"--format {self.format!r}: choose one of {', '.join(EXPORT_FORMATS)}")
        onnx_only = [
            flag
            for flag, given in (
                ("--int8", self.int8),
                ("--decode", self.decode),
                ("--dynamic-batch", self.dynamic_batch),
            )
            if given
        ]
        if self.format != "onnx" and onnx_only:
            raise InputError(
                f"{', '.join(onnx_only)}: ONNX settings; --format {self.format} writes a .cfg "
                "and .weights pair"
            )
        int8_only = [
            flag
            for flag, given in (
                ("--int8-float", self.int8_float.strip() != "auto"),
                ("--calib-method", self.calib_method != "auto"),
                ("--calib-images", self.calib_images != DEFAULT_CALIBRATION_IMAGES),
            )
            if given
        ]
        if int8_only and not self.int8:
            raise InputError(f"{', '.join(int8_only)}: INT8 settings; give --int8 CALIB_SOURCE")
        if self.int8 and self.decode:
            raise InputError("--int8 quantizes raw-map graphs: leave out --decode")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise InputError(f"--opset {self.opset}: must be {MIN_OPSET} to {MAX_OPSET}")
        parse_float_groups(self.int8_float)  # checks it
        if self.calib_images < 1:
            raise InputError(f"--calib-images {self.calib_images}: must be at least 1")


def parse_float_groups(text: str) -> tuple[str, ...] | str:
    """``--int8-float``: ``"auto"``, or a tuple of ``FLOAT_GROUPS`` names (each once, in the
    order given).

    Raises:
        InputError: an unknown group, or none named (an empty value).
    """
    if text.strip() == "auto":
        return "auto"
    groups = tuple(dict.fromkeys(g.strip() for g in text.split(",") if g.strip()))
    unknown = sorted(set(groups) - set(FLOAT_GROUPS))
    if unknown or not groups:
        problem = f"unknown {unknown}" if unknown else "no group named"
        raise InputError(
            f"--int8-float {text!r}: {problem}; give auto or groups from "
            f"{', '.join(FLOAT_GROUPS)}, comma-separated (heads,first keeps the outputs and the "
            "first convolution in float)"
        )
    return groups


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` wrote: the files (ONNX: one; darknet: ``.weights``, ``.cfg``), the
    model, its input side, the settings, and for INT8 the stored quantization entry."""

    paths: tuple[Path, ...]
    info: ModelInfo
    input_size: int
    config: ExportConfig
    quantization: dict | None = None

    def describe(self) -> str:
        """One line saying what was written."""
        cfg, size = self.config, self.input_size
        if cfg.format == "darknet":
            weights, darknet_cfg = self.paths
            return f"wrote {darknet_cfg} and {weights} ({size}x{size}; {self.info.describe()})"
        kind = "decoded detections" if cfg.decode else "raw maps out32/out16"
        batch = "dynamic batch" if cfg.dynamic_batch else "batch 1"
        precision = ""
        if self.quantization:
            quant = self.quantization
            kept = "+".join(quant.get("float_groups", []))
            precision = (
                f", INT8 ({quant['method']} calibration on {quant['calibration_images']} images"
                f"{', float: ' + kept if kept else ''})"
            )
        line = (
            f"exported {self.paths[0]} (opset {cfg.opset}, {size}x{size}, {batch}, {kind}"
            f"{precision}; {self.info.describe()}); onnx.checker passed"
        )
        return "\n".join([line, *self.int8_check()])

    def int8_check(self) -> list[str]:
        """INT8: what the held-out check measured, and a warning when it lost more than
        ``TARGET_LOSS`` points against the float model (none without held-out images)."""
        if not self.quantization:
            return []
        lines = []
        held = self.quantization.get("held_out")
        if held:
            lines.append(HeldOutCheck(**held).describe())
        else:
            lines.append(
                "INT8 not checked: give at least 5 calibration images (every 5th is held out "
                "to measure INT8 against float)"
            )
        tried = self.quantization.get("tried", {})
        without = [loss for key, loss in tried.items() if "early" not in key.split()[-1]]
        start = AUTO_START.get(self.info.phi_name)
        kept = self.quantization.get("float_groups", [])
        if self.config.float_groups == "auto" and "early" in kept:
            why = (
                f"without them INT8 lost {min(without):.1f} points on the held-out images"
                if without
                else start[2]
                if start
                else "as asked"
            )
            lines.append(
                f"kept the early layers in float: {why}; they take 1.7-1.9x the INT8 forward "
                f"time (--int8-float {','.join(DEFAULT_FLOAT)} for the faster graph)"
            )
        known = MEASURED_LOSSES.get(self.info.phi_name)
        if known and "early" not in kept:
            lines.append(
                f"warning: INT8 of {self.info.phi_name} without the early layers in float lost "
                f"{known} when measured (python -m benchmarks.int8 --per-phi; target: at most "
                f"{TARGET_LOSS:.1f}); --int8-float {','.join((*DEFAULT_FLOAT, 'early'))} keeps "
                "them, or measure yours on labelled images"
            )
        if not held:
            return lines
        loss = HeldOutCheck(**held).loss  # 0 when the float model detected nothing
        if loss > TARGET_LOSS:
            lines.append(
                f"warning: INT8 of {self.info.phi_name} lost {loss:.1f} points against its "
                f"float model on held-out images (target: at most {TARGET_LOSS:.1f}); measure "
                "it on labelled images (python -m benchmarks.int8) or deploy the float export"
            )
        return lines


def output_paths(out: str | os.PathLike, fmt: str) -> tuple[Path, ...]:
    """The files an export to ``out`` writes: ``out`` itself for ONNX; for darknet
    ``out.weights`` and ``out.cfg`` (``out`` ending in ``.weights`` or ``.cfg`` is the same
    prefix)."""
    path = Path(out)
    if fmt != "darknet":
        return (path,)
    if path.suffix in (".weights", ".cfg"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".weights"), path.with_name(path.name + ".cfg")


def export(
    model: ModelOptions,
    cfg: ExportConfig,
    *,
    classes: str | os.PathLike | None = None,
    letterbox: bool = True,
    out_flag: str = "--out",
    inputs: Sequence[str | os.PathLike | None] = (),
) -> ExportResult:
    """Exports the model in ``model.weights`` as ``cfg`` says.

    Before anything is read, every output is checked: it must be writable and must not land
    on an input (the weights, classes and anchors files, the calibration images, ``inputs``).
    Then the model loads (``model.phi``, the class count of ``classes``, plugins of
    ``model.attention_plugin``), takes ``model.anchors`` (which must equal those a checkpoint
    stores) and is written at ``model.img_size`` (default: the checkpoint's).

    Args:
        model: the weights and how to read them.
        cfg: format, output path and ONNX settings.
        classes: a class-names file (ONNX: default the checkpoint's, COCO's for 80 classes).
        letterbox: ``--int8``: calibration images are letterboxed as inference does (else a
            plain resize).
        out_flag: the flag that named ``cfg.out``, for the messages.
        inputs: more paths the command reads (an output must never replace one).

    Raises:
        InputError: a setting, file or model the export cannot use (exit 2; the model
            errors of ``load_model`` are InputErrors too).
        OutputRefusedError: an output that cannot be written or lies on an input (exit 2,
            before any work).
        OutputPathError: writing failed during the export (exit 1).
    """
    if cfg.out is None:
        raise InputError(f"{out_flag}: give the path to write")
    if not model.weights:
        raise InputError("--weights: give the weights file to export")
    check_img_size(model.img_size)
    paths = output_paths(cfg.out, cfg.format)
    # the COCO names file is read when a model stores no names and no classes file is given
    protected = [model.weights, classes or COCO_CLASSES, model.anchors, *inputs]
    if cfg.int8:
        protected += source_inputs(cfg.int8, resolve_source(cfg.int8))
    for path in paths:
        check_apart(path, protected, flag=out_flag, folder=False)
        check_output_path(path)
    calibration = calibration_images(cfg.int8, cfg.calib_images) if cfg.int8 else []
    net, info, names = _load(model, classes, need_names=cfg.format == "onnx")
    size = model.img_size or info.input_size
    try:
        if cfg.format == "darknet":
            export_darknet(net, paths[0], paths[1], info.geometry.at_size(size))
            return ExportResult(paths, info, size, cfg)
        path = export_model(
            net,
            info,
            names,
            paths[0],
            cfg,
            input_size=size,
            calibration=calibration,
            letterbox=letterbox,
        )
    except OSError as err:  # disk full or permissions changed during the export
        if isinstance(err, UserError):
            raise
        raise write_failure(err, paths[0]) from None
    quantization = onnx_metadata(path).get("quantization") if cfg.int8 else None
    return ExportResult(paths, info, size, cfg, quantization)


def _load(
    model: ModelOptions, classes: str | os.PathLike | None, *, need_names: bool
) -> tuple[YoloBody, ModelInfo, list[str] | None]:
    """The model, what it is (with the anchors asked for), and its class names (None when
    not ``need_names`` and none were given)."""
    names = read_class_names(classes) if classes else None
    anchors = read_anchors(model.anchors) if model.anchors else None  # before the model loads
    load_attention_plugins(model.attention_plugin)
    net, info = load_model(model.weights, model.phi, len(names) if names else None)
    if anchors is not None:
        if info.source == "checkpoint":  # stores its own anchors
            check_anchors(str(model.weights), info.anchors, anchors)
        info = replace(info, anchors=read_anchors(model.anchors, count=len(info.anchors)))
    if need_names:
        names = class_names_for(names, info.class_names, info.num_classes, str(model.weights))
    return net, info, names


def calibration_images(source: str, count: int) -> list[str]:
    """``count`` image paths spread evenly over ``source`` (a folder, glob or file).

    Raises:
        InputError: the source holds no image (``SourceError`` is an InputError too).
    """
    images = resolve_source(source).images
    if not images:
        raise InputError(f"{source}: no images to calibrate on")
    return pick_evenly(images, count)


def export_metadata(info: ModelInfo, class_names: Sequence[str], input_size: int) -> dict:
    """What an export stores about its model: phi, class names, anchors, masks, input size,
    grid sensitivity, and the attention points and options."""
    return {
        "phi": info.phi,
        "phi_name": info.phi_name,
        "attention_at": list(info.attention_at),
        "attention_args": info.attention_options,
        "class_names": list(class_names),
        "anchors": [list(a) for a in info.anchors],
        "anchors_mask": [list(m) for m in info.anchors_mask],
        "input_size": input_size,
        "scale_x_y": info.scale_x_y,
    }


def export_model(
    model: nn.Module,
    info: ModelInfo,
    class_names: Sequence[str],
    out: str | os.PathLike,
    cfg: ExportConfig | None = None,
    *,
    input_size: int,
    calibration: Sequence[str] = (),
    letterbox: bool = True,
) -> Path:
    """Writes ``out``: the fused model at ``input_size`` (decoded or raw maps) with its
    metadata, quantized to INT8 on ``calibration`` when ``cfg.int8`` is set. The file is built
    in a temporary folder and moved into place at the end, so a failure leaves nothing
    half-written. ``cfg`` None: the defaults (fp32 raw maps, batch 1).

    Raises:
        InputError: settings the export cannot honour (input size, no readable calibration
            image).
        OutputPathError: writing the file failed.
    """
    cfg = cfg or ExportConfig()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(
            model,
            Path(tmp) / "fp32.onnx",
            info.geometry.at_size(input_size),
            opset=cfg.opset,
            dynamic_batch=cfg.dynamic_batch,
            decode=cfg.decode,
            metadata=export_metadata(info, class_names, input_size),
        )
        if cfg.int8:
            calibrate, held_out = split_holdout(list(calibration))
            path = quantize_int8(
                path,
                Path(tmp) / "int8.onnx",
                calibrate,
                method=cfg.calib_method,
                letterbox=letterbox,
                keep_float=cfg.float_groups,
                check_paths=held_out,
            )
        return write_bytes_atomic(out, path.read_bytes())


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
    opset: int = MIN_OPSET,
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
        InputError: opset below 17, or an input side that is not a positive multiple of 32.
    """
    import onnx

    geometry = geometry or Geometry()
    input_size = geometry.input_size
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"opset {opset}: must be {MIN_OPSET} to {MAX_OPSET}")
    check_img_size(input_size, "input size")
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
