"""The attention study: train every phi with every seed under identical settings, then compare.

Usage (the demo set, small budget, minutes on a CPU):
    python -m tools.study --data demo --phis 0 1 2 3 4 --seeds 0 1 2 --epochs 15 --img-size 192
On VOC, on a GPU box (SPEC §8 defaults otherwise):
    python -m tools.study --phis 0 1 2 3 --seeds 0 1 2

Each run is ``logs/<out>/phi<P>_seed<S>``; its final EMA weights (``last.pth``, never selected on
the evaluation split) are scored on the validation split and put side by side in
``comparison.{csv,md,png}`` with mean ± std per phi and a "within noise" verdict per pair.
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

from nets.attention import resolve_phi
from utils.device import select_device
from utils.engine.config import TrainConfig
from utils.engine.fit import fit
from utils.engine.setup import resolve_data
from utils.evaluation.compare import evaluate_checkpoint, write_outputs
from utils.evaluation.evaluate import EvalConfig

logger = logging.getLogger(__name__)


def run_study(
    base: TrainConfig,
    phis: list[int | str],
    seeds: list[int],
    out: Path,
    eval_cfg: EvalConfig | None = None,
) -> dict[str, Path]:
    """Trains (or reuses) every (phi, seed) run, then writes the comparison; returns its paths."""
    base = resolve_data(base)
    weights = []
    for phi in phis:
        number, name = resolve_phi(phi)
        for seed in seeds:
            run_name = f"phi{number}_seed{seed}"
            last = out / run_name / "weights" / "last.pth"
            if _finished(last, base.epochs):
                logger.info("%s: already trained, reusing %s", run_name, last)
            else:
                if (out / run_name).is_dir() and not last.is_file():
                    shutil.rmtree(out / run_name)  # a run that died before its first epoch
                cfg = replace(
                    base,
                    phi=str(number),
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
            str(path), base.voc_root, base.val_set, eval_cfg, device, names
        )
        row.name = path.parent.parent.name
        rows.append(row)
        protocol = report.protocol
    return write_outputs(rows, protocol, out)


def _finished(last: Path, epochs: int) -> bool:
    if not last.is_file():
        return False
    state = torch.load(last, map_location="cpu", weights_only=True).get("train_state", {})
    return state.get("epoch", -1) >= epochs - 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--phis", nargs="+", default=["0", "1", "2", "3", "4"], help="attention types")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per phi")
    p.add_argument("--out", default="logs/study", help="study folder")
    p.add_argument("--data", choices=["voc", "demo"], default="voc", help="VOC or the demo set")
    p.add_argument("--voc-root", default=TrainConfig.voc_root, help="folder holding VOC<year>/")
    p.add_argument("--train-sets", default=TrainConfig.train_sets, help="YEAR:SET pairs")
    p.add_argument("--val-set", default=TrainConfig.val_set, help="YEAR:SET pairs")
    p.add_argument("--classes", default=None, help="classes file")
    p.add_argument("--img-size", type=int, default=TrainConfig.img_size, help="input size")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="epochs per run")
    p.add_argument("--freeze-epochs", type=int, default=TrainConfig.freeze_epochs, help="frozen")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="batch")
    p.add_argument("--freeze-batch-size", type=int, default=TrainConfig.freeze_batch_size)
    p.add_argument("--lr", type=float, default=None, help="max lr at batch 64")
    p.add_argument("--weights", default="auto", help="initial weights for every run")
    p.add_argument("--eval-period", type=int, default=0, help="evaluate during training")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    base = TrainConfig(
        data=args.data,
        voc_root=args.voc_root,
        train_sets=args.train_sets,
        val_set=args.val_set,
        classes=args.classes,
        img_size=args.img_size,
        epochs=args.epochs,
        freeze_epochs=args.freeze_epochs,
        batch_size=args.batch_size,
        freeze_batch_size=args.freeze_batch_size,
        lr=args.lr,
        weights=args.weights,
        eval_period=args.eval_period,
        workers=args.workers,
        device=args.device,
    )
    try:
        paths = run_study(base, args.phis, args.seeds, Path(args.out))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    print(f"comparison: {paths['csv']}, {paths['md']}, {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
