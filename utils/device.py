"""Device selection and CPU thread settings shared by the CLIs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import torch

from utils.config import option
from utils.errors import InputError


def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda`` or ``cuda:N``.

    Raises:
        ValueError: CUDA asked for but not available, or an unknown name.
    """
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine")
        return torch.device(name)
    raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, as under
    ``taskset`` or a container's CPU set), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def synchronize(device: torch.device) -> None:
    """Waits for queued GPU work so that host timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class DeviceOptions:
    """Where and in which number format a command computes: the ``--device`` and ``--amp``
    every command that runs the model takes (configs reuse them with ``utils.config.shared``)."""

    device: str = option("auto", "auto, cpu, cuda or cuda:N", group="model")
    amp: bool | None = option(
        False,
        "run the network in 16-bit (float16 on CUDA, bfloat16 on CPU, where it pays only with "
        "native bfloat16 instructions): faster; scores and boxes move in the last digits",
        group="model",
    )


@dataclass(frozen=True)
class ThreadConfig:
    """CPU threads of torch and OpenCV, one flag for ``predict.py`` and ``eval.py``."""

    threads: int | None = option(
        None,
        "CPU threads for the model (torch intra-op; predict.py gives an .onnx model's ONNX "
        "Runtime session as many) and for OpenCV; OpenCV gets 1 while images are decoded in "
        "parallel threads or loader processes (default: torch's own, one per physical core)",
        group="performance",
    )

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads {self.threads}: must be at least 1")


def configure_threads(threads: int | None, *, parallel_decode: bool) -> tuple[int, int]:
    """Sets torch's intra-op and OpenCV's thread counts; returns them ``(torch, opencv)``.

    torch keeps its default (one thread per physical core: the convolutions scale with
    cores, hyper-threads only add contention) unless ``threads`` is given. OpenCV gets 1 when
    ``parallel_decode`` (decoding already runs in several threads or processes, so OpenCV's
    own pool inside each would only oversubscribe the cores the model needs), else
    ``threads`` or its default.

    Raises:
        ValueError: ``threads`` below 1.
    """
    ThreadConfig(threads)  # checks the value
    if threads is not None:
        torch.set_num_threads(threads)
    if parallel_decode:
        cv2.setNumThreads(1)
    else:
        cv2.setNumThreads(threads if threads is not None else -1)  # -1: OpenCV's default
    return torch.get_num_threads(), cv2.getNumThreads()


# With an ONNX Runtime model, torch only runs the small pre- and post-processing ops; at more
# than one thread its OpenMP workers, woken for each of those ops, compete with ONNX Runtime's
# threads: measured 20.8 -> 18.6 ms end to end per image (INT8 export, 416, 2-core CPU).
TORCH_THREADS_BESIDE_ONNX = 1


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside the block, restored after.
    The setting is the process's: use it where no other thread runs torch ops meanwhile."""
    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
