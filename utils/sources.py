"""Inference inputs: one image, a folder, a glob, a video file or a webcam index.

Reading never crashes the caller on one bad file: ``read_image`` raises ``ImageReadError``
with a one-line message that names the file, and the caller decides to skip it.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from utils.errors import InputError, UserError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".wmv", ".mpg", ".mpeg", ".webm"}


class ImageReadError(UserError, OSError):
    """An image that cannot be used; ``str(err)`` is ``'<path>: <problem>'``."""


class SourceError(InputError):
    """A ``--source`` that does not exist or holds nothing to process."""


@dataclass
class Source:
    """A resolved ``--source``: image files, video files, or a webcam index."""

    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    webcam: int | None = None


def read_image(path: str | os.PathLike, apply_exif: bool = True) -> np.ndarray:
    """Reads any image OpenCV decodes as 8-bit BGR (grey, alpha and 16-bit are converted).

    ``apply_exif`` rotates by the EXIF orientation, as a photo viewer shows it; annotated
    datasets pass False, because their boxes refer to the pixels as stored.

    Raises:
        ImageReadError: missing, empty, undecodable or truncated (JPEG without end marker).
    """
    path = str(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read file ({err.strerror or err})") from err
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    flags = cv2.IMREAD_COLOR if apply_exif else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(data, flags)
    if image is None:
        raise ImageReadError(f"{path}: not a decodable image (corrupt or unsupported format)")
    if data[:2].tobytes() == b"\xff\xd8" and _jpeg_truncated(data.tobytes()):
        raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker)")
    return image


def _jpeg_truncated(raw: bytes) -> bool:
    """libjpeg decodes a cut-off JPEG with a grey bottom and only a warning; detect it.

    Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so an
    end-of-image marker (FFD9) after the first start-of-scan (FFDA) is the real end, however
    much trailer (e.g. a motion photo's video) follows it.
    """
    start_of_scan = raw.find(b"\xff\xda")
    return start_of_scan < 0 or raw.rfind(b"\xff\xd9") < start_of_scan


def _media_files(paths: list[str]) -> Source:
    source = Source()
    for p in sorted(paths):
        ext = Path(p).suffix.lower()
        if ext in VIDEO_EXTS:
            source.videos.append(p)
        elif ext in IMAGE_EXTS:
            source.images.append(p)
    return source


def resolve_source(source: str) -> Source:
    """Interprets ``--source``.

    A digit string is a webcam index; a folder gives its images and videos (sorted, not
    recursive); a pattern with ``*?[`` is globbed; a file is a video by extension, else an
    image (so an image with an odd extension is still tried, and a bad one is reported).

    Raises:
        SourceError: nothing there.
    """
    if source.isdigit():
        return Source(webcam=int(source))
    if os.path.isdir(source):
        found = _media_files([str(p) for p in Path(source).iterdir() if p.is_file()])
        if not found.images and not found.videos:
            raise SourceError(f"{source}: folder holds no images or videos")
        return found
    if os.path.isfile(source):  # before globbing: 'bus[1].jpg' is a file name, not a pattern
        if Path(source).suffix.lower() in VIDEO_EXTS:
            return Source(videos=[source])
        return Source(images=[source])
    if any(ch in source for ch in "*?["):
        found = _media_files([p for p in glob.glob(source, recursive=True) if os.path.isfile(p)])
        if not found.images and not found.videos:
            raise SourceError(f"{source}: pattern matches no images or videos")
        return found
    raise SourceError(f"{source}: no such file or folder")


def source_inputs(text: str, source: Source) -> list[str]:
    """The paths a ``--source`` reads, for keeping outputs apart from them: the file or
    folder given, or a pattern's matched files and the folder it searches from (the part
    before the first ``*?[``; a later run of the same pattern would read outputs put there).
    A webcam reads no path.
    """
    if source.webcam is not None:
        return []
    if os.path.exists(text):
        return [text]
    parts = Path(text).parts
    base = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        base.append(part)
    return [str(Path(*base)) if base else ".", *source.images, *source.videos]


def open_video(path: str | int) -> tuple[cv2.VideoCapture, float, tuple[int, int], int]:
    """Opens a video file or webcam: ``(capture, fps, (width, height), frame_count)``.

    Raises:
        SourceError: it does not open or yields no frame size.
    """
    cap = cv2.VideoCapture(path)
    what = f"webcam {path}" if isinstance(path, int) else str(path)
    if not cap.isOpened():
        raise SourceError(f"{what}: cannot open video")
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if width <= 0 or height <= 0:
        cap.release()
        raise SourceError(f"{what}: video has no readable frames")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and fps > 0 and np.isfinite(fps) else 30.0
    count = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
    return cap, fps, (width, height), count


def increment_path(path: str | os.PathLike, exist_ok: bool = False) -> Path:
    """``logs/predict`` -> ``logs/predict2``, ``logs/predict3``... whichever is free."""
    path = Path(path)
    if exist_ok or not path.exists():
        return path
    n = 2
    while Path(f"{path}{n}").exists():
        n += 1
    return Path(f"{path}{n}")
