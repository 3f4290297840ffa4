"""Checkpoints: ours (state dict + metadata), the reference implementation's bare state dicts,
and darknet ``.weights``, all behind ``load_model``.

Our checkpoint is a dict::

    {"format": "yolov4-tiny-attention", "version": 1, "model": state_dict, "phi": "cbam",
     "num_classes": 20, "class_names": [...], "anchors": [[w, h], ...],
     "anchors_mask": [[3, 4, 5], [1, 2, 3]], "input_size": 416,
     "attention_at": ["feat1", "feat2", "upsample"], "attention_args": {}, "config": {...}, ...}

``phi`` is the block's name (a plugin block is found by it once its module is imported). A
checkpoint without ``attention_at``/``attention_args`` (older ones) has the default points and
options.

Everything is read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nets.attention import (
    ATTENTION_POINTS,
    DEFAULT_POINTS,
    format_attention_args,
    parse_attention_args,
    parse_points,
)
from nets.darknet import load_darknet_weights
from nets.decode import REFERENCE_SCALE_X_Y, SCALE_X_Y, Geometry
from nets.registry import PLUGIN_PHI, attention_names, build_attention, resolve_phi
from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK, YoloBody
from utils.errors import InputError
from utils.paths import OutputPathError

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "yolov4-tiny-attention"
HEAD_BIAS_KEY = "yolo_headP5.1.bias"


class CheckpointMismatchError(InputError):
    """The file holds a different model (phi or class count) from the one asked for."""


@dataclass(frozen=True)
class ModelInfo:
    """What a weights file says about the model, or what was assumed for it.

    Immutable: sequences given as lists are stored as tuples; derive a changed copy with
    ``dataclasses.replace``.

    Attributes:
        phi: attention block number.
        phi_name: its registered name.
        num_classes: classes the head predicts.
        class_names: their names (None: not stored).
        anchors: (w, h) pairs in pixels at the network input.
        anchors_mask: per output level (stride 32 first), indices into ``anchors``.
        input_size: the input side the model was trained (or exported) at.
        source: "checkpoint", "state_dict", "darknet", "onnx", or what built it.
        attention_at: the points the block is applied at (``nets.attention.ATTENTION_POINTS``).
        attention_args: the block's options as sorted ``(name, value)`` pairs (a dict or an
            ``"name=value,..."`` string is converted); ``attention_options`` gives the dict.
        scale_x_y: the grid sensitivity the weights were trained with (stored in our
            checkpoints; 1.05 for darknet files, 1.0 for the reference implementation's).
    """

    phi: int
    phi_name: str
    num_classes: int
    class_names: tuple[str, ...] | None = None
    anchors: tuple[tuple[float, float], ...] = DEFAULT_ANCHORS
    anchors_mask: tuple[tuple[int, ...], ...] = DEFAULT_ANCHORS_MASK
    input_size: int = 416
    source: str = ""
    attention_at: tuple[str, ...] = DEFAULT_POINTS
    attention_args: tuple[tuple[str, Any], ...] = ()
    scale_x_y: float = SCALE_X_Y

    def __post_init__(self) -> None:
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "attention_at", parse_points(self.attention_at))
        args = self.attention_args
        args = parse_attention_args(args if isinstance(args, (str, dict)) else dict(args))
        object.__setattr__(self, "attention_args", tuple(sorted(args.items())))
        object.__setattr__(self, "anchors", tuple(tuple(a) for a in self.anchors))
        object.__setattr__(self, "anchors_mask", tuple(tuple(m) for m in self.anchors_mask))

    @property
    def geometry(self) -> Geometry:
        """Anchors, masks and input size as the one object decoding and the loss take."""
        return Geometry(
            anchors=self.anchors,
            anchors_mask=self.anchors_mask,
            input_size=self.input_size,
            scale_x_y=self.scale_x_y,
        )

    @property
    def attention_options(self) -> dict[str, Any]:
        """The block's options as the keyword arguments of its constructor."""
        return dict(self.attention_args)

    def describe(self) -> str:
        block = f"phi {self.phi} ({self.phi_name})"
        if self.phi == PLUGIN_PHI:
            block = f"plugin attention {self.phi_name!r}"
        if self.attention_at != DEFAULT_POINTS:
            block += f" at {','.join(self.attention_at) or 'no point'}"
        if self.attention_args:
            block += f" [{format_attention_args(self.attention_options)}]"
        return f"{block} with {self.num_classes} classes"


def save_checkpoint(
    path: str | os.PathLike, model: YoloBody, info: ModelInfo, **extra: Any
) -> None:
    """Writes our checkpoint format atomically (temp file + rename).

    Raises:
        OutputPathError: the write failed (disk full, permissions); no partial file is left
            and an older ``path`` is kept.
    """
    model = getattr(model, "module", model)  # unwrap DDP
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "model": model.state_dict(),
        "phi": model.phi_name,
        "num_classes": model.num_classes,
        "class_names": list(info.class_names or []),
        "anchors": [list(map(float, a)) for a in info.anchors],
        "anchors_mask": [list(m) for m in info.anchors_mask],
        "input_size": info.input_size,
        "scale_x_y": info.scale_x_y,
        "attention_at": list(getattr(model, "attention_at", DEFAULT_POINTS)),
        "attention_args": dict(getattr(model, "attention_args", {})),
        **extra,
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, tmp)
        os.replace(tmp, path)
    # torch's zip writer reports a full disk as a RuntimeError ("unexpected pos ...")
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        why = getattr(err, "strerror", None) or f"disk full or not writable? {str(err)[:120]}"
        raise OutputPathError(f"{path}: cannot write ({why})") from None


def infer_attention_at(state_dict: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The points a state dict has attention blocks at (``<point>_att.*`` keys); the default
    points when it has none (phi 0)."""
    points = tuple(
        p for p in ATTENTION_POINTS if any(k.startswith(f"{p}_att.") for k in state_dict)
    )
    return points or DEFAULT_POINTS


def infer_phi(state_dict: dict[str, torch.Tensor]) -> int:
    """Which numbered attention block a state dict holds, from the keys of its first attention
    point (``upsample_att.*`` in the reference implementation's files)."""
    present = [p for p in ATTENTION_POINTS if any(k.startswith(f"{p}_att.") for k in state_dict)]
    if not present:
        return 0
    point = "upsample" if "upsample" in present else present[0]
    keys = {k.split(".", 1)[1] for k in state_dict if k.startswith(f"{point}_att.")}
    channels = ATTENTION_POINTS[point]
    for phi in range(len(attention_names())):
        block = build_attention(phi, channels)
        if block is not None and set(block.state_dict()) == keys:
            return phi
    raise CheckpointMismatchError(f"unrecognised attention keys {sorted(keys)}")


def infer_num_classes(
    state_dict: dict[str, torch.Tensor], num_anchors: int = 3, source: str = "state dict"
) -> int:
    if HEAD_BIAS_KEY not in state_dict:
        raise CheckpointMismatchError(
            f"{source}: no {HEAD_BIAS_KEY!r}: not a YOLOv4-tiny state dict"
        )
    return state_dict[HEAD_BIAS_KEY].shape[0] // num_anchors - 5


def load_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with every failure turned into one
    line that names the file and says what is wrong with it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty, truncated or corrupt, not a PyTorch file, or holding Python objects
            (which are never loaded: unpickling them can run code).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: empty file, not a PyTorch checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and weights-only errors all land here
        problem = _load_problem(err)
        raise InputError(f"{path}: cannot read as a PyTorch checkpoint: {problem}") from None


def _load_problem(err: Exception) -> str:
    """What a ``torch.load`` failure means, in a few words (torch's own message can advise
    loading with ``weights_only=False``, which would run whatever code the file holds)."""
    text = str(err)
    if "Unsupported global" in text or "unsupported GLOBAL" in text:
        return "it stores Python objects besides tensors, which are not loaded (unsafe)"
    if "zip archive" in text or "central directory" in text or isinstance(err, EOFError):
        return "the file is truncated or corrupt"
    first_line = text.split("\n", 1)[0]
    # the legacy unpickler reads a text file's first byte as a key: "KeyError: 101" says nothing
    meaningful = len(first_line) >= 12 and not isinstance(err, KeyError)
    if meaningful and "Weights only load failed" not in first_line and "weights_only" not in text:
        return first_line
    return "not a PyTorch file (wrong format, or random bytes)"


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelInfo]:
    """Reads ours or a reference-implementation ``.pth``: ``(state_dict, info)``."""
    return checkpoint_contents(load_torch_file(path), str(path))


def checkpoint_contents(obj: Any, path: str) -> tuple[dict[str, torch.Tensor], ModelInfo]:
    """``read_checkpoint`` of what ``load_torch_file(path)`` returned, for a caller that also
    needs the rest of the file (such as a training checkpoint's stored config)."""
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        phi, phi_name = _resolve_stored_phi(path, obj["phi"])
        info = ModelInfo(
            phi=phi,
            phi_name=phi_name,
            num_classes=int(obj["num_classes"]),
            class_names=obj.get("class_names") or None,
            anchors=obj.get("anchors", DEFAULT_ANCHORS),
            anchors_mask=obj.get("anchors_mask", DEFAULT_ANCHORS_MASK),
            input_size=int(obj.get("input_size", 416)),
            source="checkpoint",
            attention_at=obj.get("attention_at", DEFAULT_POINTS),
            attention_args=obj.get("attention_args") or {},
            # checkpoints written before the factor was stored were all trained with darknet's
            scale_x_y=float(obj.get("scale_x_y", SCALE_X_Y)),
        )
        return obj["model"], info
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a training checkpoint of another layout: take its weights
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: neither our checkpoint nor a state dict")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}  # saved from DataParallel
    phi = infer_phi(obj)
    info = ModelInfo(
        phi=phi,
        phi_name=attention_names()[phi],
        num_classes=infer_num_classes(obj, source=path),
        source="state_dict",
        attention_at=infer_attention_at(obj),
        # a bare state dict is the reference implementation's format, trained without grid
        # sensitivity
        scale_x_y=REFERENCE_SCALE_X_Y,
    )
    return obj, info


def _resolve_stored_phi(path: str, stored: int | str) -> tuple[int, str]:
    """The stored block name (or number, in older files) as ``(number, name)``.

    Raises:
        ValueError: the block is not registered, saying to import the plugin that registers it.
    """
    try:
        return resolve_phi(stored)
    except ValueError:
        raise InputError(
            f"{path} uses the attention block {stored!r}, which is not registered: if it comes "
            "from a plugin, pass --attention-plugin MODULE (the module that registers it) "
            "or call nets.registry.load_attention_plugins first"
        ) from None


def check_request(path: str, info: ModelInfo, phi: int | str | None, num_classes: int | None):
    """Raises CheckpointMismatchError when ``path`` (described by ``info``) holds another
    attention block or class count than asked for (None: whatever it holds)."""
    want_phi, want_name = resolve_phi(phi) if phi is not None else (info.phi, info.phi_name)
    want_nc = num_classes if num_classes is not None else info.num_classes
    if (want_name, want_nc) != (info.phi_name, info.num_classes):
        asked = f"phi {want_phi} ({want_name}) with {want_nc} classes"
        raise CheckpointMismatchError(
            f"{path} contains {info.describe()}, but {asked} was asked for"
        )


def load_model(
    path: str | os.PathLike, phi: int | str | None = None, num_classes: int | None = None
) -> tuple[YoloBody, ModelInfo]:
    """Builds the model a weights file describes and loads it.

    Args:
        path: ``.weights`` (darknet), or ``.pth``/``.pt`` (ours or a reference state dict).
        phi: required attention; None takes the file's (darknet files: 0).
        num_classes: required class count; None takes the file's.

    A darknet file holds phi 0 with the class count its size implies: asking for another phi
    or class count is an error too (those layers would be random). To fine-tune from it, pass
    it to ``train.py --weights``, which loads what fits and reports the rest.

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: the file holds a different phi or class count, or its
            tensors do not make the model it says it holds (missing, unknown, misshapen).
    """
    path = str(path)
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not a weights file")
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "no such weights file", path)
    if path.endswith(".weights"):
        phi_num, phi_name = resolve_phi(phi if phi is not None else 0)
        model = YoloBody(num_classes or 80, phi_num)
        report = load_darknet_weights(model, path)
        if report.skipped:
            raise CheckpointMismatchError(
                f"{path} contains phi 0 (none) with {report.file_num_classes} classes, but phi "
                f"{phi_num} ({phi_name}) with {model.num_classes} classes was asked for: "
                f"{', '.join(report.skipped)} would be random. Fine-tune from it with "
                "train.py --weights instead."
            )
        logger.info(report.summary())
        info = ModelInfo(
            phi=phi_num, phi_name=phi_name, num_classes=model.num_classes, source="darknet"
        )
        return model, info
    state_dict, info = read_checkpoint(path)
    check_request(path, info, phi, num_classes)
    model = YoloBody(
        info.num_classes,
        info.phi_name,
        attention_at=info.attention_at,
        attention_args=info.attention_options,
    )
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [
            f"{len(keys)} {what} (first: {keys[0]})"
            for keys, what in (
                (missing, "tensors missing"),
                (unexpected, "unknown tensors"),
                (wrong, "tensors of another shape"),
            )
            if keys
        ]
        raise CheckpointMismatchError(
            f"{path}: does not match the {info.describe()} it says it holds: "
            f"{'; '.join(parts)} (damaged or edited file?)"
        )
    model.load_state_dict(state_dict, strict=True)
    return model, info


@dataclass
class PartialLoadReport:
    loaded: list[str]
    missing: list[str]  # in the model, not in the file
    mismatched: dict[str, str]  # same name, different shape
    unexpected: list[str]  # in the file, not in the model

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors; {len(self.missing)} missing, "
            f"{len(self.mismatched)} with other shapes, "
            f"{len(self.unexpected)} unused"
        )


def load_matching(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> PartialLoadReport:
    """Loads every tensor whose name and shape match; reports the rest (for fine-tuning)."""
    own = model.state_dict()
    matched = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    mismatched = {
        k: f"file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    }
    model.load_state_dict(matched, strict=False)
    return PartialLoadReport(
        loaded=sorted(matched),
        missing=sorted(set(own) - set(state_dict)),
        mismatched=mismatched,
        unexpected=sorted(set(state_dict) - set(own)),
    )
