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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export a YOLOv4-tiny model")
    p.add_argument("--weights", required=True, help="our checkpoint, reference .pth or .weights")
    p.add_argument("--format", choices=["darknet"], default="darknet", help="target format")
    p.add_argument("--out", required=True, help="output path prefix (extensions are added)")
    p.add_argument(
        "--img-size", type=int, default=None, help="cfg input size (default: the checkpoint's)"
    )
    args = p.parse_args(argv)
    try:
        model, info = load_model(args.weights)
        prefix = Path(args.out)
        weights = prefix.with_name(prefix.name + ".weights")
        cfg = prefix.with_name(prefix.name + ".cfg")
        export_darknet(model, weights, cfg, info.geometry.at_size(args.img_size))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {cfg} and {weights} ({info.describe()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
