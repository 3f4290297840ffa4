"""Evaluate checkpoints with the VOC devkit protocol (and COCO AP), or compare several.

Examples:
    python eval.py --weights logs/exp/weights/best.pth                 # VOC 2007 test
    python eval.py --weights a.pth b.pth c.pth --out-dir logs/compare  # one comparison table
    python eval.py --detections dets.json --classes model_data/voc_classes.txt
    python eval.py --data demo --weights logs/exp/weights/best.pth
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from data.demo import DEMO_CLASSES, DEMO_VOC_ROOT
from data.voc import load_voc, parse_sets
from nets.checkpoint import CheckpointMismatchError
from utils.classes import read_class_names
from utils.device import select_device
from utils.evaluation.compare import evaluate_checkpoint, write_outputs
from utils.evaluation.evaluate import (
    EvalConfig,
    format_report,
    plot_report,
    read_detections_json,
    score,
)
from utils.sources import increment_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--weights", nargs="+", default=[], help="checkpoint(s) to evaluate")
    p.add_argument("--detections", default=None, help="score a predict.py --json file instead")
    p.add_argument("--data", choices=["voc", "demo"], default="voc", help="VOC or the demo set")
    p.add_argument(
        "--voc-root", default=None, help="folder holding VOC<year>/ (default data/VOCdevkit)"
    )
    p.add_argument("--split", default=None, help="YEAR:SET to evaluate (default 2007:test)")
    p.add_argument("--classes", default=None, help="classes file (default: the checkpoint's)")
    p.add_argument(
        "--phi", default=None, help="override the checkpoint's phi (must match the file)"
    )
    p.add_argument(
        "--img-size", type=int, default=None, help="input size (default: the checkpoint's)"
    )
    p.add_argument("--conf", type=float, default=0.001, help="score threshold")
    p.add_argument("--nms", type=float, default=0.5, help="NMS IoU threshold")
    p.add_argument("--iou", type=float, default=0.5, help="VOC match threshold (>=)")
    p.add_argument(
        "--letterbox", action=argparse.BooleanOptionalAction, default=True, help="letterbox"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--max-det", type=int, default=100, help="detections per image")
    p.add_argument("--no-coco", action="store_true", help="skip COCO AP (pycocotools)")
    p.add_argument("--json", default=None, help="write the metrics as JSON here")
    p.add_argument("--out-dir", default="logs/eval", help="plots and tables (incremented)")
    return p.parse_args(argv)


def _split(args) -> tuple[str, str]:
    if args.data == "demo":
        return args.voc_root or str(DEMO_VOC_ROOT), args.split or "2007:test"
    return args.voc_root or "data/VOCdevkit", args.split or "2007:test"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if not args.weights and not args.detections:
        print("error: give --weights or --detections", file=sys.stderr)
        return 2
    voc_root, split = _split(args)
    out_dir = increment_path(args.out_dir)
    try:
        if not Path(voc_root).is_dir():
            raise FileNotFoundError(
                f"{voc_root}: no VOCdevkit here (python -m tools.download_voc, or --data demo)"
            )
        if args.detections:
            return _score_file(args, voc_root, split, out_dir)
        device = select_device(args.device)
        names = read_class_names(args.classes) if args.classes else None
        if names is None and args.data == "demo":
            names = read_class_names(DEMO_CLASSES)
        cfg = EvalConfig(
            input_size=args.img_size,
            letterbox=args.letterbox,
            conf_thresh=args.conf,
            nms_thresh=args.nms,
            max_det=args.max_det,
            iou_thresh=args.iou,
            batch_size=args.batch_size,
            workers=args.workers,
            coco=not args.no_coco,
        )
        rows, reports = [], []
        for weights in args.weights:
            row, report = evaluate_checkpoint(
                weights, voc_root, split, cfg, device, names, args.phi
            )
            print(f"== {weights} (phi {row.phi} ({row.phi_name}))")
            print(format_report(report))
            rows.append(row)
            reports.append(report)
    except (FileNotFoundError, ValueError, CheckpointMismatchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(reports) == 1:
        plots = plot_report(reports[0], out_dir)
        print(f"plots: {', '.join(map(str, plots))}")
    else:
        paths = write_outputs(rows, reports[0].protocol, out_dir)
        print(paths["md"].read_text())
        print(f"comparison: {paths['csv']}, {paths['md']}, {paths['png']}")
    if args.json:
        payload = (
            reports[0].to_json()
            if len(reports) == 1
            else {"runs": {w: r.to_json() for w, r in zip(args.weights, reports)}}
        )
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"metrics written to {args.json}")
    return 0


def _score_file(args, voc_root: str, split: str, out_dir: Path) -> int:
    if not args.classes and args.data != "demo":
        print("error: --detections needs --classes", file=sys.stderr)
        return 2
    names = read_class_names(args.classes or DEMO_CLASSES)
    annotations = load_voc(voc_root, parse_sets(split), names).annotations
    detected = read_detections_json(args.detections, annotations, names)
    for failure in detected.failures[:10]:
        print(f"warning: {failure}", file=sys.stderr)
    report = score(
        detected, names, f"{voc_root} {split} ({args.detections})", args.iou, not args.no_coco
    )
    print(format_report(report))
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_report(report, out_dir)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2))
        print(f"metrics written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
