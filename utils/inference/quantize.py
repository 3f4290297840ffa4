"""INT8 through ONNX Runtime static quantization.

``quantize_int8`` turns a raw-map ONNX export (``export_onnx`` without ``decode``) into a QDQ
graph: weights signed 8-bit per output channel, activations unsigned 8-bit per tensor with
ranges calibrated on real images that go through the same letterbox preprocessing as
inference. ``DEFAULT_FLOAT`` node groups stay fp32: the two head convolutions (their outputs
are box offsets and logits that the decoder exponentiates), so the graph keeps float outputs
``out32``/``out16`` and runs in ``OnnxRunner`` / ``--backend onnxruntime`` like the fp32
export, and the first convolution (in INT8 it cost a non-local demo model 2 points of mAP50).
Keeping the attention blocks' gates, arithmetic or layers in float (``FLOAT_GROUPS``) did not
help on the demo or the aerial set, so they are quantized. Keeping the ``early`` layers in
float recovered the losses of CA (demo set) and SimAM (aerial set) but takes 1.7-1.9x the INT8
forward time, so ``keep_float="auto"`` (the export's default) adds them only for a model whose
held-out check misses the target without them.

``check_held_out`` measures an INT8 graph against its float graph without labels, on images
held out of calibration; ``method="auto"`` uses it to pick the calibration method.

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
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
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
HOLDOUT_EVERY = 5  # every 5th calibration image is held out to measure INT8 against float
TARGET_LOSS = 1.0  # points against the float model an export may lose unflagged
REFERENCE_CONF = 0.25  # the float detections INT8 is checked against: predict.py's threshold
BORDERLINE_CONF = 0.1  # float detections scored 0.1-0.25: INT8 may find them or not

# Node groups that ``quantize_int8`` can leave in float, by what they are in the graph.
# Attention nodes are those of the ``<point>_att`` modules (plugins included).
FLOAT_GROUPS = {
    "heads": "the two output convolutions (box offsets and logits the decoder exponentiates)",
    "first": "the first convolution (raw pixels in)",
    "gates": "Sigmoid, HardSigmoid and Softmax inside attention blocks",
    "arith": "Mul, MatMul, Div, Add, Sub, Pow and reductions inside attention blocks",
    "att_conv": "convolutions and linear layers inside attention blocks",
    "attention": "every node of the attention blocks",
    "early": "the layers at 1/2 and 1/4 of the input side (the stem and the first CSP block)",
}
# Blocks that lost more than TARGET_LOSS points of VOC12 mAP50 in INT8 with only ``heads`` and
# ``first`` in float, as ``benchmarks.int8 --per-phi`` measured them (one float32 checkpoint per
# block); an export of such a block without the early layers in float warns with the number.
# Keeping the block itself in float did not recover CA's loss.
MEASURED_LOSSES = {
    "ca": "2.7 points of VOC12 mAP50 on the demo set (1.7-4.1 over calibration subsets and "
    "methods)",
    "simam": "1.1 points of VOC12 mAP50 on the aerial tree set (tools.aerial_set)",
}
DEFAULT_FLOAT = ("heads", "first")  # measured: the first convolution costs up to 2 points in INT8
# ``keep_float="auto"``: these float sets in turn, the next tried only while the best so far
# lost more than TARGET_LOSS on the held-out images. The early layers in float recovered CA's
# demo loss (-2.7 -> -0.2 points) and SimAM's aerial one (-1.1 -> -0.2 to -0.7) but take
# 1.7-1.9x the INT8 forward time, so they are kept only where the measurement asks for them.
AUTO_FLOAT = (DEFAULT_FLOAT, (*DEFAULT_FLOAT, "early"))
# Blocks whose INT8 loss the held-out check does not see, so ``auto`` starts them at the
# setting measured to hold it: CA lost 1.7-4.1 points of demo mAP50 over four calibration
# subsets while the check saw 0.0; the early layers in float with minmax ranges lost 0.2-0.9
# on the demo set and 0.0 on the aerial set (percentile with them: 2.1-2.3 on the demo set).
AUTO_START = {
    "ca": (
        (*DEFAULT_FLOAT, "early"),
        ("minmax",),
        "without them CA's INT8 lost 1.7-4.1 points of mAP50 on the demo set where measured",
    )
}
_ATTENTION_NODE = re.compile(r"^/\w+_att/")
_EARLY_NODE = re.compile(r"^/backbone/(conv1|conv2|resblock_body1)/")
_GATE_OPS = {"Sigmoid", "HardSigmoid", "Softmax"}
_ARITH_OPS = {"Mul", "MatMul", "Div", "Add", "Sub", "Pow", "ReduceMean", "ReduceMax", "ReduceSum"}


def pick_evenly(paths: Sequence[str], count: int) -> list[str]:
    """``count`` paths spread evenly over ``paths`` (all of them when there are fewer)."""
    if count >= len(paths):
        return list(paths)
    picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
    return [paths[i] for i in picks]


class CalibrationImages:
    """ONNX Runtime ``CalibrationDataReader``: one preprocessed image per ``get_next``.

    Unreadable images are logged and skipped; ``used`` and ``skipped`` count them in the
    current pass. An image found unreadable is remembered: later passes (``rewind``, another
    calibration method) skip it without reading or reporting it again.
    """

    def __init__(
        self, paths: Sequence[str], input_size: int, input_name: str, letterbox: bool = True
    ) -> None:
        self.paths, self.input_size, self.input_name = list(paths), input_size, input_name
        self.letterbox = letterbox
        self.used, self.skipped = 0, []
        self._unreadable: dict[str, str] = {}  # path -> its error, across passes
        self._batches = self._read()

    def _read(self) -> Iterator[dict[str, np.ndarray]]:
        for path in self.paths:
            if path in self._unreadable:
                self.skipped.append(self._unreadable[path])
                continue
            try:
                image = read_image(path)
            except ImageReadError as err:
                logger.warning("%s (not used for calibration)", err)
                self._unreadable[path] = str(err)
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
    keep_float: Sequence[str] | str = DEFAULT_FLOAT,
    check_paths: Sequence[str] = (),
) -> Path:
    """Quantizes a raw-map export.

    The input size and batch come from the graph. The model's metadata is carried over, with
    a ``quantization`` entry (method, images used) added.

    Args:
        fp32_path: a raw-map ``export_onnx`` graph (outputs ``out32``/``out16``).
        out_path: the INT8 ``.onnx`` file to write.
        calibration_paths: images to calibrate activation ranges on.
        method: ``minmax`` or ``percentile`` (falls back to minmax where a tensor is
            constant), or ``auto``: each of them, keeping the one that loses least on
            ``check_paths`` (percentile without them).
        letterbox: preprocess calibration images as inference does (else a plain resize).
        per_channel: per-output-channel weight scales.
        reduce_range: 7-bit weights, for CPUs without VNNI whose u8 x s8 products saturate.
        keep_float: node groups left in float (``FLOAT_GROUPS``), or ``auto``: the sets of
            ``AUTO_FLOAT`` in turn while the held-out loss exceeds ``TARGET_LOSS`` (the first
            alone without ``check_paths``), keeping the least loss (on a tie the first, the
            faster graph); a block of ``AUTO_START`` (by the graph's ``phi_name``) gets its
            measured setting instead, its method too when ``method`` is ``auto``.
        check_paths: images kept out of calibration to measure the INT8 graph against the
            float one on (``check_held_out``); the result is stored as ``held_out``.

    Returns:
        ``out_path``.

    Raises:
        InputError: not a raw-map graph, unknown ``method`` or group, or no readable
            calibration image.
    """
    start = None
    if isinstance(keep_float, str):
        if keep_float != "auto":
            raise InputError(f"float groups {keep_float!r}: give group names or auto")
        float_sets = AUTO_FLOAT if check_paths else AUTO_FLOAT[:1]
        start = AUTO_START.get(onnx_metadata(fp32_path).get("phi_name"))
        if start:
            float_sets = (start[0],)
    else:
        float_sets = (tuple(keep_float),)
    unknown = sorted({g for groups in float_sets for g in groups} - set(FLOAT_GROUPS))
    if unknown:
        raise InputError(f"float groups {unknown}: choose from {', '.join(FLOAT_GROUPS)}")
    if method not in (*CALIBRATION_METHODS, "auto"):
        raise InputError(
            f"calibration method {method!r}: choose one of {CALIBRATION_METHODS} or auto"
        )
    if not calibration_paths:
        raise InputError("no calibration images given")
    input_name, input_size = _raw_map_graph(fp32_path)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if method == "auto" and start:
        methods = start[1]
    elif method == "auto":
        methods = CALIBRATION_METHODS if check_paths else ("percentile",)
    else:
        methods = (method,)
    tried: dict[str, tuple[float, Path, dict]] = {}
    reader = CalibrationImages(calibration_paths, input_size, input_name, letterbox)
    with tempfile.TemporaryDirectory() as tmp:
        for groups in float_sets:
            excluded = float_nodes(fp32_path, groups)
            settings = {
                "per_channel": per_channel,
                "reduce_range": reduce_range,
                "nodes_to_exclude": excluded or None,
            }
            for asked in methods:
                path = Path(tmp) / f"{asked}_{'_'.join(groups)}.onnx"
                used = _calibrate_and_quantize(fp32_path, path, reader, asked, settings)
                meta = onnx_metadata(fp32_path)
                meta["quantization"] = {
                    "format": "QDQ u8 activations / s8 weights"
                    + (" per channel" if per_channel else ""),
                    "method": used,
                    "calibration_images": reader.used,
                    "skipped_images": len(reader.skipped),
                    "float_groups": list(groups),
                    "float_nodes": len(excluded),
                    "reduce_range": reduce_range,
                }
                _replace_metadata(path, meta)  # the check reads anchors and names from it
                check = None
                if check_paths:
                    check = check_held_out(fp32_path, path, check_paths, letterbox=letterbox)
                    if check.images:  # else not checked: no held-out image was readable
                        meta["quantization"]["held_out"] = check_as_dict(check)
                # no loss when unchecked or nothing to compare: no reason to try slower settings
                tried[f"{asked} {'+'.join(groups)}"] = (check.loss if check else 0.0, path, meta)
            if min(t[0] for t in tried.values()) <= TARGET_LOSS:
                break  # the faster graph is within the target: the slower ones are not tried
        _, path, meta = min(tried.values(), key=lambda t: t[0])  # the first of equal losses
        if len(tried) > 1:  # the held-out loss of each setting, the least kept
            meta["quantization"]["tried"] = {k: round(t[0], 2) for k, t in tried.items()}
        _replace_metadata(path, meta)
        out_path.write_bytes(path.read_bytes())
    return out_path


def float_nodes(fp32_path: str | os.PathLike, groups: Sequence[str]) -> list[str]:
    """Names of the nodes of a raw-map export in the ``FLOAT_GROUPS`` named by ``groups``,
    in graph order."""
    import onnx

    graph = onnx.load(str(fp32_path)).graph
    outputs = {o.name for o in graph.output}
    first = next((n.name for n in graph.node if n.op_type == "Conv"), None)
    weights = {t.name for t in graph.initializer}

    def groups_of(node) -> set[str]:
        found = set()
        if set(node.output) & outputs:
            found.add("heads")
        if node.name == first:
            found.add("first")
        if _EARLY_NODE.match(node.name):
            found.add("early")
        if _ATTENTION_NODE.match(node.name):
            found.add("attention")
            if node.op_type in _GATE_OPS:
                found.add("gates")
            elif node.op_type in ("Conv", "Gemm") or (
                node.op_type == "MatMul" and set(node.input) & weights
            ):
                found.add("att_conv")  # learned layers (SE's linear layers are MatMuls)
            elif node.op_type in _ARITH_OPS:
                found.add("arith")
        return found

    wanted = set(groups)
    return [n.name for n in graph.node if groups_of(n) & wanted]


def _raw_map_graph(fp32_path: str | os.PathLike) -> tuple[str, int]:
    """Input name and fixed input side of a raw-map export.

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
    return graph.input[0].name, input_size


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


@dataclass(frozen=True)
class HeldOutCheck:
    """INT8 against its float model on held-out calibration images, with no labels: the float
    model's detections (score >= ``predict.py``'s 0.25) are the reference boxes, and the INT8
    model's detections (score >= 0.01) are scored against them as VOC12 AP50 scores
    detections against labels (one to one at IoU >= 0.5, same class, by decreasing score).
    Float detections scored ``BORDERLINE_CONF`` to 0.25 count as VOC's difficult objects
    (an INT8 box on one is neither found nor a false alarm), so scores that cross the
    threshold are no loss. The float model scored the same way gets 1.0.

    Attributes:
        images: held-out images read.
        float_boxes: reference boxes (the float model's detections).
        found: of those, found again by INT8 at IoU >= 0.5.
        ap50: AP50 of INT8 against the reference, over all classes together.
    """

    images: int
    float_boxes: int
    found: int
    ap50: float

    @property
    def compared(self) -> bool:
        """Whether there was anything to compare: held-out images read and the float model
        detecting something on them (with no reference box AP50 would call INT8's every
        low-score box a false alarm)."""
        return self.images > 0 and self.float_boxes > 0

    @property
    def loss(self) -> float:
        """Points lost against the float model: 100 * (1 - ap50); 0 when not ``compared``."""
        return 100 * (1 - self.ap50) if self.compared else 0.0

    def describe(self) -> str:
        if not self.compared:
            return (
                f"INT8 not checked: the float model detected nothing (score >= "
                f"{REFERENCE_CONF}) on the {self.images} held-out calibration images"
            )
        return (
            f"INT8 against float on {self.images} held-out calibration images: AP50 "
            f"{100 * self.ap50:.1f} with the float model's {self.float_boxes} detections "
            f"(score >= {REFERENCE_CONF}) as labels ({self.found} found again), "
            f"{self.loss:.1f} points lost (float: 100)"
        )


def split_holdout(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """(calibration, held out): every ``HOLDOUT_EVERY``-th image held out, none when fewer
    than ``HOLDOUT_EVERY`` images are given."""
    if len(paths) < HOLDOUT_EVERY:
        return list(paths), []
    held = set(range(HOLDOUT_EVERY - 1, len(paths), HOLDOUT_EVERY))
    return [p for i, p in enumerate(paths) if i not in held], [paths[i] for i in sorted(held)]


def check_held_out(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    paths: Sequence[str],
    *,
    letterbox: bool = True,
) -> HeldOutCheck:
    """Runs the float and the INT8 graph on ``paths`` (unreadable ones skipped) and scores
    INT8 against the float model's detections (``HeldOutCheck``)."""
    from torchvision.ops import box_iou

    from utils.inference.predictor import Detector, InferenceConfig

    reference = Detector.from_weights(
        fp32_path, config=InferenceConfig(letterbox=letterbox, conf_thresh=BORDERLINE_CONF)
    )
    quantized = Detector.from_weights(
        int8_path, config=InferenceConfig(letterbox=letterbox, conf_thresh=0.01)
    )
    images = float_boxes = 0
    scores, hits = [], []
    for path in paths:
        try:
            image = read_image(path)
        except ImageReadError as err:
            logger.warning("%s (not used to check INT8)", err)
            continue
        ref, got = reference(image), quantized(image)
        borderline = ref.scores < REFERENCE_CONF
        images, float_boxes = images + 1, float_boxes + int((~borderline).sum())
        iou = box_iou(_tensor(got.boxes), _tensor(ref.boxes)).numpy()
        iou[got.labels[:, None] != ref.labels[None, :]] = 0
        taken = np.zeros(len(ref), bool)
        for row, score in zip(iou, got.scores.tolist()):  # sorted by decreasing score
            row = np.where(taken, 0, row)
            if len(ref) and row.max() >= 0.5:
                taken[row.argmax()] = True
                if borderline[row.argmax()]:
                    continue  # as VOC's difficult objects: neither found nor a false alarm
                hits.append(True)
            else:
                hits.append(False)
            scores.append(score)
    hits_sorted = np.array(hits, bool)[np.argsort(-np.array(scores), kind="stable")]
    return HeldOutCheck(images, float_boxes, int(hits_sorted.sum()), _ap(hits_sorted, float_boxes))


def _ap(hits: np.ndarray, positives: int) -> float:
    """VOC12 (all-point) AP of detections in decreasing score order, ``hits`` marking the
    true ones; 1.0 when there is nothing to find and nothing was found."""
    if positives == 0:
        return 1.0 if not len(hits) else 0.0
    true = np.cumsum(hits)
    recall = np.concatenate([[0.0], true / positives])
    precision = np.concatenate([[1.0], true / np.arange(1, len(hits) + 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    return float(np.sum(np.diff(recall) * precision[1:]))


def _tensor(boxes: np.ndarray):
    import torch

    return torch.as_tensor(np.asarray(boxes, np.float32))


def check_as_dict(check: HeldOutCheck) -> dict:
    """What the export stores about the check in its metadata."""
    return {**asdict(check), "ap50": round(check.ap50, 4)}
