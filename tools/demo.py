"""``make demo``: the whole project on a built-in example, on a CPU, in a few minutes.

1. detect objects in the two sample photos with the official COCO weights;
2. generate the demo dataset (shapes in VOC layout) if it is not there;
3. train YOLOv4-tiny with CBAM (phi 2) on it at a small input size;
4. evaluate the trained model on the demo test split (VOC07 and VOC12 AP);
5. detect with it on a few demo test images;
and print where everything went.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import eval as eval_cli
import predict
from data.demo import DEMO_ROOT, DEMO_VOC_ROOT, demo_is_current, generate_demo
from nets.options import ModelOptions
from nets.registry import describe_phis
from utils.config import CommandParser, add_options, run_cli
from utils.errors import UserError
from utils.paths import write_failure
from utils.training.config import TrainConfig
from utils.training.fit import fit

OUT = Path("logs/demo")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="python -m tools.demo",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--epochs", type=int, default=25, help="training epochs")
    add_options(
        p,
        ModelOptions,
        include=("phi", "img_size"),
        defaults={"phi": "cbam", "img_size": 192},
        helps={
            "phi": f"attention block to train, by number or name: {describe_phis()}",
            "img_size": "training input size",
        },
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    print("== 1/5 COCO weights on the sample photos")
    photos = OUT / "coco_photos"
    code = predict.main(
        [
            "--source",
            "model_data/samples",
            "--save-dir",
            str(photos),
            "--exist-ok",
            "--json",
            str(photos / "detections.json"),
        ]
    )
    if code:
        return code

    print("== 2/5 demo dataset")
    if not demo_is_current(DEMO_ROOT):
        generate_demo(DEMO_ROOT)

    print(f"== 3/5 training phi {args.phi} for {args.epochs} epochs at {args.img_size}")
    try:
        result = fit(demo_config(args.phi, args.img_size, args.epochs))
    except OSError as err:
        if isinstance(err, UserError):
            raise
        raise write_failure(err, OUT) from None  # a write failed (disk full): exit 1
    weights = result.run_dir / "weights" / "last.pth"

    print("== 4/5 evaluation on the demo test split")
    code = eval_cli.main(
        [
            "--data",
            "demo",
            "--weights",
            str(weights),
            "--no-coco",
            "--save-dir",
            str(OUT / "eval"),
            "--json",
            str(OUT / "eval.json"),
        ]
    )
    if code:
        return code

    print("== 5/5 the trained model on demo test images")
    code = predict.main(
        [
            "--source",
            str(copy_test_images(6)),
            "--weights",
            str(weights),
            "--save-dir",
            str(OUT / "demo_predictions"),
            "--exist-ok",
        ]
    )
    print(f"""
done. Everything is under {OUT}/:
  coco_photos/          the sample photos with COCO detections (+ detections.json)
  train/                training run: results.csv, results.png, train.log, train_batch0.jpg,
                        val_predictions.jpg, weights/best.pth and weights/last.pth
  eval/ and eval.json   PR curves, AP per class, metrics (VOC07 11-point and VOC12 area)
  demo_predictions/     the trained model on demo test images
best mAP@0.5 during training (VOC2010+ area): {result.best_map:.3f}""")
    return code


def demo_config(phi: str, img_size: int, epochs: int) -> TrainConfig:
    """The demo run: batch, frozen epochs, warmup and lr come from the schedule rules for a
    short run on 210 images (``utils.training.schedule``), as for any user's data."""
    return TrainConfig(
        data="demo",
        phi=phi,
        img_size=img_size,
        epochs=epochs,
        eval_period=5,
        log_dir=str(OUT),
        name="train",
    )


def copy_test_images(count: int) -> Path:
    """The first ``count`` images of the demo test split, copied into one folder."""
    voc2007 = DEMO_VOC_ROOT / "VOC2007"
    test_ids = (voc2007 / "ImageSets" / "Main" / "test.txt").read_text().split()[:count]
    sample = OUT / "demo_images"
    sample.mkdir()
    for image_id in test_ids:
        shutil.copy(voc2007 / "JPEGImages" / f"{image_id}.jpg", sample)
    return sample


if __name__ == "__main__":
    run_cli(main)
