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
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import train as train_cli
from data.formats import LabelSource
from data.voc import summarize_issues
from nets.attention import parse_attention_args
from nets.checkpoint import load_torch_file
from nets.registry import check_attention_args, load_attention_plugins, resolve_phi
from nets.yolo import YoloBody
from utils.config import CommandParser, add_options, from_args, run_cli
from utils.device import select_device
from utils.errors import InputError
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
from utils.runlock import LOCK_NAME, FolderLock, FolderLockedError
from utils.training.adapt import fit_to_data
from utils.training.config import RESULT_NEUTRAL_FIELDS, TrainConfig
from utils.training.fit import fit
from utils.training.setup import (
    DataSetup,
    eval_label_source,
    load_data,
    require_objects,
    resolve_data,
    run_inputs,
)
from utils.training.state import TrainState

logger = logging.getLogger(__name__)


@dataclass
class PlannedRun:
    """One (phi, seed) run of a study and what the study does with it: ``train`` it anew,
    ``resume`` an interrupted run with the same settings, or ``reuse`` a finished one."""

    name: str
    cfg: TrainConfig
    folder: Path
    action: str
    note: str = ""

    @property
    def last(self) -> Path:
        return self.folder / "weights" / "last.pth"


def plan_study(
    base: TrainConfig, phis: Sequence[int | str], seeds: Sequence[int], out: Path
) -> tuple[TrainConfig, list[PlannedRun], LabelSource | None]:
    """Checks everything a study needs before its first run starts, and decides per run.

    Every block name, seed and per-run config is checked, the data is read once (what its
    readers skipped or repaired is logged here, one line per kind), ``out`` must
    be a folder apart from the inputs, and each run already in ``out`` is compared setting by
    setting (all but ``RESULT_NEUTRAL_FIELDS``) with the run the study would train.

    Returns:
        The base config with its data paths resolved, the runs in order, and the labels the
        runs are evaluated on (None: VOC image sets).

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
    args = parse_attention_args(base.attention_args)
    # plugin blocks all have phi -1: their runs are told apart by their (sanitised) names
    stems = unique_components([f"phi{n}" if n >= 0 else name for n, name in blocks])
    runs = []
    for (number, name), stem in zip(blocks, stems):
        check_attention_args(name, args)
        for seed in seeds:
            run_name = f"{stem}_seed{seed}"
            cfg = replace(
                base,
                phi=str(number) if number >= 0 else name,  # plugins: no number
                seed=seed,
                name=run_name,
                log_dir=str(out),
                resume=None,
            )
            runs.append(PlannedRun(run_name, cfg, out / run_name, "train"))
    data = load_data(base)
    require_objects(data, base)
    for line in summarize_issues(data.issues):  # once here, not once per run
        logger.warning("input skipped or repaired: %s", line)
    conflicts = [problem for run in runs if (problem := _check_existing(run, data))]
    if conflicts:
        raise InputError(
            f"--out {out}: {'; '.join(conflicts)}. A study reuses only runs trained with its "
            "settings: give another --out, or delete those runs to train them again"
        )
    return base, runs, labels


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
) -> dict[str, Path]:
    """Trains (or reuses) every (phi, seed) run, then writes the comparison; returns its paths.

    Everything is checked first (``plan_study``): a study never trains one run and then fails
    on the next one's settings. ``compare`` sets the bootstrap behind the pairwise verdicts
    (default: 1,000 resamples).
    """
    base, runs, labels = plan_study(base, phis, seeds, out)
    return train_and_compare(base, runs, labels, out, eval_cfg, compare)


def train_and_compare(
    base: TrainConfig,
    runs: list[PlannedRun],
    labels: LabelSource | None,
    out: Path,
    eval_cfg: EvalConfig | None = None,
    compare: CompareConfig | None = None,
) -> dict[str, Path]:
    """``plan_study``'s runs trained, resumed or reused, evaluated and compared."""
    for run in runs:
        if run.note:
            print(f"== {run.name}: {run.note}")
        if run.action == "reuse":
            continue
        if run.action == "train" and run.folder.exists():
            with FolderLock(run.folder, "run"):  # still no other process's
                shutil.rmtree(run.folder)
        number, name = resolve_phi(run.cfg.phi)
        print(f"== training phi {number} ({name}), seed {run.cfg.seed} -> {run.folder}")
        result = fit(run.cfg, issues_to_console=False)  # plan_study said them once
        if result.run_dir != run.folder:  # another process made the folder meanwhile
            raise FolderLockedError(
                f"{run.folder}: made by another process while this study started the run; "
                f"this one trained into {result.run_dir} instead. Run one study per --out"
            )
    device = select_device(base.device)
    eval_cfg = eval_cfg or EvalConfig(img_size=base.img_size, workers=min(base.workers, 2))
    names = None
    if base.classes:
        from utils.classes import read_class_names

        names = read_class_names(base.classes)
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
        # the stored seed and settings: the comparison pairs the blocks' runs seed by seed
        row.seed, row.settings = training_run(str(run.last), RESULT_NEUTRAL_FIELDS)
        rows.append(row)
        protocol = report.protocol
    return write_outputs(rows, protocol, out, compare)


def build_parser() -> argparse.ArgumentParser:
    """train.py's options (the settings every run shares) plus the study's own."""
    per_run = ("phi", "seed", "name", "log_dir", "resume", "stop_at_epoch")
    parser = CommandParser(
        prog="python -m tools.study",
        description=__doc__,
        parents=[train_cli.build_parser(add_help=False, exclude=per_run)],
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
    add_options(parser, CompareConfig)
    # runs are compared on their final weights: evaluating during training would only cost time
    parser.set_defaults(eval_period=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = Path(args.out)
    # everything is checked before hours of training: bad input is exit 2 before any run; the
    # base config is checked as a run of the first block (phi 0 takes no options)
    base = from_args(TrainConfig, args, phi=str(args.phis[0]))
    compare = from_args(CompareConfig, args)
    base, runs, labels = plan_study(base, args.phis, args.seeds, out)
    # a write that fails or a run that diverges on the way: exit 1
    paths = train_and_compare(base, runs, labels, out, compare=compare)
    print(paths["md"].read_text())
    print(f"comparison: {', '.join(map(str, paths.values()))}")
    return 0


if __name__ == "__main__":
    run_cli(main)
