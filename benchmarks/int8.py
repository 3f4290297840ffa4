"""What INT8 costs in accuracy and buys in speed: ``python -m benchmarks.int8``.

For a trained checkpoint (default: the one ``make demo`` writes), in one run:

1. export it to ONNX (fp32) and quantize that to INT8 with the library calls behind
   ``predict.py --export-onnx ... --int8`` (``export_onnx``, ``quantize_int8``), calibrated on
   images of the training split only (``--calib-split``, evenly spread by ``pick_evenly``);
2. evaluate the checkpoint (PyTorch), the fp32 export and the INT8 export on the test split
   with ``eval.py``'s code (VOC07 and VOC12 mAP@0.5, same thresholds for all three);
3. time each end to end at batch 1 (preprocess, forward, decode, NMS; median of 20) and print
   the mAP change and the speed-up against the fp32 paths.

Examples:
    make demo && python -m benchmarks.int8
    python -m benchmarks.int8 --weights logs/train/exp/weights/best.pth --data voc \\
        --calib-split 2012:train --split 2007:test --json logs/int8.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from data.source import resolve_data_source
from data.voc import load_voc, parse_sets
from nets.checkpoint import load_model
from utils.classes import read_class_names
from utils.config import HelpFormatter
from utils.evaluation.compare import evaluate_checkpoint
from utils.evaluation.evaluate import EvalConfig
from utils.inference.deploy import export_onnx
from utils.inference.export import export_metadata
from utils.inference.predictor import class_names_for
from utils.inference.quantize import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_IMAGES,
    pick_evenly,
    quantize_int8,
)
from utils.paths import write_text_atomic

DEFAULT_WEIGHTS = "logs/demo/train/weights/last.pth"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, help="trained checkpoint")
    p.add_argument("--data", choices=["demo", "voc"], default="demo", help="dataset")
    p.add_argument(
        "--voc-root", default=None, help="VOCdevkit folder for --data voc (required with it)"
    )
    p.add_argument("--classes", default=None, help="classes file (default: the checkpoint's)")
    p.add_argument("--calib-split", default="2007:train", help="YEAR:SET to calibrate on")
    p.add_argument("--split", default="2007:test", help="YEAR:SET to evaluate on")
    p.add_argument(
        "--calib-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="calibration images, spread evenly over --calib-split",
    )
    p.add_argument(
        "--calib-method",
        choices=CALIBRATION_METHODS,
        default="percentile",
        help="how activation ranges are chosen from the calibration images",
    )
    p.add_argument(
        "--img-size", type=int, default=None, help="input size (default: the checkpoint's)"
    )
    p.add_argument("--out-dir", default="logs/int8", help="where the .onnx files go")
    p.add_argument("--json", default=None, help="also write the numbers here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if not os.path.isfile(args.weights):
        hint = " (run `make demo` first)" if args.weights == DEFAULT_WEIGHTS else ""
        print(f"error: {args.weights} not found{hint}", file=sys.stderr)
        return 2
    source = resolve_data_source(
        args.data, args.voc_root or "", "", args.split, args.classes, generate=False
    )
    voc_root, classes = source.voc_root, source.classes
    if not voc_root or not os.path.isdir(voc_root):
        hint = " (`make demo` generates the demo set)" if args.data == "demo" else " (--voc-root)"
        print(f"error: no VOCdevkit at {voc_root}{hint}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    fp32, int8 = out / "model_fp32.onnx", out / "model_int8.onnx"
    try:
        names = read_class_names(classes) if classes else None
        model, info = load_model(args.weights, num_classes=len(names) if names else None)
        names = class_names_for(names, info.class_names, info.num_classes, args.weights)
        size = args.img_size or info.input_size
        calib = load_voc(voc_root, parse_sets(args.calib_split), names).annotations
        picked = pick_evenly([a.image_path for a in calib], args.calib_images)
        if not picked:
            raise ValueError(f"{voc_root} {args.calib_split}: no images to calibrate on")
        geometry = info.geometry.at_size(size)
        export_onnx(
            model, path=fp32, geometry=geometry, metadata=export_metadata(info, names, size)
        )
        quantize_int8(fp32, out_path=int8, calibration_paths=picked, method=args.calib_method)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    cfg = EvalConfig(input_size=size, workers=0, coco=False)
    rows = {}
    for label, weights in (("PyTorch fp32", args.weights), ("ORT fp32", fp32), ("ORT INT8", int8)):
        row, _ = evaluate_checkpoint(
            str(weights), voc_root, args.split, cfg, device="cpu", class_names=names
        )
        rows[label] = row
    base, ort32 = rows["PyTorch fp32"], rows["ORT fp32"]
    print(f"\n{args.weights} ({info.describe()}) at {size}, {args.split} of {voc_root}")
    print(f"INT8 calibrated on {len(picked)} images of {args.calib_split} ({args.calib_method})")
    print(f"{'path':<14}{'mAP50 VOC07':>12}{'mAP50 VOC12':>12}{'dVOC12':>8}{'e2e ms':>8}{'x':>7}")
    for label, row in rows.items():
        print(
            f"{label:<14}{100 * row.voc07:>12.2f}{100 * row.voc12:>12.2f}"
            f"{100 * (row.voc12 - base.voc12):>+8.2f}{row.latency_ms:>8.2f}"
            f"{row.latency_ms / ort32.latency_ms:>6.2f}x"
        )
    print("x: end-to-end latency over ORT fp32's (batch 1, median of 20 on one test image)")
    if args.json:
        payload = {
            "weights": args.weights,
            "input_size": size,
            "split": args.split,
            "calibration": {"split": args.calib_split, "images": len(picked)},
            "method": args.calib_method,
            "paths": {
                k: {"voc07": r.voc07, "voc12": r.voc12, "latency_ms": r.latency_ms}
                for k, r in rows.items()
            },
        }
        write_text_atomic(args.json, json.dumps(payload, indent=1))
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
