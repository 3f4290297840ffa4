"""Split a custom VOC-format dataset into train / val / test image sets.

Works on one dataset folder holding ``Annotations/*.xml`` and ``JPEGImages/*`` (either
``<voc-root>/VOC<year>`` or any folder with those two subfolders). Only images that have both
an XML and an image file, and whose XML parses, are split; the others are reported. Images
without objects are kept (they are valid negatives).

The split is a seeded permutation of the sorted image ids, so it depends only on the set of ids,
the ratios and the seed — not on the file system's listing order. Default ratios: 70% train,
10% val (for choosing checkpoints during training), 20% test (held out; large enough for a
stable mAP on small custom sets). The reference implementation's split is ``0.81,0.09,0.1``.
Counts are ``round``-ed with the largest remainders so that they sum to the number of images.

Writes ``ImageSets/Main/{train,val,trainval,test}.txt`` (one id per line, sorted), where
trainval = train + val, and reports per-class instance counts (difficult included) per split.

Usage: ``python -m tools.split --voc-root data/VOCdevkit --year custom`` (splits
``VOCcustom/``) or ``python -m tools.split --folder path/to/dataset``
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.voc import (
    IMAGE_SUFFIXES,
    Annotation,
    FileIssue,
    class_counts,
    parse_voc_xml,
)
from data.xml_safe import read_xml
from utils.errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_RATIOS: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train, val, test
DEFAULT_SEED = 0  # seed of the permutation
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "trainval", "test")  # files written, in order


@dataclass
class SplitResult:
    """Image ids per split, instance counts per split and class, and what was left out."""

    folder: Path
    class_names: list[str]
    splits: dict[str, list[str]]  # split name -> sorted image ids
    counts: dict[str, dict[str, int]]  # split name -> class name -> instances
    issues: list[FileIssue] = field(default_factory=list)


def dataset_folder(voc_root: str | os.PathLike, year: str | None = None) -> Path:
    """``<voc_root>/VOC<year>``, or ``voc_root`` itself when ``year`` is None.

    Raises:
        FileNotFoundError: the folder lacks ``Annotations/`` or ``JPEGImages/`` (names it).
    """
    folder = Path(voc_root) / f"VOC{year}" if year else Path(voc_root)
    for sub in ("Annotations", "JPEGImages"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"{folder / sub}: no such folder (expected a VOC-style tree)")
    return folder


def list_pairs(folder: str | os.PathLike) -> tuple[dict[str, Path], list[FileIssue]]:
    """Image ids that have both ``Annotations/<id>.xml`` and ``JPEGImages/<id>.<image suffix>``.

    Returns:
        ``({image id: image path}, issues for XMLs without images and images without XMLs)``.
    """
    folder = Path(folder)
    xml_ids = {p.stem for p in (folder / "Annotations").glob("*.xml") if p.is_file()}
    candidates = [
        p for p in (folder / "JPEGImages").iterdir() if p.is_file() and p.suffix in IMAGE_SUFFIXES
    ]
    # per id, the suffix data.voc.load_voc looks for first wins (.jpg before .png ...)
    candidates.sort(key=lambda p: IMAGE_SUFFIXES.index(p.suffix), reverse=True)
    images = {p.stem: p for p in candidates}
    issues = [
        FileIssue(str(folder / "Annotations" / f"{i}.xml"), "no image for annotation", "skipped")
        for i in sorted(xml_ids - images.keys())
    ]
    issues += [
        FileIssue(str(images[i]), "no annotation for image", "skipped")
        for i in sorted(images.keys() - xml_ids)
    ]
    return {i: images[i] for i in sorted(xml_ids & images.keys())}, issues


def discover_class_names(xml_paths: Sequence[Path]) -> list[str]:
    """Object names used in the given XML files, sorted (files that do not parse or that
    declare a DTD are ignored: ``parse_voc_xml`` reports them)."""
    names: set[str] = set()
    for path in xml_paths:
        try:
            root = read_xml(path)
        except (ET.ParseError, OSError):
            continue
        for obj in root.iter("object"):  # as data.voc.parse_voc_xml reads them
            name = obj.find("name")
            if name is not None and name.text and name.text.strip():
                names.add(name.text.strip())
    return sorted(names)


def ratios_problem(ratios: Sequence[float]) -> str | None:
    """Why ``ratios`` cannot be ``(train, val, test)`` fractions, or None when they can.

    They must be three finite numbers (not NaN or infinite), each >= 0, summing to 1 within
    1e-6; so they are not all zero and none exceeds 1.
    """
    try:
        values = [float(r) for r in ratios]
    except (TypeError, ValueError):
        return "must be numbers"
    if len(values) != 3:
        return f"must be three fractions TRAIN,VAL,TEST, got {len(values)}"
    if not all(math.isfinite(v) for v in values):
        return "must be finite numbers (no nan or inf)"
    if any(v < 0 for v in values):
        return "must be >= 0"
    if not any(values):
        return "are all zero"
    if abs(math.fsum(values) - 1.0) > 1e-6:
        return f"must sum to 1, they sum to {math.fsum(values):g}"
    return None


def check_ratios(ratios: Sequence[float]) -> None:
    """Raises ``ValueError`` naming the ratios when ``ratios_problem`` finds one."""
    problem = ratios_problem(ratios)
    if problem is not None:
        raise InputError(
            f"ratios {list(ratios)} {problem} (TRAIN,VAL,TEST fractions: finite, >= 0, sum to 1)"
        )


def split_counts(num_images: int, ratios: Sequence[float]) -> list[int]:
    """Images per split: ``num_images * ratio`` rounded so that the counts sum to ``num_images``.

    Largest-remainder rounding: floors first, then one more image to the splits with the
    largest fractional parts (ties to the earlier split).

    Raises:
        ValueError: ratios that ``ratios_problem`` refuses (not three finite fractions >= 0
            summing to 1), or a negative ``num_images``.
    """
    check_ratios(ratios)
    if num_images < 0:
        raise InputError(f"num_images must be >= 0, got {num_images}")
    ratios_arr = np.asarray(ratios, np.float64)
    exact = ratios_arr * num_images
    counts = np.floor(exact + 1e-9).astype(int)
    remainder = exact - counts
    for i in np.argsort(-remainder, kind="stable")[: num_images - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def split_ids(
    image_ids: Sequence[str],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = DEFAULT_SEED,
) -> dict[str, list[str]]:
    """Splits ids into ``train``, ``val``, ``test`` (and ``trainval`` = train + val).

    Deterministic: the ids are sorted, permuted by ``numpy.random.default_rng(seed)`` and cut
    by ``split_counts``. Each returned list is sorted.
    """
    ids = sorted(image_ids)
    n_train, n_val, _ = split_counts(len(ids), ratios)
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    train = sorted(shuffled[:n_train])
    val = sorted(shuffled[n_train : n_train + n_val])
    test = sorted(shuffled[n_train + n_val :])
    return {"train": train, "val": val, "trainval": sorted(train + val), "test": test}


def split_dataset(
    folder: str | os.PathLike,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = DEFAULT_SEED,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> SplitResult:
    """Splits a VOC-style folder and writes ``ImageSets/Main/{train,val,trainval,test}.txt``.

    Args:
        folder: holds ``Annotations/`` and ``JPEGImages/`` (see ``dataset_folder``).
        ratios: ``(train, val, test)`` fractions: finite, >= 0, summing to 1.
        seed: seed of the permutation; the same seed gives the same split.
        class_names: classes to count; ``None`` discovers them from the XMLs (sorted by name).
            Objects of other classes are reported as issues and not counted.
        overwrite: replace existing set files (refused by default, so that an official split
            such as VOC2007's is not lost by accident).

    Returns:
        A ``SplitResult``; its ``issues`` list the files left out and the objects skipped.

    Raises:
        FileExistsError: a set file exists and ``overwrite`` is False.
        ValueError: bad ratios, or no image has both an XML and an image file.
    """
    check_ratios(ratios)  # before reading or writing anything
    folder = Path(folder)
    out_dir = folder / "ImageSets" / "Main"
    existing = [out_dir / f"{n}.txt" for n in SPLIT_NAMES if (out_dir / f"{n}.txt").exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(map(str, existing))} already exist(s); pass --force (overwrite=True) "
            "to replace them"
        )
    pairs, issues = list_pairs(folder)
    xml_paths = {i: folder / "Annotations" / f"{i}.xml" for i in pairs}
    if class_names is None:
        class_names = discover_class_names(list(xml_paths.values()))
        logger.info("classes found in the XMLs: %s", ", ".join(class_names))
    annotations: dict[str, Annotation] = {}
    for image_id, image_path in pairs.items():
        ann, ann_issues = parse_voc_xml(xml_paths[image_id], class_names, str(image_path))
        issues += ann_issues
        if ann is not None:
            annotations[image_id] = ann
    if not annotations:
        raise InputError(f"{folder}: no image has both a readable XML and an image file")
    for issue in issues:
        logger.warning("%s", issue)
    splits = split_ids(list(annotations), ratios, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_NAMES:
        (out_dir / f"{name}.txt").write_text("".join(f"{i}\n" for i in splits[name]))
    counts = {
        name: class_counts((annotations[i] for i in ids), class_names)
        for name, ids in splits.items()
    }
    logger.info("%s: %s", out_dir, ", ".join(f"{n} {len(splits[n])} images" for n in SPLIT_NAMES))
    return SplitResult(folder, list(class_names), splits, counts, issues)


def format_counts(result: SplitResult) -> str:
    """A text table: one row per class plus totals, one column per split."""
    names = list(SPLIT_NAMES)
    width = max([len("images"), *(len(c) for c in result.class_names)])
    lines = [f"{'class':<{width}}" + "".join(f"{n:>10}" for n in names)]
    for cls in result.class_names:
        lines.append(f"{cls:<{width}}" + "".join(f"{result.counts[n][cls]:>10}" for n in names))
    totals = [sum(result.counts[n].values()) for n in names]
    lines.append(f"{'objects':<{width}}" + "".join(f"{t:>10}" for t in totals))
    lines.append(f"{'images':<{width}}" + "".join(f"{len(result.splits[n]):>10}" for n in names))
    return "\n".join(lines)
