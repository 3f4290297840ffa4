"""The schedule derived from the run's length and data set size, and the anchors chosen for
the training boxes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data.voc import Annotation
from nets.yolo import DEFAULT_ANCHORS
from utils.training.anchor_choice import AUTO_MAX_DEFAULT_IOU, resolve_anchors
from utils.training.config import TrainConfig
from utils.training.optim import fitted_lrs, lr_at
from utils.training.schedule import MIN_WARMUP_ITERS, resolve_schedule


def test_voc_sized_runs_keep_the_reference_schedule() -> None:
    cfg, s = resolve_schedule(TrainConfig(epochs=300), 16551, pretrained=True)
    assert (cfg.batch_size, cfg.freeze_batch_size, cfg.freeze_epochs) == (16, 32, 50)
    assert cfg.warmup_epochs == 3 and s.reasons == [] and s.warnings == []
    assert cfg.lr is None  # 1e-2 at batch 64, scaled by batch/64 as the reference does
    assert s.steps_per_epoch == 16551 // 16 and s.strong_aug_until == 210


def test_small_data_gets_smaller_batches_a_partial_freeze_and_a_real_warmup() -> None:
    cfg, s = resolve_schedule(TrainConfig(epochs=60), 55, pretrained=True)
    assert cfg.freeze_epochs == 10 < cfg.epochs
    assert cfg.batch_size == 4 and s.steps_per_epoch == 13  # not 3 steps at batch 16
    assert cfg.freeze_batch_size == 4
    assert s.warmup_iters >= MIN_WARMUP_ITERS  # not 13 steps (one epoch)
    assert s.warnings == []
    assert fitted_lrs(cfg, cfg.batch_size)[0] == pytest.approx(1e-2)  # not 1e-2 * 4/64
    line = s.describe(0.01, 0.0001)
    for part in ("60 epochs", "batch 4 (13 steps/epoch)", "epochs 1-10", "until epoch 42"):
        assert part in line
    assert "batch 16 -> 4: the smallest batch the rules allow; 55 images give 13 steps" in line
    _, big = resolve_schedule(TrainConfig(epochs=60), 210, pretrained=True)
    assert "batch 16 -> 8: 210 images give at least 24 steps per epoch" in big.describe(0.01, 0)


def test_warmup_floor_is_at_most_a_fifth_of_a_tiny_run() -> None:
    _, s = resolve_schedule(TrainConfig(epochs=5), 40, pretrained=False)
    total = 5 * s.steps_per_epoch
    assert s.warmup_iters <= 0.2 * total + 1 and s.freeze_epochs == 0


def test_explicit_values_are_kept_with_warnings() -> None:
    cfg = TrainConfig(epochs=20, freeze_epochs=50, batch_size=32, freeze_batch_size=32)
    resolved, s = resolve_schedule(cfg, 55, pretrained=True)
    assert (resolved.freeze_epochs, resolved.batch_size) == (50, 32)
    assert any("frozen for the whole run" in w for w in s.warnings)
    assert any("--batch-size 32 on 55 images is 1 optimizer step" in w for w in s.warnings)


def test_no_freezing_without_pretrained_weights() -> None:
    cfg, s = resolve_schedule(TrainConfig(epochs=30, freeze_epochs=5), 500, pretrained=False)
    assert cfg.freeze_epochs == 0
    assert s.warnings == ["--freeze-epochs 5 ignored: training from scratch, the backbone has "
                          "nothing to keep"]  # fmt: skip
    _, s = resolve_schedule(TrainConfig(epochs=30), 500, pretrained=False)
    assert s.warnings == []  # nothing was asked for


def test_resolving_a_resolved_config_changes_nothing() -> None:
    """A resumed run reads the resolved config back and must follow the same schedule."""
    cfg, s = resolve_schedule(TrainConfig(epochs=40), 210, pretrained=True)
    again, s2 = resolve_schedule(cfg, 210, pretrained=True)
    assert again == cfg and s2.warmup_iters == s.warmup_iters


def test_a_resumed_run_saved_before_the_rules_keeps_its_warmup_and_lr() -> None:
    old = TrainConfig(epochs=20, batch_size=8, freeze_batch_size=8, freeze_epochs=3)
    kept, s = resolve_schedule(old, 210, pretrained=True, resumed=True)
    assert kept.lr is None and kept.warmup_epochs is None  # the lr schedule's own defaults
    assert s.warmup_epochs == 1 and s.warmup_iters == 26
    new, _ = resolve_schedule(old, 210, pretrained=True)
    assert new.lr is not None and new.warmup_epochs > 1


@pytest.mark.parametrize("epochs", [10, 40, 300])
def test_the_warmup_a_resumed_schedule_reports_is_the_one_the_lr_follows(epochs: int) -> None:
    """With warmup unset the lr schedule picks its own; the schedule line must name that one."""
    kept, s = resolve_schedule(TrainConfig(epochs=epochs), 5000, pretrained=True, resumed=True)
    assert kept.warmup_epochs is None
    assert s.warmup_epochs == {10: 1, 40: 2, 300: 3}[epochs]
    lr, min_lr = 1e-2, 1e-4
    assert lr_at(kept, s.warmup_epochs, lr, min_lr) == pytest.approx(lr)  # the peak
    assert lr_at(kept, s.warmup_epochs * 0.9, lr, min_lr) < 0.9 * lr  # still climbing


def _annotations(sizes: list[tuple[float, float]]) -> list[Annotation]:
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate(sizes):
        x, y = rng.uniform(0, 100, 2)
        box = np.array([[x, y, x + w, y + h]], np.float32)
        out.append(
            Annotation(f"{i}.jpg", str(i), box, np.zeros(1, np.int64), np.zeros(1, bool), 416, 416)
        )
    return out


def test_auto_anchors_switch_to_kmeans_only_when_darknets_fit_poorly() -> None:
    rng = np.random.default_rng(1)
    tiny = [tuple(rng.uniform(3, 8, 2)) for _ in range(200)]  # far below 416's anchors
    choice = resolve_anchors("auto", _annotations(tiny), 416)
    assert choice.default_iou < AUTO_MAX_DEFAULT_IOU and choice.source == "kmeans"
    assert choice.chosen_iou > choice.default_iou and "fit below" in choice.describe()

    # the demo set's fit at 160 px (0.6): better k-means anchors exist, darknet's are kept
    medium = [tuple(rng.uniform(15, 60, 2)) for _ in range(200)]
    choice = resolve_anchors("auto", _annotations(medium), 416)
    assert choice.default_iou >= AUTO_MAX_DEFAULT_IOU and choice.source == "default"
    assert choice.anchors == tuple(DEFAULT_ANCHORS) and "k-means would reach" in choice.reason


def test_anchor_settings_kmeans_default_and_file(tmp_path) -> None:
    boxes = _annotations([(10 + i, 12 + 2 * i) for i in range(40)])
    km = resolve_anchors("kmeans", boxes, 416, seed=3)
    assert km.source == "kmeans" and len(km.anchors) == 6
    assert resolve_anchors("kmeans", boxes, 416, seed=3) == km  # deterministic per seed
    assert resolve_anchors(None, boxes, 416).anchors == tuple(DEFAULT_ANCHORS)
    f = tmp_path / "a.txt"
    f.write_text("1,2, 3,4, 5,6, 7,8, 9,10, 11,12\n")
    from_file = resolve_anchors(str(f), boxes, 416)
    assert from_file.anchors[0] == (1.0, 2.0)
    assert from_file.chosen_iou < from_file.default_iou and "fits these boxes worse" in (
        from_file.reason
    )
    km_file = tmp_path / "km.txt"
    km_file.write_text(", ".join(f"{w:g},{h:g}" for w, h in km.anchors) + "\n")
    assert resolve_anchors(str(km_file), boxes, 416).reason == "from the file"  # it fits better
    f.write_text("1,2, 3,4\n")
    with pytest.raises(ValueError, match="2 anchors, but the model has 6"):
        resolve_anchors(str(f), boxes, 416)
    with pytest.raises(ValueError, match="--anchors kmeans"):
        resolve_anchors("kmeans", boxes[:3], 416)


def test_config_rejects_bad_schedule_values() -> None:
    with pytest.raises(ValueError, match="--batch-size 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="--scale-xy"):
        TrainConfig(scale_xy=3.0)
    assert dataclasses.replace(TrainConfig(), batch_size=None).batch_size is None
