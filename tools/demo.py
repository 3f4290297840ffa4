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
import sys
from pathlib import Path

import eval as eval_cli
import predict
from data.demo import DEMO_ROOT, DEMO_VOC_ROOT, demo_is_current, generate_demo
from utils.runlock import FolderLockedError
from utils.training.config import TrainConfig
from utils.training.fit import fit
from utils.training.loop import NonFiniteLossError

OUT = Path("logs/demo")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=25, help="training epochs (default: 25)")
    p.add_argument("--img-size", type=int, default=192, help="training input size (default: 192)")
    p.add_argument("--phi", default="cbam", help="attention block (default: cbam)")
    args = p.parse_args(argv)
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
    except (NonFiniteLossError, OSError) as err:  # diverged, or a write failed (disk full)
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FolderLockedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    weights = result.run_dir / "weights" / "last.pth"

    print("== 4/5 evaluation on the demo test split")
    code = eval_cli.main(
        [
            "--data",
            "demo",
            "--weights",
            str(weights),
            "--no-coco",
            "--out-dir",
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
    sys.exit(main())
