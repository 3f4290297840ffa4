"""Build a small real one-class set (tree crowns in aerial images) in the VOC layout.

The ``deepforest`` wheel on PyPI ships four annotated aerial crops (NEON sites YELL, OSBS and
SOAP, VOC XML boxes). This tool reads them from the wheel and tiles them into ``--tile`` px
tiles, one class ``Tree``. Train and test come from different crops, so no test tile shares
pixels with a training tile: train = the large YELL crop (tiles overlap, stride ``--stride``),
test = the other YELL crop and the OSBS and SOAP crops (tiles do not overlap).

Usage:
    pip download deepforest==2.1.0 --no-deps -d wheels
    python -m tools.aerial_set --wheel wheels/deepforest-2.1.0-py3-none-any.whl --out data/aerial
    python train.py --voc-root data/aerial --classes data/aerial/classes.txt \\
        --train-sets 2007:train --val-set 2007:test --img-size 320
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import cv2
import numpy as np

from utils.config import CommandParser, run_cli
from utils.errors import InputError
from utils.paths import OutputRefusedError, check_output_path

CLASS_NAME = "Tree"
TRAIN_CROPS = ("2019_YELL_2_528000_4978000_image_crop2",)
TEST_CROPS = ("2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061")
MIN_VISIBLE = 0.5  # a box cut by a tile edge is kept when this share of it lies in the tile


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="python -m tools.aerial_set", description=__doc__)
    p.add_argument("--wheel", required=True, help="the deepforest wheel (.whl) to read")
    p.add_argument("--out", required=True, help="new folder to write (VOC2007/, classes.txt)")
    p.add_argument("--tile", type=int, default=416, help="tile side in pixels")
    p.add_argument("--stride", type=int, default=312, help="training tiles' stride in pixels")
    return p


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one side: every ``stride``, the last one flush with the end (a side
    shorter than ``tile`` gives one origin, 0). With ``stride == tile`` tiles do not overlap:
    the last is cut short instead, and left out when under a quarter tile."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    rest = length - starts[-1] - tile
    if stride < tile and rest > 0:
        starts.append(length - tile)
    elif rest >= tile // 4:  # a thinner strip is left out
        starts.append(starts[-1] + stride)
    return starts


def read_boxes(xml: bytes) -> np.ndarray:
    """(N, 4) xmin, ymin, xmax, ymax of every object, whatever its name."""
    root = ET.fromstring(xml)
    boxes = [
        [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        for obj in root.iter("object")
    ]
    return np.array(boxes, np.float64).reshape(-1, 4)


def crop_boxes(boxes: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Boxes (VOC's 1-based pixels) moved into the tile at (x0, y0) of size w x h, clipped
    to it, those with less than ``MIN_VISIBLE`` of their area inside dropped."""
    moved = boxes - [x0, y0, x0, y0]
    clipped = np.clip(moved, 1, [w, h, w, h])  # VOC pixels: 1 to the side, inclusive
    area = lambda b: (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)  # noqa: E731
    keep = area(clipped) >= MIN_VISIBLE * np.maximum(area(moved), 1e-9)
    return clipped[keep]


def annotation(image_id: str, w: int, h: int, boxes: np.ndarray) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for box in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = CLASS_NAME
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = str(round(float(value)))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise OutputRefusedError(f"--out {out}: exists; give a new folder")
    check_output_path(out, folder=True)
    if args.tile < 32 or not 0 < args.stride <= args.tile:
        raise InputError(
            f"--tile {args.tile} --stride {args.stride}: need 32 <= tile, 0 < stride <= tile"
        )
    try:
        wheel = zipfile.ZipFile(args.wheel)
    except (OSError, zipfile.BadZipFile) as err:
        raise InputError(f"--wheel {args.wheel}: not a readable wheel ({err})") from None
    voc = out / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    splits: dict[str, list[str]] = {"train": [], "test": []}
    with wheel:
        for split, crops in (("train", TRAIN_CROPS), ("test", TEST_CROPS)):
            stride = args.stride if split == "train" else args.tile
            for crop in crops:
                try:
                    png = wheel.read(f"deepforest/data/{crop}.png")
                    boxes = read_boxes(wheel.read(f"deepforest/data/{crop}.xml"))
                except KeyError as err:
                    raise InputError(f"--wheel {args.wheel}: {err.args[0]}") from None
                image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
                height, width = image.shape[:2]
                for y0 in tile_starts(height, args.tile, stride):
                    for x0 in tile_starts(width, args.tile, stride):
                        tile = image[y0 : y0 + args.tile, x0 : x0 + args.tile]
                        h, w = tile.shape[:2]
                        image_id = f"{crop}_{x0}_{y0}"
                        kept = crop_boxes(boxes, x0, y0, w, h)
                        cv2.imwrite(str(voc / "JPEGImages" / f"{image_id}.jpg"), tile)
                        (voc / "Annotations" / f"{image_id}.xml").write_bytes(
                            annotation(image_id, w, h, kept)
                        )
                        splits[split].append(image_id)
    splits["trainval"] = splits["train"]
    for name, ids in splits.items():
        (voc / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    (out / "classes.txt").write_text(f"{CLASS_NAME}\n")
    print(f"wrote {out}: {len(splits['train'])} train, {len(splits['test'])} test tiles")
    return 0


if __name__ == "__main__":
    run_cli(main)
