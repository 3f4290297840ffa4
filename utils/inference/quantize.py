"""INT8 through ONNX Runtime static quantization.

``quantize_int8`` turns a raw-map ONNX export (``export_onnx`` without ``decode``) into a QDQ
graph: weights signed 8-bit per output channel, activations unsigned 8-bit per tensor with
ranges calibrated on real images that go through the same letterbox preprocessing as
inference. The two head convolutions stay fp32 (their outputs are box offsets and logits that
the decoder exponentiates), so the graph keeps float outputs ``out32``/``out16`` and runs in
``OnnxRunner`` / ``--backend onnxruntime`` like the fp32 export.

u8 activations with s8 weights is ONNX Runtime's fast x86 combination; on CPUs without VNNI
it multiplies with VPMADDUBSW, whose 16-bit intermediate can saturate; the ``reduce_range``
argument of ``quantize_int8`` (7-bit weights) is there for such machines if accuracy suffers.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from utils.errors import InputError
from utils.inference.onnx_runner import METADATA_KEY, onnx_metadata
from utils.preprocess import preprocess_bgr, to_tensor
from utils.sources import ImageReadError, read_image

logger = logging.getLogger(__name__)

# percentile: ranges clipped at the 0.001/99.999 percentiles of a histogram; minmax: full
# ranges. (ORT's "entropy" was left out: it gave exactly minmax's scales on our models.)
CALIBRATION_METHODS = ("minmax", "percentile")
DEFAULT_CALIBRATION_IMAGES = 100


def pick_evenly(paths: Sequence[str], count: int) -> list[str]:
    """``count`` paths spread evenly over ``paths`` (all of them when there are fewer)."""
    if count >= len(paths):
        return list(paths)
    picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
    return [paths[i] for i in picks]


class CalibrationImages:
    """ONNX Runtime ``CalibrationDataReader``: one preprocessed image per ``get_next``.

    Unreadable images are logged and skipped; ``used`` and ``skipped`` count them.
    """

    def __init__(
        self, paths: Sequence[str], input_size: int, input_name: str, letterbox: bool = True
    ) -> None:
        self.paths, self.input_size, self.input_name = list(paths), input_size, input_name
        self.letterbox = letterbox
        self.used, self.skipped = 0, []
        self._batches = self._read()

    def _read(self) -> Iterator[dict[str, np.ndarray]]:
        for path in self.paths:
            try:
                image = read_image(path)
            except ImageReadError as err:
                logger.warning("%s (not used for calibration)", err)
                self.skipped.append(str(err))
                continue
            canvas, _ = preprocess_bgr(image, self.input_size, self.letterbox)
            self.used += 1
            yield {self.input_name: to_tensor([canvas]).contiguous().numpy()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._read()


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_paths: Sequence[str],
    *,
    method: str = "percentile",
    letterbox: bool = True,
    per_channel: bool = True,
    reduce_range: bool = False,
    keep_heads_fp32: bool = True,
) -> Path:
    """Quantizes a raw-map export.

    The input size and batch come from the graph. The model's metadata is carried over, with
    a ``quantization`` entry (method, images used) added.

    Args:
        fp32_path: a raw-map ``export_onnx`` graph (outputs ``out32``/``out16``).
        out_path: the INT8 ``.onnx`` file to write.
        calibration_paths: images to calibrate activation ranges on.
        method: ``minmax`` or ``percentile`` (falls back to minmax where a tensor is constant).
        letterbox: preprocess calibration images as inference does (else a plain resize).
        per_channel: per-output-channel weight scales.
        reduce_range: 7-bit weights, for CPUs without VNNI whose u8 x s8 products saturate.
        keep_heads_fp32: leave the two head convolutions in fp32.

    Returns:
        ``out_path``.

    Raises:
        ValueError: not a raw-map graph, unknown ``method``, or no readable calibration image.
    """
    if method not in CALIBRATION_METHODS:
        raise InputError(f"calibration method {method!r}: choose one of {CALIBRATION_METHODS}")
    if not calibration_paths:
        raise InputError("no calibration images given")
    input_name, input_size, heads = _raw_map_graph(fp32_path)
    reader = CalibrationImages(calibration_paths, input_size, input_name, letterbox)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "nodes_to_exclude": heads if keep_heads_fp32 else None,
    }
    method = _calibrate_and_quantize(fp32_path, out_path, reader, method, settings)
    meta = onnx_metadata(fp32_path)
    meta["quantization"] = {
        "format": "QDQ u8 activations / s8 weights" + (" per channel" if per_channel else ""),
        "method": method,
        "calibration_images": reader.used,
        "skipped_images": len(reader.skipped),
        "heads_fp32": keep_heads_fp32,
        "reduce_range": reduce_range,
    }
    _replace_metadata(out_path, meta)
    return out_path


def _raw_map_graph(fp32_path: str | os.PathLike) -> tuple[str, int, list[str]]:
    """Input name, fixed input side and head-node names of a raw-map export.

    Raises:
        ValueError: the graph is not a raw-map export or its input size is not fixed.
    """
    import onnx

    graph = onnx.load(str(fp32_path)).graph
    outputs = [o.name for o in graph.output]
    if outputs != ["out32", "out16"]:
        raise InputError(
            f"{fp32_path}: INT8 needs a raw-map export (out32/out16), got {outputs}"
            " (export without --decode)"
        )
    input_size = graph.input[0].type.tensor_type.shape.dim[2].dim_value
    if not input_size:
        raise InputError(f"{fp32_path}: the input size is not fixed in the graph")
    heads = [n.name for n in graph.node if set(n.output) & set(outputs)]
    return graph.input[0].name, input_size, heads


def _calibrate_and_quantize(
    fp32_path: str | os.PathLike,
    out_path: Path,
    reader: CalibrationImages,
    method: str,
    settings: dict,
) -> str:
    """ONNX Runtime's static QDQ quantization (u8 activations, s8 weights) of ``fp32_path``
    into ``out_path``; returns the calibration method used (percentile falls back to minmax
    where a tensor is constant over the calibration images)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):  # the abstract base ORT type-checks against
        def get_next(self):
            return reader.get_next()

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    # ORT prints its calibration progress; keep it out of our output (debug log instead)
    chatter = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(chatter):
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_optimization=False)

        def run(calibration: str) -> None:
            reader.rewind()
            reader.used, reader.skipped = 0, []
            quantize_static(
                str(prepared),
                str(out_path),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[calibration],
                **settings,
            )

        try:
            run(method)
        except Exception as err:
            if not reader.used:
                out_path.unlink(missing_ok=True)
                raise InputError(
                    f"none of the {len(reader.paths)} calibration images was readable"
                ) from err
            # numpy: a tensor constant over all the images has no histogram range
            if method == "minmax" or not isinstance(err, ValueError) or "bins" not in str(err):
                raise
            logger.warning(
                "%s calibration failed (%s: a tensor is constant over the calibration "
                "images); using minmax",
                method,
                err,
            )
            method = "minmax"
            run(method)
    logger.debug("onnxruntime.quantization: %s", chatter.getvalue())
    return method


def _replace_metadata(path: Path, meta: dict) -> None:
    """Writes ``meta`` as the graph's only metadata entry and checks the model."""
    import onnx

    quantized = onnx.load(str(path))
    del quantized.metadata_props[:]
    entry = quantized.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.save(quantized, str(path))
    onnx.checker.check_model(quantized)
