"""The run folder: config, results.csv and its plot, train.log, pictures of a training batch
and of predictions, and TensorBoard event files (``utils.training.tensorboard``)."""

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
from utils.paths import save_figure_atomic, write_image_atomic, write_text_atomic
from utils.runlock import FolderLock
from utils.sources import increment_path
from utils.training.config import TrainConfig
from utils.training.tensorboard import open_tensorboard

logger = logging.getLogger("train")


def claim_run_folder(base: Path) -> Path:
    """Makes a new run folder: ``base``, else ``base2``, ``base3``... whichever this call
    creates. The folder is made without ``exist_ok`` and the next name tried when another
    process made it first, so two runs started at once with one ``--name`` never share one."""
    base.parent.mkdir(parents=True, exist_ok=True)
    while True:
        candidate = increment_path(base)
        try:
            candidate.mkdir()
        except FileExistsError:  # taken between the look and the mkdir: take the next
            continue
        return candidate


class RunLog:
    """Run folder: config, results.csv, results.png, train.log, pictures, checkpoints, and
    TensorBoard events unless ``--no-tensorboard``.

    The folder is locked (``utils.runlock.FolderLock``) from before its first file is written
    until ``close``: a new run claims and locks a new folder; a resumed run passes the lock it
    took on its folder before reading anything else.
    """

    def __init__(
        self, cfg: TrainConfig, resume_dir: Path | None, lock: FolderLock | None = None
    ) -> None:
        if resume_dir is None:
            self.dir = claim_run_folder(Path(cfg.log_dir) / cfg.name)
            lock = FolderLock(self.dir, "run").acquire()  # nobody else knows the folder yet
        else:
            self.dir = resume_dir
            if lock is None:
                lock = FolderLock(self.dir, "run").acquire()
        self.lock = lock
        try:
            self._open(cfg)
        except BaseException:
            lock.release()  # a run that could not start holds nothing
            raise

    def _open(self, cfg: TrainConfig) -> None:
        (self.dir / "weights").mkdir(parents=True, exist_ok=True)
        for stale in (self.dir / "weights").glob("*.tmp"):  # a save killed halfway
            stale.unlink()
        self.csv = self.dir / "results.csv"
        write_text_atomic(self.dir / "config.json", json.dumps(asdict(cfg), indent=2))
        handler = logging.FileHandler(self.dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        self.handler = handler
        self.cfg = cfg
        try:
            self.tensorboard = open_tensorboard(self.dir, cfg.tensorboard)
        except BaseException:
            logging.getLogger().removeHandler(handler)
            handler.close()
            raise

    def to_file(self, level: int, msg: str, *args: object) -> None:
        """A ``train`` message for train.log only: the detail the console gets a summary of."""
        self.handler.handle(logger.makeRecord(logger.name, level, __file__, 0, msg, args, None))

    def log_epoch(self, record: dict) -> None:
        """One epoch's results.csv row to TensorBoard, written through before last.pth: a kill
        between the two leaves steps the resume purges, never an epoch missing."""
        if self.tensorboard is not None:
            self.tensorboard.epoch(record)

    def log_picture(self, tag: str, image: np.ndarray | None, epoch: int) -> None:
        """A picture also saved as a JPEG (BGR) to TensorBoard at ``epoch``."""
        if self.tensorboard is not None:
            self.tensorboard.image(tag, image, epoch)

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
        save_figure_atomic(fig, self.dir / "results.png", dpi=90)
        plt.close(fig)

    def close(self, history: list[dict] | None = None) -> None:
        """Ends the run's logging, however the run ended: the settings and the final metrics
        of ``history`` (the run's rows, resumed ones included) go to TensorBoard, its writer
        is flushed and closed, and train.log is detached."""
        try:
            if self.tensorboard is not None:
                self.tensorboard.close(self.cfg, history or [])
        except OSError as err:  # a full disk must not hide how the run ended
            logger.warning("TensorBoard: could not write the run's settings: %s", err)
        finally:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
            self.lock.release()  # last: the run has written everything it will


def save_batch_picture(images, targets, class_names, path: Path) -> np.ndarray:
    """The first 16 images of a training batch with their boxes, saved; returns the picture
    (BGR) for TensorBoard."""
    from data.preview import draw_batch

    picture = draw_batch(images[:16], targets[targets[:, 0] < 16], class_names)
    write_image_atomic(path, picture)
    return picture


def save_val_pictures(model, info: ModelInfo, annotations, path: Path, device) -> np.ndarray | None:
    """A few validation images with the current (EMA) model's predictions, saved side by side;
    returns the picture (BGR), or None when no image could be read."""
    import cv2

    from utils.inference.predictor import Detector, InferenceConfig
    from utils.sources import ImageReadError, read_image
    from utils.visualize import draw_detections

    detector = Detector(
        model, info, config=InferenceConfig(img_size=info.input_size, device=str(device))
    )
    tiles = []
    for ann in annotations:
        with contextlib.suppress(ImageReadError):
            image = read_image(ann.image_path)
            drawn = draw_detections(image, detector(image))
            tiles.append(cv2.resize(drawn, (320, round(320 * image.shape[0] / image.shape[1]))))
    picture = None
    if tiles:
        height = max(t.shape[0] for t in tiles)
        row = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
        picture = np.hstack(row)
        write_image_atomic(path, picture)
    model.float()
    return picture
