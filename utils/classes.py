"""Class-name and anchor files."""

from __future__ import annotations

import os


def read_class_names(path: str | os.PathLike) -> list[str]:
    """One class name per line; blank lines ignored.

    Raises:
        FileNotFoundError / ValueError: missing or empty file (the message names it).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"classes file not found: {path}")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"classes file is empty: {path}")
    return names


def read_anchors(path: str | os.PathLike) -> list[tuple[float, float]]:
    """Anchors as ``w,h, w,h, ...`` (commas and/or whitespace) in pixels at the input size."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"anchors file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read().replace(",", " ").split()
    try:
        values = [float(v) for v in text]
    except ValueError as err:
        raise ValueError(f"{path}: anchors must be numbers ({err})") from err
    if len(values) % 2 or not values:
        raise ValueError(
            f"{path}: expected an even count of numbers (w,h pairs), got {len(values)}"
        )
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]
