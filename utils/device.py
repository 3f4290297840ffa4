"""Device selection shared by the CLIs."""

from __future__ import annotations

import torch


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
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def synchronize(device: torch.device) -> None:
    """Waits for queued GPU work so that host timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
