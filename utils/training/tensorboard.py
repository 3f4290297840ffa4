"""TensorBoard event files in the run folder, so that ``tensorboard --logdir logs`` shows every run.

Per epoch (the global step is the epoch, counted from 0 as in results.csv): each loss term,
the lr, the epoch's duration and, when the epoch was evaluated, both mAPs; the first training
batch and the validation predictions as images; at the end of the run (whatever ends it) the
settings with the final metrics for the HParams dashboard.

A resumed run appends to its folder: its writer starts with a purge at the epoch it resumes
from, so that steps the interrupted run wrote past its ``last.pth`` are dropped by TensorBoard
instead of showing twice. The hyper-parameters live in the ``hparams/`` sub-folder, rewritten
whenever a run ends, so a run resumed three times still has one HParams row, with the final
values.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("train")

HPARAMS_DIR = "hparams"  # the sub-folder (a TensorBoard run of its own) holding the settings
EVENTS_GLOB = "events.out.tfevents.*"


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a results.csv column: losses under ``loss/``, mAPs under
    ``metrics/``, the rest (lr, epoch time) under ``train/``; the column name is kept so that
    the two can be read side by side."""
    if key.startswith("loss"):
        return f"loss/{key}"
    if key.startswith("map"):
        return f"metrics/{key}"
    return f"train/{key}"


def final_metrics(history: list[dict]) -> dict[str, float]:
    """What the HParams dashboard shows next to the settings: the last epoch's total loss,
    the last and the best evaluated mAPs, and how many epochs the run finished."""
    metrics: dict[str, float] = {"hparam/epochs_done": float(len(history))}
    if history and _number(history[-1].get("loss")) is not None:
        metrics["hparam/loss"] = float(history[-1]["loss"])
    for key in ("map50_voc07", "map50_voc12"):
        values = [v for v in (_number(r.get(key)) for r in history) if v is not None]
        if values:
            metrics[f"hparam/{key}"] = values[-1]
            metrics[f"hparam/best_{key}"] = max(values)
    return metrics


def hyper_parameters(cfg: Any) -> dict[str, int | float | str | bool]:
    """The settings of a config dataclass that TensorBoard can show: numbers, strings and
    booleans (unset options, None, are left out: HParams has no value for them)."""
    return {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if isinstance(v, (bool, int, float, str)) and not (isinstance(v, float) and math.isnan(v))
    }


def _number(value: Any) -> float | None:
    """A results.csv cell as a float; None for the empty cell of an epoch not evaluated."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class TensorBoardLog:
    """Writes one run's event files; built by ``open_tensorboard``.

    The writer is opened on the first write, at the step of that write: on a resume that is
    the epoch the run resumes from, where the purge has to start.
    """

    def __init__(self, run_dir: Path, writer_cls: type) -> None:
        self.dir = run_dir
        self._writer_cls = writer_cls
        self._writer = None
        # events already here: this run continues an interrupted one (--resume)
        self._continues = any(run_dir.glob(EVENTS_GLOB))

    def _open(self, step: int):
        if self._writer is None:
            purge = step if self._continues else None
            self._writer = self._writer_cls(log_dir=str(self.dir), purge_step=purge)
        return self._writer

    def epoch(self, record: dict) -> None:
        """One results.csv row (``record["epoch"]`` is the step): every numeric column but
        the epoch; an empty mAP cell (not evaluated) is skipped. Flushed at once, so that the
        dashboard shows the epoch as soon as it ends."""
        step = int(record["epoch"])
        writer = self._open(step)
        for key, value in record.items():
            number = _number(value)
            if key != "epoch" and number is not None:
                writer.add_scalar(scalar_tag(key), number, step)
        writer.flush()

    def image(self, tag: str, bgr: np.ndarray | None, step: int) -> None:
        """A picture the run folder also holds as a JPEG (OpenCV's BGR order); None (no
        picture was drawn) writes nothing."""
        if bgr is None:
            return
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        self._open(step).add_image(tag, rgb, step, dataformats="HWC")

    def close(self, cfg: Any, history: list[dict]) -> None:
        """Writes the settings and ``final_metrics(history)`` into ``hparams/`` (replacing an
        earlier session's), then flushes and closes the writer."""
        try:
            self._write_hparams(cfg, history)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _write_hparams(self, cfg: Any, history: list[dict]) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = final_metrics(history)
        step = int(history[-1]["epoch"]) if history else 0
        folder = self.dir / HPARAMS_DIR
        shutil.rmtree(folder, ignore_errors=True)
        experiment, start, end = hparams(hyper_parameters(cfg), metrics)
        with self._writer_cls(log_dir=str(folder)) as writer:
            for summary in (experiment, start, end):
                writer.file_writer.add_summary(summary, step)
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, step)


def open_tensorboard(run_dir: Path, enabled: bool) -> TensorBoardLog | None:
    """The run's TensorBoard log, or None when ``--no-tensorboard`` turned it off or
    TensorBoard is not installed (said in one line; training goes on without it)."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        logger.info("TensorBoard logging off: %s (pip install tensorboard turns it on)", err)
        return None
    return TensorBoardLog(run_dir, SummaryWriter)
