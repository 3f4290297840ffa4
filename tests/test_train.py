"""Training machinery: schedule, optimizer groups, freezing, checkpoints, exact resume, DDP."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import exit_code
from voc_factory import CLASSES, make_split, tiny_train_config

from nets.checkpoint import load_model
from nets.yolo import YoloBody
from utils.training.config import TrainConfig
from utils.training.fit import fit
from utils.training.loop import TrainStep
from utils.training.optim import (
    ModelEMA,
    build_optimizer,
    fitted_lrs,
    keep_frozen_bn_eval,
    lr_at,
    set_backbone_frozen,
)
from utils.training.setup import merge_resume

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- schedule


def test_fitted_lrs_scale_with_batch_and_clamp() -> None:
    cfg = TrainConfig()
    assert fitted_lrs(cfg, 16) == pytest.approx((2.5e-3, 2.5e-5))
    assert fitted_lrs(cfg, 1)[0] == pytest.approx(5e-4)  # clamped below
    assert fitted_lrs(replace(cfg, lr=1.0), 64)[0] == pytest.approx(5e-2)  # clamped above
    adam = replace(cfg, optimizer="adam")
    assert fitted_lrs(adam, 16)[0] == pytest.approx(3e-4)  # 16/64 * 1e-3 clamped to 3e-4


def test_cosine_schedule_warmup_and_hold() -> None:
    cfg = TrainConfig(epochs=100)  # warmup min(max(5, 1), 3) = 3, hold min(max(5, 1), 15) = 5
    lr, min_lr = 0.01, 0.0001
    assert lr_at(cfg, 0.0, lr, min_lr) == pytest.approx(0.001)  # starts at 0.1 * lr
    assert lr_at(cfg, 1.5, lr, min_lr) == pytest.approx(0.001 + 0.009 * 0.25)  # quadratic
    assert lr_at(cfg, 3.0, lr, min_lr) == pytest.approx(lr)
    values = [lr_at(cfg, e, lr, min_lr) for e in range(3, 95)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert lr_at(cfg, 95.0, lr, min_lr) == min_lr and lr_at(cfg, 99.9, lr, min_lr) == min_lr


def test_step_schedule() -> None:
    cfg = TrainConfig(epochs=100, lr_schedule="step")
    assert lr_at(cfg, 0, 0.01, 0.0001) == pytest.approx(0.01)
    assert lr_at(cfg, 99, 0.01, 0.0001) == pytest.approx(0.0001)


def test_weight_decay_only_on_conv_and_linear_weights() -> None:
    model = YoloBody(3, "se")
    opt = build_optimizer(model, TrainConfig())
    no_decay, decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    for name, p in model.named_parameters():
        expected = name.endswith("weight") and p.ndim > 1  # conv and linear weights
        assert (id(p) in decayed) == expected, name
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_ema_update_follows_its_formula_for_every_tensor() -> None:
    torch.manual_seed(0)
    model = YoloBody(3, 4)  # CA: BN inside the attention block too
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    before = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.backbone.conv1.bn.num_batches_tracked += 7
        model.backbone.conv1.bn.running_var.mul_(3)
    ema.update(model)
    d = 0.9 * (1 - torch.exp(torch.tensor(-1.0)).item())
    own = model.state_dict()
    after = ema.ema.state_dict()
    for k, v in after.items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, d * before[k] + (1 - d) * own[k])
        else:
            assert torch.equal(v, own[k])  # integer buffers are copied
    assert after["backbone.conv1.bn.num_batches_tracked"] == 7
    assert not any(p.requires_grad for p in ema.ema.parameters())


def test_freezing_freezes_backbone_and_its_batch_norm() -> None:
    model = YoloBody(3, 0)
    set_backbone_frozen(model, True)
    model.train()
    keep_frozen_bn_eval(model, True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.yolo_headP4.parameters())
    assert not model.backbone.conv1.bn.training and model.conv_for_P5.bn.training
    before = model.backbone.conv1.bn.running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert torch.equal(before, model.backbone.conv1.bn.running_mean)
    set_backbone_frozen(model, False)
    assert all(p.requires_grad for p in model.backbone.parameters())


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory) -> tuple[Path, Path]:
    return make_split(tmp_path_factory.mktemp("voc"), num_train=12, num_test=4)


def _config(tiny_voc, tmp_path: Path, **kwargs) -> TrainConfig:
    base = {
        "epochs": 3,
        "log_dir": str(tmp_path),
        "deterministic": True,
        "seed": 3,
        "lr": 0.05,
        "mosaic": 0.5,
        "mixup": 0.5,
    }
    voc_root, classes = tiny_voc
    classes = kwargs.pop("classes", classes)  # None asks for discovery from the XMLs
    return tiny_train_config(voc_root, classes, **{**base, **kwargs})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {
        **{f"ema.{k}": v for k, v in ckpt["model"].items()},
        **{f"raw.{k}": v for k, v in ckpt["train_state"]["model"].items()},
    }


@pytest.mark.slow
def test_resume_continues_exactly(tiny_voc, tmp_path, caplog) -> None:
    caplog.set_level("INFO", logger="train")
    straight = fit(_config(tiny_voc, tmp_path, name="straight", phi="cbam"))
    first = fit(_config(tiny_voc, tmp_path, name="split", phi="cbam", stop_at_epoch=2))
    assert len(first.history) == 2
    last = first.run_dir / "weights" / "last.pth"
    resumed = fit(_config(tiny_voc, tmp_path, resume=str(last)))
    assert f"resumed from {last} after epoch 2" in caplog.text
    assert resumed.run_dir == first.run_dir
    keys = ["loss_box", "loss_obj", "loss_cls", "loss"]
    assert [[r[k] for k in keys] for r in resumed.history] == [
        [r[k] for k in keys] for r in straight.history
    ]
    a, b = _weights(straight.run_dir / "weights" / "last.pth"), _weights(last)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = (first.run_dir / "results.csv").read_text().splitlines()
    assert len(rows) == 4  # header + 3 epochs, appended across the resume
    again = fit(_config(tiny_voc, tmp_path, resume=str(last)))  # all 3 epochs are done
    assert "already finished all 3 epochs: nothing to train" in caplog.text
    assert again.history == resumed.history


@pytest.mark.slow
def test_run_folder_and_checkpoint_contents(tiny_voc, tmp_path, caplog) -> None:
    caplog.set_level("INFO", logger="train")  # as train.py logs
    result = fit(
        _config(tiny_voc, tmp_path, name="run", epochs=2, eval_period=1, deterministic=False)
    )
    run = result.run_dir
    for name in (
        "config.json",
        "results.csv",
        "results.png",
        "train.log",
        "train_batch0.jpg",
        "val_predictions.jpg",
        "weights/last.pth",
        "weights/best.pth",
    ):
        assert (run / name).is_file(), name
    assert not list(run.glob("weights/*.tmp"))
    assert "INFO train: precision: " in (run / "train.log").read_text()  # which one, and why
    ckpt = torch.load(run / "weights" / "last.pth", map_location="cpu", weights_only=True)
    state = ckpt["train_state"]
    assert {"model", "optimizer", "scaler", "ema", "ema_updates", "epoch", "best_map"} <= set(state)
    assert ckpt["class_names"] == CLASSES and ckpt["input_size"] == 64 and ckpt["phi"] == "none"
    assert ckpt["config"]["epochs"] == 2 and len(ckpt["anchors"]) == 6
    model, info = load_model(run / "weights" / "best.pth")
    assert info.class_names == tuple(CLASSES) and model.num_classes == 2
    header = (run / "results.csv").read_text().splitlines()[0]
    assert header.split(",")[:5] == ["epoch", "loss_box", "loss_obj", "loss_cls", "loss"]
    assert "map50_voc12" in header
    second = fit(_config(tiny_voc, tmp_path, name="run", epochs=1))
    assert second.run_dir.name == "run2"  # incremented, never overwritten


def test_missing_voc_explains_what_to_do(tmp_path) -> None:
    cfg = TrainConfig(voc_root=str(tmp_path / "nowhere"), log_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        fit(cfg)
    assert "tools.download_voc" in str(err.value) and "--data demo" in str(err.value)


@pytest.mark.slow
def test_non_finite_losses_are_skipped_then_stop(tiny_voc, tmp_path, monkeypatch, caplog) -> None:
    from utils.training import loss as loss_module

    real = loss_module.YoloLoss.forward

    def nan_forward(self, outputs, targets):
        out = real(self, outputs, targets)
        return {k: v * float("nan") for k, v in out.items()}

    monkeypatch.setattr(loss_module.YoloLoss, "forward", nan_forward)
    with pytest.raises(RuntimeError, match="non-finite"):
        fit(_config(tiny_voc, tmp_path, name="nan", max_nonfinite=2, epochs=1))
    assert "non-finite loss" in caplog.text


def _cli(tiny_voc, tmp_path: Path, name: str, epochs: int) -> list[str]:
    """train.py arguments for a tiny CPU run on the tiny VOC tree."""
    root, classes = tiny_voc
    return [
        "train.py",
        "--voc-root",
        str(root),
        "--train-sets",
        "2007:trainval",
        "--val-set",
        "2007:test",
        "--classes",
        str(classes),
        "--img-size",
        "64",
        "--epochs",
        str(epochs),
        "--batch-size",
        "4",
        "--weights",
        "none",
        "--workers",
        "0",
        "--eval-period",
        "0",
        "--device",
        "cpu",
        "--log-dir",
        str(tmp_path),
        "--name",
        name,
    ]


@pytest.mark.slow
def test_ddp_two_processes_gloo(tiny_voc, tmp_path, official_weights) -> None:
    """torchrun with 2 CPU processes (gloo): trains through a frozen-backbone phase and the
    unfreezing, evaluates on rank 0 while rank 1 waits, may stop early on rank 0's decision,
    and only rank 0 writes."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *_cli(tiny_voc, tmp_path, "ddp", epochs=3),
        "--sync-bn",
        "--weights",
        str(official_weights),
        "--freeze-epochs",
        "1",
        "--freeze-batch-size",
        "4",
        "--eval-period",
        "1",
        "--patience",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.name for p in tmp_path.iterdir())
    assert runs == ["ddp"], runs  # rank 1 made no folder of its own
    rows = (tmp_path / "ddp" / "results.csv").read_text().splitlines()
    assert 3 <= len(rows) <= 4  # header + 2 or 3 epochs (patience may stop after the second)
    model, _ = load_model(tmp_path / "ddp" / "weights" / "last.pth")
    assert model.num_classes == 2


@pytest.mark.slow
def test_reference_annotation_lines_and_discovered_classes(tiny_voc, tmp_path, caplog) -> None:
    """Training from the reference implementation's split files, and class-name discovery."""
    root, _ = tiny_voc
    from data.voc import load_voc

    lines = []
    for ann in load_voc(root, [("2007", "trainval")], CLASSES).annotations:
        boxes = " ".join(
            f"{int(x1) + 1},{int(y1) + 1},{int(x2) + 1},{int(y2) + 1},{int(c)}"
            for (x1, y1, x2, y2), c in zip(ann.boxes, ann.labels)
        )
        lines.append(f"{ann.image_path} {boxes}")
    train_lines = tmp_path / "2007_train.txt"
    train_lines.write_text("\n".join(lines) + "\n")
    classes = root.parent / "classes.txt"
    result = fit(
        _config(
            tiny_voc,
            tmp_path,
            name="lines",
            epochs=1,
            train_lines=str(train_lines),
            val_lines=str(train_lines),
            classes=str(classes),
            eval_period=1,
        )
    )
    assert result.final_report is not None and result.final_report.num_images == 12
    # no classes file: names come from the XMLs (not VOC's), sorted and logged
    caplog.set_level("INFO")
    result = fit(_config(tiny_voc, tmp_path, name="discover", epochs=1, classes=None))
    assert "box, disc" in caplog.text
    ckpt = torch.load(
        result.run_dir / "weights" / "last.pth", map_location="cpu", weights_only=True
    )
    assert ckpt["class_names"] == ["box", "disc"]


@pytest.mark.slow
def test_ctrl_c_saves_last_and_exits_cleanly(tiny_voc, tmp_path) -> None:
    import signal
    import time

    cmd = [sys.executable, *_cli(tiny_voc, tmp_path, "int", epochs=500)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    last = tmp_path / "int" / "weights" / "last.pth"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted in epoch" in err and "Traceback" not in err
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    epoch = ckpt["train_state"]["epoch"]
    # the message names the end-of-epoch state that last.pth holds (no mid-epoch weights)
    assert f"{last} holds the end of epoch {epoch + 1}" in err
    # last.pth only exists once an epoch finished; history holds one row per finished epoch
    assert epoch >= 0 and len(ckpt["train_state"]["history"]) == epoch + 1
    resumed = fit(
        replace(
            TrainConfig(),
            resume=str(last),
            stop_at_epoch=ckpt["train_state"]["epoch"] + 2,
            workers=0,
        )
    )
    assert resumed.run_dir == tmp_path / "int"


# --------------------------------------------------------------------------- failure behaviour


def _count_steps(monkeypatch) -> list[int]:
    """Counts ``TrainStep`` calls (the count is the list's length)."""
    calls: list[int] = []
    real = TrainStep.__call__

    def counted(self, images, targets):
        calls.append(1)
        return real(self, images, targets)

    monkeypatch.setattr(TrainStep, "__call__", counted)
    return calls


@pytest.mark.slow
def test_interrupt_then_resume_equals_a_straight_run(tiny_voc, tmp_path, monkeypatch) -> None:
    """Ctrl-C in the middle of an epoch, then --resume: the same losses and weights as a run
    that was never interrupted (last.pth keeps the end of the last finished epoch)."""
    real = TrainStep.__call__
    calls = _count_steps(monkeypatch)
    straight = fit(_config(tiny_voc, tmp_path, name="straight"))
    steps_per_epoch = len(calls) // 3
    assert steps_per_epoch >= 2  # so that "mid-epoch" is inside an epoch
    calls.clear()

    def interrupted(self, images, targets):
        calls.append(1)
        if len(calls) == steps_per_epoch + 2:  # the second step of the second epoch
            raise KeyboardInterrupt
        return real(self, images, targets)

    monkeypatch.setattr(TrainStep, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(_config(tiny_voc, tmp_path, name="split"))
    last = tmp_path / "split" / "weights" / "last.pth"
    assert torch.load(last, map_location="cpu", weights_only=True)["train_state"]["epoch"] == 0
    resumed = fit(_config(tiny_voc, tmp_path, resume=str(last)))
    keys = ["loss_box", "loss_obj", "loss_cls", "loss"]
    assert [[r[k] for k in keys] for r in resumed.history] == [
        [r[k] for k in keys] for r in straight.history
    ]
    a, b = _weights(straight.run_dir / "weights" / "last.pth"), _weights(last)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_keeps_the_checkpoint_settings_and_applies_changeable_ones(caplog) -> None:
    saved = TrainConfig(phi="2", img_size=64, epochs=3, classes="a.txt", device="cpu")
    conflicting = TrainConfig(resume="run/last.pth", phi="0", img_size=128, epochs=5)
    with pytest.raises(ValueError) as err:
        merge_resume(saved, conflicting, given={"resume", "phi", "img_size", "epochs"})
    message = str(err.value)
    assert "--phi '0' (the checkpoint has '2')" in message
    assert "--img-size 128 (the checkpoint has 64)" in message
    with pytest.raises(ValueError, match=r"--lr 0\.01 \(the checkpoint has 0\.08 at batch 64; "):
        merge_resume(replace(saved, lr=0.08), replace(conflicting, lr=0.01), given={"lr"})
    assert "--epochs" not in message.split("Only")[0]  # epochs may change: not a conflict
    caplog.set_level("INFO")
    merged = merge_resume(saved, TrainConfig(resume="run/last.pth", epochs=5, workers=0))
    assert (merged.phi, merged.img_size, merged.classes) == ("2", 64, "a.txt")
    assert (merged.epochs, merged.workers, merged.device) == (5, 0, "auto")
    assert merged.resume == "run/last.pth"
    assert "resume: --epochs 5 (was 3)" in caplog.text
    merged = merge_resume(saved, TrainConfig(resume="logs/r/weights/last.pth", name="other"))
    assert merged.name == saved.name  # the run stays in its folder, and says so
    assert "resume: --name 'other' ignored: a resumed run continues in its own folder" in (
        caplog.text
    )


@pytest.mark.parametrize("kind", ["empty", "truncated", "darknet", "random"])
def test_resume_from_an_unreadable_file_is_one_clear_error(tmp_path, kind) -> None:
    path = tmp_path / ("last.weights" if kind == "darknet" else "last.pth")
    if kind == "truncated":
        torch.save({"train_state": {}, "config": {}}, path)
        path.write_bytes(path.read_bytes()[:40])
    else:
        path.write_bytes(
            {"empty": b"", "darknet": bytes(range(256)) * 8}.get(kind, os.urandom(999))
        )
    with pytest.raises(ValueError) as err:
        fit(TrainConfig(resume=str(path), log_dir=str(tmp_path / "logs")))
    message = str(err.value)
    assert str(path) in message and "weights_only" not in message
    assert ("darknet weights start a run with --weights" in message) == (kind == "darknet")
    assert not (tmp_path / "logs").exists()  # a failed start leaves no run folder


def test_training_settings_are_checked_together() -> None:
    with pytest.raises(ValueError) as err:
        TrainConfig(epochs=0, batch_size=0, lr=float("nan"), mosaic=1.5, img_size=100)
    message = str(err.value)
    for flag in ("--epochs 0", "--batch-size 0", "--lr nan", "--mosaic 1.5", "--img-size 100"):
        assert flag in message, flag


def test_failed_start_leaves_no_run_folder(tmp_path) -> None:
    logs = tmp_path / "logs"
    with pytest.raises(FileNotFoundError):
        fit(TrainConfig(voc_root=str(tmp_path / "nowhere"), log_dir=str(logs)))
    assert not logs.exists()


@pytest.mark.slow
def test_checkpoints_in_a_kill_safe_order_and_csv_follows_last(tiny_voc, tmp_path, monkeypatch):
    """best.pth is written before last.pth; a resume removes half-written files and rewrites
    results.csv from last.pth's history (a row written before a kill is not duplicated)."""
    import utils.training.state as state_module

    written = []
    real = state_module.save_checkpoint

    def recording(path, *args, **kwargs):
        written.append(Path(path).name)
        real(path, *args, **kwargs)

    monkeypatch.setattr(state_module, "save_checkpoint", recording)
    first = fit(_config(tiny_voc, tmp_path, name="order", eval_period=1, stop_at_epoch=1))
    assert written[:2] == ["best.pth", "last.pth"]
    weights = first.run_dir / "weights"
    (weights / "best.pth.tmp").write_bytes(b"half")
    csv_path = first.run_dir / "results.csv"
    rows = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([*rows, rows[-1]]) + "\n")  # the row of a killed epoch
    resumed = fit(_config(tiny_voc, tmp_path, resume=str(weights / "last.pth"), stop_at_epoch=2))
    assert not list(weights.glob("*.tmp"))
    assert len(csv_path.read_text().splitlines()) == 1 + len(resumed.history) == 3


@pytest.mark.slow
def test_fewer_images_than_a_batch_still_trains(tiny_voc, tmp_path, caplog) -> None:
    caplog.set_level("WARNING")
    result = fit(_config(tiny_voc, tmp_path, name="small", epochs=1, batch_size=64))
    assert "training with batch" in caplog.text
    assert result.history[0]["loss"] > 0  # at least one step was taken


def test_classes_that_name_no_training_object_are_one_error(tiny_voc, tmp_path) -> None:
    voc_root, _ = tiny_voc
    other = tmp_path / "zebra.txt"
    other.write_text("zebra\n")
    logs = tmp_path / "logs"
    with pytest.raises(ValueError) as err:
        fit(tiny_train_config(voc_root, other, log_dir=str(logs)))
    message = str(err.value)
    assert message.startswith(f"{voc_root} 2007:trainval: no training object of the 1 classes")
    assert "the labels use other classes ('" in message and "give a classes file" in message
    assert not logs.exists()  # before the run folder


@pytest.mark.slow
def test_a_run_without_evaluation_images_says_so(tiny_voc, tmp_path, caplog, capsys) -> None:
    import train

    voc_root, classes = tiny_voc
    folder = str(voc_root / "VOC2007")  # a VOC folder whose sets are trainval and test
    args = ["--train-labels", folder, "--classes", str(classes), "--img-size", "64"]
    args += ["--epochs", "1", "--freeze-epochs", "0", "--weights", "none", "--workers", "0"]
    with caplog.at_level(logging.INFO, logger="train"):
        assert (
            exit_code(train.main, [*args, "--log-dir", str(tmp_path / "logs"), "--no-tensorboard"])
            == 0
        )
    assert any("no evaluation images (none)" in r.getMessage() for r in caplog.records)
    assert "done: not evaluated, so no best.pth; run folder " in capsys.readouterr().out
    weights = next((tmp_path / "logs").glob("*/weights"))
    assert [p.name for p in weights.iterdir()] == ["last.pth"]


def test_unreadable_training_images_and_log_dir_fail_before_the_run(tiny_voc, tmp_path, capsys):
    import train

    voc_root, classes = tiny_voc
    local = tmp_path / "VOCdevkit"
    shutil.copytree(voc_root, local)  # the fixture's tree is shared: no writes into it
    for image in (local / "VOC2007" / "JPEGImages").iterdir():
        image.write_bytes(b"")
    logs = tmp_path / "logs"
    with pytest.raises(ValueError, match=r"none of the 12 training images can be read \("):
        fit(tiny_train_config(local, classes, log_dir=str(logs)))
    assert not logs.exists()
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert exit_code(train.main, ["--data", "demo", "--log-dir", str(blocked / "logs")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {blocked / 'logs'}: cannot be created")
