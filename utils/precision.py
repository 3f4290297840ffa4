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

import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.errors import InputError
from utils.paths import write_text_atomic

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


# --------------------------------------------------------------------------- the --amp hint

AMP_CACHE_FILE = "amp_speedup.json"  # under amp_cache_dir(): measured speed-ups by model
AMP_HINT_MIN_SPEEDUP = 1.1  # below this --amp is not worth a line (small inputs: often slower)
# a measurement is kept only below this 1-minute load average per CPU: other jobs' threads
# skew float32 and bfloat16 unequally (one cached under load read 0.85x where quiet gave 1.6x)
QUIET_LOAD_PER_CPU = 0.5
# YOLO_AMP_HINT=0 turns the line and its measurement off (scripts, test suites)
AMP_HINT_ENV = "YOLO_AMP_HINT"


def busy_load() -> float | None:
    """The 1-minute load average when other work keeps this machine busy (at least
    ``QUIET_LOAD_PER_CPU`` per CPU), else None (also where it cannot be read)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return load if load >= QUIET_LOAD_PER_CPU * (os.cpu_count() or 1) else None


def amp_cache_dir() -> Path:
    """Where measured ``--amp`` speed-ups are kept between runs: ``$XDG_CACHE_HOME`` (else
    ``~/.cache``) ``/yolov4-tiny-attention``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "yolov4-tiny-attention"


def measure_amp_speedup(
    forward: Callable[[torch.Tensor], object], example: torch.Tensor, runs: int = 7
) -> float:
    """How many times faster ``forward(example)`` runs under CPU bfloat16 autocast than in
    float32: the median over ``runs`` back-to-back pairs (float32 then bfloat16) of the ratio
    of their times, after two untimed calls of each (oneDNN builds its kernels on the first).
    Pairs see the same load from other jobs, so a busy machine shifts both alike."""
    cpu = torch.device("cpu")

    def seconds(dtype: torch.dtype | None) -> float:
        start = time.perf_counter()
        with autocast(cpu, dtype):
            forward(example)
        return time.perf_counter() - start

    with torch.inference_mode():
        for _ in range(2):
            seconds(None), seconds(torch.bfloat16)
        ratios = [seconds(None) / seconds(torch.bfloat16) for _ in range(runs)]
    return statistics.median(ratios)


def amp_hint(
    forward: Callable[[torch.Tensor], object],
    example: torch.Tensor,
    key: str,
    *,
    native: bool | None = None,
    cache_dir: Path | None = None,
) -> str | None:
    """The one line ``predict.py`` and ``eval.py`` print when they run float32 on a CPU with
    native bfloat16 (``native``; None: ``cpu_has_native_bf16()``): ``--amp`` is available and
    how much faster the forward pass measured with it; None on other CPUs, and where it
    measured less than ``AMP_HINT_MIN_SPEEDUP`` times faster (at 64-224 px inputs bfloat16 was
    often slower on a 2-core EPYC: too little work per layer).

    The speed-up is measured once per ``key`` (the model and input size), CPU and torch version
    (18 forward passes: 0.35-0.6 s for YOLOv4-tiny at 416 on a quiet 2-core EPYC, 2-4 s when
    other jobs share it) and kept in ``cache_dir`` (default ``amp_cache_dir()``); later runs read it
    back at no cost. A measurement taken while the machine is busy (``busy_load``) is shown but
    not kept. ``YOLO_AMP_HINT=0`` in the environment turns the line and its measurement off.
    A cache that cannot be read or written only costs the measurement again.
    """
    if os.environ.get(AMP_HINT_ENV) == "0":
        return None
    if not (cpu_has_native_bf16() if native is None else native):
        return None
    path = (cache_dir or amp_cache_dir()) / AMP_CACHE_FILE
    entry = amp_cache_entry(key)
    try:
        cache = json.loads(path.read_text())
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}
    speedup = cache.get(entry)
    if isinstance(speedup, (int, float)) and speedup > 0:
        how = f"measured earlier on this CPU, cached in {path}"
    else:
        start = time.perf_counter()
        speedup = measure_amp_speedup(forward, example)
        how = f"measured now in {time.perf_counter() - start:.1f} s"
        if (load := busy_load()) is not None:  # measured again next time, when it may be quiet
            how += f" while the load average was {load:.1f}: not cached"
        else:
            cache[entry] = round(speedup, 3)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps(cache, indent=1))
                how += f", cached in {path}"
            except OSError:
                pass
    return amp_hint_text(speedup, how) if speedup >= AMP_HINT_MIN_SPEEDUP else None


def amp_cache_entry(key: str) -> str:
    """The cache entry of ``amp_hint``'s measurement for ``key`` on this CPU and torch."""
    return f"{_cpu_name()} | torch {torch.__version__} | {key}"


def amp_hint_text(speedup: float, how: str) -> str:
    """``amp_hint``'s line for a measured ``speedup`` (float32 time / bfloat16 time)."""
    return (
        f"note: --amp is available: this CPU has native bfloat16, and the forward pass ran "
        f"{speedup:.2f}x faster with it ({how}); boxes and scores then move in the last digits"
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"
