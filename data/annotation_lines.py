"""The reference implementation's annotation lines (``2007_train.txt``): one image per line,
its path followed by ``x1,y1,x2,y2,cls`` boxes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from data.label_io import brief, read_user_text
from data.voc import Annotation, FileIssue, LoadResult
from utils.errors import InputError


def load_annotation_lines(
    path: str | os.PathLike, num_classes: int, one_based: bool = True
) -> LoadResult:
    """Reads the reference implementation's split files: ``image x1,y1,x2,y2,cls ...``.

    Its generator copies VOC XML coordinates unchanged, so they are 1-based by default
    (``one_based=False`` for lines written in 0-based pixels). Boxes have no difficult flag.

    Image paths are used as written: the generator writes absolute paths (relative ones are
    relative to the working directory), so the file itself chooses which images it names and
    there is no dataset folder to keep them inside.

    Raises:
        FileNotFoundError: no such file.
        LabelFormatError: it cannot be read or is not UTF-8 text (the message names it).
    """
    result = LoadResult()
    offset = 1.0 if one_based else 0.0
    for n, line in enumerate(read_user_text(path, "annotation lines file").splitlines(), 1):
        if not line.strip():
            continue
        # The image path may contain spaces: boxes are the trailing comma-separated tokens.
        tokens = line.split()
        split = len(tokens)
        while split > 1 and "," in tokens[split - 1]:
            split -= 1
        image_path = " ".join(tokens[:split])
        boxes, labels = [], []
        for token in tokens[split:]:
            try:
                values = [float(v) for v in token.split(",")]
                if len(values) != 5 or not np.isfinite(values).all():
                    raise InputError(token)
                *coords, cls = values
            except ValueError:
                result.issues.append(
                    FileIssue(f"{path}:{n}", f"bad box {brief(token)}", "box dropped")
                )
                continue
            x1, y1, x2, y2 = (c - offset for c in coords)
            if not 0 <= cls < num_classes or cls != int(cls):
                result.issues.append(
                    FileIssue(f"{path}:{n}", f"class id {cls:g} out of range", "box dropped")
                )
                continue
            if x2 <= x1 or y2 <= y1:
                result.issues.append(
                    FileIssue(f"{path}:{n}", f"box {token[:60]} has no area", "box dropped")
                )
                continue
            boxes.append((x1, y1, x2, y2))
            labels.append(int(cls))
        result.annotations.append(
            Annotation(
                image_path,
                Path(image_path).stem,
                np.array(boxes, np.float32).reshape(-1, 4),
                np.array(labels, np.int64),
                np.zeros(len(labels), bool),
            )
        )
    return result
