"""Evaluate checkpoints with the VOC devkit protocol (and COCO AP), or compare several.

Examples:
    python eval.py --weights logs/exp/weights/best.pth                  # VOC 2007 test
    python eval.py --weights a.pth b.pth c.pth --save-dir logs/compare  # one comparison table
    python eval.py --detections dets.json --classes model_data/voc_classes.txt
    python eval.py --data demo --weights logs/exp/weights/best.pth
    python eval.py --weights best.pth --val-labels data/mine/annotations/instances_val.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import torch

from data.formats import LabelSource, role_source
from data.options import DataOptions
from data.source import DataSource, resolve_data_source
from nets.checkpoint import checkpoint_contents, load_torch_file
from nets.options import ModelOptions
from nets.registry import describe_phis, load_attention_plugins
from utils.classes import read_class_names
from utils.config import (
    CommandParser,
    add_alias,
    add_options,
    argument_group,
    from_args,
    run_cli,
)
from utils.device import DeviceOptions, ThreadConfig, configure_threads, select_device
from utils.errors import InputError
from utils.evaluation.compare import (
    CompareConfig,
    Row,
    evaluate_checkpoint,
    table_protocol,
    training_run,
    write_outputs,
)
from utils.evaluation.evaluate import (
    EvalConfig,
    EvalReport,
    check_ground_truth,
    format_report,
    load_ground_truth,
    plot_report,
    read_detections_json,
    score,
)
from utils.inference.onnx_runner import onnx_metadata
from utils.inference.predictor import Detector, InferenceConfig, check_class_names
from utils.paths import (
    SaveDirOptions,
    check_apart,
    check_output_path,
    check_outputs_distinct,
    check_save_dir,
    write_failure,
    write_text_atomic,
)
from utils.precision import AMP_TORCH_ONLY, cpu_has_native_bf16, inference_precision
from utils.sources import increment_path
from utils.training.config import RESULT_NEUTRAL_FIELDS, TrainConfig

VOC_TEST = "2007:test"  # the usual protocol's test set


def build_parser() -> argparse.ArgumentParser:
    """The model and data flags shared with the other commands, ``EvalConfig``'s and
    ``CompareConfig``'s, and this command's detections file and outputs."""
    p = CommandParser(description=__doc__)
    add_options(
        p,
        ModelOptions,
        include=("weights", "phi", "attention_plugin"),
        nargs={"weights": "+"},
        helps={
            "weights": "checkpoint(s) or .onnx export(s) to evaluate, several for one "
            "comparison table (required unless --detections)",
            "phi": f"the checkpoint's attention block ({describe_phis()}), checked against the "
            "file (default: the file's)",
        },
    )
    add_options(p, DeviceOptions, include=("device",))
    argument_group(p, "detections file").add_argument(
        "--detections",
        default=None,
        help="score a predict.py --json file instead of running --weights",
    )
    add_options(
        p,
        DataOptions,
        include=("data", "voc_root", "classes", "label_format", "split"),
        helps={
            "classes": "classes file (default: the demo's with --data demo, else the "
            "checkpoint's names)",
            "label_format": "format of --val-labels (auto: from the path)",
            "split": "YEAR:SET to evaluate (default: 2007:test); with --val-labels, the split "
            "of that source to read (default: its val split, or all of it when it has no "
            "splits)",
        },
    )
    add_options(
        p,
        TrainConfig,
        include=("val_labels", "val_images"),
        helps={
            "val_labels": "labels to evaluate on instead of --voc-root, any format (VOC, COCO, "
            "YOLO, annotation lines); --split picks one of its splits",
            "val_images": "images folder of COCO --val-labels (default: found next to the JSON)",
        },
    )
    add_options(
        p,
        EvalConfig,
        defaults={"img_size": None},
        helps={"img_size": "network input side, a multiple of 32 (default: the checkpoint's)"},
    )
    add_options(p, CompareConfig)
    add_options(p, ThreadConfig)
    _add_output_flags(p)
    return p


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    """Where the metrics, plots and tables go (``--out-dir``: the earlier spelling)."""
    out = argument_group(p, "output")
    out.add_argument("--json", default=None, help="write the metrics as JSON here")
    add_options(
        p,
        SaveDirOptions,
        defaults={"save_dir": "logs/eval"},
        helps={
            "save_dir": "folder for the plots and tables, numbered (DIR2, ...) if it exists; "
            "never an input's folder or one inside it"
        },
    )
    add_alias(p, "--out-dir", "--save-dir")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    _check_flags(args)
    voc_split = args.split if args.split and not args.val_labels else VOC_TEST
    source = resolve_data_source(args.data, args.voc_root, "", voc_split, args.classes)
    save_dir = increment_path(args.save_dir, args.exist_ok)
    load_attention_plugins(args.attention_plugin)
    _check_outputs(args, source, save_dir)  # before any work: a result would be lost
    labels = _labels(args, source.voc_root)
    if args.detections:
        return _score_file(args, source, save_dir, labels)
    compare = from_args(CompareConfig, args)  # its values are checked before the models run
    rows, reports = _evaluate_weights(args, source, labels)
    _write_results(args, rows, reports, compare, save_dir)
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    """Refuses flags that contradict each other, before anything is read.

    Raises:
        InputError: naming the flag and what to do instead.
    """
    if bool(args.weights) == bool(args.detections):
        raise InputError("give --weights (run models) or --detections (score a file)")
    onnx = [w for w in args.weights or [] if str(w).endswith(".onnx")]
    if args.amp and (args.detections or onnx):
        why = "--amp runs a model; --detections only scores" if args.detections else AMP_TORCH_ONLY
        raise InputError(f"{args.detections or onnx[0]}: {why}")


def _check_outputs(args: argparse.Namespace, source: DataSource, save_dir: Path) -> None:
    """Refuses, before any work, a results folder or JSON file that cannot be written, that
    would land on the other or on an input (the classes file the data source resolved to
    included, such as the demo set's when ``--classes`` is not given).

    Raises:
        OutputRefusedError: naming the flag and the path.
    """
    inputs = [*_input_paths(args, source.voc_root), source.classes]
    check_outputs_distinct([("--save-dir", save_dir, True), ("--json", args.json, False)])
    check_save_dir(args.save_dir, save_dir, inputs)
    if args.json:
        check_apart(args.json, inputs, flag="--json", folder=False)
        check_output_path(args.json)


def _labels(args: argparse.Namespace, voc_root: str) -> LabelSource | None:
    """The ``--val-labels`` to score on (its val split where it has splits), or None for the
    VOCdevkit at ``voc_root``.

    Raises:
        InputError: --val-images without --val-labels, or no VOCdevkit at ``voc_root``.
    """
    if args.val_labels:
        return role_source(
            args.val_labels, "val", fmt=args.label_format, images=args.val_images, split=args.split
        )
    if args.val_images:
        raise InputError("--val-images goes with --val-labels")
    if not Path(voc_root).is_dir():
        raise InputError(
            f"{voc_root}: no VOCdevkit here (python -m tools.download_voc, or --data demo)"
        )
    return None


def _evaluate_weights(
    args: argparse.Namespace, source: DataSource, labels: LabelSource | None
) -> tuple[list[Row], list[EvalReport]]:
    """Scores and measures every ``--weights`` file in turn, printing each one's report.

    Raises:
        UserError: an unreadable, duplicate or mismatching model file, or bad settings.
    """
    names = read_class_names(source.classes) if source.classes else None
    check_weights(args.weights, names)
    device = select_device(args.device)
    cfg = from_args(EvalConfig, args)
    configure_threads(args.threads, parallel_decode=cfg.workers > 0)
    if warning := inference_precision(cfg.amp, device).warning:
        print(f"warning: {warning}", file=sys.stderr)
    if hint := _amp_hint(args, cfg, device, names):
        print(hint, file=sys.stderr)
    rows, reports = [], []
    for weights in args.weights:
        row, report = evaluate_checkpoint(
            weights,
            source.voc_root,
            source.val_set,
            cfg,
            device=device,
            class_names=names,
            phi=args.phi,
            labels=labels,
        )
        # runs of one seed and equal settings are compared seed by seed
        row.seed, row.settings = training_run(weights, RESULT_NEUTRAL_FIELDS)
        print(f"== {weights} (phi {row.phi} ({row.phi_name}))")
        print(format_report(report))
        if report.speed is not None:  # where the pass's time went
            print(report.speed.format())
        rows.append(row)
        reports.append(report)
    return rows, reports


def _amp_hint(
    args: argparse.Namespace, cfg: EvalConfig, device: torch.device, names: list[str] | None
) -> str | None:
    """``Detector.amp_hint`` for the first PyTorch model of ``--weights`` when it runs in
    float32 on a CPU with native bfloat16 (measured once per model and CPU, then cached)."""
    torch_weights = [w for w in args.weights if not str(w).endswith(".onnx")]
    if cfg.amp or device.type != "cpu" or not torch_weights or not cpu_has_native_bf16():
        return None
    config = InferenceConfig(img_size=cfg.img_size, device="cpu")
    detector = Detector.from_weights(torch_weights[0], phi=args.phi, classes=names, config=config)
    return detector.amp_hint(native=True)


def _write_results(
    args: argparse.Namespace,
    rows: list[Row],
    reports: list[EvalReport],
    compare: CompareConfig,
    save_dir: Path,
) -> None:
    """The JSON metrics first (the numbers matter more than the plots), then one run's plots
    or several runs' comparison table.

    Raises:
        OutputPathError: a write failed (disk full or permissions changed during the run).
    """
    try:
        if args.json:
            payload = (
                reports[0].to_json()
                if len(reports) == 1
                else {"runs": {w: r.to_json() for w, r in zip(args.weights, reports)}}
            )
            write_text_atomic(args.json, json.dumps(payload, indent=2))
            print(f"metrics written to {args.json}")
        save_dir.mkdir(parents=True, exist_ok=True)
        if len(reports) == 1:
            plots = plot_report(reports[0], save_dir)
            print(f"plots: {', '.join(map(str, plots))}")
        else:
            paths = write_outputs(rows, table_protocol(reports, rows), save_dir, compare)
            print(paths["md"].read_text())
            print(f"comparison: {', '.join(map(str, paths.values()))}")
    except OSError as err:
        raise write_failure(err, save_dir) from None


def check_weights(weights: list[str], class_names: list[str] | None) -> None:
    """Checks every ``--weights`` file before any is run: no file given twice (by path, link
    or identical content: a comparison would count one run as two independent ones), and the
    class names a checkpoint or export stores agree with ``--classes``.

    Raises:
        InputError: a duplicate (both names given) or a contradiction (both values given).
    """
    seen: dict[tuple, str] = {}
    hows = {
        "file": "the same file",
        "content": "files of identical content",
        "weights": "checkpoints of identical weights",
        "run": "checkpoints of one training run (the same stored settings and seed)",
    }
    for path in weights:
        if not os.path.isfile(path):
            continue  # the loader says what is missing
        keys, stored = _identities(path)
        for key in keys:
            if key in seen:
                raise InputError(
                    f"--weights {seen[key]} and {path} are {hows[key[0]]}: evaluating both "
                    "would count one run as two in the comparison; give one checkpoint per run"
                )
            seen[key] = path
        if stored and class_names:
            check_class_names(path, stored, class_names)


def _identities(path: str) -> tuple[list[tuple], list[str] | None]:
    """What tells ``path`` apart from the other ``--weights``, and the class names it stores
    (None: none stored, or not read here; the loader reports a file it cannot read), from one
    read of the file.

    The identities are the resolved file, a hash of its content and, for a checkpoint, a
    hash of its weights and the training settings it stores (``best.pth`` and ``last.pth``
    of one run share those, and so do two runs of equal settings and seed, which compute
    the same numbers).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    keys = [("file", os.path.realpath(path)), ("content", digest.hexdigest())]
    if path.endswith(".weights"):
        return keys, None
    try:
        if path.endswith(".onnx"):
            return keys, onnx_metadata(path).get("class_names") or None
        payload = load_torch_file(path)
        state, info = checkpoint_contents(payload, path)
    except ValueError:  # the loader says what is wrong with the file
        return keys, None
    weights = hashlib.sha256()
    for name in sorted(state):
        weights.update(name.encode())
        weights.update(state[name].detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    keys.append(("weights", weights.hexdigest()))
    config = payload.get("config") if isinstance(payload, dict) else None
    if isinstance(config, dict) and "seed" in config:
        settings = {k: v for k, v in config.items() if k not in RESULT_NEUTRAL_FIELDS}
        keys.append(("run", json.dumps(settings, sort_keys=True, default=repr)))
    return keys, list(info.class_names) if info.class_names else None


def _input_paths(args: argparse.Namespace, voc_root: str) -> list[str]:
    """Everything the evaluation reads: the model files or detections file, the classes
    file, the labels with their data set's folder (a data YAML's, or the folder above a COCO
    file's ``annotations/``, which hold its images and names) and their images, or the
    VOCdevkit. Outputs are kept apart from all of them."""
    paths = [*(args.weights or []), args.detections, args.classes, args.val_images]
    if args.val_labels:
        labels = Path(args.val_labels)
        paths.append(labels)
        if labels.suffix in (".yaml", ".yml") or labels.parent.name == "annotations":
            paths.append(labels.parent if labels.suffix != ".json" else labels.parent.parent)
    else:
        paths.append(voc_root)
    return [str(p) for p in paths if p]


def _score_file(
    args: argparse.Namespace, source: DataSource, save_dir: Path, labels: LabelSource | None
) -> int:
    """``--detections``: scores a ``predict.py --json`` file against the ground truth.

    Raises:
        InputError: no classes file, or a file that cannot be scored as it is.
        OutputPathError: a write failed during the run.
    """
    if not source.classes:
        raise InputError("--detections needs --classes")
    names = read_class_names(source.classes)
    annotations, dataset, warnings = load_ground_truth(
        labels, source.voc_root, source.val_set, names
    )
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in check_ground_truth(annotations, names, dataset):
        print(f"warning: {line}", file=sys.stderr)
    detected = read_detections_json(args.detections, annotations, names)
    for failure in detected.failures[:10]:
        print(f"warning: {failure}", file=sys.stderr)
    report = score(detected, names, f"{dataset} ({args.detections})", args.iou_thresh, args.coco)
    print(format_report(report))
    try:
        if args.json:
            write_text_atomic(args.json, json.dumps(report.to_json(), indent=2))
            print(f"metrics written to {args.json}")
        save_dir.mkdir(parents=True, exist_ok=True)
        plot_report(report, save_dir)
    except OSError as err:
        raise write_failure(err, save_dir) from None
    return 0


if __name__ == "__main__":
    run_cli(main)
