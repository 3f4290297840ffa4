# Over 400 lines on purpose: the evaluation pass, its timing and the report it feeds share types
# (Detected, EvalSpeed, EvalReport) that every caller imports from here.
"""Evaluation: run a model over annotated images, score the detections, format the results.

``detect_dataset`` -> (detections, ground truth) as ``BoxSet`` in original 0-based pixels;
``score`` -> an ``EvalReport`` with every number ``eval.py --json`` writes;
``format_report`` -> the protocol line and the per-class table;
``EvalSpeed`` -> where the time of a pass went (images/s, loading wait, forward, decode+NMS,
scoring), the line ``eval.py`` prints after the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.formats import LabelSource
from data.voc import Annotation, load_voc, parse_sets, summarize_issues
from nets.decode import Geometry, detect_batch
from nets.options import ModelOptions, check_img_size
from utils.config import option, rule_problems, shared
from utils.device import DeviceOptions, synchronize
from utils.errors import InputError
from utils.evaluation.detections_file import read_detections_json as read_detections_file
from utils.evaluation.metrics import BoxSet, best_f1, evaluate_coco, evaluate_voc
from utils.paths import save_figure_atomic
from utils.precision import AMP_TORCH_ONLY, autocast, inference_precision
from utils.preprocess import ResizeMeta, boxes_to_original_many, resize_image
from utils.runlock import end_with_parent
from utils.sources import ImageReadError, read_image
from utils.timing import StageTimer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings; defaults are the usual mAP protocol of this model family."""

    img_size: int | None = shared(
        ModelOptions, "img_size", 416, "network input side, a multiple of 32", group="evaluation"
    )
    letterbox: bool = option(
        True, "letterbox (keep the aspect ratio) or a plain resize", group="evaluation"
    )
    # low-score detections are kept: AP integrates over all of them
    conf_thresh: float = option(0.001, "score threshold", flag="--conf", group="evaluation")
    nms_thresh: float = option(
        0.5, "class-wise NMS IoU threshold", flag="--nms", group="evaluation"
    )
    # The VOC devkit scores every detection above the threshold; a cap can only lower AP (it
    # drops the low-score tail the curve integrates over). COCO AP keeps the best 100 per
    # image itself, whatever this is.
    max_det: int = option(
        0, "detections kept per image after NMS (0 = all, as the VOC devkit)", group="evaluation"
    )
    scale_xy: float | None = option(
        None,
        "grid sensitivity of the box centres (default: the weights', see predict.py --help)",
        group="evaluation",
    )
    iou_thresh: float = option(0.5, "VOC match threshold (>=)", flag="--iou", group="evaluation")
    batch_size: int = option(16, "images per forward pass", group="evaluation")
    workers: int = option(2, "data-loading processes", group="evaluation")
    coco: bool = option(True, "also compute COCO AP with pycocotools (slower)", group="evaluation")
    amp: bool = shared(
        DeviceOptions,
        "amp",
        False,
        "run the network in 16-bit (float16 on CUDA, bfloat16 on CPU): faster; AP can move "
        "in the third decimal",
        group="evaluation",
    )

    def __post_init__(self) -> None:
        check_img_size(self.img_size)
        if self.max_det < 0:
            raise InputError(f"--max-det {self.max_det}: must be 0 (all) or more")
        if self.scale_xy is not None and not 1 <= self.scale_xy <= 2:
            raise InputError(f"--scale-xy {self.scale_xy}: must be in [1, 2]")
        problems = rule_problems(self, _EVAL_RULES)
        if problems:
            raise InputError("invalid evaluation settings: " + "; ".join(problems))


_EVAL_RULES = {
    "conf_thresh": (lambda v: 0 <= v <= 1, "a score in [0, 1]"),
    "nms_thresh": (lambda v: 0 < v <= 1, "an IoU in (0, 1]"),
    "iou_thresh": (lambda v: 0 < v <= 1, "an IoU in (0, 1]"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "workers": (lambda v: v >= 0, "0 or more"),
}


class _EvalImages(Dataset):
    def __init__(self, annotations: Sequence[Annotation], input_size: int, letterbox: bool):
        self.annotations, self.input_size, self.letterbox = annotations, input_size, letterbox

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int):
        """``(index, CHW uint8 tensor, meta, frame)``, or ``(index, None, None, read error)``
        for an unreadable image; ``frame`` is its ``annotation_frame``."""
        ann = self.annotations[index]
        try:
            image, frame = read_annotated_image(ann.image_path, ann.width, ann.height)
        except ImageReadError as err:
            return index, None, None, str(err)
        canvas, meta = resize_image(image[:, :, ::-1], self.input_size, self.letterbox)  # RGB
        return index, torch.from_numpy(canvas.transpose(2, 0, 1).copy()), meta, frame


EXIF_ORIENTATION_TAG = 0x0112
# the EXIF orientations that swap width and height (transpose, rotations by 90 and 270)
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def annotation_frame(path: str, width: int, height: int) -> str | None:
    """Which pixels of an image with an EXIF orientation its annotation refers to.

    ``predict.py`` reads an image as a viewer shows it (EXIF orientation applied); training
    reads the stored pixels. The annotated ``width`` x ``height`` tells the two apart where
    the orientation swaps the sides of a non-square image: the stored size means the stored
    pixels, the swapped size the oriented image. Otherwise (a flip or a half turn, a square
    image, no size recorded, or a size that is neither) it cannot tell.

    Returns:
        None (no EXIF orientation, or a file the header reader does not know: the decoder
        reports it), ``"stored"``, ``"rotated"`` or ``"ambiguous"``.
    """
    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(EXIF_ORIENTATION_TAG, 1)
            stored = im.size  # the header's, before any orientation
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    if not isinstance(orientation, int) or not 2 <= orientation <= 8:
        return None
    if orientation in SWAPPING_ORIENTATIONS and stored[0] != stored[1]:
        if (width, height) == stored:
            return "stored"
        if (width, height) == stored[::-1]:
            return "rotated"
    return "ambiguous"


def read_annotated_image(path: str, width: int, height: int) -> tuple[np.ndarray, str | None]:
    """An annotated image in the pixel frame its annotation is in (``annotation_frame``):
    oriented as ``predict.py`` reads it where the annotated size says so, else the stored
    pixels, as training reads them.

    Returns:
        BGR pixels and the ``annotation_frame``.

    Raises:
        ImageReadError: as ``read_image``.
    """
    frame = annotation_frame(path, width, height)
    return read_image(path, apply_exif=frame == "rotated"), frame


@dataclass
class _Batch:
    """One loader batch, built in the worker: the readable images stacked as one uint8
    (B, 3, S, S) tensor (one transfer, no stacking in the loop), their annotation indices and
    resize metas, and the read errors of the others."""

    indices: list[int]
    images: torch.Tensor | None  # None when no image of the batch was readable
    metas: list[ResizeMeta]
    errors: list[str]
    frames: dict[int, str] = field(default_factory=dict)  # EXIF-oriented images' frames

    def pin_memory(self) -> _Batch:
        """Called by ``DataLoader(pin_memory=True)``: page-locked images copy to the GPU
        asynchronously."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def _collate(samples) -> _Batch:
    ok = [s for s in samples if s[1] is not None]
    return _Batch(
        indices=[s[0] for s in ok],
        images=torch.stack([s[1] for s in ok]) if ok else None,
        metas=[s[2] for s in ok],
        errors=[s[3] for s in samples if s[1] is None],
        frames={s[0]: s[3] for s in ok if s[3] is not None},
    )


LOADING, FORWARD, DECODE, SCORING = "loading wait", "forward", "decode+NMS", "scoring"
STAGES = (LOADING, FORWARD, DECODE, SCORING)


@dataclass(frozen=True)
class EvalSpeed:
    """Where the time of an evaluation pass went.

    ``wall_s`` is the whole pass as the user waits for it (loader start-up and shut-down,
    ground truth, scoring); the stages are timed inside it, so their shares of it sum to
    just under 1, the rest being the loop's own bookkeeping. ``loading wait`` is the time the
    loop waited for a batch (and copied it to the device): with loader workers, the loading
    that overlapped the forward pass is not in it.

    Attributes:
        images: images run through the model.
        wall_s: seconds of the whole pass.
        stages: seconds per stage, in ``STAGES`` order (``scoring`` once ``score`` ran).
    """

    images: int
    wall_s: float
    stages: dict[str, float]

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0

    def shares(self) -> dict[str, float]:
        """Each stage's fraction of ``wall_s``."""
        return {k: v / self.wall_s if self.wall_s > 0 else 0.0 for k, v in self.stages.items()}

    def plus(self, stage: str, seconds: float) -> EvalSpeed:
        """This pass with one more stage timed after it (``score`` adds ``scoring``)."""
        return EvalSpeed(self.images, self.wall_s + seconds, {**self.stages, stage: seconds})

    def format(self) -> str:
        """One line: images/s, then seconds and share of each stage."""
        shares = self.shares()
        parts = [f"{k} {v:.2f} s ({shares[k]:.0%})" for k, v in self.stages.items()]
        return (
            f"speed: {self.images_per_s:.1f} images/s ({self.images} images in "
            f"{self.wall_s:.2f} s) | " + ", ".join(parts)
        )

    def to_json(self) -> dict:
        shares = self.shares()
        return {
            "images": self.images,
            "images_per_s": self.images_per_s,
            "wall_s": self.wall_s,
            "stages": {k: {"seconds": v, "share": shares[k]} for k, v in self.stages.items()},
        }


@dataclass
class Detected:
    dets: BoxSet
    gts: BoxSet
    image_sizes: np.ndarray  # (I, 2) width, height of each annotation (0 if unreadable)
    failures: list[str] = field(default_factory=list)
    speed: EvalSpeed | None = None  # set by detect_dataset


@torch.inference_mode()
def detect_dataset(
    model: torch.nn.Module,
    annotations: Sequence[Annotation],
    geometry: Geometry,
    cfg: EvalConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Detected:
    """Runs ``model`` on every image; unreadable images are reported and left out of both the
    detections and the ground truth.

    With ``cfg.workers`` loader processes, images are read and letterboxed while the model
    runs (each worker keeps two batches ready); a batch is decoded in one ``detect_batch``
    call. The detections are those of ``nets.decode.detect`` on each image, bit for bit,
    whatever the number of workers.

    Args:
        model: returns raw maps for a (B, 3, S, S) RGB batch in [0, 1] (a ``YoloBody`` or an
            ``OnnxRunner``); its train/eval mode is restored afterwards.
        annotations: the images and their ground truth.
        geometry: the model's anchors and masks; images are resized to ``cfg.img_size``,
            or to ``geometry.input_size`` where that is None.
        cfg: input size, letterbox, thresholds and loader settings.
        device: where the model runs.
        progress: show a progress bar.

    Returns:
        Detections and ground truth as ``BoxSet`` (xyxy, original 0-based pixels, image index
        = annotation index), each annotation's (width, height), the read failures, and the
        pass's ``EvalSpeed`` (loading wait, forward, decode+NMS).
    """
    start = time.perf_counter()
    device = torch.device(device)
    geometry = geometry.at_size(cfg.img_size)
    if cfg.scale_xy is not None:
        geometry = replace(geometry, scale_x_y=cfg.scale_xy)
    if cfg.amp and not isinstance(model, torch.nn.Module):
        raise InputError(AMP_TORCH_ONLY)
    was_training = model.training
    model.eval()
    run = _Pass(len(annotations), device, progress)
    run.detect(model, _eval_loader(annotations, geometry.input_size, cfg, device), geometry, cfg)
    model.train(was_training)
    for failure in run.failures:
        logger.warning("%s (left out of the evaluation)", failure)
    for line in frame_warnings(run.frames, annotations):
        logger.warning(line)
    readable = run.sizes[:, 0] > 0
    gts = ground_truth(annotations, readable)
    found = run.found
    dets = BoxSet.concat(found) if found else BoxSet([], np.zeros((0, 4)), [], scores=[])
    totals = {name: sum(run.timer.samples.get(name, [])) / 1000 for name in STAGES[:3]}
    speed = EvalSpeed(int(readable.sum()), time.perf_counter() - start, totals)
    return Detected(dets, gts, run.sizes, run.failures, speed)


def _eval_loader(
    annotations: Sequence[Annotation], size: int, cfg: EvalConfig, device: torch.device
) -> DataLoader:
    """Batches of ``_EvalImages`` at ``size``, read by ``cfg.workers`` processes (page-locked
    for a CUDA device)."""
    return DataLoader(
        _EvalImages(annotations, size, cfg.letterbox),
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=end_with_parent,  # during training they hold the run's lock too
    )


class _Pass:
    """What one pass over the loader collects: the detections per batch, the read failures,
    each annotation's (width, height) (0 where unreadable), the EXIF frames, and the time of
    each stage (synchronised clock readings: queued GPU work is charged to the stage that
    queued it); ``progress`` shows a progress bar."""

    def __init__(self, num_images: int, device: torch.device, progress: bool) -> None:
        self.device, self.num_images, self.progress = device, num_images, progress
        self.timer = StageTimer(sync=lambda: synchronize(device))
        self.found: list[BoxSet] = []
        self.failures: list[str] = []
        self.sizes = np.zeros((num_images, 2), np.int64)
        self.frames: dict[int, str] = {}

    def detect(
        self, model: torch.nn.Module, loader: DataLoader, geometry: Geometry, cfg: EvalConfig
    ) -> None:
        """Runs ``model`` on every batch of ``loader`` (under ``cfg.amp``'s autocast)."""
        device, timer = self.device, self.timer
        dtype = inference_precision(cfg.amp, device).dtype
        with timer.stage(LOADING):  # starting the worker processes is part of the loading
            batches = iter(loader)
        bar = tqdm(total=self.num_images, desc="eval", disable=not self.progress, leave=False)
        with bar:
            while True:
                with timer.stage(LOADING):
                    batch = next(batches, None)
                    if batch is not None and batch.images is not None:
                        images = batch.images.to(device, non_blocking=True).float().div_(255)
                if batch is None:
                    break
                bar.update(len(batch.indices) + len(batch.errors))
                self.failures += batch.errors
                self.frames.update(batch.frames)
                if batch.images is None:
                    continue
                with timer.stage(FORWARD), autocast(device, dtype):
                    outputs = model(images)
                with timer.stage(DECODE):
                    self.found.append(_to_boxset(outputs, geometry, cfg, batch))
                    indices = np.asarray(batch.indices, np.int64)
                    self.sizes[indices] = [(m.width, m.height) for m in batch.metas]


def frame_warnings(frames: dict[int, str], annotations: Sequence[Annotation]) -> list[str]:
    """One line per kind of EXIF-oriented image (``read_annotated_image``), with its count
    and an example: which pixels they were scored on, and where that was a guess."""
    said = {
        "rotated": "annotated at the rotated size: read rotated, as predict.py reads them",
        "stored": "annotated at the stored size: read as stored, as training reads them; "
        "predict.py shows them rotated",
        "ambiguous": "whose annotation does not tell which frame its boxes are in (a flip, a "
        "half turn, a square image or no size recorded): read as stored, as training reads "
        "them, while predict.py shows them oriented; check their boxes",
    }
    lines = []
    for kind, text in said.items():
        found = sorted(i for i, f in frames.items() if f == kind)
        if found:
            lines.append(
                f"{len(found)} image{'s' if len(found) > 1 else ''} with an EXIF orientation "
                f"{text} (e.g. {annotations[found[0]].image_path})"
            )
    return lines


def _to_boxset(outputs, geometry: Geometry, cfg: EvalConfig, batch: _Batch) -> BoxSet:
    """A batch's detections in original pixels, image index = annotation index."""
    flat = detect_batch(
        outputs,
        geometry,
        conf_thresh=cfg.conf_thresh,
        nms_thresh=cfg.nms_thresh,
        max_det=cfg.max_det or None,
    )
    return BoxSet(
        np.asarray(batch.indices, np.int64)[flat.image],
        boxes_to_original_many(flat.boxes, flat.image, batch.metas),
        flat.labels,
        scores=flat.scores,
    )


def ground_truth(annotations: Sequence[Annotation], keep: np.ndarray | None = None) -> BoxSet:
    """All boxes (difficult included and flagged) with their annotation index."""
    parts = [
        BoxSet(np.full(len(a.boxes), i), a.boxes, a.labels, difficult=a.difficult)
        for i, a in enumerate(annotations)
        if keep is None or keep[i]
    ]
    if not parts:
        return BoxSet([], np.zeros((0, 4)), [], difficult=[])
    return BoxSet.concat(parts)


def load_ground_truth(
    labels: LabelSource | None, voc_root: str, split: str, class_names: Sequence[str]
) -> tuple[list[Annotation], str, list[str]]:
    """The ground truth to score: ``labels`` when given, else the VOCdevkit split, with boxes
    as written (the VOC devkit and pycocotools do not clip, and clipping changes IoU).

    Returns:
        The annotations, the data set's name for messages, and one warning line per kind of
        what the reader skipped or kept as written, with its count and first files.
    """
    if labels is not None:
        loaded = labels.load(class_names, clip_boxes=False)
        dataset = labels.describe()
    else:
        loaded = load_voc(voc_root, parse_sets(split), class_names, clip_boxes=False)
        dataset = f"{voc_root} {split}"
    warnings = [
        f"{dataset}: {line}" for line in summarize_issues(loaded.issues, "ground-truth issue")
    ]
    return loaded.annotations, dataset, warnings


def check_ground_truth(
    annotations: Sequence[Annotation], class_names: Sequence[str], dataset: str
) -> list[str]:
    """Which of the model's classes the ground truth can score, checked before the model runs.

    The mAP averages over the classes with (non-difficult) ground truth; a class without any
    is left out of it, and a split without any object of any class would report a mAP of 0
    that means nothing (wrong ``--classes``, split or labels).

    Returns:
        Warnings (one line naming the classes left out), empty when every class has objects.

    Raises:
        ValueError: no class has a ground-truth object (the message names ``dataset``).
    """
    counts = np.zeros(len(class_names), np.int64)
    for a in annotations:
        labels = np.asarray(a.labels, np.int64)[~np.asarray(a.difficult, bool)]
        counts += np.bincount(labels, minlength=len(class_names))[: len(class_names)]
    missing = [name for name, n in zip(class_names, counts) if n == 0]
    shown = ", ".join(map(repr, missing[:10])) + (", ..." if len(missing) > 10 else "")
    if len(missing) == len(class_names):
        raise InputError(
            f"{dataset}: no ground-truth object (difficult ones aside) of any of the model's "
            f"{len(class_names)} classes ({shown}) in {len(annotations)} images: nothing can "
            "match and the mAP would mean nothing (wrong --classes, split or labels?)"
        )
    if not missing:
        return []
    return [
        f"{dataset}: no ground-truth object (difficult ones aside) of {len(missing)} of the "
        f"model's {len(class_names)} classes ({shown}): they have no AP and are left out of "
        f"the mAP, which averages the other {len(class_names) - len(missing)}"
    ]


@dataclass
class EvalReport:
    """Everything ``eval.py`` prints and writes."""

    protocol: str
    class_names: list[str]
    num_images: int
    num_instances: int
    voc07_map50: float
    voc12_map50: float
    coco: dict[str, float]
    precision: float  # mean over classes with GT, at the best-F1 threshold
    recall: float
    f1_threshold: float
    per_class: dict[str, dict]
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False, default_factory=dict)
    speed: EvalSpeed | None = None  # detection pass + scoring; None for a detections file

    def to_json(self) -> dict:
        speed = {"speed": self.speed.to_json()} if self.speed is not None else {}
        return {
            "voc07_map50": self.voc07_map50,
            "voc12_map50": self.voc12_map50,
            # None where COCO AP was not computed (--no-coco)
            "coco_map": self.coco.get("coco_map"),
            "coco_map50": self.coco.get("coco_map50"),
            "coco_map75": self.coco.get("coco_map75"),
            "precision": self.precision,
            "recall": self.recall,
            "num_images": self.num_images,
            "num_instances": self.num_instances,
            "per_class": self.per_class,
            "protocol": self.protocol,
            **speed,
        }


def describe_protocol(dataset: str, iou_thresh: float, max_det: int = 0, coco: bool = True) -> str:
    cap = f"at most {max_det} detections per image" if max_det else "all detections"
    coco_text = "pycocotools, best 100 per image, difficult as crowd" if coco else "not computed"
    return (
        f"{dataset} | IoU >= {iou_thresh:g} (+1 pixel convention) | difficult objects "
        f"ignored | {cap} | AP50(07): VOC2007 11-point, AP50(12): VOC2010+ area | COCO: "
        f"{coco_text}"
    )


def score(
    detected: Detected,
    class_names: Sequence[str],
    dataset: str,
    iou_thresh: float = 0.5,
    coco: bool = True,
    max_det: int = 0,
) -> EvalReport:
    """Scores detections against ground truth with both VOC APs, P/R at best F1 and COCO AP;
    ``max_det`` is the per-image cap the detections were made with (0: none), for the
    protocol line. The report's ``speed`` is the detection pass's with the scoring time
    added."""
    start = time.perf_counter()
    nc = len(class_names)
    voc = evaluate_voc(detected.dets, detected.gts, nc, iou_thresh)
    with_gt = voc["classes_with_gt"]
    f1 = best_f1(voc["per_class"], with_gt)
    per_class, curves = {}, {}
    for row, c in enumerate(with_gt):
        res = voc["per_class"][c]
        per_class[class_names[c]] = {
            "ap_voc07": res.ap_voc07,
            "ap_voc12": res.ap_voc12,
            "num_gt": res.num_gt,
            "precision": float(f1["precision"][row]),
            "recall": float(f1["recall"][row]),
            "images": _images_with(detected.gts, c),
        }
        curves[class_names[c]] = (res.recall, res.precision)
    coco_stats = evaluate_coco(detected.dets, detected.gts, nc) if coco else {}
    num_images = int((detected.image_sizes[:, 0] > 0).sum())
    speed = detected.speed
    if speed is not None:
        speed = speed.plus(SCORING, time.perf_counter() - start)
    return EvalReport(
        protocol=describe_protocol(dataset, iou_thresh, max_det, coco),
        class_names=list(class_names),
        num_images=num_images,
        num_instances=int((~detected.gts.difficult).sum()),
        voc07_map50=voc["voc07_map"],
        voc12_map50=voc["voc12_map"],
        coco=coco_stats,
        precision=float(np.mean(f1["precision"])) if with_gt else 0.0,
        recall=float(np.mean(f1["recall"])) if with_gt else 0.0,
        f1_threshold=f1["threshold"],
        per_class=per_class,
        curves=curves,
        speed=speed,
    )


def _images_with(gts: BoxSet, cls: int) -> int:
    return len(np.unique(gts.image[(gts.labels == cls) & ~gts.difficult]))


def format_report(report: EvalReport) -> str:
    """Protocol line, per-class table and summary, as printed by eval.py and training."""
    lines = [
        f"protocol: {report.protocol}",
        f"{'Class':<16}{'Images':>8}{'Instances':>11}{'P':>8}{'R':>8}"
        f"{'AP50(07)':>10}{'AP50(12)':>10}",
    ]
    for name, row in report.per_class.items():
        lines.append(
            f"{name:<16}{row['images']:>8}{row['num_gt']:>11}{row['precision']:>8.3f}"
            f"{row['recall']:>8.3f}{row['ap_voc07']:>10.3f}{row['ap_voc12']:>10.3f}"
        )
    lines.append(
        f"{'all':<16}{report.num_images:>8}{report.num_instances:>11}"
        f"{report.precision:>8.3f}{report.recall:>8.3f}{report.voc07_map50:>10.3f}"
        f"{report.voc12_map50:>10.3f}"
    )
    if report.coco:
        c = report.coco
        lines.append(
            f"COCO AP {c['coco_map']:.3f}  AP50 {c['coco_map50']:.3f}  "
            f"AP75 {c['coco_map75']:.3f}  APs {c['coco_map_small']:.3f}  "
            f"APm {c['coco_map_medium']:.3f}  APl {c['coco_map_large']:.3f}"
        )
    lines.append(f"P/R at the score threshold {report.f1_threshold:.3f} (best mean F1)")
    return "\n".join(lines)


def read_detections_json(
    path: str, annotations: Sequence[Annotation], class_names: Sequence[str]
) -> Detected:
    """Detections in the ``predict.py --json`` format, matched to annotations by image_id.

    The file is checked against the classes and the annotated image sizes by
    ``utils.evaluation.detections_file.read_detections_json``, whose docstring lists what is an
    error and what a warning; the warnings (records of images not in the split, split images
    without a record, boxes partly outside their image, ...) become ``failures``, one line
    each with counts.

    Raises:
        ValueError: a file that cannot be scored as it is (the message names it).
    """
    raw_sizes = np.array([(a.width, a.height) for a in annotations], np.int64).reshape(-1, 2)
    dets, warnings = read_detections_file(
        path, [a.image_id for a in annotations], class_names=class_names, image_sizes=raw_sizes
    )
    sizes = np.maximum(raw_sizes, 1)
    return Detected(dets, ground_truth(annotations), sizes, warnings + _oriented(annotations))


def _oriented(annotations: Sequence[Annotation]) -> list[str]:
    """The warning for images with an EXIF orientation whose annotation is on the stored
    pixels, or does not say (``annotation_frame``): ``predict.py`` writes boxes in the
    oriented frame, so its detections of them would be scored against another frame."""
    found = [
        a.image_path
        for a in annotations
        if annotation_frame(a.image_path, a.width, a.height) in ("stored", "ambiguous")
    ]
    if not found:
        return []
    return [
        f"{len(found)} image{'s' if len(found) > 1 else ''} with an EXIF orientation whose "
        f"annotation is on the stored pixels or does not say (e.g. {found[0]}): predict.py "
        "writes boxes of the oriented image, which would be scored against another frame"
    ]


def plot_report(report: EvalReport, out_dir) -> list:
    """Precision-recall curves (per class and mean) and a per-class AP bar chart."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 5))
    grid = np.linspace(0, 1, 101)
    envelopes = []
    for name, (recall, precision) in report.curves.items():
        ax.plot(
            recall,
            precision,
            linewidth=0.8,
            alpha=0.6,
            label=name if len(report.curves) <= 20 else None,
        )
        # interpolated envelope on a common recall grid, for the mean curve
        env = np.maximum.accumulate(np.concatenate([precision, [0]])[::-1])[::-1]
        idx = np.searchsorted(recall, grid, "left")
        envelopes.append(np.where(idx < len(recall), env[np.minimum(idx, len(env) - 1)], 0.0))
    if envelopes:
        ax.plot(
            grid,
            np.mean(envelopes, 0),
            color="black",
            linewidth=2.5,
            label=f"mean (mAP50 {report.voc12_map50:.3f})",
        )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    pr_path = out_dir / "pr_curves.png"
    save_figure_atomic(fig, pr_path)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(report.per_class) + 2), 3.5))
    names = list(report.per_class)
    ax.bar(names, [report.per_class[n]["ap_voc12"] for n in names], color="#4c72b0")
    ax.set_ylabel("AP50 (VOC2010+ area)")
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    fig.tight_layout()
    ap_path = out_dir / "ap_per_class.png"
    save_figure_atomic(fig, ap_path)
    plt.close(fig)
    return [pr_path, ap_path]
