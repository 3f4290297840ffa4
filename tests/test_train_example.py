"""The training example that ``train.py --help`` prints, run exactly as printed, must produce a
detector: the defaults it relies on (schedule, anchors, anchor assignment) are what a new user
gets."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import train

ROOT = Path(__file__).resolve().parents[1]
MIN_MAP50 = 0.30  # VOC2010+ area on the demo test split


def demo_example() -> list[str]:
    """The ``--data demo`` line of ``train.py``'s docstring, without its comment."""
    lines = [line for line in train.__doc__.splitlines() if "train.py --data demo" in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("#")[0])


def test_the_example_is_what_help_prints() -> None:
    help_text = train.build_parser().format_help()
    assert " ".join(demo_example()) in " ".join(help_text.split())


@pytest.mark.slow
def test_the_help_example_trains_a_detector(official_weights) -> None:
    argv = demo_example()
    assert argv[:2] == ["python", "train.py"]
    proc = subprocess.run(
        [sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    found = re.search(r"best mAP@0\.5 \(VOC2010\+ area\) ([0-9.]+); run folder (\S+)", proc.stdout)
    run_dir = ROOT / found.group(2) if found else None
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert found, proc.stdout[-2000:]
        assert "schedule:" in proc.stderr + proc.stdout  # printed once at start
        assert float(found.group(1)) >= MIN_MAP50, proc.stdout[-2000:]
    finally:
        if run_dir is not None and run_dir.is_dir() and run_dir.parent == ROOT / "logs":
            shutil.rmtree(run_dir)
