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
from utils.preprocess import decode_reduction

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
    flags = cv2.IMREAD_COLOR if apply_exif else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    return _decode(str(path), flags)


def _decode(path: str, flags: int) -> np.ndarray:
    """``read_image``'s reading and checks, decoding with ``flags``."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read file ({err.strerror or err})") from err
    if data.size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    image = cv2.imdecode(data, flags)
    if image is None:
        raise ImageReadError(f"{path}: not a decodable image (corrupt or unsupported format)")
    if data[:2].tobytes() == b"\xff\xd8" and _jpeg_truncated(data.tobytes()):
        raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker)")
    return image


REDUCED_DECODE_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
# start-of-frame markers (baseline, extended, progressive, lossless...; not DHT, JPG, DAC)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """``(width, height)`` as stored in a JPEG's frame header (before any EXIF rotation), or
    None for anything else or a header that ends early."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    if raw[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(raw):
        if raw[pos] != 0xFF:
            return None
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(raw[pos + 2 : pos + 4], "big")
        if marker in _JPEG_SOF:
            if pos + 9 > len(raw):
                return None
            height = int.from_bytes(raw[pos + 5 : pos + 7], "big")
            width = int.from_bytes(raw[pos + 7 : pos + 9], "big")
            return (width, height) if width and height else None
        pos += 2 + length
    return None


def read_image_reduced(
    path: str | os.PathLike, input_size: int, letterbox: bool = True
) -> tuple[np.ndarray, tuple[int, int]]:
    """``read_image`` for the network input only: a JPEG at least twice the input is decoded
    at 1/2 or 1/4 scale (``decode_reduction``), which skips most of libjpeg's inverse DCT and
    colour conversion (its entropy decoding remains). The model then sees another image than
    the full-size path's (scores move by up to ~0.15 on the sample photos), so callers offer
    it as an option; ``InputCanvas(original_size=...)`` keeps boxes on the full-size pixels.

    Returns:
        The BGR image (reduced or not) and the full-size ``(width, height)`` as shown (EXIF
        rotation applied, as ``read_image``).

    Raises:
        ImageReadError: as ``read_image``.
    """
    path = str(path)
    size = None
    try:
        with open(path, "rb") as f:
            size = jpeg_size(f.read(65536))  # the frame header follows EXIF (< 64 KB)
    except OSError:
        pass  # read_image reports it
    factor = decode_reduction(*size, input_size, letterbox) if size else 1
    if factor == 1:
        image = read_image(path)
        return image, (image.shape[1], image.shape[0])
    image = _decode(path, REDUCED_DECODE_FLAGS[factor])
    width, height = size
    reduced = (-(-width // factor), -(-height // factor))  # libjpeg rounds up
    rotated = (image.shape[1], image.shape[0]) != reduced
    return image, ((height, width) if rotated else (width, height))


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
