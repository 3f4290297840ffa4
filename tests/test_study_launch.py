"""Where a study's runs execute: the GPU/CPU slots of ``--parallel``, the sweep's runs, the
launchers' errors, and that a run gives the same weights whoever launches it (``train.py``, a
local worker process, a Ray task, a submitit job); a failed or killed run is named while the
others finish."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from conftest import exit_code, process_running, require_package
from voc_factory import make_split, tiny_train_config

from tools import study
from utils.device import available_cpus
from utils.errors import InputError
from utils.training import launch
from utils.training.config import TrainConfig
from utils.training.launch import (
    SLURM_JOBS,
    ProcessLauncher,
    RunSpec,
    Slot,
    plan_slots,
)

ROOT = Path(__file__).resolve().parents[1]
# the torch threads a run of a --parallel 2 study gets: the one train.py is given to compare
THREADS = max(1, available_cpus() // 2)


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory) -> tuple[Path, Path]:
    return make_split(tmp_path_factory.mktemp("voc"), num_train=8, num_test=2)


def _settings(tiny_voc) -> list[str]:
    """The shared flags of a seconds-long run (64 px, 2 steps), for train.py and the study."""
    root, classes = tiny_voc
    return [
        *("--voc-root", str(root), "--train-sets", "2007:trainval", "--val-set", "2007:test"),
        *("--classes", str(classes), "--img-size", "64", "--epochs", "1"),
        *("--freeze-epochs", "0", "--batch-size", "4", "--freeze-batch-size", "4"),
        *("--weights", "none", "--workers", "0", "--eval-period", "0", "--no-tensorboard"),
    ]


def _study(tiny_voc, out: Path, *extra: str) -> list[str]:
    return [*_settings(tiny_voc), "--phis", "se", "--seeds", "0", "--out", str(out), *extra]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "weights" / "last.pth", weights_only=True)["model"]


def _results(run: Path) -> list[dict]:
    """results.csv without its wall times."""
    with open(run / "results.csv") as f:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(f)]


def _assert_same_run(run: Path, reference: Path) -> None:
    assert _results(run) == _results(reference)
    weights, expected = _weights(run), _weights(reference)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


@pytest.fixture(scope="module")
def reference(tiny_voc, tmp_path_factory) -> Path:
    """The run as ``train.py`` trains it, with the threads a --parallel 2 run gets."""
    logs = tmp_path_factory.mktemp("train")
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
    argv = [*_settings(tiny_voc), "--phi", "se", "--seed", "0", "--log-dir", str(logs)]
    argv += ["--name", "se_seed0"]
    done = subprocess.run(
        [sys.executable, "train.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return logs / "se_seed0"


# --------------------------------------------------------------------------- no training


def test_runs_are_packed_onto_gpus_and_share_the_cpu() -> None:
    slots = plan_slots(4, 2, ["3", "5"], cpus=16)
    assert [s.gpu for s in slots] == ["3", "3", "5", "5"] and {s.threads for s in slots} == {4}
    assert slots[2].env() == {
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4",
        "CUDA_VISIBLE_DEVICES": "5",
    }
    assert plan_slots(3, 1, [], cpus=4) == [Slot(None, 1)] * 3
    with pytest.raises(InputError, match=r"--parallel 3: this machine has 2 CPU\(s\)"):
        plan_slots(3, 1, [], cpus=2)
    with pytest.raises(InputError, match="--runs-per-gpu 2: no GPU is visible here"):
        plan_slots(2, 2, [], cpus=8)
    assert "CUDA_VISIBLE_DEVICES" not in plan_slots(2, 1, [], cpus=8)[0].env()
    with pytest.raises(InputError, match=r"--parallel 5: 2 GPU\(s\) x --runs-per-gpu 2 hold 4"):
        plan_slots(5, 2, ["0", "1"], cpus=16)
    with pytest.raises(InputError, match="--runs-per-gpu 0: must be at least 1"):
        plan_slots(1, 0, ["0"], cpus=16)


def test_a_run_spec_round_trips(tmp_path) -> None:
    cfg = tiny_train_config(tmp_path, None, phi="se", attention_at="csp3")
    spec = RunSpec.of("se_seed0", cfg, tmp_path / "se_seed0", restart=True)
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    assert RunSpec.read(path) == spec and RunSpec.read(path).train_config() == cfg
    path.write_text('{"name": "x"}')
    with pytest.raises(InputError, match=f"{path}: not a run spec"):
        RunSpec.read(path)


@pytest.mark.parametrize("kind", ["trained", "other files", "another tool's config.json"])
def test_a_restarted_run_never_removes_a_folder_that_is_no_dead_run(tmp_path, kind, capsys):
    folder = tmp_path / "phi0_seed0"
    keep = folder / ("weights/last.pth" if kind == "trained" else "thesis.txt")
    keep.parent.mkdir(parents=True)
    keep.write_text("precious")
    if kind != "other files":  # a config.json, but not a training run's settings
        (folder / "config.json").write_text('{"theme": "dark"}')
    spec = RunSpec("phi0_seed0", str(folder), {}, restart=True)
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    assert exit_code(study.main, ["--run-one", path]) == 2
    assert "not removed to train it anew" in capsys.readouterr().err
    assert keep.read_text() == "precious"


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("attention_at", "give FIELD=VALUE;VALUE"),
        ("seed=1;2", "'seed' is not a setting a study can sweep"),
        ("device=cpu;cuda", "'device' is not a setting a study can sweep"),
        ("bogus=1", "'bogus' is not a setting a study can sweep"),
        ("focal=true", "an on/off setting"),
        ("mosaic=0.5;lots", "'lots' is not a value of --mosaic"),
        ("optimizer=sgd;lion", "'lion' is not a value of --optimizer"),
        # the study reads and scores one data set: runs on other data would not pair
        ("classes=a.txt;b.txt", "'classes' chooses the data"),
        ("train_labels=a;b", "'train_labels' chooses the data"),
    ],
)
def test_a_bad_sweep_is_refused_before_any_run(tiny_voc, tmp_path, capsys, item, expected):
    out = tmp_path / "out"
    assert exit_code(study.main, _study(tiny_voc, out, "--sweep", item)) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--weights", "{tmp}/none.pth"), "error: --weights {tmp}/none.pth: "),
        (("--sweep", "weights={tmp}/none.pth;none"), "error: --weights {tmp}/none.pth: "),
        (("--weights", "{tmp}/text.pth"), "cannot read as a PyTorch checkpoint"),
        (("--anchors", "{tmp}/none.txt"), "error: --anchors {tmp}/none.txt: "),
        (("--sweep", "anchors=default;{tmp}/text.pth"), "error: --anchors {tmp}/text.pth: "),
    ],
)
def test_unreadable_initial_weights_or_anchors_are_refused_before_any_run(
    tiny_voc, tmp_path, capsys, flags, expected
) -> None:
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    out = tmp_path / "out"
    argv = _study(tiny_voc, out, *(f.format(tmp=tmp_path) for f in flags))
    assert exit_code(study.main, argv) == 2
    err = capsys.readouterr().err
    assert expected.format(tmp=tmp_path) in err
    assert err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("record", ["{{", "[1, 2]", '{"phi1_seed0": [1]}'])
def test_a_damaged_slurm_job_record_is_named_and_kept(tiny_voc, tmp_path, capsys, record):
    require_package("submitit")
    jobs = tmp_path / "out" / "launch" / SLURM_JOBS
    jobs.parent.mkdir(parents=True)
    jobs.write_text(record)
    argv = _study(tiny_voc, tmp_path / "out", "--launcher", "slurm", "--slurm-executor", "local")
    assert exit_code(study.main, argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {jobs}: not the job record")
    assert jobs.read_text() == record


def test_slurm_without_slurm_is_one_error_line(tiny_voc, tmp_path, capsys, monkeypatch):
    require_package("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    out = tmp_path / "out"
    assert exit_code(study.main, _study(tiny_voc, out, "--launcher", "slurm")) == 2
    assert capsys.readouterr().err == (
        "error: --launcher slurm: no Slurm here (sbatch is not on the PATH)\n"
    )
    assert not out.exists()


def test_a_bad_ray_address_is_one_error_line_before_any_run(tiny_voc, tmp_path, capsys):
    require_package("ray")
    out = tmp_path / "out"
    argv = _study(tiny_voc, out, "--launcher", "ray", "--ray-address", "no-port-here")
    assert exit_code(study.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ray-address no-port-here: cannot start or reach Ray")
    assert err.count("\n") == 1
    assert not (out / "phi1_seed0").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--ray-address", "auto"), "--ray-address: only --launcher ray reads it"),
        (("--slurm-partition", "gpu"), "--slurm-partition: only --launcher slurm reads it"),
        (("--retries", "-1"), "--retries -1: must be at least 0"),
        (("--slurm-time", "0"), "--slurm-time 0: must be at least 1"),
        (
            ("--runs-per-gpu", "2"),
            "--runs-per-gpu: packs --parallel runs onto a GPU; give --parallel",
        ),
        (
            ("--parallel", "1000", "--device", "cpu"),
            f"--parallel 1000: this machine has {available_cpus()} CPU(s); at most one run per CPU",
        ),
    ],
)
def test_a_bad_launcher_count_names_its_flag(tiny_voc, tmp_path, capsys, flags, expected):
    assert exit_code(study.main, _study(tiny_voc, tmp_path / "out", *flags)) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"


def test_a_sweep_plans_each_block_at_each_value(tiny_voc, tmp_path) -> None:
    base = tiny_train_config(*tiny_voc)
    sweep = study.parse_sweep(["attention-at=feat2,feat1;csp3", "mosaic=0;0.5"])
    assert sweep == {"attention_at": ["feat2,feat1", "csp3"], "mosaic": [0.0, 0.5]}
    _, runs, _ = study.plan_study(base, ["se", "cbam"], [0, 1], tmp_path / "out", sweep)
    assert len(runs) == 2 * 2 * 2 * 2
    first = runs[0]
    assert first.name == "phi1_attention_at-feat1+feat2_mosaic-0.0_seed0"
    assert first.group == "se attention_at=feat1,feat2 mosaic=0.0"
    assert (first.cfg.attention_at, first.cfg.mosaic, first.cfg.seed) == ("feat1,feat2", 0, 0)
    assert len({r.folder for r in runs}) == len(runs)
    assert all(r.folder.parent == tmp_path / "out" for r in runs)
    # two spellings of one placement are one run: counted twice, it would fake agreement
    twice = study.parse_sweep(["attention_at=feat1,feat2;feat2,feat1"])
    with pytest.raises(InputError, match="--sweep: attention_at=feat1,feat2 and "):
        study.plan_study(base, ["se"], [0], tmp_path / "out", twice)


def test_a_launcher_whose_package_is_missing_says_how_to_install_it(
    tiny_voc, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now fails
    out = tmp_path / "out"
    assert exit_code(study.main, _study(tiny_voc, out, "--launcher", "slurm")) == 2
    assert capsys.readouterr().err == (
        "error: --launcher slurm needs the submitit package: pip install -r "
        "requirements-launchers.txt\n"
    )
    assert not out.exists()


def test_parallel_runs_on_one_named_gpu_are_refused(tiny_voc, tmp_path, capsys) -> None:
    argv = _study(tiny_voc, tmp_path / "out", "--parallel", "2", "--device", "cuda:1")
    assert exit_code(study.main, argv) == 2
    assert "--device cuda:1 with --parallel: each run gets its own GPU" in capsys.readouterr().err


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_a_killed_worker_is_named_while_the_others_finish(tmp_path) -> None:
    # a worker that kills itself when its spec is the second run's: a real SIGKILL
    worker = "import os, sys; 'b.json' in sys.argv[-1] and os.kill(os.getpid(), 9)"
    specs = [RunSpec(name, str(tmp_path / name), {}) for name in ("a", "b", "c")]
    said: list[str] = []
    launcher = ProcessLauncher(
        [sys.executable, "-c", worker], [Slot(None, 1)] * 2, tmp_path / "launch", said.append
    )
    outcomes = launcher.launch(specs)
    assert [(o.name, o.state, o.error) for o in outcomes] == [
        ("a", "finished", ""),
        ("b", "failed", "killed by signal 9"),
        ("c", "finished", ""),
    ]
    assert "== b failed: killed by signal 9" in " ".join(said)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_end_when_the_study_is_killed(tmp_path) -> None:
    # a study process whose worker records its pid and sleeps; the study is SIGKILLed
    worker = (
        "import os, sys, time; from pathlib import Path; "
        "Path(sys.argv[-1]).with_suffix('.pid').write_text(str(os.getpid())); time.sleep(120)"
    )
    study_code = (
        "import sys; from pathlib import Path; "
        "from utils.training.launch import ProcessLauncher, RunSpec, Slot; "
        f"ProcessLauncher([sys.executable, '-c', {worker!r}], [Slot(None, 1)], "
        f"Path({str(tmp_path / 'launch')!r})).launch([RunSpec('a', {str(tmp_path / 'a')!r}, {{}})])"
    )
    parent = subprocess.Popen([sys.executable, "-c", study_code], cwd=ROOT)
    pid_file = tmp_path / "launch" / "a.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and parent.poll() is None, "the worker never started"
        time.sleep(0.1)
    worker_pid = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while process_running(worker_pid):
        assert time.monotonic() < deadline, "the worker went on after its study was killed"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_local_parallel_run_is_the_train_py_run(tiny_voc, reference, tmp_path) -> None:
    out = tmp_path / "study"
    assert exit_code(study.main, _study(tiny_voc, out, "--parallel", "2")) == 0
    _assert_same_run(out / "phi1_seed0", reference)
    assert (out / "launch" / "phi1_seed0.log").is_file() and (out / "comparison.md").is_file()


@pytest.mark.slow
def test_a_ray_run_is_the_train_py_run(tiny_voc, reference, tmp_path) -> None:
    require_package("ray")
    out = tmp_path / "study"
    argv = _study(tiny_voc, out, "--launcher", "ray", "--parallel", "2")
    assert exit_code(study.main, argv) == 0
    _assert_same_run(out / "phi1_seed0", reference)


@pytest.mark.slow
def test_a_submitit_run_submitted_then_collected_is_the_train_py_run(
    tiny_voc, reference, tmp_path, capsys
) -> None:
    submitit = require_package("submitit")
    out = tmp_path / "study"
    slurm = ["--launcher", "slurm", "--slurm-executor", "local", "--gpus-per-run", "0"]
    argv = _study(tiny_voc, out, *slurm, "--cpus-per-run", str(THREADS))
    assert exit_code(study.main, [*argv, "--no-wait"]) == 0
    assert "submitted; call this command again" in capsys.readouterr().out
    jobs = json.loads((out / "launch" / SLURM_JOBS).read_text())
    assert list(jobs) == ["phi1_seed0"]
    job = submitit.LocalJob(out / "launch" / "submitit", jobs["phi1_seed0"])
    deadline = time.monotonic() + 300
    while not job.paths.result_pickle.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert exit_code(study.main, argv) == 0  # collects: the finished run is reused
    assert "finished with the same settings: reusing" in capsys.readouterr().out
    assert not (out / "launch" / SLURM_JOBS).exists() and (out / "comparison.md").is_file()
    _assert_same_run(out / "phi1_seed0", reference)


BROKEN = """
from torch import nn

from nets.attention import register_attention


@register_attention("broken")
class Broken(nn.Module):
    def __init__(self, channels):
        super().__init__()

    def forward(self, x):
        if self.training:
            raise RuntimeError("broken on purpose")
        return x
"""


@pytest.mark.slow
def test_a_failed_run_is_named_and_the_other_blocks_compared(
    tiny_voc, tmp_path, capsys, monkeypatch
) -> None:
    module = f"broken_plugin_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{module}.py").write_text(BROKEN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the worker processes find it there
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "study"
    argv = [*_settings(tiny_voc), "--phis", "none", "broken", "--seeds", "0", "--out", str(out)]
    argv += ["--parallel", "2", "--attention-plugin", module]
    assert exit_code(study.main, argv) == 1
    err = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]  # after the progress
    assert err.startswith(
        "error: 1 run(s) failed: broken_seed0 (exit 1: RuntimeError: broken on purpose). "
        "Left out of the comparison: broken; compared the others in "
    )
    with open(out / "comparison.csv") as f:
        assert [row["name"] for row in csv.DictReader(f)] == ["phi0_seed0"]


@pytest.mark.slow
def test_a_placement_sweep_compares_each_placement_as_a_block(tiny_voc, tmp_path) -> None:
    base = replace(tiny_train_config(*tiny_voc), tensorboard=False)
    sweep = study.parse_sweep(["attention_at=feat1;csp3"])
    out = tmp_path / "study"
    paths = study.run_study(base, ["se"], [0], out, sweep=sweep)
    md = paths["md"].read_text()
    assert "| 1 se attention_at=feat1 | 1 |" in md and "| 1 se attention_at=csp3 | 1 |" in md
    assert "| se attention_at=feat1 vs se attention_at=csp3 |" in md  # a pair of blocks


def test_a_run_that_died_before_its_first_epoch_may_be_removed(tmp_path) -> None:
    folder = tmp_path / "phi0_seed0"
    (folder / "weights").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(asdict(TrainConfig(data="demo"))))
    (folder / "train.log").write_text("epoch 1 started\n")
    launch._check_dead_run(folder)  # what a dead run leaves: no error
    (folder / "weights" / "last.pth").write_text("a trained run")
    with pytest.raises(InputError, match="holds a trained run"):
        launch._check_dead_run(folder)
