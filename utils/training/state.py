"""Where a run stands between epochs, and the one function that writes its checkpoints."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from nets.checkpoint import ModelInfo, save_checkpoint

if TYPE_CHECKING:
    from utils.training.config import TrainConfig
    from utils.training.loop import TrainStep


@dataclass
class TrainState:
    """The run's progress: what ``--resume`` restores besides the weights and optimizer."""

    epoch: int = -1  # last epoch whose training finished
    best_map: float = -1.0  # best mAP@0.5 (VOC2010+ area) so far; -1 before any evaluation
    stale: int = 0  # evaluations since the best one
    history: list[dict] = field(default_factory=list)  # one results.csv row per finished epoch
    freeze_epochs: int = 0  # frozen-backbone epochs of this run (0 when it started from scratch)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "best_map": self.best_map,
            "stale": self.stale,
            "history": list(self.history),
            "freeze_epochs": self.freeze_epochs,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.best_map, self.stale = state["epoch"], state["best_map"], state["stale"]
        self.history = list(state.get("history", []))
        self.freeze_epochs = state["freeze_epochs"]

    def record_map(self, map50: float) -> bool:
        """Counts an evaluation; True when ``map50`` is a new best."""
        if map50 > self.best_map:
            self.best_map, self.stale = map50, 0
            return True
        self.stale += 1
        return False


def save_training_checkpoint(
    path: str | os.PathLike,
    step: TrainStep,
    info: ModelInfo,
    cfg: TrainConfig,
    state: TrainState | None = None,
    **extra: Any,
) -> None:
    """Writes a checkpoint atomically. Its ``model`` is the EMA weights (what inference and
    evaluation use); with ``state`` it also holds the raw weights, optimizer, grad-scaler and
    EMA state and the run's progress: everything ``--resume`` needs (``last.pth``)."""
    payload: dict[str, Any] = {"config": asdict(cfg), **extra}
    if state is not None:
        payload["train_state"] = {**step.state_dict(), **state.state_dict()}
    save_checkpoint(path, step.eval_model(), info, **payload)
