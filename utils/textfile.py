"""Reading a user's small text file (class names, image lists, label files, YAML, JSON)."""

from __future__ import annotations

import os

from utils.errors import InputError


def read_user_text(
    path: str | os.PathLike,
    what: str,
    max_bytes: int | None = None,
    error: type[InputError] = InputError,
) -> str:
    """A user's text file as a string: UTF-8, a leading byte-order mark dropped (editors on
    Windows write one, and it would become part of the first name, id or path).

    Args:
        what: what the file is, for messages ("classes file", "image list", ...).
        max_bytes: refuse larger files (None: any size); a limit also keeps a wrong path to a
            huge file from being read into memory.
        error: the ``InputError`` subclass raised for a file that cannot be used.

    Raises:
        FileNotFoundError: no such file.
        error: the path is a folder, or the file cannot be read, is too large or is not UTF-8
            text (the message names the file).
    """
    if os.path.isdir(path):
        raise error(f"{path}: is a folder, not a {what}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        with open(path, "rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as err:
        raise error(f"{path}: {what} cannot be read ({err.strerror or err})") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise error(f"{path}: {what} cannot be read: larger than {max_bytes} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(
            f"{path}: {what} cannot be read: not UTF-8 text (byte {err.start}: {err.reason})"
        ) from None
