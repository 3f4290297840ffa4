"""The run folder: config, results.csv and its plot, train.log, and pictures of a training
batch and of predictions."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nets.checkpoint import ModelInfo
from utils.engine.config import TrainConfig
from utils.paths import write_text_atomic
from utils.sources import increment_path

logger = logging.getLogger("train")


class RunLog:
    """Run folder: config, results.csv, results.png, train.log, pictures, checkpoints."""

    def __init__(self, cfg: TrainConfig, resume_dir: Path | None) -> None:
        self.dir = resume_dir or increment_path(Path(cfg.log_dir) / cfg.name)
        (self.dir / "weights").mkdir(parents=True, exist_ok=True)
        for stale in (self.dir / "weights").glob("*.tmp"):  # a save killed halfway
            stale.unlink()
        self.csv = self.dir / "results.csv"
        handler = logging.FileHandler(self.dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        self.handler = handler
        (self.dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    def write_history(self, history: list[dict]) -> None:
        """Rewrites results.csv (atomically) and its plot from the run's per-epoch rows, so
        that the file always matches the checkpoint a resume starts from."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        write_text_atomic(self.csv, text.getvalue())
        self.plot()

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with open(self.csv) as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return
        epochs = [int(r["epoch"]) for r in rows]
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
        for ax, key in zip(axes, ["loss_box", "loss_obj", "loss_cls"]):
            ax.plot(epochs, [float(r[key]) for r in rows], marker=".")
            ax.set_title(key)
            ax.set_xlabel("epoch")
        evaluated = [r for r in rows if r["map50_voc12"] != ""]
        for key, label in (("map50_voc12", "mAP50 (VOC12 area)"), ("map50_voc07", "mAP50 (VOC07)")):
            axes[3].plot(
                [int(r["epoch"]) for r in evaluated],
                [float(r[key]) for r in evaluated],
                marker="o",
                label=label,
            )
        axes[3].set_title("mAP@0.5")
        axes[3].legend()
        fig.tight_layout()
        fig.savefig(self.dir / "results.png", dpi=90)
        plt.close(fig)

    def close(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


def save_batch_picture(images, targets, class_names, path: Path) -> None:
    import cv2

    from data.preview import draw_batch

    cv2.imwrite(str(path), draw_batch(images[:16], targets[targets[:, 0] < 16], class_names))


def save_val_pictures(model, info: ModelInfo, annotations, path: Path, device) -> None:
    """A few validation images with the current (EMA) model's predictions."""
    import cv2

    from utils.inference.predictor import Detector, InferenceConfig
    from utils.sources import ImageReadError, read_image
    from utils.visualize import draw_detections

    detector = Detector(
        model, info, config=InferenceConfig(input_size=info.input_size, device=str(device))
    )
    tiles = []
    for ann in annotations:
        with contextlib.suppress(ImageReadError):
            image = read_image(ann.image_path)
            drawn = draw_detections(image, detector(image))
            tiles.append(cv2.resize(drawn, (320, round(320 * image.shape[0] / image.shape[1]))))
    if tiles:
        height = max(t.shape[0] for t in tiles)
        row = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
        cv2.imwrite(str(path), np.hstack(row))
    model.float()
