"""Builds tiny VOC trees in a temporary folder for tests."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import cv2
import numpy as np

CLASSES = ["box", "disc"]


def xml_text(filename: str, width: int, height: int, objects: list[dict]) -> str:
    """objects: {"name", "box": (xmin, ymin, xmax, ymax) 1-based, "difficult": 0/1}."""
    parts = [
        f"<annotation><folder>VOC2007</folder><filename>{filename}</filename>",
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for obj in objects:
        x1, y1, x2, y2 = obj["box"]
        parts.append(
            f"<object><name>{obj['name']}</name><difficult>{obj.get('difficult', 0)}</difficult>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
            "</bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


def make_voc(
    root: Path,
    num_images: int = 6,
    size: tuple[int, int] = (128, 96),
    seed: int = 0,
    image_set: str = "trainval",
) -> Path:
    """Writes ``root/VOC2007`` with one or two solid objects per image; returns ``root``.

    Box i of an image is drawn exactly where its XML says (1-based inclusive coordinates).
    """
    rng = np.random.default_rng(seed)
    folder = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    w, h = size
    for i in range(num_images):
        image_id = f"{i:06d}"
        image = np.full((h, w, 3), 40, np.uint8)
        objects = []
        for k in range(1 + i % 2):
            bw, bh = int(rng.integers(16, w // 2)), int(rng.integers(16, h // 2))
            x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            name = CLASSES[(i + k) % 2]
            color = (0, 0, 255) if name == "box" else (255, 255, 0)
            image[y1 : y1 + bh, x1 : x1 + bw] = color
            objects.append(
                {
                    "name": name,
                    "box": (x1 + 1, y1 + 1, x1 + bw, y1 + bh),
                    "difficult": int(i == 1 and k == 1),
                }
            )
        cv2.imwrite(str(folder / "JPEGImages" / f"{image_id}.jpg"), image)
        (folder / "Annotations" / f"{image_id}.xml").write_text(
            xml_text(f"{image_id}.jpg", w, h, objects)
        )
        ids.append(image_id)
    (folder / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(ids) + "\n")
    return root


def make_split(root: Path, num_train: int, num_test: int) -> tuple[Path, Path]:
    """A tiny VOC tree with trainval and test sets plus its classes file, under ``root``:
    ``(voc_root, classes_file)``."""
    voc_root = root / "VOCdevkit"
    make_voc(voc_root, num_images=num_train, size=(96, 80), image_set="trainval")
    make_voc(voc_root, num_images=num_test, size=(96, 80), seed=1, image_set="test")
    classes = root / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    return voc_root, classes


def tiny_train_config(voc_root: Path, classes: Path | None, **overrides):
    """A TrainConfig for seconds-long CPU runs on ``make_split`` data (64 px, from scratch)."""
    from utils.training.config import TrainConfig

    base = {
        "voc_root": str(voc_root),
        "train_sets": "2007:trainval",
        "val_set": "2007:test",
        "classes": str(classes) if classes else None,
        "img_size": 64,
        "epochs": 1,
        "freeze_epochs": 0,
        "batch_size": 4,
        "freeze_batch_size": 4,
        "weights": "none",
        "workers": 0,
        "eval_period": 0,
    }
    return TrainConfig(**{**base, **overrides})


def train_tiny_checkpoint(tmp_path: Path, epochs: int) -> tuple[Path, Path, str]:
    """``make_split`` data (6 train, 4 test images) and a checkpoint trained on it for
    ``epochs`` epochs at 64 px: ``(voc_root, classes_file, path of last.pth)``.

    Tests take it through conftest's session fixture ``trained_tiny_checkpoint``, which
    trains each epoch count once per session."""
    from utils.training.fit import fit

    root, classes = make_split(tmp_path, num_train=6, num_test=4)
    result = fit(
        tiny_train_config(root, classes, epochs=epochs, batch_size=2, log_dir=str(tmp_path), lr=0.1)
    )
    return root, classes, str(result.run_dir / "weights" / "last.pth")


def run_with_file_size_limit(
    cmd: list[str], max_bytes: int, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs ``cmd`` with writes past ``max_bytes`` per file failing (EFBIG), as a full disk
    would make them fail at the end of a run."""

    def limit() -> None:  # in the child only
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        preexec_fn=limit,
        timeout=300,
    )
