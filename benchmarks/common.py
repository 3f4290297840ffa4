"""What every benchmark does around its own measurements: apply ``--threads``, print the machine,
thread settings and library versions its numbers come from (timings mean little without them),
check its inputs and counts, and write the JSON copy of its report."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import cv2
import torch

from data.options import DataOptions
from data.source import DataSource, resolve_data_source
from nets.options import ModelOptions
from utils.config import add_options
from utils.device import available_cpus, configure_threads
from utils.errors import InputError
from utils.paths import write_text_atomic

THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")
DEMO_WEIGHTS = "logs/demo/train/weights/last.pth"  # what `make demo` trains


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (rounded), or None where the OS has none: printed
    next to timings, which other jobs on the machine make noisy."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def cpu_description(cpuinfo: str | None = None) -> dict:
    """The CPU's model name, SIMD extensions and physical core count, from ``/proc/cpuinfo``
    (``cpuinfo``: its text, read when None; empty where the OS has no such file)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model_name, flags, cores, physical = platform.processor() or "", set(), set(), ""
    for line in cpuinfo.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and not model_name:
            model_name = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            cores.add((physical, value))
    return {
        "cpu": model_name,
        "physical_cores": len(cores) or None,
        "simd": [f for f in SIMD_FLAGS if f in flags],
    }


def machine_info(onnxruntime: bool = False, threads: int | None = None) -> dict:
    """The machine, thread settings and versions; ``onnxruntime`` adds ONNX Runtime's version
    and the intra-op threads its sessions get (``threads``; None: its own default)."""
    info = {
        **cpu_description(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": available_cpus(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
    }
    if onnxruntime:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["ort_intra_op_threads"] = threads or "ORT default (0: one per physical core)"
    return info


def machine_lines(info: dict) -> list[str]:
    """``info`` as the lines every benchmark prints before its numbers."""
    ort_threads = f", ORT intra-op {info['ort_intra_op_threads']}" if "onnxruntime" in info else ""
    ort_version = f", onnxruntime {info['onnxruntime']}" if "onnxruntime" in info else ""
    return [
        f"machine: {info['cpu'] or 'unknown CPU'}, {info['cpu_count']} CPUs "
        f"({info['cpus_usable']} usable, {info['physical_cores']} physical cores), "
        f"SIMD {'/'.join(info['simd']) or '-'}; load average {info['load_average']}",
        f"threads: torch {info['torch_threads']} (interop {info['torch_interop_threads']}), "
        f"OpenCV {info['opencv_threads']}{ort_threads}; python {info['python']}, "
        f"torch {info['torch']}, OpenCV {info['opencv']}{ort_version}; "
        f"thread environment: {info['env'] or 'none set'}",
    ]


def start(title: str, threads: int | None = None, onnxruntime: bool = False) -> dict:
    """A benchmark's start: applies ``threads`` to torch and OpenCV (None: their defaults),
    prints ``title`` and the machine lines (``onnxruntime``: with ONNX Runtime's version and
    threads), and returns the machine description for the report. Raises InputError for
    ``threads`` below 1."""
    configure_threads(threads, parallel_decode=False)
    info = machine_info(onnxruntime, threads)
    print(title)
    for line in machine_lines(info):
        print(line)
    return info


def finish(report: dict, json_path: str | None) -> None:
    """A benchmark's end: the load average after the run (printed and added to the report's
    machine description), then the report written to ``json_path`` when given."""
    after = load_average()
    report.setdefault("machine", {})["load_average_after"] = after
    print(f"\nload average after: {after} (other jobs on the machine make the figures noisy)")
    if json_path:
        write_text_atomic(json_path, json.dumps(report, indent=1))
        print(f"written to {json_path}")


def add_synthetic_case_options(
    parser: argparse.ArgumentParser, dets_help: str, seed_help: str
) -> None:
    """``--num-images`` (default: VOC07 test's 4,952), ``--dets-per-image`` (default 100, the
    ``max_det`` of eval.py) and ``--seed``: the size and seed of a benchmark's synthetic
    VOC07-test-sized case."""
    parser.add_argument("--num-images", type=int, default=4952, help="VOC07 test has 4,952")
    parser.add_argument("--dets-per-image", type=int, default=100, help=dets_help)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def check_at_least(args: argparse.Namespace, **minimums: int) -> None:
    """Raises one InputError naming every count in ``args`` below its minimum (keyword:
    the option's name as its destination, e.g. ``num_images=1``)."""
    problems = [
        f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least {least}"
        for name, least in minimums.items()
        if getattr(args, name) < least
    ]
    if problems:
        raise InputError("; ".join(problems))


def check_files(*paths: str, hint: str = "") -> None:
    """Raises InputError for the first of ``paths`` that is not a file (``hint``: how to get
    it, appended in parentheses)."""
    for path in paths:
        if not os.path.isfile(path):
            raise InputError(f"{path} not found" + (f" ({hint})" if hint else ""))


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """The flags of a benchmark on a trained checkpoint and a VOC split: ``--weights`` (default:
    the checkpoint ``make demo`` trains), ``--img-size``, ``--data`` (default: the demo set),
    ``--voc-root``, ``--classes`` and ``--split`` (default: VOC07 test)."""
    add_options(
        parser,
        ModelOptions,
        include=("weights", "img_size"),
        defaults={"weights": DEMO_WEIGHTS},
        helps={
            "weights": "trained checkpoint",
            "img_size": "input size (default: the checkpoint's)",
        },
    )
    add_options(
        parser,
        DataOptions,
        include=("data", "voc_root", "classes", "split"),
        defaults={"data": "demo", "voc_root": None, "split": "2007:test"},
        helps={
            "data": "dataset",
            "voc_root": "VOCdevkit folder for --data voc (required with it)",
            "classes": "classes file (default: the checkpoint's)",
            "split": "YEAR:SET to evaluate on",
        },
    )


def checkpoint_and_data(args: argparse.Namespace) -> DataSource:
    """The checks a benchmark on a trained checkpoint starts with (the flags of
    ``add_checkpoint_options``): the checkpoint is a file and the data set's VOCdevkit a
    folder, else InputError saying how to get them. Returns the data set's paths."""
    weights, data = args.weights, args.data
    check_files(weights, hint="run `make demo` first" if weights == DEMO_WEIGHTS else "")
    source = resolve_data_source(
        data, args.voc_root or "", "", args.split, args.classes, generate=False
    )
    if not source.voc_root or not os.path.isdir(source.voc_root):
        hint = "`make demo` generates the demo set" if data == "demo" else "--voc-root"
        raise InputError(f"no VOCdevkit at {source.voc_root} ({hint})")
    return source
