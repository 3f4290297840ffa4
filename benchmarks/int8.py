"""What INT8 costs in accuracy and buys in speed: ``python -m benchmarks.int8``.

For a trained checkpoint (default: the one ``make demo`` writes), in one run:

1. export it to ONNX (fp32) and quantize that to INT8 with the library calls behind
   ``python -m tools.export --int8`` (``export_onnx``, ``quantize_int8``), calibrated on
   images of the training split only (``--calib-split``, evenly spread by ``pick_evenly``);
2. evaluate the checkpoint (PyTorch), the fp32 export and the INT8 export on the test split
   with ``eval.py``'s code (VOC07 and VOC12 mAP@0.5, same thresholds for all three);
3. time each end to end at batch 1 (preprocess, forward, decode, NMS; median of 20) and print
   the mAP change and the speed-up against the fp32 paths.

With ``--per-phi TEMPLATE`` (a checkpoint path with ``{phi}`` in it, e.g. the runs of
``python -m tools.study``), every phi of ``--phis`` in one run: float32 and INT8 VOC12 mAP50
of the ONNX exports on the same split, the difference in points, whether it is within the
target (at most ``TARGET_LOSS`` lost), the held-out check the export prints, and the INT8 and
float32 end-to-end latency.

Examples:
    make demo && python -m benchmarks.int8
    python -m benchmarks.int8 --per-phi 'logs/study/phi{phi}_seed0/weights/last.pth'
    python -m benchmarks.int8 --weights logs/train/exp/weights/best.pth --data voc \\
        --calib-split 2012:train --split 2007:test --json logs/int8.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from benchmarks.common import (
    add_checkpoint_options,
    check_files,
    checkpoint_and_data,
    finish,
    start,
)
from data.voc import load_voc, parse_sets
from nets.checkpoint import load_model
from utils.classes import read_class_names
from utils.config import CommandParser, add_alias, add_options, run_cli
from utils.errors import InputError
from utils.evaluation.compare import evaluate_checkpoint
from utils.evaluation.evaluate import EvalConfig
from utils.inference.export import (
    ExportConfig,
    export_metadata,
    export_onnx,
    parse_float_groups,
)
from utils.inference.onnx_runner import onnx_metadata
from utils.inference.predictor import class_names_for
from utils.inference.quantize import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_IMAGES,
    TARGET_LOSS,
    HeldOutCheck,
    pick_evenly,
    quantize_int8,
    split_holdout,
)

PATHS = ("PyTorch fp32", "ORT fp32", "ORT INT8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = CommandParser(description=__doc__)
    add_checkpoint_options(p)
    p.add_argument("--calib-split", default="2007:train", help="YEAR:SET to calibrate on")
    p.add_argument(
        "--calib-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="calibration images, spread evenly over --calib-split",
    )
    p.add_argument(
        "--calib-method",
        choices=(*CALIBRATION_METHODS, "auto"),
        default="auto",
        help="how activation ranges are chosen from the calibration images (auto: as the "
        "export, each method, keeping the one closest to float on the held-out images)",
    )
    add_options(p, ExportConfig, include=["int8_float"])
    p.add_argument(
        "--per-phi",
        default=None,
        metavar="TEMPLATE",
        help="checkpoint path with {phi} in it: one row per phi of --phis (ONNX fp32 vs INT8)",
    )
    p.add_argument(
        "--phis", nargs="+", default=[str(i) for i in range(9)], help="phis for --per-phi"
    )
    p.add_argument("--out", default="logs/int8", help="folder the .onnx files are written to")
    add_alias(p, "--out-dir", "--out")
    p.add_argument("--json", default=None, help="also write the numbers here")
    return p.parse_args(argv)


def export_both(
    args: argparse.Namespace, voc_root: str, classes: str | None, weights: str, tag: str = ""
):
    """The checkpoint exported to ONNX fp32 and quantized to INT8 in ``--out``, calibrated on
    ``--calib-images`` images spread over ``--calib-split``, every 5th held out to check INT8
    against float as the export does.

    Returns:
        (ModelInfo, class names, input size, calibration image paths, fp32 path, INT8 path)
    """
    fp32 = Path(args.out) / f"model{tag}_fp32.onnx"
    int8 = Path(args.out) / f"model{tag}_int8.onnx"
    names = read_class_names(classes) if classes else None
    model, info = load_model(weights, num_classes=len(names) if names else None)
    names = class_names_for(names, info.class_names, info.num_classes, weights)
    size = args.img_size or info.input_size
    calib = load_voc(voc_root, parse_sets(args.calib_split), names).annotations
    picked = pick_evenly([a.image_path for a in calib], args.calib_images)
    if not picked:
        raise InputError(f"{voc_root} {args.calib_split}: no images to calibrate on")
    geometry = info.geometry.at_size(size)
    export_onnx(model, path=fp32, geometry=geometry, metadata=export_metadata(info, names, size))
    calibrate, held_out = split_holdout(picked)
    quantize_int8(
        fp32,
        out_path=int8,
        calibration_paths=calibrate,
        method=args.calib_method,
        keep_float=parse_float_groups(args.int8_float),
        check_paths=held_out,
    )
    return info, names, size, picked, fp32, int8


def print_table(rows: dict) -> None:
    """mAP of each path, its change against PyTorch's and its latency against ORT fp32's."""
    base, ort32 = rows["PyTorch fp32"], rows["ORT fp32"]
    print(f"{'path':<14}{'mAP50 VOC07':>12}{'mAP50 VOC12':>12}{'dVOC12':>8}{'e2e ms':>8}{'x':>7}")
    for label, row in rows.items():
        print(
            f"{label:<14}{100 * row.voc07:>12.2f}{100 * row.voc12:>12.2f}"
            f"{100 * (row.voc12 - base.voc12):>+8.2f}{row.latency_ms:>8.2f}"
            f"{row.latency_ms / ort32.latency_ms:>6.2f}x"
        )
    print("x: end-to-end latency over ORT fp32's (batch 1, median of 20 on one test image)")


def per_phi(args: argparse.Namespace) -> int:
    """``--per-phi``: one row per phi, ONNX fp32 against INT8 on the same split."""
    if "{phi}" not in args.per_phi:
        raise InputError(f"--per-phi {args.per_phi}: put {{phi}} where the phi goes")
    weights = {phi: args.per_phi.replace("{phi}", phi) for phi in args.phis}
    check_files(*weights.values())
    args.weights = weights[args.phis[0]]
    source = checkpoint_and_data(args)
    machine = start(f"INT8 against fp32 per phi: {args.per_phi}", onnxruntime=True)
    rows, report = [], {"machine": machine, "split": args.split, "phis": {}}
    for phi, path in weights.items():
        info, names, size, _picked, fp32, int8 = export_both(
            args, source.voc_root, source.classes, path, tag=f"_phi{phi}"
        )
        cfg = EvalConfig(img_size=size, workers=0, coco=False)
        evaluated = [
            evaluate_checkpoint(
                str(w), source.voc_root, args.split, cfg, device="cpu", class_names=names
            )[0]
            for w in (fp32, int8)
        ]
        quant = onnx_metadata(int8)["quantization"]
        held = HeldOutCheck(**quant["held_out"])
        setting = f"{quant['method']} {'+'.join(quant['float_groups'])}"
        rows.append((phi, info.phi_name, *evaluated, held, setting))
        report["phis"][phi] = {
            "block": info.phi_name,
            "fp32_voc12": evaluated[0].voc12,
            "int8_voc12": evaluated[1].voc12,
            "fp32_ms": evaluated[0].latency_ms,
            "int8_ms": evaluated[1].latency_ms,
            "held_out_loss": held.loss,
            "quantization": quant,
        }
    print(f"\n{args.split} of {source.voc_root}; INT8 calibrated on {args.calib_split}")
    print(
        f"{'phi':<4}{'block':<12}{'fp32':>7}{'INT8':>7}{'d pts':>7}  {'target':<7}"
        f"{'held-out':>9}{'fp32 ms':>9}{'INT8 ms':>9}{'x':>7}  calibration, float groups"
    )
    for phi, name, fp32_row, int8_row, held, setting in rows:
        change = 100 * (int8_row.voc12 - fp32_row.voc12)
        print(
            f"{phi:<4}{name:<12}{100 * fp32_row.voc12:>7.2f}{100 * int8_row.voc12:>7.2f}"
            f"{change:>+7.2f}  {'ok' if change >= -TARGET_LOSS else 'OVER':<7}"
            f"{round(-held.loss, 1) + 0.0:>+9.1f}"  # + 0.0: no "-0.0"
            f"{fp32_row.latency_ms:>9.2f}{int8_row.latency_ms:>9.2f}"
            f"{int8_row.latency_ms / fp32_row.latency_ms:>6.2f}x  {setting}"
        )
    print(
        "VOC12 mAP50 (points) of the ONNX exports; target: INT8 loses at most "
        f"{TARGET_LOSS:.1f}; held-out: the export's check (INT8 AP50 against the float model's "
        "own detections on held-out calibration images, points lost); ms: end to end, batch "
        "1, median of 20; x: INT8 over fp32"
    )
    finish(report, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.per_phi:
        return per_phi(args)
    source = checkpoint_and_data(args)
    voc_root = source.voc_root
    machine = start(f"INT8 against fp32: {args.weights}", onnxruntime=True)
    info, names, size, picked, fp32, int8 = export_both(
        args, voc_root, source.classes, args.weights
    )
    cfg = EvalConfig(img_size=size, workers=0, coco=False)
    rows = {}
    for label, weights in zip(PATHS, (args.weights, fp32, int8)):
        rows[label], _ = evaluate_checkpoint(
            str(weights), voc_root, args.split, cfg, device="cpu", class_names=names
        )
    print(f"\n{args.weights} ({info.describe()}) at {size}, {args.split} of {voc_root}")
    quant = onnx_metadata(int8)["quantization"]
    print(
        f"INT8 calibrated on {quant['calibration_images']} images of {args.calib_split} "
        f"({quant['method']}; float: {'+'.join(quant['float_groups'])})"
    )
    if quant.get("held_out"):
        print(HeldOutCheck(**quant["held_out"]).describe())
    print_table(rows)
    report = {
        "machine": machine,
        "weights": args.weights,
        "input_size": size,
        "split": args.split,
        "calibration": {"split": args.calib_split, "images": len(picked)},
        "quantization": quant,
        "paths": {
            k: {"voc07": r.voc07, "voc12": r.voc12, "latency_ms": r.latency_ms}
            for k, r in rows.items()
        },
    }
    finish(report, args.json)
    return 0


if __name__ == "__main__":
    run_cli(main)
