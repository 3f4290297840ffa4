"""Export a model to other runtimes.

Usage: ``python -m tools.export --weights W --format darknet --out model_data/my_model``
writes ``my_model.cfg`` and ``my_model.weights`` (phi 0 only) that darknet and OpenCV DNN run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nets.checkpoint import load_model
from nets.darknet import export_darknet
from utils.config import HelpFormatter
from utils.paths import OutputPathError, check_output_path, write_failure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.export",
        description="Export a YOLOv4-tiny model",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--weights", required=True, help="our checkpoint, reference .pth or .weights")
    p.add_argument("--format", choices=["darknet"], default="darknet", help="target format")
    p.add_argument("--out", required=True, help="output path prefix (extensions are added)")
    p.add_argument(
        "--img-size", type=int, default=None, help="cfg input size (default: the checkpoint's)"
    )
    args = p.parse_args(argv)
    prefix = Path(args.out)
    weights = prefix.with_name(prefix.name + ".weights")
    cfg = prefix.with_name(prefix.name + ".cfg")
    try:
        for path in (weights, cfg):  # before the model loads
            check_output_path(path)
        model, info = load_model(args.weights)
        geometry = info.geometry.at_size(args.img_size)
    except (OutputPathError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        export_darknet(model, weights, cfg, geometry)
    except ValueError as err:  # a model darknet cannot hold (attention)
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full or permissions changed during the export
        print(f"error: {write_failure(err, weights)}", file=sys.stderr)
        return 1
    print(f"wrote {cfg} and {weights} ({info.describe()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
