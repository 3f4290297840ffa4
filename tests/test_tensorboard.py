"""TensorBoard logging of training runs, read back with TensorBoard's own reader; and the
progress bar's columns."""

from __future__ import annotations

import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from voc_factory import make_split, tiny_train_config

from utils.training import fit as fit_module
from utils.training.fit import fit
from utils.training.loop import EpochProgress
from utils.training.tensorboard import HPARAMS_DIR, final_metrics, hyper_parameters, scalar_tag

LOSS_TAGS = ["loss/loss_box", "loss/loss_obj", "loss/loss_cls", "loss/loss"]
MAP_TAGS = ["metrics/map50_voc07", "metrics/map50_voc12"]
EVENTS = "events.out.tfevents.*"


def _accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _hparams(folder: Path) -> tuple[dict, dict[str, float]]:
    """The settings a run's ``hparams/`` folder holds, and its metric scalars (tag -> value)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = _accumulator(folder / HPARAMS_DIR)
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    settings = {}
    for name, value in start.hparams.items():
        settings[name] = getattr(value, value.WhichOneof("kind"))
    metrics = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}
    return settings, metrics


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory) -> tuple[Path, Path]:
    return make_split(tmp_path_factory.mktemp("voc"), num_train=8, num_test=2)


def _config(tiny_voc, tmp_path: Path, **kwargs):
    voc_root, classes = tiny_voc
    base = {"log_dir": str(tmp_path), "epochs": 2, "eval_period": 1, "lr": 0.05, "seed": 1}
    return tiny_train_config(voc_root, classes, **{**base, **kwargs})


@pytest.mark.slow
def test_run_writes_losses_lr_maps_pictures_and_hparams(tiny_voc, tmp_path) -> None:
    result = fit(_config(tiny_voc, tmp_path, name="tb"))
    run = result.run_dir
    acc = _accumulator(run)
    scalars = set(acc.Tags()["scalars"])
    assert {*LOSS_TAGS, *MAP_TAGS, "train/lr"} <= scalars
    for tag in [*LOSS_TAGS, *MAP_TAGS, "train/lr"]:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [0, 1], tag  # the epoch is the step
        key = tag.split("/")[1]
        expected = [row[key] for row in result.history]
        assert [e.value for e in events] == pytest.approx(expected, rel=1e-6), tag
    # the pictures the run folder holds, as images of the same size
    batch = acc.Images("train/batch0")
    assert [e.step for e in batch] == [0]
    jpeg = cv2.imread(str(run / "train_batch0.jpg"))
    assert (batch[0].height, batch[0].width) == jpeg.shape[:2]
    decoded = cv2.imdecode(np.frombuffer(batch[0].encoded_image_string, np.uint8), -1)
    assert decoded.shape == jpeg.shape
    # written as RGB: decoding back to BGR gives the JPEG's pixels (up to its compression)
    assert np.abs(decoded.astype(int) - jpeg.astype(int)).mean() < 8
    val = acc.Images("val/predictions")
    assert [e.step for e in val] == [0, 1]
    assert (val[-1].height, val[-1].width) == cv2.imread(str(run / "val_predictions.jpg")).shape[:2]
    settings, metrics = _hparams(run)
    assert settings["epochs"] == 2 and settings["img_size"] == 64
    assert settings["optimizer"] == "sgd" and settings["tensorboard"] == 1.0
    assert "classes" in settings and "resume" not in settings  # None is left out
    last = result.history[-1]
    assert metrics["hparam/epochs_done"] == 2
    assert metrics["hparam/loss"] == pytest.approx(last["loss"])
    assert metrics["hparam/map50_voc12"] == pytest.approx(last["map50_voc12"])
    best = max(r["map50_voc12"] for r in result.history)
    assert metrics["hparam/best_map50_voc12"] == pytest.approx(best)


@pytest.mark.slow
def test_no_tensorboard_writes_no_events(tiny_voc, tmp_path) -> None:
    result = fit(_config(tiny_voc, tmp_path, name="off", epochs=1, tensorboard=False))
    assert (result.run_dir / "results.csv").is_file()
    assert not list(result.run_dir.rglob(EVENTS))
    assert not (result.run_dir / HPARAMS_DIR).exists()


@pytest.mark.slow
def test_resume_continues_the_steps_and_drops_the_interrupted_ones(
    tiny_voc, tmp_path, monkeypatch
) -> None:
    """Killed after epoch 1's events but before its last.pth: the resume starts at epoch 1
    again, and TensorBoard shows each epoch once, epoch 1 from the resumed run."""
    real = fit_module.save_training_checkpoint

    def killed_at_epoch_1(path, step, info, cfg, state=None, **kwargs):
        if path.name == "last.pth" and state is not None and state.epoch == 1:
            raise KeyboardInterrupt
        return real(path, step, info, cfg, state, **kwargs)

    monkeypatch.setattr(fit_module, "save_training_checkpoint", killed_at_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        fit(_config(tiny_voc, tmp_path, name="resumed", epochs=3))
    monkeypatch.setattr(fit_module, "save_training_checkpoint", real)
    run = tmp_path / "resumed"
    assert [e.step for e in _accumulator(run).Scalars("loss/loss")] == [0, 1]
    resumed_at = time.time()
    last = run / "weights" / "last.pth"
    assert torch.load(last, map_location="cpu", weights_only=True)["train_state"]["epoch"] == 0
    result = fit(_config(tiny_voc, tmp_path, epochs=3, resume=str(last)))
    assert result.run_dir == run
    acc = _accumulator(run)
    for tag in [*LOSS_TAGS, *MAP_TAGS, "train/lr"]:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [0, 1, 2], tag
        assert events[0].wall_time < resumed_at <= events[1].wall_time, tag
        key = tag.split("/")[1]
        assert [e.value for e in events] == pytest.approx([r[key] for r in result.history])
    assert [e.step for e in acc.Images("val/predictions")] == [0, 1, 2]
    assert [e.step for e in acc.Images("train/batch0")] == [0, 1]  # each session's first
    assert len(list((run / HPARAMS_DIR).glob(EVENTS))) == 1  # rewritten, not appended
    _, metrics = _hparams(run)
    assert metrics["hparam/epochs_done"] == 3


def test_scalar_tags_and_final_metrics() -> None:
    assert [scalar_tag(k) for k in ("loss_box", "map50_voc12", "lr", "time_s")] == [
        "loss/loss_box",
        "metrics/map50_voc12",
        "train/lr",
        "train/time_s",
    ]
    history = [
        {"epoch": 0, "loss": 3.0, "map50_voc07": "", "map50_voc12": ""},
        {"epoch": 1, "loss": 2.0, "map50_voc07": 0.4, "map50_voc12": 0.5},
        {"epoch": 2, "loss": 1.5, "map50_voc07": 0.3, "map50_voc12": 0.25},
    ]
    assert final_metrics(history) == {
        "hparam/epochs_done": 3.0,
        "hparam/loss": 1.5,
        "hparam/map50_voc07": 0.3,
        "hparam/best_map50_voc07": 0.4,
        "hparam/map50_voc12": 0.25,
        "hparam/best_map50_voc12": 0.5,
    }
    assert final_metrics([]) == {"hparam/epochs_done": 0.0}


def test_hyper_parameters_keep_scalars_and_strings() -> None:
    cfg = tiny_train_config(Path("voc"), None, epochs=7, lr=None)
    settings = hyper_parameters(cfg)
    assert settings["epochs"] == 7 and settings["voc_root"] == "voc" and settings["ema"] is True
    assert "lr" not in settings and "classes" not in settings


# --------------------------------------------------------------------------- progress bar


def _columns(line: str) -> list[tuple[str, int]]:
    """Each whitespace-separated column of ``line`` with the position where it ends."""

    return [(m.group(), m.end()) for m in re.finditer(r"\S+", line)]


@pytest.mark.parametrize("gpu", [False, True])
def test_bar_header_matches_its_columns(gpu) -> None:
    progress = EpochProgress(2, 300, 416, gpu=gpu)
    header = _columns(progress.header())
    row = _columns(progress.describe([1.23456, 0.5, 0.25, 1.98], 17, torch.device("cpu")))
    names = [name for name, _ in header]
    expected = ["Epoch", "box_loss", "obj_loss", "cls_loss", "Instances", "Size"]
    assert names == (["Epoch", "GPU_mem", *expected[1:]] if gpu else expected)
    # every value ends where its column's name ends (right-aligned under it)
    assert [end for _, end in row] == [end for _, end in header]
    assert [value for value, _ in row][:2] == ["3/300", "-" if gpu else "1.2346"]


def test_bar_on_cpu_has_no_memory_column() -> None:
    progress = EpochProgress(0, 5, 64)  # what a CPU run builds (gpu=False)
    line = progress.describe([1.0, 2.0, 3.0, 6.0], 4, torch.device("cpu"))
    assert "G" not in line and "GPU_mem" not in progress.header()
    assert line.split() == ["1/5", "1.0000", "2.0000", "3.0000", "4", "64"]


def test_missing_tensorboard_is_one_line_and_training_goes_on(
    tmp_path, monkeypatch, caplog
) -> None:
    import sys

    from utils.training.tensorboard import open_tensorboard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with caplog.at_level("INFO", logger="train"):
        assert open_tensorboard(tmp_path, enabled=True) is None
    lines = [r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("TensorBoard logging off: ")
    assert open_tensorboard(tmp_path, enabled=False) is None
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flags", [[], ["--no-tensorboard"]])
def test_tensorboard_flag_decides_what_the_run_folder_gets(flags, tmp_path) -> None:
    """The run folder that ``train.py`` opens with these flags: by default an epoch's losses
    are event scalars and the settings are in ``hparams/``; with ``--no-tensorboard`` the
    folder gets its config but no event file and no ``hparams/``."""
    import dataclasses

    import train
    from utils.training.runlog import RunLog

    cfg = dataclasses.replace(train.parse_args(flags)[0], log_dir=str(tmp_path), name="run")
    log = RunLog(cfg, resume_dir=None)
    history = [{"epoch": 0, "loss_box": 0.5, "loss_obj": 1.25, "loss_cls": 0.75, "loss": 2.5}]
    log.log_epoch(history[0])
    log.close(history)
    run = tmp_path / "run"
    assert (run / "config.json").is_file()
    if flags:
        assert not list(run.rglob(EVENTS)) and not (run / HPARAMS_DIR).exists()
        return
    acc = _accumulator(run)
    for tag, value in zip(LOSS_TAGS, (0.5, 1.25, 0.75, 2.5)):
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == [(0, value)], tag
    settings, metrics = _hparams(run)
    assert settings["tensorboard"] == 1.0 and metrics["hparam/loss"] == 2.5
