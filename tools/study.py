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
Runs already finished are reused, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch

import train as train_cli
from nets.attention import resolve_phi
from utils.config import HelpFormatter, add_options, from_args
from utils.device import select_device
from utils.engine.config import TrainConfig
from utils.engine.fit import fit
from utils.engine.setup import eval_label_source, resolve_data
from utils.evaluation.compare import CompareConfig, evaluate_checkpoint, write_outputs
from utils.evaluation.evaluate import EvalConfig

logger = logging.getLogger(__name__)


def run_study(
    base: TrainConfig,
    phis: list[int | str],
    seeds: list[int],
    out: Path,
    eval_cfg: EvalConfig | None = None,
    compare: CompareConfig | None = None,
) -> dict[str, Path]:
    """Trains (or reuses) every (phi, seed) run, then writes the comparison; returns its paths.

    ``compare`` sets the bootstrap behind the pairwise verdicts (default: 1,000 resamples).
    """
    base = resolve_data(base)
    labels = eval_label_source(base)  # before training: a study without a val split fails now
    weights = []
    for phi in phis:
        number, name = resolve_phi(phi)
        for seed in seeds:
            # plugin blocks all have phi -1: their runs are told apart by name
            run_name = f"phi{number}_seed{seed}" if number >= 0 else f"{name}_seed{seed}"
            last = out / run_name / "weights" / "last.pth"
            if _finished(last, base.epochs):
                logger.info("%s: already trained, reusing %s", run_name, last)
            else:
                if (out / run_name).is_dir() and not last.is_file():
                    shutil.rmtree(out / run_name)  # a run that died before its first epoch
                cfg = replace(
                    base,
                    phi=str(number) if number >= 0 else name,  # plugins: no number
                    seed=seed,
                    name=run_name,
                    log_dir=str(out),
                    resume=str(last) if last.is_file() else None,
                )
                print(f"== training phi {number} ({name}), seed {seed} -> {out / run_name}")
                fit(cfg)
            weights.append(last)
    device = select_device(base.device)
    eval_cfg = eval_cfg or EvalConfig(input_size=base.img_size, workers=min(base.workers, 2))
    names = None
    if base.classes:
        from utils.classes import read_class_names

        names = read_class_names(base.classes)
    rows, protocol = [], ""
    for path in weights:
        row, report = evaluate_checkpoint(
            str(path),
            base.voc_root,
            base.val_set,
            eval_cfg,
            device=device,
            class_names=names,
            labels=labels,
        )
        row.name = path.parent.parent.name
        rows.append(row)
        protocol = report.protocol
    return write_outputs(rows, protocol, out, compare)


def _finished(last: Path, epochs: int) -> bool:
    if not last.is_file():
        return False
    state = torch.load(last, map_location="cpu", weights_only=True).get("train_state", {})
    return state.get("epoch", -1) >= epochs - 1


def build_parser() -> argparse.ArgumentParser:
    """train.py's options (the settings every run shares) plus the study's own."""
    per_run = ("phi", "seed", "name", "log_dir", "resume", "stop_at_epoch")
    parser = argparse.ArgumentParser(
        prog="python -m tools.study",
        description=__doc__,
        formatter_class=HelpFormatter,
        parents=[train_cli.build_parser(add_help=False, exclude=per_run)],
    )
    study = parser.add_argument_group("study")
    study.add_argument(
        "--phis", nargs="+", default=["0", "1", "2", "3", "4"], help="attention types to train"
    )
    study.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per attention type"
    )
    study.add_argument("--out", default="logs/study", help="study folder (default: %(default)s)")
    add_options(parser, CompareConfig)
    # runs are compared on their final weights: evaluating during training would only cost time
    parser.set_defaults(eval_period=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    base = from_args(TrainConfig, args)
    try:
        compare = from_args(CompareConfig, args)  # checked before hours of training
        paths = run_study(base, args.phis, args.seeds, Path(args.out), compare=compare)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    print(f"comparison: {', '.join(map(str, paths.values()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
