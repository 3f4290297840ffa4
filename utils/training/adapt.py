"""How a run fits its data before the first step: initial weights, anchors, grid sensitivity
and the schedule derived from the run's length and the data set's size."""

from __future__ import annotations

from dataclasses import dataclass, replace

from nets.checkpoint import ModelInfo
from nets.decode import SCALE_X_Y
from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK, YoloBody
from utils.training.anchor_choice import AnchorChoice, resolve_anchors
from utils.training.config import TrainConfig
from utils.training.schedule import Schedule, resolve_schedule
from utils.training.setup import DataSetup, load_initial_weights
from utils.training.state import TrainState


@dataclass
class FittedRun:
    """What ``fit_to_data`` decided: the config with its derived schedule, the model's
    geometry, and how the anchors were chosen (None on resume: the checkpoint's are kept)."""

    cfg: TrainConfig
    info: ModelInfo
    schedule: Schedule
    anchors: AnchorChoice | None


def fit_to_data(
    cfg: TrainConfig,
    model: YoloBody,
    data: DataSetup,
    checkpoint: dict | None,
    state: TrainState,
    world: int,
) -> FittedRun:
    """Initial weights (a new run), anchors, grid sensitivity and schedule for this data set.

    A new run loads ``cfg.weights`` into ``model``, picks anchors (``--anchors``) and takes the
    weights' ``scale_x_y`` unless ``--scale-xy`` is set; a resumed run keeps the checkpoint's
    anchors, factor and progress (loaded into ``state``). The schedule is derived from the run
    length and ``data``'s size either way (a resumed config is already resolved).
    """
    if checkpoint is None:
        initial = load_initial_weights(model, cfg)
        choice = resolve_anchors(
            cfg.anchors,
            data.train,
            cfg.img_size,
            include_difficult=cfg.include_difficult,
            seed=cfg.seed,
        )
        anchors = list(choice.anchors)
        scale = cfg.scale_xy if cfg.scale_xy is not None else initial.scale_x_y
        pretrained = initial.pretrained
    else:  # as the interrupted run had them
        state.load_state_dict(checkpoint["train_state"])
        choice = None
        anchors = [tuple(a) for a in checkpoint.get("anchors", DEFAULT_ANCHORS)]
        scale = float(checkpoint.get("scale_x_y", SCALE_X_Y))
        pretrained = state.freeze_epochs > 0 or cfg.freeze_epochs != 0
    cfg = replace(cfg, scale_xy=scale)
    cfg, schedule = resolve_schedule(
        cfg, len(data.train), pretrained=pretrained, world=world, resumed=checkpoint is not None
    )
    if checkpoint is None:
        state.freeze_epochs = cfg.freeze_epochs
    info = ModelInfo(
        phi=model.phi,
        phi_name=model.phi_name,
        num_classes=len(data.class_names),
        class_names=data.class_names,
        anchors=anchors,
        anchors_mask=list(DEFAULT_ANCHORS_MASK),
        input_size=cfg.img_size,
        attention_at=model.attention_at,
        attention_args=model.attention_args,
        scale_x_y=scale,
    )
    return FittedRun(cfg, info, schedule, choice)
