"""Reading and running an ONNX export: its stored metadata and an ONNX Runtime runner.

``onnx_metadata`` returns what the export stored about its model (phi, class names, anchors,
input size, INT8 settings). ``OnnxRunner`` runs a raw-map graph with the same call contract as
the model: a (B, 3, S, S) tensor in, raw maps out. ``utils.inference.export`` writes the files.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from utils.errors import InputError

# the metadata_props entry an export stores its model description under (JSON)
METADATA_KEY = "yolov4_tiny_attention"


def _check_onnx_file(path: str) -> None:
    """Raises FileNotFoundError or ValueError (one line naming ``path``) for a missing or
    empty file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: empty file, not an ONNX model")


def onnx_metadata(path: str | os.PathLike) -> dict:
    """What the export stored about the model (phi, classes, anchors, input size), or {}.

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


def _physical_cores() -> int:
    """Physical cores of the CPUs this process may use (ORT's default intra-op thread count),
    from ``/proc/cpuinfo`` where it has core ids, else the usable CPU count."""
    from utils.device import available_cpus

    cpus = available_cpus()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return cpus
    cores, physical = set(), ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "physical id":
            physical = value
        elif key == "core id":
            cores.add((physical, value))
    return min(cpus, len(cores)) if cores else cpus


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
        # the intra-op threads ORT runs (its default: one per physical core)
        self.threads = threads or _physical_cores()
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
                " (export without --decode for the onnxruntime backend)"
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
