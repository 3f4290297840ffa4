"""Where the project's files live, spelled once.

``model_data`` paths are absolute (found from this file), so the library works from any working
directory; ``VOC_ROOT`` is relative, a default the user reads in ``--help``.

Outputs: ``check_output_path`` tells before a run whether a file or folder can be written, and
``write_text_atomic``/``write_bytes_atomic`` write through a temporary file and a rename; both
fail with an ``OutputPathError`` whose message is one line naming the path.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2

from utils.config import option
from utils.errors import BAD_INPUT, InputError, WriteError

ROOT = Path(__file__).resolve().parents[1]
MODEL_DATA = ROOT / "model_data"
OFFICIAL_WEIGHTS = MODEL_DATA / "yolov4-tiny.weights"  # darknet COCO weights (`make weights`)
OFFICIAL_CFG = MODEL_DATA / "yolov4-tiny.cfg"
COCO_CLASSES = MODEL_DATA / "coco.names"
VOC_CLASSES = MODEL_DATA / "voc_classes.txt"
SAMPLES = MODEL_DATA / "samples"  # bus.jpg and zidane.jpg (`make weights`)

VOC_ROOT = "data/VOCdevkit"  # where tools.download_voc puts Pascal VOC


@dataclass(frozen=True)
class SaveDirOptions:
    """The results folder of a run of ``predict.py`` or ``eval.py``: the flags both take (each
    gives its own default folder)."""

    save_dir: str = option(
        "logs/run",
        "results folder, numbered (DIR2, ...) if it exists; never an input's folder or one "
        "inside it",
        group="output",
        metavar="DIR",
    )
    exist_ok: bool = option(
        False,
        "write into --save-dir even if it exists (still never into an input)",
        group="output",
    )


def check_save_dir(
    asked: str | os.PathLike, numbered: str | os.PathLike, inputs: Sequence[object]
) -> None:
    """Refuses, before any work, a results folder that lies on an input or cannot be made:
    ``--save-dir`` as asked and the numbered folder it became. An input asked for is refused,
    not replaced by a numbered sibling, and a file where the folder was asked for is an error,
    not a reason to number it.

    Raises:
        OutputRefusedError: naming ``--save-dir`` and the path.
    """
    folders = list(dict.fromkeys([Path(asked), Path(numbered)]))
    for folder in folders:
        check_apart(folder, inputs, flag="--save-dir")
    for folder in folders:
        check_output_path(folder, folder=True)


class OutputPathError(WriteError):
    """An output that cannot be written; ``str(err)`` is one line that names the path."""


class OutputRefusedError(OutputPathError):
    """An output refused before any work: it cannot be created, or it would land on one of
    the command's inputs or replace files without leave. Bad input (exit 2), unlike a write
    that fails during the work (exit 1)."""

    exit_code = BAD_INPUT


def check_output_path(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Checks, before any work starts, that ``path`` can be written; creates and changes
    nothing.

    A file target must not be a folder or a device, pipe or socket (a rename would replace
    the node itself), and its folder (or the nearest existing one above it,
    where the rest will be created) must accept new files: outputs are written through a
    temporary file next to the target. A ``folder`` target must be a folder, or be creatable.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OutputRefusedError: the path cannot be written (the message names it and says why).
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise OutputRefusedError(f"{path}: exists and is not a folder")
    if not folder and path.is_dir():
        raise OutputRefusedError(f"{path}: is a folder; give a file name")
    if not folder and path.exists() and not path.is_file():
        raise OutputRefusedError(f"{path}: is not a regular file (a device, pipe or socket)")
    parent = path if folder else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputRefusedError(f"{path}: cannot be created, {parent} is not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise OutputRefusedError(
            f"{path}: cannot write in {parent} ({err.strerror or err})"
        ) from None
    return path


def write_failure(err: OSError, path: str | os.PathLike) -> OutputPathError:
    """``err``, raised while writing ``path`` (or a file in it), as one line naming the file."""
    if isinstance(err, OutputPathError):
        return err
    return OutputPathError(f"{err.filename or path}: cannot write ({err.strerror or err})")


def write_bytes_atomic(path: str | os.PathLike, payload: bytes) -> Path:
    """Writes ``payload`` through a temporary file next to ``path`` and a rename, so that the
    file is never seen half-written; missing folders are created.

    Raises:
        OutputPathError: the write failed (disk full, permissions, a folder in the way); the
            temporary file is removed and an older ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if path.exists() and not path.is_file() and not path.is_dir():
        raise OutputPathError(f"{path}: is not a regular file (a device, pipe or socket)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputPathError(f"{path}: cannot write ({err.strerror or err})") from None
    return path


def _no_image_writer(path: Path) -> OutputPathError:
    return OutputPathError(f"{path}: cannot write {path.suffix or 'no'} images (.jpg or .png)")


def check_image_path(path: str | os.PathLike) -> Path:
    """``check_output_path`` for an image file, whose suffix must name a format OpenCV writes.

    Raises:
        OutputRefusedError: as ``check_output_path``, or a suffix OpenCV cannot encode.
    """
    path = check_output_path(path)
    if not cv2.haveImageWriter(str(path)):
        raise OutputRefusedError(str(_no_image_writer(path)))  # before any work: exit 2
    return path


def write_image_atomic(path: str | os.PathLike, image) -> Path:
    """Encodes ``image`` (BGR uint8) in the format of ``path``'s suffix and writes it as
    ``write_bytes_atomic`` does.

    Raises:
        OutputPathError: an unknown suffix, or the write failed.
    """
    path = Path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix, image)
    except cv2.error:
        ok = False
    if not ok:
        raise _no_image_writer(path)
    return write_bytes_atomic(path, encoded.tobytes())


def save_figure_atomic(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """A matplotlib figure as a PNG, written as ``write_bytes_atomic`` does (a full disk
    leaves no empty or half-written picture behind).

    Raises:
        OutputPathError: the write failed.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return write_bytes_atomic(path, buffer.getvalue())


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``write_bytes_atomic`` of ``text`` in UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))


# Characters that never go into a path component made from data: separators of every
# platform, NUL and other control characters, and the characters Windows refuses.
_UNSAFE_CHARS = frozenset('/\\:*?"<>|') | {chr(c) for c in range(32)} | {chr(127)}
# names Windows reserves for devices, whatever the extension
_RESERVED_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{d}{i}" for d in ("COM", "LPT") for i in range(1, 10)]
)
_MAX_COMPONENT_BYTES = 200  # well under the 255-byte limit of common file systems


def safe_component(name: str, *, fallback: str = "_") -> str:
    """``name`` (a class name, a COCO ``file_name`` stem, a run name) as one path component
    that stays inside the folder it is joined to.

    Separators, NUL and other control characters and the characters Windows refuses become
    ``_``; leading and trailing spaces and dots are dropped, so ``..``, ``.`` and hidden names
    cannot result; an empty result is ``fallback``; the result is cut to 200 UTF-8 bytes. A
    name that is already safe comes back unchanged, so the mapping is the identity on
    ordinary names. Keep the original name in the file's content: two names may map to one
    component (``unique_components`` tells them apart).
    """
    text = "".join("_" if ch in _UNSAFE_CHARS else ch for ch in str(name))
    text = text.strip(" .")
    if text.split(".")[0].upper() in _RESERVED_NAMES:
        text = "_" + text
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) > _MAX_COMPONENT_BYTES:
        text = encoded[:_MAX_COMPONENT_BYTES].decode("utf-8", "ignore").rstrip(" .")
    return text or fallback


def unique_components(names: list[str] | tuple[str, ...]) -> list[str]:
    """``safe_component`` of each name, with ``-2``, ``-3``... appended where two different
    names would share one component (compared without case, as on macOS and Windows)."""
    taken: set[str] = set()
    out = []
    for name in names:
        base = safe_component(name)
        candidate, n = base, 2
        while candidate.casefold() in taken:
            candidate, n = f"{base}-{n}", n + 1
        taken.add(candidate.casefold())
        out.append(candidate)
    return out


def require_component(name: str, flag: str) -> str:
    """``name``, given by ``flag``, when it is one safe path component; else ValueError naming
    the flag and what to give instead (a flag is refused, not rewritten: the user sees where
    the output goes)."""
    if safe_component(name, fallback="") != name or not name:
        suggestion = safe_component(name)
        raise InputError(
            f"{flag} {name!r}: must be one folder name (no '/', '\\', '..', leading dots, "
            f"control characters or absolute paths); e.g. {suggestion!r}"
        )
    return name


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path)).resolve()


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_apart(
    output: str | os.PathLike,
    inputs: list[str | os.PathLike] | tuple[str | os.PathLike, ...],
    *,
    flag: str,
    folder: bool = True,
) -> None:
    """Refuses, before any work, an output that could land on one of the command's inputs.

    A ``folder`` output (one the command fills with names it makes up) must not be an input,
    contain one, or lie inside an input folder. A file output (one name the user chose) must
    not be an input file (also through a link), nor an existing file inside an input folder
    (it may be one of the files read from there); a new file name there cannot collide and is
    allowed. Paths are compared after resolving links; inputs that do not exist are skipped.
    ``--exist-ok`` and the like do not change this.

    Raises:
        OutputRefusedError: naming the flag, both paths and what to do instead.
    """
    out = _resolved(output)
    for given in inputs:
        if given is None or str(given) == "" or not os.path.exists(given):
            continue
        src = _resolved(given)
        clash = ""
        if out == src or (out.exists() and os.path.samefile(out, src)):
            clash = "is the input"
        elif _within(out, src) and (folder or out.exists()):
            clash = "lies inside the input"
        elif folder and _within(src, out):
            clash = "contains the input"
        if clash:
            raise OutputRefusedError(
                f"{flag} {output}: {clash} {given}; outputs never go into the command's "
                "inputs, choose another location"
            )


def check_outputs_distinct(outputs: list[tuple[str, str | os.PathLike | None, bool]]) -> None:
    """Refuses, before any work, two outputs of one command that would land on each other:
    the same path named twice, or an output inside another that is a file. Each entry is
    ``(flag, path, folder)``; None paths are skipped. A file inside an output folder is
    allowed (``--save-dir out --json out/dets.json``): the folder's own names are made up.

    Raises:
        OutputRefusedError: naming both flags and the path.
    """
    given = [(flag, path, _resolved(path), folder) for flag, path, folder in outputs if path]
    for k, (flag, path, resolved, folder) in enumerate(given):
        for other_flag, other_path, other, other_folder in given[k + 1 :]:
            if resolved == other:
                clash = f"{flag} {path} and {other_flag} {other_path} name one path"
            elif not other_folder and other in resolved.parents:
                clash = f"{flag} {path} lies inside the file {other_flag} {other_path}"
            elif not folder and resolved in other.parents:
                clash = f"{other_flag} {other_path} lies inside the file {flag} {path}"
            else:
                continue
            raise OutputRefusedError(f"{clash}; give each output its own location")
