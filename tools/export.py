"""Export a model: ONNX (fp32 or INT8, with the metadata predict.py and eval.py read) or darknet.

Examples:
    python -m tools.export --weights best.pth --out model_data/best.onnx
    python -m tools.export --weights best.pth --out m.onnx --dynamic-batch --decode
    python -m tools.export --weights best.pth --out m_int8.onnx --int8 path/to/train/images
    python -m tools.export --weights best.pth --format darknet --out model_data/my_model

ONNX graphs run in predict.py and eval.py (--weights m.onnx) and in any ONNX Runtime; the
darknet pair (my_model.cfg, my_model.weights; phi 0 only) runs in darknet and OpenCV DNN.
``predict.py --export-onnx PATH`` is a shortcut for the ONNX export.
"""

from __future__ import annotations

import argparse

from data.options import DataOptions
from nets.options import ModelOptions
from utils.config import CommandParser, add_options, from_args, run_cli
from utils.inference.export import ExportConfig, export
from utils.inference.predictor import InferenceConfig


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m tools.export", description=__doc__)
    add_options(
        p,
        ModelOptions,
        include=("weights", "phi", "attention_plugin", "anchors", "img_size"),
        required=("weights",),
        helps={"weights": "our checkpoint, a reference-implementation .pth or darknet .weights"},
    )
    add_options(
        p,
        DataOptions,
        include=("classes",),
        helps={
            "classes": "class-names file (default: the checkpoint's; COCO's for an 80-class model)"
        },
    )
    add_options(
        p,
        InferenceConfig,
        include=("letterbox",),
        helps={
            "letterbox": "--int8: calibration images keep their aspect ratio with grey "
            "padding, as predict.py runs the model (else a plain resize)"
        },
    )
    add_options(p, ExportConfig, required=("out",))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = export(
        from_args(ModelOptions, args),
        from_args(ExportConfig, args),
        classes=args.classes,
        letterbox=args.letterbox,
    )
    print(result.describe())
    return 0


if __name__ == "__main__":
    run_cli(main)
