"""Which number format the training step and inference compute in.

Mixed precision runs the convolutions (forward and backward) in a 16-bit format under
``torch.autocast`` while the weights, the optimizer, the EMA and the loss stay float32:

- CUDA: float16, with a gradient scaler against underflow; on with ``--amp``.
- CPU: bfloat16 (float32's exponent range, so no scaler). oneDNN's bfloat16 convolutions
  beat float32 only on CPUs with native bfloat16 dot products (AVX512-BF16 or AMX); elsewhere
  it emulates them. So the default turns it on exactly where those instructions exist. The
  convolutions are about three quarters of a CPU training step at 416 px, so this is the
  largest lever there (``python -m benchmarks.train`` measures it).

Inference (``predict.py``, ``eval.py``) stays float32 unless ``--amp`` is given: its outputs
then differ from the float32 ones in the last digits, which would make mAP figures depend on
the machine.
"""

from __future__ import annotations

import os
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from utils.errors import InputError

AMP_TORCH_ONLY = "--amp runs the torch backend (an ONNX graph keeps its own format)"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


@dataclass(frozen=True)
class Precision:
    """The training step's autocast format (None: float32 throughout) and why."""

    dtype: torch.dtype | None
    reason: str
    warning: str = ""  # an explicit choice that is likely slower than the default

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def describe(self) -> str:
        if self.dtype is None:
            return f"precision: float32 ({self.reason})"
        return f"precision: {self.name} autocast, float32 weights ({self.reason})"


def resolve_precision(amp: bool | None, device: torch.device) -> Precision:
    """The step's format for ``--amp`` (None = decide from the machine) on ``device``."""
    if device.type == "cuda":
        if amp:
            return Precision(torch.float16, "--amp on CUDA")
        return Precision(
            None, "--no-amp" if amp is False else "the CUDA default; --amp for float16"
        )
    if amp is False:
        return Precision(None, "--no-amp")
    native = cpu_has_native_bf16()
    if amp is None:
        if native:
            why = "this CPU has native bfloat16 instructions; --no-amp for float32"
            return Precision(torch.bfloat16, why)
        return Precision(None, "this CPU has no native bfloat16 instructions; --amp to force")
    if native:
        return Precision(torch.bfloat16, "--amp")
    warning = (
        "--amp on a CPU without native bfloat16 instructions: oneDNN emulates them, which is "
        "usually slower than float32"
    )
    return Precision(torch.bfloat16, "--amp", warning)


def inference_precision(amp: bool, device: torch.device) -> Precision:
    """The forward pass's format for ``predict.py`` / ``eval.py`` ``--amp`` on ``device``:
    float32 unless asked, then as training's ``--amp`` (float16 on CUDA, bfloat16 on CPU)."""
    if not amp:
        return Precision(None, "the inference default; --amp for 16-bit")
    return resolve_precision(True, device)


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op for None (float32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def check_compiler() -> None:
    """``torch.compile``'s inductor backend writes C++ (CPU) or Triton (CUDA) kernels and
    builds them with the system's C++ compiler; without one the first step would fail deep
    inside the compiler stack, so say it before the run starts.

    Raises:
        ValueError: no C++ compiler on PATH (``$CXX``, c++, g++ or clang++).
    """
    names = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    if not any(name and shutil.which(name) for name in names):
        raise InputError(
            "--compile needs a C++ compiler for torch.compile's inductor backend and none was "
            "found ($CXX, c++, g++ or clang++ on PATH); install one (e.g. apt install g++) or "
            "train without --compile"
        )
