"""Where a study's runs execute: one definition of a run and launchers that execute many.

A ``RunSpec`` is one run: its ``TrainConfig`` (as a dict), its folder and its name.
``execute_run`` trains it in the calling process with the ``fit(cfg)`` call ``train.py`` makes,
so a run is bit-identical to ``train.py`` with the same flags on the same device and the same
number of CPU threads, whatever started it. Every launcher has one method,
``launch(specs) -> list[RunOutcome]`` (in the order of ``specs``); a run that fails is reported
by name in its outcome while the others go on:

- ``InProcessLauncher``: one after another in this process (the study's default);
- ``ProcessLauncher``: N at once on this machine, each in its own fresh interpreter with its own
  GPU (``CUDA_VISIBLE_DEVICES``, K runs per GPU) or its share of the CPU threads;
- ``RayLauncher``: each run a Ray task asking for CPUs and a (fractional) GPU, on a running
  cluster or on one started on this machine for the study, with bounded retries;
- ``SubmititLauncher``: a Slurm job array through submitit (or submitit's local executor), waited
  for or submitted and collected by a later call.

Ray and submitit are optional (``requirements-launchers.txt``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch

from utils.errors import InputError, UserError
from utils.paths import write_text_atomic
from utils.runlock import LOCK_NAME, FolderLock, FolderLockedError, child_ends_with_this_process
from utils.training.config import TrainConfig
from utils.training.fit import fit

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
# the launchers' own files in a study folder: run specs, per-run logs, submitit's job folders
LAUNCH_DIR = "launch"
SLURM_JOBS = "slurm_jobs.json"


@dataclass(frozen=True)
class RunSpec:
    """One run: ``config`` is its ``TrainConfig`` as a dict (``log_dir``/``name`` make
    ``folder``); ``restart`` removes what a run that never finished an epoch left in ``folder``
    before training; ``workdir`` is the folder relative paths in ``config`` start from."""

    name: str
    folder: str
    config: dict
    restart: bool = False
    workdir: str = ""

    @classmethod
    def of(cls, name: str, cfg: TrainConfig, folder: Path, restart: bool = False) -> RunSpec:
        return cls(name, str(folder.absolute()), asdict(cfg), restart, os.getcwd())

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.config)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunSpec:
        """Raises InputError: not a run spec written by ``to_json``."""
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise InputError(f"{path}: not a run spec ({err})") from None


@dataclass
class RunOutcome:
    """What became of one run: ``state`` is ``finished``, ``failed`` (``error`` says why, in
    one line) or ``submitted`` (queued on a cluster, not waited for)."""

    name: str
    state: str
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.state == "finished"


class Launcher(Protocol):
    """Executes runs somewhere; every run gets an outcome, in the order of ``specs``."""

    def launch(self, specs: Sequence[RunSpec]) -> list[RunOutcome]: ...


def execute_run(spec: RunSpec, threads: int | None = None) -> str:
    """Trains ``spec`` in this process, exactly as ``train.py`` with its settings would;
    returns the run folder.

    Args:
        spec: the run; with ``restart``, its folder is emptied first under the run's lock.
        threads: torch's CPU threads for this run (None: torch's default, as ``train.py``).

    Raises:
        FolderLockedError: another live process writes the run folder.
        Whatever ``fit`` raises (a bad setting, a diverged loss, a block that fails).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    folder = Path(spec.folder)
    if spec.restart and folder.exists():
        with FolderLock(folder, "run"):  # a folder no other process writes
            _check_dead_run(folder)
            shutil.rmtree(folder)
    result = fit(spec.train_config(), issues_to_console=False)  # the study said them once
    if result.run_dir.absolute() != folder:  # another process made the folder meanwhile
        raise FolderLockedError(
            f"{folder}: made by another process while this run started; this one trained into "
            f"{result.run_dir} instead. Run one study per folder"
        )
    return str(folder)


def _check_dead_run(folder: Path) -> None:
    """InputError unless ``folder`` is what a run that never finished an epoch leaves (a
    ``config.json`` of a training run and no ``last.pth``, or only the lock): nothing else is
    removed."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a run folder; not removed, move it away")
    entries = [p.name for p in folder.iterdir() if p.name != LOCK_NAME]
    trained = (folder / "weights" / "last.pth").is_file()
    if trained or (entries and not _is_run_config(folder / "config.json")):
        raise InputError(
            f"{folder}: holds {'a trained run' if trained else 'files but no run'}; "
            "not removed to train it anew, move it away"
        )


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is a training run's stored settings (every ``TrainConfig`` field), not
    just any file of that name in a user's folder."""
    try:
        TrainConfig(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return False
    return True


def execute_logged(spec: dict, threads: int | None, log_path: str) -> str:
    """``execute_run`` on a worker of a cluster (a Ray task, a Slurm job): in the spec's working
    folder, with the run's console output and log records appended to ``log_path``."""
    run = RunSpec(**spec)
    if run.workdir:
        os.chdir(run.workdir)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_path, "a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        handler = logging.StreamHandler(log)
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            return execute_run(run, threads)
        finally:
            root.removeHandler(handler)


def one_line(err: BaseException) -> str:
    """An exception as the one line a study reports for a failed run."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}".rstrip(": ")


def require(package: str, launcher: str) -> object:
    """Imports ``launcher``'s optional package. Raises InputError saying how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise InputError(
            f"--launcher {launcher} needs the {package} package: pip install -r "
            "requirements-launchers.txt"
        ) from None


class InProcessLauncher:
    """The runs one after another in this process, output on this console."""

    def __init__(self, progress: Progress = logger.info) -> None:
        self.progress = progress

    def launch(self, specs: Sequence[RunSpec]) -> list[RunOutcome]:
        outcomes = []
        for spec in specs:
            self.progress(f"== training {spec.name} -> {spec.folder}")
            try:
                execute_run(spec)
            except Exception as err:  # one failed run must not stop the others
                if not isinstance(err, UserError):
                    logger.exception("run %s failed", spec.name)  # a traceback: maybe a bug
                outcomes.append(RunOutcome(spec.name, "failed", one_line(err)))
                self.progress(f"== {spec.name} failed: {outcomes[-1].error}")
                continue
            outcomes.append(RunOutcome(spec.name, "finished"))
        return outcomes


@dataclass(frozen=True)
class Slot:
    """Where one of a ``ProcessLauncher``'s parallel runs executes: a GPU (its index as
    ``CUDA_VISIBLE_DEVICES`` shows it) or none, and its torch CPU threads."""

    gpu: str | None
    threads: int

    def env(self) -> dict[str, str]:
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them."""
    if not torch.cuda.is_available():
        return []
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    if shown:
        return [g.strip() for g in shown.split(",") if g.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def plan_slots(parallel: int, runs_per_gpu: int, gpus: Sequence[str], cpus: int) -> list[Slot]:
    """``parallel`` slots: on GPUs, ``runs_per_gpu`` per GPU, the GPUs filled in turn; on CPU,
    ``cpus // parallel`` threads each.

    Raises:
        InputError: more parallel runs than the GPUs hold at ``runs_per_gpu`` (without GPUs:
            than there are CPUs, or ``runs_per_gpu`` other than 1), or a count below 1.
    """
    if parallel < 1:
        raise InputError(f"--parallel {parallel}: must be at least 1")
    if runs_per_gpu < 1:
        raise InputError(f"--runs-per-gpu {runs_per_gpu}: must be at least 1")
    if not gpus:
        if runs_per_gpu != 1:
            raise InputError(f"--runs-per-gpu {runs_per_gpu}: no GPU is visible here")
        if parallel > cpus:  # more would only slow every run down, and may exhaust memory
            raise InputError(
                f"--parallel {parallel}: this machine has {cpus} CPU(s); at most one run per CPU"
            )
        return [Slot(None, cpus // parallel)] * parallel
    if parallel > len(gpus) * runs_per_gpu:
        raise InputError(
            f"--parallel {parallel}: {len(gpus)} GPU(s) x --runs-per-gpu {runs_per_gpu} hold "
            f"{len(gpus) * runs_per_gpu} runs at once"
        )
    # runs on one GPU share its host's cores too
    threads = max(1, cpus // parallel)
    return [Slot(gpus[i // runs_per_gpu], threads) for i in range(parallel)]


class ProcessLauncher:
    """Each run in its own fresh interpreter, as many at once as there are ``slots``.

    ``command`` is the worker command that takes a spec file as its last argument and runs
    ``execute_run`` on it (the study's ``--run-one``); each run's console output goes to
    ``<files>/<name>.log``, its spec to ``<files>/<name>.json``.
    """

    def __init__(
        self,
        command: Sequence[str],
        slots: Sequence[Slot],
        files: Path,
        progress: Progress = logger.info,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command, self.slots, self.files = list(command), list(slots), files
        self.progress, self.extra_env = progress, dict(env or {})

    def launch(self, specs: Sequence[RunSpec]) -> list[RunOutcome]:
        self.files.mkdir(parents=True, exist_ok=True)
        queue, free = list(specs), list(self.slots)
        running: dict[subprocess.Popen, tuple[RunSpec, Slot]] = {}
        outcomes: dict[str, RunOutcome] = {}
        try:
            while queue or running:
                while queue and free:
                    spec, slot = queue.pop(0), free.pop(0)
                    running[self._start(spec, slot)] = (spec, slot)
                time.sleep(0.2)
                for process in [p for p in running if p.poll() is not None]:
                    spec, slot = running.pop(process)
                    free.append(slot)
                    outcomes[spec.name] = self._outcome(spec, process.returncode)
                    self._report(outcomes[spec.name], len(outcomes), len(specs))
        finally:  # Ctrl-C or an error here: no run goes on without the study
            for process in running:
                process.terminate()
            for process in running:
                process.wait()
        return [outcomes[s.name] for s in specs]

    def _start(self, spec: RunSpec, slot: Slot) -> subprocess.Popen:
        spec_path = write_text_atomic(self.files / f"{spec.name}.json", spec.to_json())
        log_path = self.files / f"{spec.name}.log"
        where = f"GPU {slot.gpu}" if slot.gpu is not None else f"{slot.threads} CPU thread(s)"
        self.progress(f"== training {spec.name} on {where} -> {spec.folder} (log {log_path})")
        with open(log_path, "a") as log:
            return subprocess.Popen(
                [*self.command, str(spec_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.extra_env, **slot.env()},
                cwd=spec.workdir or None,
                # a killed study (even by SIGKILL) leaves no run training on, holding its
                # lock; checkpoints are whole at each epoch's end, so the next call continues
                preexec_fn=child_ends_with_this_process(signal.SIGTERM),
            )

    def _outcome(self, spec: RunSpec, code: int) -> RunOutcome:
        if code == 0:
            return RunOutcome(spec.name, "finished")
        if code < 0:
            return RunOutcome(spec.name, "failed", f"killed by signal {-code}")
        lines = (self.files / f"{spec.name}.log").read_text(errors="replace").splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        last = errors[-1] if errors else (lines[-1] if lines else "")
        return RunOutcome(spec.name, "failed", f"exit {code}: {last}")

    def _report(self, outcome: RunOutcome, done: int, total: int) -> None:
        said = "finished" if outcome.finished else f"failed: {outcome.error}"
        self.progress(f"== {outcome.name} {said} ({done}/{total} done)")


class RayLauncher:
    """Each run a Ray task asking for ``cpus`` CPUs and ``gpus`` GPUs (fractional: several
    runs share one), retried up to ``retries`` times when it fails or its worker dies.

    ``address`` is a running cluster's (``auto``: the one this machine belongs to); None starts
    one on this machine for the study and stops it afterwards. The workers import this project
    from ``pythonpath`` and write to the specs' folders: on a cluster both must be on storage
    every node sees at the same path. Each run's output goes to ``<files>/<name>.log``.
    """

    def __init__(
        self,
        address: str | None,
        cpus: int,
        gpus: float,
        retries: int,
        files: Path,
        progress: Progress = logger.info,
        pythonpath: str = "",
    ) -> None:
        self.address, self.cpus, self.gpus, self.retries = address, cpus, gpus, retries
        self.files, self.progress, self.pythonpath = files, progress, pythonpath

    def launch(self, specs: Sequence[RunSpec]) -> list[RunOutcome]:
        ray = require("ray", "ray")
        started = not ray.is_initialized()
        if started:
            env = {"PYTHONPATH": self.pythonpath} if self.pythonpath else {}
            try:
                ray.init(
                    address=self.address,
                    runtime_env={"env_vars": env},
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,  # each run's output is in its log file
                )
            except (ConnectionError, ValueError, RuntimeError) as err:  # before any run
                where = f"--ray-address {self.address}" if self.address else "--launcher ray"
                raise InputError(f"{where}: cannot start or reach Ray ({one_line(err)})") from None
        try:
            return self._launch(ray, specs)
        finally:
            if started:
                ray.shutdown()

    def _launch(self, ray, specs: Sequence[RunSpec]) -> list[RunOutcome]:
        gpus = self.gpus if ray.cluster_resources().get("GPU", 0) > 0 else 0
        task = ray.remote(
            num_cpus=self.cpus,
            num_gpus=gpus,
            max_retries=self.retries,  # the worker died (node lost, killed)
            retry_exceptions=self.retries > 0,  # the run raised
            max_calls=1,  # a fresh worker per run: nothing left over from the one before
        )(execute_logged)
        self.files.mkdir(parents=True, exist_ok=True)
        pending = {}
        for spec in specs:
            log_path = self.files / f"{spec.name}.log"
            self.progress(f"== queued {spec.name} -> {spec.folder} (log {log_path})")
            pending[task.remote(asdict(spec), self.cpus, str(log_path))] = spec
        outcomes: dict[str, RunOutcome] = {}
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ref)
            try:
                ray.get(ref)
                outcome = RunOutcome(spec.name, "finished")
            except ray.exceptions.RayTaskError as err:
                outcome = RunOutcome(spec.name, "failed", one_line(err.cause or err))
            except ray.exceptions.RayError as err:  # the worker or its node died
                outcome = RunOutcome(spec.name, "failed", one_line(err))
            outcomes[spec.name] = outcome
            said = "finished" if outcome.finished else f"failed: {outcome.error}"
            self.progress(f"== {spec.name} {said} ({len(outcomes)}/{len(specs)} done)")
        return [outcomes[s.name] for s in specs]


@dataclass(frozen=True)
class SlurmOptions:
    """A Slurm job per run: ``partition`` (None: the cluster's default), ``time_min`` per job,
    ``gpus`` and ``cpus`` per run, ``extra`` sbatch options (``{"account": "x"}``), and
    ``executor`` ``slurm`` or ``local`` (submitit's local executor: the same jobs as processes
    of this machine)."""

    partition: str | None = None
    time_min: int = 24 * 60
    gpus: int = 1
    cpus: int = 4
    extra: tuple[tuple[str, str], ...] = ()
    executor: str = "slurm"


class SubmititLauncher:
    """The runs as one submitit job array; ``wait`` False submits and returns ``submitted``
    outcomes, the job ids kept in ``<files>/slurm_jobs.json`` for ``collect``."""

    def __init__(
        self,
        options: SlurmOptions,
        files: Path,
        wait: bool = True,
        progress: Progress = logger.info,
        pythonpath: str = "",
    ) -> None:
        self.options, self.files, self.wait = options, files, wait
        self.progress, self.pythonpath = progress, pythonpath

    def _executor(self):
        submitit = require("submitit", "slurm")
        o = self.options
        executor = submitit.AutoExecutor(folder=self.files / "submitit", cluster=o.executor)
        setup = [f"export PYTHONPATH={shlex.quote(self.pythonpath)}"] if self.pythonpath else []
        executor.update_parameters(
            name="study",
            timeout_min=o.time_min,
            gpus_per_node=o.gpus,
            cpus_per_task=o.cpus,
            tasks_per_node=1,
            nodes=1,
            slurm_partition=o.partition,
            slurm_additional_parameters=dict(o.extra),
            slurm_setup=setup,
            local_setup=setup,
        )
        return executor

    def launch(self, specs: Sequence[RunSpec]) -> list[RunOutcome]:
        executor = self._executor()
        logs = [str(self.files / f"{s.name}.log") for s in specs]
        self.files.mkdir(parents=True, exist_ok=True)
        threads = [self.options.cpus] * len(specs)
        jobs = executor.map_array(execute_logged, [asdict(s) for s in specs], threads, logs)
        self._record({s.name: job.job_id for s, job in zip(specs, jobs)})
        for spec, job, log in zip(specs, jobs, logs):
            self.progress(f"== submitted {spec.name} as job {job.job_id} (log {log})")
        if not self.wait:
            return [RunOutcome(s.name, "submitted") for s in specs]
        outcomes = [self._result(spec.name, job) for spec, job in zip(specs, jobs)]
        self._record({})
        return outcomes

    def _record(self, jobs: dict[str, str]) -> None:
        path = self.files / SLURM_JOBS
        if jobs:
            write_text_atomic(path, json.dumps(jobs, indent=1) + "\n")
        else:
            path.unlink(missing_ok=True)

    def _result(self, name: str, job) -> RunOutcome:
        try:
            job.result()
        except Exception as err:  # submitit re-raises the job's own error
            outcome = RunOutcome(name, "failed", one_line(err))
            self.progress(f"== {name} (job {job.job_id}) failed: {outcome.error}")
            return outcome
        self.progress(f"== {name} (job {job.job_id}) finished")
        return RunOutcome(name, "finished")

    def collect(self) -> list[str]:
        """Waits for (``wait``) or looks at the jobs an earlier ``--no-wait`` call submitted;
        returns the names of those still queued or running (none once waited for). The
        record is removed once every job ended: what they left is then read from the run
        folders."""
        path = self.files / SLURM_JOBS
        if not path.is_file():
            return []
        submitit = require("submitit", "slurm")
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            recorded = err
        if not isinstance(recorded, dict) or not all(
            isinstance(v, (str, int)) for v in recorded.values()
        ):
            raise InputError(
                f"{path}: not the job record a --no-wait call writes (run name: job id); "
                "move it away to submit the unfinished runs again"
            )
        job_class = submitit.SlurmJob if self.options.executor == "slurm" else submitit.LocalJob
        folder = self.files / "submitit"
        jobs = {name: job_class(folder, job_id) for name, job_id in recorded.items()}
        if self.wait:
            for name, job in jobs.items():
                self.progress(f"== waiting for {name} (job {job.job_id})")
                with contextlib.suppress(Exception):  # its run folder tells what it left
                    job.wait()
        active = [name for name, job in jobs.items() if not _ended(job)]
        if not active:
            self._record({})
        return active


def _ended(job) -> bool:
    state = str(job.state).upper()
    return not any(s in state for s in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING"))
