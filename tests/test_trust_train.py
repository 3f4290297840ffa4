"""Training and the study keep to the user's folders and say when they cannot go on: run names
stay inside --log-dir, a live run folder has one writer, a diverged run stops with an error,
and a study checks everything (and every run it would reuse) before its first run."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import exit_code
from voc_factory import make_split, tiny_train_config

import train
from nets.yolo import YoloBody
from tools import study
from utils.evaluation.evaluate import EvalConfig
from utils.training import launch
from utils.training.fit import fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory) -> tuple[Path, Path]:
    return make_split(tmp_path_factory.mktemp("voc"), num_train=8, num_test=2)


def _args(tiny_voc, logs: Path, *extra: str) -> list[str]:
    """train.py arguments for a seconds-long CPU run (64 px, 2 steps per epoch)."""
    root, classes = tiny_voc
    return [
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
        "1",
        "--freeze-epochs",
        "0",
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
        "--no-tensorboard",
        "--log-dir",
        str(logs),
        *extra,
    ]


@pytest.fixture(scope="module")
def finished_run(tiny_voc, tmp_path_factory) -> Path:
    """last.pth of a finished one-epoch run (copy its folder before changing anything)."""
    logs = tmp_path_factory.mktemp("logs")
    assert exit_code(train.main, _args(tiny_voc, logs, "--name", "done")) == 0
    return logs / "done" / "weights" / "last.pth"


def _copy_run(last: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(last.parent.parent, folder)
    return folder / "weights" / "last.pth"


# --------------------------------------------------------------------------- run names


@pytest.mark.slow
@pytest.mark.parametrize("name", ["../../escape_run", "ABSOLUTE"])
def test_a_name_that_leaves_the_log_dir_is_refused_before_any_work(
    tiny_voc, tmp_path, capsys, name
) -> None:
    logs = tmp_path / "a" / "b" / "logs"
    logs.mkdir(parents=True)
    if name == "ABSOLUTE":
        name = str(tmp_path / "elsewhere")
    code = exit_code(train.main, _args(tiny_voc, logs, "--name", name))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: --name {name!r}: must be one folder name")
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "logs"]  # nothing made


# --------------------------------------------------------------------------- one writer


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder but its lock file (which names the lock's holder)."""
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


_HOLDER = """
import sys
from utils.runlock import FolderLock
lock = FolderLock(sys.argv[1], "run").acquire()
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_resume_of_a_run_another_process_writes_is_refused(finished_run, tmp_path, capsys):
    last = _copy_run(finished_run, tmp_path)
    folder = last.parent.parent
    before = _contents(folder)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = exit_code(train.main, ["--resume", str(last), "--epochs", "2", "--device", "cpu"])
        err = capsys.readouterr().err
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert code == 2
    assert err == (
        f"error: {folder}: this run is being written by process {holder.pid} on "
        f"{socket.gethostname()}; wait for it to end or stop it, then try again\n"
    )
    after = _contents(folder)
    assert after == before and "last.pth" in after  # all but the holder's .lock untouched


@pytest.mark.slow
def test_a_run_holds_its_folder_lock_while_it_trains(finished_run, tiny_voc, tmp_path, monkeypatch):
    import utils.training.fit as fit_module
    from utils.runlock import FolderLock, FolderLockedError

    last = _copy_run(finished_run, tmp_path)
    real = fit_module.save_epoch_checkpoints
    seen = []

    def checking(run, epoch, improved):
        # a second writer in this process (an open file of its own) is refused as well
        with pytest.raises(FolderLockedError, match=str(run.log.dir)):
            FolderLock(run.log.dir, "run").acquire()
        seen.append(run.log.dir)
        real(run, epoch, improved)

    monkeypatch.setattr(fit_module, "save_epoch_checkpoints", checking)
    with FolderLock(last.parent.parent, "run"), pytest.raises(FolderLockedError):
        fit(replace(tiny_train_config(*tiny_voc), resume=str(last), epochs=2))
    result = fit(replace(tiny_train_config(*tiny_voc), resume=str(last), epochs=2))
    assert seen == [last.parent.parent] and len(result.history) == 2
    FolderLock(result.run_dir, "run").acquire().release()  # released when the run ended


@pytest.mark.slow
def test_a_new_run_never_shares_a_folder_made_meanwhile(tiny_voc, tmp_path, monkeypatch) -> None:
    """Another process makes <log-dir>/exp between this run's look and its mkdir."""
    import utils.training.runlog as runlog_module

    taken = tmp_path / "exp"
    real = runlog_module.increment_path
    looks = []

    def racing(path, exist_ok=False):
        looks.append(path)
        if len(looks) == 1:
            Path(path).mkdir()  # the other process wins the race
            return Path(path)
        return real(path, exist_ok)

    monkeypatch.setattr(runlog_module, "increment_path", racing)
    result = fit(tiny_train_config(*tiny_voc, log_dir=str(tmp_path), name="exp"))
    assert result.run_dir == tmp_path / "exp2"
    assert list(taken.iterdir()) == []  # the other run's folder got nothing of ours


def test_runs_started_together_claim_different_folders(tmp_path) -> None:
    from utils.training.runlog import claim_run_folder

    claimed: list[Path] = []
    start = threading.Barrier(6)

    def claim() -> None:
        start.wait()
        for _ in range(4):
            claimed.append(claim_run_folder(tmp_path / "exp"))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == len(set(claimed)) == 24


# --------------------------------------------------------------------------- non-finite loss


def _nan_after(monkeypatch, calls: int) -> None:
    """The model's training outputs become NaN after ``calls`` training forward passes, as a
    broken attention block's would."""
    real = YoloBody.forward
    count = [0]

    def forward(self, x):
        outputs = real(self, x)
        if self.training:
            count[0] += 1
            if count[0] > calls:
                return [o * float("nan") for o in outputs]
        return outputs

    monkeypatch.setattr(YoloBody, "forward", forward)


@pytest.mark.slow
def test_a_nan_model_output_stops_training_with_an_error(tiny_voc, tmp_path, capsys, monkeypatch):
    _nan_after(monkeypatch, 2)  # the first epoch (2 steps) is fine, the second is not
    logs = tmp_path / "logs"
    code = exit_code(train.main, _args(tiny_voc, logs, "--name", "nan", "--epochs", "3"))
    err = capsys.readouterr().err
    last = logs / "nan" / "weights" / "last.pth"
    assert code == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]  # after the bar
    assert line.startswith("error: epoch 2/3, step 1/2: non-finite loss (loss_box nan")
    assert f"the last good checkpoint is {last} (end of epoch 1)" in line
    with open(logs / "nan" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0"] and float(rows[0]["loss"]) > 0
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["train_state"]["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_an_epoch_of_skipped_steps_is_never_a_row_of_zeros(tiny_voc, tmp_path, monkeypatch):
    from utils.training.loop import NonFiniteLossError

    _nan_after(monkeypatch, 0)
    cfg = tiny_train_config(*tiny_voc, log_dir=str(tmp_path), name="skip", max_nonfinite=10)
    with pytest.raises(NonFiniteLossError) as err:
        fit(replace(cfg, epochs=2))
    message = str(err.value)
    assert message.startswith("epoch 1/2, all 2 steps had a non-finite loss and were skipped")
    assert message.endswith("no epoch finished, so no checkpoint was saved")
    assert not (tmp_path / "skip" / "results.csv").exists()


# --------------------------------------------------------------------------- the study


def _no_training(monkeypatch) -> None:
    def refuse(cfg, *args, **kwargs):
        raise AssertionError(f"trained {cfg.name} although the study should have stopped")

    monkeypatch.setattr(launch, "fit", refuse)


@pytest.fixture(scope="module")
def finished_study(tiny_voc, tmp_path_factory) -> Path:
    """A study folder holding one finished run (phi 0, seed 0, 64 px)."""
    out = tmp_path_factory.mktemp("study") / "out"
    base = tiny_train_config(*tiny_voc)
    study.run_study(base, ["0"], [0], out, EvalConfig(img_size=64, workers=0))
    return out


@pytest.mark.slow
def test_study_reuses_a_run_only_with_equal_settings(
    finished_study, tiny_voc, tmp_path, capsys, monkeypatch
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished_study, out)
    last = out / "phi0_seed0" / "weights" / "last.pth"
    before = last.read_bytes()
    _no_training(monkeypatch)
    base = tiny_train_config(*tiny_voc)
    eval_cfg = EvalConfig(img_size=64, workers=0)
    study.run_study(base, ["0"], [0], out, eval_cfg)  # same settings: reused, and said so
    assert f"phi0_seed0: finished with the same settings: reusing {last}" in capsys.readouterr().out
    with pytest.raises(ValueError) as err:
        study.run_study(replace(base, img_size=96, mosaic=0.2), ["0"], [0], out, eval_cfg)
    message = str(err.value)
    assert message.startswith(f"--out {out}: phi0_seed0 was trained with other settings (")
    assert "--img-size 64, here 96" in message and "--mosaic 0.5, here 0.2" in message
    assert "--device" not in message and "--log-dir" not in message
    assert last.read_bytes() == before
    with pytest.raises(ValueError, match=r"--epochs 1, here 2"):  # no silent resume to 2
        study.run_study(replace(base, epochs=2), ["0"], [0], out, eval_cfg)


@pytest.mark.slow
def test_study_leaves_a_live_run_alone(finished_study, tiny_voc, tmp_path, monkeypatch) -> None:
    from utils.runlock import FolderLock, FolderLockedError

    out = tmp_path / "out"
    (out / "phi0_seed0").mkdir(parents=True)  # a run another study started: no epoch yet
    (out / "phi0_seed0" / "config.json").write_text("{}")
    _no_training(monkeypatch)
    base = tiny_train_config(*tiny_voc)
    with FolderLock(out / "phi0_seed0", "run"), pytest.raises(FolderLockedError):
        study.run_study(base, ["0"], [0], out, EvalConfig(img_size=64, workers=0))
    assert (out / "phi0_seed0" / "config.json").is_file()


@pytest.mark.parametrize(
    ("phis", "seeds", "expected"),
    [
        (["0"], [0, 0], "--seeds: 0 and 0 are the same"),
        (["0", "none"], [0], "--phis: 0 (none) and none (none) are the same"),
        (["0", "bogus"], [0], "--phis bogus: unknown phi 'bogus'"),
    ],
)
def test_study_checks_blocks_and_seeds_before_the_first_run(
    tiny_voc, tmp_path, monkeypatch, phis, seeds, expected
) -> None:
    _no_training(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        study.run_study(tiny_train_config(*tiny_voc), phis, seeds, out)
    assert str(err.value).startswith(expected)
    assert not out.exists()


def test_study_checks_every_run_config_before_the_first_run(tiny_voc, tmp_path, monkeypatch):
    _no_training(monkeypatch)
    base = replace(tiny_train_config(*tiny_voc), phi="se", attention_args="reduction=8")
    with pytest.raises(ValueError, match="attention block 'none' has no option 'reduction'"):
        study.run_study(base, ["se", "none"], [0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _study_args(tiny_voc, out: Path) -> list[str]:
    args = _args(tiny_voc, out.parent / "unused")
    cut = args.index("--log-dir")
    return [*args[:cut], "--phis", "0", "--seeds", "0", "--out", str(out)]


def test_study_out_that_is_a_file_or_holds_the_data_is_one_error(
    tiny_voc, tmp_path, capsys, monkeypatch
) -> None:
    _no_training(monkeypatch)
    a_file = tmp_path / "results"
    a_file.write_text("mine\n")
    assert exit_code(study.main, _study_args(tiny_voc, a_file)) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {a_file}: exists and is not a folder\n"
    assert a_file.read_text() == "mine\n"
    voc_root = tiny_voc[0]
    inside = voc_root / "study"
    assert exit_code(study.main, _study_args(tiny_voc, inside)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {inside}: lies inside the input {voc_root}")
    assert not inside.exists()
    assert os.listdir(tmp_path) == ["results"]
