"""Exporting a loaded model to one ONNX file: fp32 (raw maps or decoded boxes) or INT8.

``ExportConfig`` holds the settings (``predict.py --export-onnx`` builds its flags from it);
``export_model`` writes the file, with the metadata (``export_metadata``) that lets
``Detector`` and ``eval.py`` run it without the checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nets.checkpoint import ModelInfo
from utils.config import option
from utils.errors import InputError
from utils.inference.deploy import export_onnx
from utils.inference.quantize import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_IMAGES,
    pick_evenly,
    quantize_int8,
)
from utils.paths import write_bytes_atomic
from utils.sources import resolve_source


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export settings; every default in one place."""

    onnx_path: str | None = option(
        None,
        "export the model to ONNX at --img-size and exit",
        flag="--export-onnx",
        group="deployment",
        metavar="PATH",
    )
    dynamic_batch: bool = option(
        False, "ONNX export: dynamic batch", flag="--onnx-dynamic", group="deployment"
    )
    decode: bool = option(
        False,
        "ONNX export: decoded boxes (B, N, 5+C) instead of raw maps",
        flag="--onnx-decode",
        group="deployment",
    )
    opset: int = option(17, "ONNX opset, 17 or newer", group="deployment")
    int8: str | None = option(
        None,
        "ONNX export: quantize to INT8 (ONNX Runtime, static), calibrating activation ranges "
        "on images from this folder, glob or file (use training images)",
        group="deployment",
        metavar="CALIB_SOURCE",
    )
    calib_images: int = option(
        DEFAULT_CALIBRATION_IMAGES,
        "--int8: calibration images, spread evenly over the source",
        group="deployment",
    )
    calib_method: str = option(
        "percentile",
        "--int8: how activation ranges are chosen from the calibration images",
        group="deployment",
        choices=CALIBRATION_METHODS,
    )

    def __post_init__(self) -> None:
        if self.int8 and self.decode:
            raise InputError("--int8 quantizes raw-map graphs: leave out --onnx-decode")
        if self.calib_images < 1:
            raise InputError(f"--calib-images {self.calib_images}: must be at least 1")


def calibration_images(source: str, count: int) -> list[str]:
    """``count`` image paths spread evenly over ``source`` (a folder, glob or file).

    Raises:
        ValueError: the source holds no image (``SourceError`` is a ValueError too).
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
    model,
    info: ModelInfo,
    class_names: Sequence[str],
    cfg: ExportConfig,
    *,
    input_size: int,
    calibration: Sequence[str] = (),
    letterbox: bool = True,
) -> Path:
    """Writes ``cfg.onnx_path``: the fused model at ``input_size`` (decoded or raw maps), quantized
    to INT8 on ``calibration`` when ``cfg.int8`` is set. The file is built in a temporary
    folder and moved into place at the end, so a failure leaves nothing half-written.

    Raises:
        ValueError: settings the export cannot honour (opset, input size, no readable
            calibration image).
        OSError: writing the file failed.
    """
    out_path = Path(os.fspath(cfg.onnx_path))
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
            path = quantize_int8(
                path,
                Path(tmp) / "int8.onnx",
                list(calibration),
                method=cfg.calib_method,
                letterbox=letterbox,
            )
        return write_bytes_atomic(out_path, path.read_bytes())
