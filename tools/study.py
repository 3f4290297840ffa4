"""The attention study: train every phi with every seed under identical settings, then compare.

Usage (the demo set, small budget, minutes on a CPU):
    python -m tools.study --data demo --phis 0 1 2 3 4 --seeds 0 1 2 --epochs 15 --img-size 192
On VOC, on a GPU box (the rest at ``TrainConfig``'s defaults: the reference VOC schedule):
    python -m tools.study --phis 0 1 2 3 --seeds 0 1 2

Each run is ``logs/<out>/phi<P>_seed<S>``; its final EMA weights (``last.pth``, never selected on
the evaluation split) are scored on the validation split and put side by side in
``comparison.md`` (and ``.csv``, ``_pairs.csv``, ``.png``, ``map_vs_latency.png``) with mean ±
std over seeds per attention block, its cost, and per pair of blocks the mAP50 difference with a
95% interval from a paired bootstrap over the test images and the seeds: "better", "worse" or
"not distinguishable". A plugin block's runs are ``<name>_seed<S>`` (plugins share phi -1).
A run already in the study folder is reused when finished, and continued when interrupted, only
if it was trained with the study's settings (every setting, derived ones such as batch sizes,
frozen epochs, warmup, lr and scale_xy included, except ``RESULT_NEUTRAL_FIELDS``); otherwise the
study stops before any training with an error naming the settings that differ. Blocks, seeds
and settings are all checked before the first run starts.

``--sweep FIELD=A;B`` (any training setting, e.g. ``attention_at=feat1,feat2;csp3``) trains each
block at each value: runs ``<block>_<field>-<value>_seed<S>``, compared as blocks of their own.

Where the runs execute (``utils.training.launch``; the runs and their results are the same):
``--launcher local`` one after another in this process, or ``--parallel N`` at once, each in its
own process with its own GPU (``--runs-per-gpu K`` packs K onto one) or CPU thread share;
``--launcher ray`` as Ray tasks (``--ray-address``, else a Ray instance on this machine);
``--launcher slurm`` as a Slurm job array through submitit (``--no-wait``: submit, and collect
with a later call on the same ``--out``). A run that fails is named while the others finish;
the comparison then covers the blocks whose runs all finished, and the study exits 1.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import train as train_cli
from data.formats import LabelSource
from data.voc import summarize_issues
from nets.attention import parse_attention_args
from nets.checkpoint import load_torch_file
from nets.registry import check_attention_args, load_attention_plugins, resolve_phi
from nets.yolo import DEFAULT_ANCHORS, YoloBody
from utils.classes import read_anchors
from utils.config import CommandParser, add_options, from_args, run_cli
from utils.device import available_cpus, select_device
from utils.errors import FailedError, InputError
from utils.evaluation.compare import (
    CompareConfig,
    evaluate_checkpoint,
    training_run,
    write_outputs,
)
from utils.evaluation.evaluate import EvalConfig
from utils.paths import (
    OutputRefusedError,
    check_apart,
    check_output_path,
    unique_components,
)
from utils.runlock import LOCK_NAME, FolderLock
from utils.training.adapt import fit_to_data
from utils.training.anchor_choice import ANCHOR_CHOICES
from utils.training.config import RESULT_NEUTRAL_FIELDS, TrainConfig
from utils.training.launch import (
    LAUNCH_DIR,
    InProcessLauncher,
    Launcher,
    ProcessLauncher,
    RayLauncher,
    RunOutcome,
    RunSpec,
    SlurmOptions,
    SubmititLauncher,
    execute_run,
    plan_slots,
    require,
    visible_gpus,
)
from utils.training.setup import (
    DataSetup,
    eval_label_source,
    load_data,
    load_initial_weights,
    require_objects,
    resolve_data,
    run_inputs,
)
from utils.training.state import TrainState

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]  # what a run's worker process imports from
# the fields each run sets itself, so neither shared flags nor sweepable
PER_RUN = ("phi", "seed", "name", "log_dir", "resume", "stop_at_epoch")


@dataclass
class PlannedRun:
    """One (phi, seed) run of a study and what the study does with it: ``train`` it anew,
    ``resume`` an interrupted run with the same settings, or ``reuse`` a finished one.
    ``group`` is the block the comparison counts it under: the block's name, plus the swept
    settings' values (``se attention_at=csp3``) in a sweep."""

    name: str
    cfg: TrainConfig
    folder: Path
    action: str
    note: str = ""
    group: str = ""

    @property
    def last(self) -> Path:
        return self.folder / "weights" / "last.pth"

    def spec(self) -> RunSpec:
        """The run as launchers take it: a folder left by a run that never finished an epoch
        is emptied first."""
        return RunSpec.of(self.name, self.cfg, self.folder, restart=self.action == "train")


def parse_sweep(items: Sequence[str]) -> dict[str, list]:
    """``--sweep FIELD=A;B`` items -> ``{field: [A, B]}``, each value read as ``train.py``
    reads that flag.

    Raises:
        InputError: not ``FIELD=VALUES``, a field that is not a training setting or is one
            each run sets (phi, seed, ...) or one that cannot change a result, an on/off
            setting, a field given twice, or a value the flag refuses.
    """
    sweep: dict[str, list] = {}
    names = {f.name: f for f in fields(TrainConfig)}
    for item in items:
        key, sep, values = item.partition("=")
        field = key.strip().lstrip("-").replace("-", "_")
        if not sep or not values.strip():
            raise InputError(
                f"--sweep {item!r}: give FIELD=VALUE;VALUE..., e.g. attention_at=feat1,feat2;csp3"
            )
        if field not in names or field in PER_RUN or field in RESULT_NEUTRAL_FIELDS:
            raise InputError(f"--sweep {item!r}: {key!r} is not a setting a study can sweep")
        if names[field].metadata.get("group") == "data" and field != "anchors":
            # the study reads and scores one data set: runs on other data do not pair
            raise InputError(
                f"--sweep {item!r}: {key!r} chooses the data; runs on different data are "
                "not comparable, run one study per data set"
            )
        if "bool" in str(names[field].type):
            raise InputError(f"--sweep {item!r}: an on/off setting; run one study per value")
        if field in sweep:
            raise InputError(f"--sweep {key}: given twice; put all its values in one item")
        [action] = [a for a in train_cli.build_parser()._actions if a.dest == field]
        sweep[field] = [_flag_value(item, action, v) for v in values.split(";")]
    return sweep


def _flag_value(item: str, action: argparse.Action, text: str) -> object:
    """``text`` read as ``train.py`` reads the flag of ``action``; InputError naming ``item``."""
    try:
        value = action.type(text) if action.type else text
    except (TypeError, ValueError):
        value = None
    if value is None or (action.choices and value not in action.choices):
        raise InputError(f"--sweep {item!r}: {text!r} is not a value of {action.option_strings[0]}")
    return value


def _variants(base: TrainConfig, sweep: dict[str, list]) -> list[dict]:
    """Every combination of the swept values, each in its canonical form (two spellings of one
    placement are one run, refused as a duplicate)."""
    out = []
    for values in itertools.product(*sweep.values()):
        cfg = replace(base, **dict(zip(sweep, values)))  # checks each value
        out.append({field: getattr(cfg, field) for field in sweep})
    return out


def plan_study(
    base: TrainConfig,
    phis: Sequence[int | str],
    seeds: Sequence[int],
    out: Path,
    sweep: dict[str, list] | None = None,
) -> tuple[TrainConfig, list[PlannedRun], LabelSource | None]:
    """Checks everything a study needs before its first run starts, and decides per run.

    Every block name, seed and per-run config is checked, the data is read once (what its
    readers skipped or repaired is logged here, one line per kind), ``out`` must
    be a folder apart from the inputs, and each run already in ``out`` is compared setting by
    setting (all but ``RESULT_NEUTRAL_FIELDS``) with the run the study would train.

    Returns:
        The base config with its data paths resolved, the runs in order (each block at each
        combination of the ``sweep`` values, ``parse_sweep``'s, with each seed), and the labels
        the runs are evaluated on (None: VOC image sets).

    Raises:
        OutputPathError: ``out`` is not a folder that can be written, or holds an input.
        InputError: a duplicate or unknown block or seed, a bad setting, unusable data, or a
            run in ``out`` trained with other settings (the message names the settings).
        FolderLockedError: a run in ``out`` is being written by another live process.
    """
    try:
        check_output_path(out, folder=True)
    except OutputRefusedError as err:
        raise OutputRefusedError(f"--out {err}") from None
    for seed in seeds:  # a seed becomes part of a folder name: whole numbers only
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"--seeds {seed!r}: must be whole numbers")
        if seed < 0:  # the generators take none below 0
            raise InputError(f"--seeds {seed}: must be >= 0")
    _refuse_duplicates("--seeds", [(seed, str(seed)) for seed in seeds])
    load_attention_plugins(base.attention_plugin)  # plugin blocks get their names here
    blocks = []
    for phi in phis:
        try:
            blocks.append(resolve_phi(phi))
        except ValueError as err:
            raise InputError(f"--phis {phi}: {err}") from None
    _refuse_duplicates(
        "--phis", [(block, f"{phi} ({block[1]})") for phi, block in zip(phis, blocks)]
    )
    base = resolve_data(base)
    check_apart(out, run_inputs(base), flag="--out")
    labels = eval_label_source(base)  # a study without a val split fails now
    variants = _variants(base, sweep or {})
    shown = [";".join(f"{k}={v}" for k, v in variant.items()) for variant in variants]
    _refuse_duplicates("--sweep", [(s, s) for s in shown])
    # plugin blocks all have phi -1: their runs are told apart by their (sanitised) names
    stems = [f"phi{n}" if n >= 0 else name for n, name in blocks]
    combos = [(block, stem, v) for block, stem in zip(blocks, stems) for v in variants]
    names = unique_components(
        [
            stem + "".join(f"_{k}-{str(x).replace(',', '+')}" for k, x in v.items())
            for _, stem, v in combos
        ]
    )
    for variant in variants:  # a swept path is an input too
        check_apart(out, run_inputs(replace(base, **variant)), flag="--out")
    runs = []
    for ((number, name), _, variant), stem in zip(combos, names):
        cfg = replace(base, **variant)
        check_attention_args(name, parse_attention_args(cfg.attention_args))
        group = " ".join([name, *(f"{k}={x}" for k, x in variant.items())])
        for seed in seeds:
            run_name = f"{stem}_seed{seed}"
            cfg = replace(
                base,
                **variant,
                phi=str(number) if number >= 0 else name,  # plugins: no number
                seed=seed,
                name=run_name,
                log_dir=str(out),
                resume=None,
            )
            runs.append(PlannedRun(run_name, cfg, out / run_name, "train", group=group))
    data = load_data(base)
    require_objects(data, base)
    for variant in variants:
        _check_start_files(replace(base, **variant), data)
    for line in summarize_issues(data.issues):  # once here, not once per run
        logger.warning("input skipped or repaired: %s", line)
    conflicts = [problem for run in runs if (problem := _check_existing(run, data))]
    if conflicts:
        raise InputError(
            f"--out {out}: {'; '.join(conflicts)}. A study reuses only runs trained with its "
            "settings: give another --out, or delete those runs to train them again"
        )
    return base, runs, labels


def _check_start_files(cfg: TrainConfig, data: DataSetup) -> None:
    """InputError naming the flag when the initial weights or the anchors file a new run
    reads cannot be read (found now, not when that run starts)."""
    if cfg.weights.lower() not in ("auto", "none", ""):
        model = YoloBody(len(data.class_names), 0)
        try:
            load_initial_weights(model, cfg)
        except (OSError, ValueError) as err:
            raise InputError(f"--weights {cfg.weights}: {err}") from None
    if cfg.anchors not in ANCHOR_CHOICES:
        try:
            read_anchors(cfg.anchors, count=len(DEFAULT_ANCHORS))
        except (OSError, ValueError) as err:
            raise InputError(f"--anchors {cfg.anchors}: {err}") from None


def _refuse_duplicates(flag: str, items: list[tuple[object, str]]) -> None:
    """InputError naming ``flag``'s values that stand for the same run (key, as given)."""
    seen: dict[object, str] = {}
    for key, shown in items:
        if key in seen:
            raise InputError(
                f"{flag}: {seen[key]} and {shown} are the same; each is one run, and a run "
                "counted twice would fake agreement between seeds"
            )
        seen[key] = shown


def _check_existing(run: PlannedRun, data: DataSetup) -> str:
    """Sets ``run.action`` for a run already in the study folder; returns why it cannot be
    reused ("" when it can). A live run's folder raises ``FolderLockedError``."""
    if not run.folder.exists():
        return ""
    if not run.folder.is_dir():
        return f"{run.folder} is not a folder"
    FolderLock(run.folder, "run").acquire().release()  # refuses a run another process writes
    if not run.last.is_file():
        # a run that died before its first epoch (its config.json is written first) has
        # nothing trained to keep; a folder of other files is not the study's to remove
        if not (run.folder / "config.json").is_file() and any(
            p.name != LOCK_NAME for p in run.folder.iterdir()
        ):
            return f"{run.folder} holds files but no run: move it away"
        run.note = "started but never finished an epoch: training it anew"
        return ""
    checkpoint = load_torch_file(run.last)
    if not isinstance(checkpoint, dict):
        return f"{run.last} is not a training checkpoint"
    differences = _differences(checkpoint.get("config"), expected_config(run.cfg, data))
    if differences:
        return f"{run.name} was trained with other settings ({'; '.join(differences)})"
    epoch = checkpoint.get("train_state", {}).get("epoch", -1)
    if epoch >= run.cfg.epochs - 1:
        run.action, run.note = "reuse", f"finished with the same settings: reusing {run.last}"
    else:
        run.action = "resume"
        run.cfg = replace(run.cfg, resume=str(run.last))
        run.note = f"stopped after epoch {epoch + 1} with the same settings: continuing it"
    return ""


def expected_config(cfg: TrainConfig, data: DataSetup) -> TrainConfig:
    """The config a new run of ``cfg`` stores in its checkpoints: with the settings it derives
    from the data and the initial weights (batch sizes, frozen epochs, warmup, lr, scale_xy),
    derived exactly as ``fit`` derives them."""
    model = YoloBody(
        len(data.class_names),
        cfg.phi,
        attention_at=cfg.attention_at,
        attention_args=cfg.attention_args,
    )
    return fit_to_data(cfg, model, data, None, TrainState(), world=1).cfg


def _differences(stored: dict | None, expected: TrainConfig) -> list[str]:
    """``--flag stored, here expected`` for every compared setting that differs."""
    try:
        saved = TrainConfig(**stored)
    except (TypeError, ValueError) as err:  # none stored, or from another version
        return [f"its stored settings are unreadable ({err})"]
    out = []
    for f in fields(TrainConfig):
        if f.name in RESULT_NEUTRAL_FIELDS:
            continue
        old, new = getattr(saved, f.name), getattr(expected, f.name)
        if old != new:
            out.append(f"--{f.name.replace('_', '-')} {old!r}, here {new!r}")
    return out


def run_study(
    base: TrainConfig,
    phis: list[int | str],
    seeds: list[int],
    out: Path,
    eval_cfg: EvalConfig | None = None,
    compare: CompareConfig | None = None,
    launcher: Launcher | None = None,
    sweep: dict[str, list] | None = None,
) -> dict[str, Path]:
    """Trains (or reuses) every (phi, seed) run, then writes the comparison; returns its paths.

    Everything is checked first (``plan_study``): a study never trains one run and then fails
    on the next one's settings. ``compare`` sets the bootstrap behind the pairwise verdicts
    (default: 1,000 resamples); ``launcher`` is where the runs execute (default: one after
    another in this process); ``sweep`` is ``parse_sweep``'s.
    """
    base, runs, labels = plan_study(base, phis, seeds, out, sweep)
    return train_and_compare(base, runs, labels, out, eval_cfg, compare, launcher)


def train_and_compare(
    base: TrainConfig,
    runs: list[PlannedRun],
    labels: LabelSource | None,
    out: Path,
    eval_cfg: EvalConfig | None = None,
    compare: CompareConfig | None = None,
    launcher: Launcher | None = None,
) -> dict[str, Path]:
    """``plan_study``'s runs trained or resumed by ``launcher`` (default: in this process) or
    reused, evaluated and compared.

    Returns:
        The comparison's paths; empty when the runs were only submitted (``--no-wait``).

    Raises:
        FailedError: a run failed (each is named with its error, after the others finished);
            the comparison of the blocks whose runs all finished is written first.
    """
    launcher = launcher or InProcessLauncher(progress=print)
    for run in runs:
        if run.note:
            print(f"== {run.name}: {run.note}")
    todo = [run for run in runs if run.action != "reuse"]
    outcomes = launcher.launch([run.spec() for run in todo]) if todo else []
    if any(o.state == "submitted" for o in outcomes):
        return {}
    failed = [o for o in outcomes if not o.finished]
    broken = {run.group for run in runs if run.name in {o.name for o in failed}}
    compared = [run for run in runs if run.group not in broken]
    paths = _compare(base, compared, labels, out, eval_cfg, compare) if compared else {}
    if failed:
        raise FailedError(_failure_message(failed, broken, paths))
    return paths


def _failure_message(failed: list[RunOutcome], broken: set[str], paths: dict) -> str:
    runs = "; ".join(f"{o.name} ({o.error})" for o in failed)
    where = f"compared the others in {paths['md']}" if paths else "nothing left to compare"
    return (
        f"{len(failed)} run(s) failed: {runs}. Left out of the comparison: "
        f"{', '.join(sorted(broken))}; {where}. Run the study again to resume them"
    )


def _compare(
    base: TrainConfig,
    runs: list[PlannedRun],
    labels: LabelSource | None,
    out: Path,
    eval_cfg: EvalConfig | None,
    compare: CompareConfig | None,
) -> dict[str, Path]:
    """Each run's ``last.pth`` evaluated on the validation split, and the comparison written."""
    device = select_device(base.device)
    eval_cfg = eval_cfg or EvalConfig(img_size=base.img_size, workers=min(base.workers, 2))
    names = None
    if base.classes:
        from utils.classes import read_class_names

        names = read_class_names(base.classes)
    swept = any(run.group != resolve_phi(run.cfg.phi)[1] for run in runs)
    rows, protocol = [], ""
    for run in runs:
        row, report = evaluate_checkpoint(
            str(run.last),
            base.voc_root,
            base.val_set,
            eval_cfg,
            device=device,
            class_names=names,
            labels=labels,
        )
        row.name = run.name
        if swept:  # a block at each swept value is a block of its own in the comparison
            row.phi_name = run.group
        # the stored seed and settings: the comparison pairs the blocks' runs seed by seed
        row.seed, row.settings = training_run(str(run.last), RESULT_NEUTRAL_FIELDS)
        rows.append(row)
        protocol = report.protocol
    return write_outputs(rows, protocol, out, compare)


def build_parser() -> argparse.ArgumentParser:
    """train.py's options (the settings every run shares) plus the study's own."""
    parser = CommandParser(
        prog="python -m tools.study",
        description=__doc__,
        parents=[train_cli.build_parser(add_help=False, exclude=PER_RUN)],
    )
    study = parser.add_argument_group("study")
    study.add_argument(
        "--phis", nargs="+", default=["0", "1", "2", "3", "4"], help="attention types to train"
    )
    study.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2],
        help="seeds per attention type, 0 or more",
    )
    study.add_argument("--out", default="logs/study", help="study folder (default: %(default)s)")
    study.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="FIELD=A;B",
        help="also vary a training setting: each block at each value (repeat for more "
        "settings: every combination), e.g. 'attention_at=feat1,feat2;csp3'",
    )
    add_options(parser, CompareConfig)
    launch = parser.add_argument_group("launcher")
    launch.add_argument(
        "--launcher",
        choices=("local", "ray", "slurm"),
        default="local",
        help="where the runs execute: this machine, Ray tasks, or a Slurm job array "
        "(ray and slurm: pip install -r requirements-launchers.txt)",
    )
    launch.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="runs at once on this machine (local; ray without --ray-address), each in its own "
        "process with its own GPU or CPU-thread share; 1 trains in this process",
    )
    launch.add_argument(
        "--runs-per-gpu",
        type=int,
        default=1,
        help="runs sharing one GPU (local, ray): a small model leaves a large GPU mostly idle",
    )
    launch.add_argument(
        "--cpus-per-run",
        type=int,
        default=None,
        help="CPUs (and torch threads) each run asks for (ray, slurm; default: this machine's "
        "CPUs / --parallel for ray, --workers + 2 for slurm)",
    )
    launch.add_argument(
        "--ray-address",
        default=None,
        help="a running Ray cluster ('auto': the one this machine is part of; default: start "
        "one on this machine for the study); the study folder and this project must be on "
        "storage every node sees at the same path",
    )
    launch.add_argument(
        "--retries",
        type=int,
        default=1,
        help="times Ray runs a failed run again (default: %(default)s)",
    )
    launch.add_argument(
        "--slurm-partition", default=None, help="Slurm partition (default: the cluster's)"
    )
    launch.add_argument(
        "--slurm-time",
        type=int,
        default=24 * 60,
        help="time limit per run, minutes (default: %(default)s)",
    )
    launch.add_argument(
        "--gpus-per-run", type=int, default=1, help="GPUs per Slurm job (default: %(default)s)"
    )
    launch.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sbatch option, repeatable (e.g. account=myproj, constraint=a100)",
    )
    launch.add_argument(
        "--no-wait",
        action="store_true",
        help="slurm: submit and return; a later call with the same --out collects",
    )
    # the launchers' own plumbing, not for users: submitit's local executor (tests run the
    # Slurm path with it) and a worker process's one run
    launch.add_argument(
        "--slurm-executor", default="slurm", choices=("slurm", "local"), help=argparse.SUPPRESS
    )
    launch.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    # runs are compared on their final weights: evaluating during training would only cost time
    parser.set_defaults(eval_period=0)
    return parser


def make_launcher(args: argparse.Namespace, out: Path) -> Launcher:
    """The launcher the flags ask for (checked before any run starts)."""
    files = out / LAUNCH_DIR
    # what a worker imports: this project, and plugin modules where this process finds them
    pythonpath = os.pathsep.join(
        p for p in (str(ROOT), os.getcwd(), os.environ.get("PYTHONPATH")) if p
    )
    for flag in ("parallel", "runs_per_gpu", "cpus_per_run"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    for flag, value, least in (
        ("--retries", args.retries, 0),
        ("--gpus-per-run", args.gpus_per_run, 0),
        ("--slurm-time", args.slurm_time, 1),
    ):
        if value < least:
            raise InputError(f"{flag} {value}: must be at least {least}")
    if args.no_wait and args.launcher != "slurm":
        raise InputError("--no-wait: only --launcher slurm submits and returns")
    for flag, value, launcher in (  # a flag another launcher reads would be silently ignored
        ("--ray-address", args.ray_address, "ray"),
        ("--slurm-partition", args.slurm_partition, "slurm"),
        ("--slurm-option", args.slurm_option, "slurm"),
    ):
        if value and args.launcher != launcher:
            raise InputError(f"{flag}: only --launcher {launcher} reads it")
    if args.launcher in ("ray", "slurm"):  # missing: said now, not after the planning
        require("ray" if args.launcher == "ray" else "submitit", args.launcher)
    if args.launcher == "ray":
        cpus = args.cpus_per_run or max(1, available_cpus() // args.parallel)
        gpus = 0 if args.device.strip().lower() == "cpu" else 1 / args.runs_per_gpu
        return RayLauncher(args.ray_address, cpus, gpus, args.retries, files, print, pythonpath)
    if args.launcher == "slurm":
        extra = []
        for item in args.slurm_option:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise InputError(f"--slurm-option {item!r}: give KEY=VALUE, e.g. account=myproj")
            extra.append((key.strip().lstrip("-").replace("-", "_"), value))
        options = SlurmOptions(
            args.slurm_partition,
            args.slurm_time,
            args.gpus_per_run,
            args.cpus_per_run or args.workers + 2,
            tuple(extra),
            args.slurm_executor,
        )
        if options.executor == "slurm" and not shutil.which("sbatch"):
            raise InputError("--launcher slurm: no Slurm here (sbatch is not on the PATH)")
        return SubmititLauncher(options, files, not args.no_wait, print, pythonpath)
    if args.parallel == 1:
        if args.runs_per_gpu != 1:
            raise InputError("--runs-per-gpu: packs --parallel runs onto a GPU; give --parallel")
        return InProcessLauncher(progress=print)
    device = args.device.strip().lower()
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(
            f"--device {args.device} with --parallel: each run gets its own GPU; give "
            "--device auto, cuda or cpu"
        )
    gpus = [] if device == "cpu" else visible_gpus()
    slots = plan_slots(args.parallel, args.runs_per_gpu, gpus, available_cpus())
    command = [sys.executable, "-m", "tools.study", "--run-one"]
    return ProcessLauncher(command, slots, files, print, {"PYTHONPATH": pythonpath})


def run_one(spec_path: str) -> int:
    """A worker process's run: ``execute_run`` of the spec file, as ``train.py`` would run it."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as train.py: saves on Ctrl-C
    execute_run(RunSpec.read(spec_path))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.run_one:
        return run_one(args.run_one)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = Path(args.out)
    # everything is checked before hours of training: bad input is exit 2 before any run; the
    # base config is checked as a run of the first block (phi 0 takes no options)
    base = from_args(TrainConfig, args, phi=str(args.phis[0]))
    compare = from_args(CompareConfig, args)
    sweep = parse_sweep(args.sweep)
    launcher = make_launcher(args, out)
    if isinstance(launcher, SubmititLauncher):  # an earlier --no-wait call's jobs first
        active = launcher.collect()
        if active:
            print(f"still queued or running: {', '.join(active)}; call again later to collect")
            return 0
    base, runs, labels = plan_study(base, args.phis, args.seeds, out, sweep)
    # a write that fails, a run that fails or diverges on the way: exit 1
    paths = train_and_compare(base, runs, labels, out, compare=compare, launcher=launcher)
    if not paths:
        print(f"submitted; call this command again with --out {out} to collect and compare")
        return 0
    print(paths["md"].read_text())
    print(f"comparison: {', '.join(map(str, paths.values()))}")
    return 0


if __name__ == "__main__":
    run_cli(main)
