"""Anchor clustering: k-means on box shapes with distance 1 - IoU.

Box shapes are taken at the training input size the way letterbox resizes an image: every box
of an image is scaled by ``input_size / max(width, height)`` of that image (the XML's
``<size>``; the image file when the XML has none). Two shapes are compared as boxes aligned at a
corner: IoU = min(w1, w2) * min(h1, h2) / (w1 h1 + w2 h2 - that).

The clustering is deterministic for a seed: k-means++ initialisation drawn from
``numpy.random.default_rng(seed)`` (each next centre picked with probability proportional to
its squared distance to the nearest centre), then Lloyd iterations until the assignments stop
changing (at most ``max_iter``). One run can end in a local minimum (two centres in one
cluster), so it is restarted ``num_restarts`` times from the same generator and the run with
the highest mean best IoU is kept. Centres are updated to the per-axis **median** of their boxes,
as the reference implementation's ``kmeans_for_anchors.py`` does: it is robust to the long tail
of very large or thin boxes (darknet's ``calc_anchors`` uses the mean). An emptied cluster is
re-seeded with the box that the current centres fit worst. The anchors come out sorted by area.

Note: with yolov4-tiny's masks (stride 32: anchors 3,4,5; stride 16: anchors 1,2,3) anchor 0 is
used by no head, so boxes whose best anchor is 0 get no positive; the CLI reports that share.

Usage: ``python -m tools.anchors --voc-root data/VOCdevkit --sets 2007:trainval,2012:trainval``
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from data.voc import DEFAULT_TRAIN_SETS, Annotation, discover_classes, load_voc
from utils.errors import InputError
from utils.paths import write_text_atomic

logger = logging.getLogger(__name__)

# darknet's yolov4-tiny anchors, pixels at 416 (model_data/yolo_anchors.txt)
DEFAULT_ANCHORS = np.array(
    [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]], np.float64
)
DEFAULT_NUM_ANCHORS = 6  # yolov4-tiny: 3 per head, 2 heads (one shared)
DEFAULT_INPUT_SIZE = 416  # training input size the anchors are measured at
DEFAULT_SEED = 0  # seed of the k-means++ initialisation
DEFAULT_MAX_ITER = 300  # Lloyd iterations at most (VOC converges in well under 100)
DEFAULT_NUM_RESTARTS = 10  # k-means runs from different initialisations; the best is kept
DEFAULT_OUTPUT = "model_data/yolo_anchors_custom.txt"


@dataclass(frozen=True)
class AnchorReport:
    """Result of ``compute_anchors``.

    ``anchors`` (K, 2) int, (w, h) pixels at the input size, sorted by area, as written;
    ``mean_iou`` / ``default_mean_iou``: mean over boxes of the best IoU with those anchors / with
    ``DEFAULT_ANCHORS``; ``best_share`` (K,): fraction of boxes whose best anchor is each one.
    """

    anchors: np.ndarray
    num_boxes: int
    mean_iou: float
    default_mean_iou: float
    best_share: np.ndarray


def letterbox_box_shapes(
    annotations: Iterable[Annotation],
    input_size: int = DEFAULT_INPUT_SIZE,
    include_difficult: bool = False,
) -> np.ndarray:
    """Box (w, h) in pixels after letterboxing each image to ``input_size``.

    Args:
        annotations: images with boxes (xyxy, 0-based pixels) and their ``width``/``height``;
            when those are 0 the image file is read for its size (a warning counts them).
        input_size: side of the square training input.
        include_difficult: keep ``difficult`` objects (training excludes them by default).

    Returns:
        (N, 2) float64: ``(x2 - x1, y2 - y1) * input_size / max(width, height)`` per box.
    """
    annotations = [a if include_difficult else a.without_difficult() for a in annotations]
    sizes = np.array([(a.width, a.height) for a in annotations], np.float64).reshape(-1, 2)
    missing = [i for i, a in enumerate(annotations) if (a.width <= 0 or a.height <= 0)]
    if missing:
        logger.warning("%d annotation(s) have no <size>: reading their images", len(missing))
    for i in missing:
        image = cv2.imread(annotations[i].image_path)
        if image is None:
            raise FileNotFoundError(f"{annotations[i].image_path}: cannot read the image size")
        sizes[i] = image.shape[1], image.shape[0]
    counts = [len(a.boxes) for a in annotations]
    if sum(counts) == 0:
        return np.zeros((0, 2), np.float64)
    boxes = np.concatenate([a.boxes for a in annotations]).astype(np.float64)
    scale = input_size / np.repeat(sizes, counts, axis=0).max(axis=1)
    return (boxes[:, 2:] - boxes[:, :2]) * scale[:, None]


def wh_iou(shapes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of (N, 2) and (K, 2) (w, h) shapes aligned at a corner -> (N, K)."""
    shapes, anchors = np.asarray(shapes, np.float64), np.asarray(anchors, np.float64)
    inter = np.minimum(shapes[:, None, 0], anchors[None, :, 0]) * np.minimum(
        shapes[:, None, 1], anchors[None, :, 1]
    )
    union = (shapes[:, 0] * shapes[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None] - inter
    return inter / union


def mean_best_iou(shapes: np.ndarray, anchors: np.ndarray) -> float:
    """Mean over boxes of the IoU with the best-fitting anchor."""
    return float(wh_iou(shapes, anchors).max(axis=1).mean())


def sort_by_area(anchors: np.ndarray) -> np.ndarray:
    """Rows sorted by w * h (ties by w), stable."""
    anchors = np.asarray(anchors)
    return anchors[np.lexsort((anchors[:, 0], anchors[:, 0] * anchors[:, 1]))]


def _kmeans_pp_init(shapes: np.ndarray, num_anchors: int, rng: np.random.Generator) -> np.ndarray:
    centres = [shapes[rng.integers(len(shapes))]]
    distance = 1.0 - wh_iou(shapes, centres[0][None])[:, 0]
    for _ in range(1, num_anchors):
        weights = distance**2  # > 0 for every shape not yet chosen (shapes are distinct)
        centre = shapes[rng.choice(len(shapes), p=weights / weights.sum())]
        centres.append(centre)
        distance = np.minimum(distance, 1.0 - wh_iou(shapes, centre[None])[:, 0])
    return np.array(centres, np.float64)


def _lloyd(shapes: np.ndarray, centres: np.ndarray, max_iter: int) -> np.ndarray:
    """Median k-means iterations from ``centres`` until no assignment changes."""
    centres = centres.copy()
    assignment = None
    for iteration in range(max_iter):
        iou = wh_iou(shapes, centres)
        new_assignment = iou.argmax(axis=1)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            logger.debug("k-means converged after %d iterations", iteration)
            break
        assignment = new_assignment
        best_iou = iou.max(axis=1)
        for k in range(len(centres)):  # a loop over clusters; each update is vectorised
            members = shapes[assignment == k]
            if len(members):
                centres[k] = np.median(members, axis=0)
            else:  # re-seed with the worst-fitted box
                worst = int(best_iou.argmin())
                centres[k] = shapes[worst]
                best_iou[worst] = 1.0
    else:
        logger.info("k-means stopped after max_iter=%d iterations", max_iter)
    return centres


def kmeans_anchors(
    shapes: np.ndarray,
    num_anchors: int = DEFAULT_NUM_ANCHORS,
    seed: int = DEFAULT_SEED,
    max_iter: int = DEFAULT_MAX_ITER,
    num_restarts: int = DEFAULT_NUM_RESTARTS,
) -> np.ndarray:
    """Clusters box shapes into ``num_anchors`` anchors with distance 1 - IoU.

    Args:
        shapes: (N, 2) box (w, h), all > 0.
        num_anchors: k.
        seed: seed of the k-means++ initialisations; the same seed gives the same anchors.
        max_iter: Lloyd iterations at most per run; a run stops earlier when no assignment
            changes.
        num_restarts: runs from successive initialisations; the one with the highest mean
            best IoU wins (the first on a tie).

    Returns:
        (k, 2) float64 anchors (median shape of each cluster), sorted by area.

    Raises:
        ValueError: fewer boxes (or distinct shapes) than ``num_anchors``, or a shape <= 0.
    """
    shapes = np.asarray(shapes, np.float64).reshape(-1, 2)
    if num_anchors < 1:
        raise InputError(f"{num_anchors} anchors: k-means needs at least 1")
    if num_restarts < 1:
        raise InputError(f"{num_restarts} restarts: k-means needs at least 1")
    if len(shapes) < num_anchors:
        raise InputError(
            f"only {len(shapes)} box(es) to cluster into {num_anchors} anchors: "
            "use more data or fewer anchors"
        )
    if (shapes <= 0).any():
        raise InputError("box widths and heights must be > 0")
    num_distinct = len(np.unique(shapes, axis=0))
    if num_distinct < num_anchors:
        raise InputError(
            f"only {num_distinct} distinct box shape(s) for {num_anchors} anchors: "
            "use more data or fewer anchors"
        )
    rng = np.random.default_rng(seed)
    best, best_iou = None, -1.0
    for _ in range(num_restarts):
        centres = _lloyd(shapes, _kmeans_pp_init(shapes, num_anchors, rng), max_iter)
        iou = mean_best_iou(shapes, centres)
        if iou > best_iou:
            best, best_iou = centres, iou
    return sort_by_area(best)


def round_anchors(anchors: np.ndarray) -> np.ndarray:
    """Anchors rounded to integers >= 1, re-sorted by area -> (K, 2) int64."""
    return sort_by_area(np.maximum(np.rint(anchors), 1).astype(np.int64))


def format_anchors(anchors: np.ndarray) -> str:
    """``"10,14, 23,27, ..."`` — the format of ``model_data/yolo_anchors.txt``."""
    return ", ".join(f"{int(w)},{int(h)}" for w, h in np.asarray(anchors))


def write_anchors(path: str | os.PathLike, anchors: np.ndarray) -> np.ndarray:
    """Writes anchors rounded to integers (see ``round_anchors``); returns what was written.

    The file is read back by ``utils.classes.read_anchors``; it is written through a temporary
    file and a rename.

    Raises:
        OutputPathError: the file cannot be written (no temporary file is left).
    """
    rounded = round_anchors(anchors)
    write_text_atomic(path, format_anchors(rounded) + "\n")
    return rounded


def best_anchor_share(shapes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(K,) fraction of boxes whose best-IoU anchor is each anchor."""
    best = wh_iou(shapes, anchors).argmax(axis=1)
    return np.bincount(best, minlength=len(anchors)) / max(len(shapes), 1)


def compute_anchors(
    voc_root: str | os.PathLike,
    sets: Sequence[tuple[str, str]] = DEFAULT_TRAIN_SETS,
    class_names: Sequence[str] | None = None,
    *,
    input_size: int = DEFAULT_INPUT_SIZE,
    num_anchors: int = DEFAULT_NUM_ANCHORS,
    seed: int = DEFAULT_SEED,
    include_difficult: bool = False,
) -> AnchorReport:
    """Reads a VOC dataset, clusters its letterboxed box shapes and compares with the defaults.

    Args:
        voc_root: folder holding ``VOC<year>/``.
        sets: ``(year, image_set)`` pairs to read.
        class_names: classes whose boxes count; ``None`` takes every class in the XMLs.
        input_size: training input size (see ``letterbox_box_shapes``).
        num_anchors: k.
        seed: k-means seed.
        include_difficult: also cluster ``difficult`` boxes.

    Returns:
        An ``AnchorReport`` with the rounded anchors; nothing is written.

    Raises:
        FileNotFoundError: a missing VOC folder or image set.
        ValueError: fewer boxes than ``num_anchors``.
    """
    if class_names is None:
        class_names = discover_classes(voc_root, sets)
    loaded = load_voc(voc_root, sets, class_names)
    if loaded.issues:
        logger.warning(
            "%d file issue(s) while reading, e.g. %s", len(loaded.issues), loaded.issues[0]
        )
    shapes = letterbox_box_shapes(loaded.annotations, input_size, include_difficult)
    logger.info("%d boxes from %d images", len(shapes), len(loaded.annotations))
    anchors = round_anchors(kmeans_anchors(shapes, num_anchors, seed))
    if len(np.unique(anchors, axis=0)) < len(anchors):
        logger.warning("some anchors are equal after rounding: the data has fewer shape groups")
    return AnchorReport(
        anchors=anchors,
        num_boxes=len(shapes),
        mean_iou=mean_best_iou(shapes, anchors),
        default_mean_iou=mean_best_iou(shapes, DEFAULT_ANCHORS),
        best_share=best_anchor_share(shapes, anchors),
    )
