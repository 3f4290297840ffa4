"""Class-name and anchor files."""

from __future__ import annotations

import math
import os
import unicodedata

from utils.errors import InputError
from utils.textfile import read_user_text

# a names file is a short list: anything larger is not one (and is not read into memory)
MAX_NAMES_FILE_BYTES = 16 * 1024 * 1024


def class_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a class name, or None.

    A class name is written one per line (classes files, converted labels) and read back the
    same way, so it must be a non-blank string without line breaks or other control characters:
    such a name would come back as two names, or none, and shift every label after it.
    """
    if not isinstance(name, str):
        return f"is not a string ({type(name).__name__})"
    if not name.strip():
        return "is blank"
    if any(c == "\ufeff" or unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        return "contains a line break or control character"
    if any(unicodedata.category(c) == "Cs" for c in name):  # from JSON escapes: not UTF-8
        return "contains a lone surrogate (not text UTF-8 can hold)"
    return None


def read_class_names(path: str | os.PathLike) -> list[str]:
    """One class name per line (a leading UTF-8 byte-order mark is not part of the first);
    blank lines before the first name and after the last ignored, names stripped.

    Raises:
        FileNotFoundError: no such file.
        InputError: the path is a folder, the file cannot be read, is larger than
            ``MAX_NAMES_FILE_BYTES``, is not UTF-8 text, is empty, has a blank line between
            two names (the line is a class id: dropping it would shift every id after it), or
            repeats a name or holds one with control characters (the message names the file
            and the line).
    """
    text = read_user_text(path, "classes file", MAX_NAMES_FILE_BYTES)
    names: list[str] = []
    first_line: dict[str, int] = {}
    blank = 0  # the first blank line after a name, until another name follows
    # only \n, \r\n and \r end a line, as when the file is iterated by lines
    for n, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        name = line.strip()
        if not name:
            blank = blank or (n if names else 0)
            continue
        if blank:
            raise InputError(
                f"{path}:{blank}: blank line between class names (each line is a class id: "
                "the ids after it would shift); remove it"
            )
        if (problem := class_name_problem(name)) is not None:
            raise InputError(f"{path}:{n}: class name {name[:60]!r} {problem}")
        if name in first_line:
            raise InputError(f"{path}:{n}: class {name[:60]!r} repeats line {first_line[name]}")
        first_line[name] = n
        names.append(name)
    if not names:
        raise InputError(f"classes file is empty: {path}")
    return names


def read_anchors(path: str | os.PathLike, *, count: int | None = None) -> list[tuple[float, float]]:
    """Anchors as ``w,h, w,h, ...`` (commas and/or whitespace) in pixels at the input size.

    Args:
        path: the anchors file.
        count: how many anchors the model uses (6 for YOLOv4-tiny); None: any number.

    Raises:
        FileNotFoundError / ValueError: a missing file, or one that is not text, holds a
            non-number, an odd count of numbers, a width or height that is not finite and
            > 0 (a zero or negative anchor trains with no box loss and decodes boxes with
            negative sides), or not ``count`` anchors; the message names the file and value.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"anchors file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().replace(",", " ").split()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file of anchors (w,h pairs)") from None
    values = []
    for token in text:
        try:
            values.append(float(token))
        except ValueError:
            raise InputError(f"{path}: anchors must be numbers, got {token[:40]!r}") from None
    if len(values) % 2 or not values:
        raise InputError(
            f"{path}: expected an even count of numbers (w,h pairs), got {len(values)}"
        )
    anchors = [(values[i], values[i + 1]) for i in range(0, len(values), 2)]
    for i, pair in enumerate(anchors):
        for side, value in zip(("width", "height"), pair):
            if not (math.isfinite(value) and value > 0):
                raise InputError(
                    f"{path}: anchor {i + 1} has {side} {value:g}; anchor sides are pixels, "
                    "finite and > 0"
                )
    if count is not None and len(anchors) != count:
        raise InputError(f"{path}: {len(anchors)} anchors, but the model uses {count}")
    return anchors
