"""Dataset check: every problem with every file, and what training will do about it.

Usage: ``python -m tools.check_data --voc-root data/VOCdevkit --sets 2007:trainval,2012:trainval``
(add ``--classes FILE``; ``--annotations FILE`` for reference-implementation lines instead).

The deep check decodes every image: unreadable, corrupt, truncated or zero-byte files are
skipped; grayscale, RGBA and 16-bit images are converted (reported as such); an XML ``<size>``
that disagrees with the image is reported (boxes are clipped to the real image).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from tqdm import tqdm

from data.voc import (
    Annotation,
    FileIssue,
    summarize_issues,
)
from utils.sources import ImageReadError, read_image


def inspect_image(ann: Annotation) -> list[FileIssue]:
    """Decodes one image and reports what is wrong or will be converted."""
    path = ann.image_path
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        return [FileIssue(path, f"cannot read file ({err.strerror or err})", "skipped")]
    raw = (
        cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        if data.size
        else None
    )
    try:
        image = read_image(path, apply_exif=False)  # the exact read training uses
    except ImageReadError as err:
        return [FileIssue(path, str(err).removeprefix(f"{path}: "), "skipped")]
    issues = []
    if raw is not None and raw.ndim == 2:
        issues.append(FileIssue(path, "grayscale image", "converted to 3 channels"))
    elif raw is not None and raw.shape[2] == 4:
        issues.append(FileIssue(path, "image has an alpha channel", "converted to 3 channels"))
    if raw is not None and raw.dtype != np.uint8:
        issues.append(FileIssue(path, f"{raw.dtype} pixels", "converted to 8-bit"))
    h, w = image.shape[:2]
    if ann.width and ann.height and (ann.width, ann.height) != (w, h):
        issues.append(
            FileIssue(
                path, f"XML size {ann.width}x{ann.height} but image is {w}x{h}", "boxes clipped"
            )
        )
    return issues


def check_images(annotations: Sequence[Annotation], workers: int = 4) -> list[FileIssue]:
    """Deep check of every image (threads: decoding releases the GIL)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(inspect_image, annotations)
        return [i for r in tqdm(results, total=len(annotations), desc="check") for i in r]


def summarize(issues: Sequence[FileIssue]) -> str:
    """A count of issues and files, then one indented line per kind of issue."""
    files = {re.sub(r":\d+$", "", i.path) for i in issues}  # "labels/a.txt:3" is a.txt's
    lines = [f"{len(issues)} issue(s) in {len(files)} file(s)"]
    return "\n".join(lines + [f"  {line}" for line in summarize_issues(issues)])
