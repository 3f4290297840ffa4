"""Training-sample throughput: our loader vs. a reference-style loader, same data, same run.

Usage: ``python -m benchmarks.loader [--num-images 64] [--batches 12] [--workers 0 2]``

Data: seeded 416x416 JPEG tiles with a few boxes each (written to a temporary VOC tree).
Ours: ``MosaicMixup(VOCDetection)`` at 416, mosaic p=0.5, mixup p=0.5, batches of 8.
Reference: the same pipeline as the reference implementation builds it: PIL decoding, bicubic
resizes, a full-size canvas per image (four for a mosaic), float HSV conversion, with the same
probabilities. Printed: images/s for each, with 0 and 2 workers, and the ratio.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

from benchmarks.common import check_at_least, start
from data.augment import AugmentConfig
from data.dataset import EpochSampler, MosaicMixup, VOCDetection, collate
from data.voc import Annotation
from utils.config import CommandParser, run_cli
from utils.errors import InputError
from utils.timing import time_call

SIZE = 416


def make_tiles(folder: Path, count: int, seed: int = 0) -> list[Annotation]:
    """Textured 416x416 JPEG tiles with 1-4 filled rectangles each."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for i in range(count):
        noise = rng.integers(0, 255, (SIZE // 8, SIZE // 8, 3), dtype=np.uint8)
        image = cv2.resize(noise, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
        boxes = []
        for _ in range(int(rng.integers(1, 5))):
            w, h = rng.integers(20, 200, 2)
            x, y = rng.integers(0, SIZE - w), rng.integers(0, SIZE - h)
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.rectangle(image, (int(x), int(y)), (int(x + w), int(y + h)), color, -1)
            boxes.append((x, y, x + w, y + h))
        path = folder / f"{i:05d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        n = len(boxes)
        annotations.append(
            Annotation(
                str(path),
                path.stem,
                np.array(boxes, np.float32),
                rng.integers(0, 20, n),
                np.zeros(n, bool),
                SIZE,
                SIZE,
            )
        )
    return annotations


class ReferenceStyleDataset(Dataset):
    """The reference implementation's way of building samples (PIL, one canvas per image)."""

    def __init__(self, annotations: list[Annotation], cfg: AugmentConfig) -> None:
        self.annotations = annotations
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.annotations)

    @staticmethod
    def _rand(a: float = 0.0, b: float = 1.0) -> float:
        return np.random.rand() * (b - a) + a

    def _load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        ann = self.annotations[index]
        image = Image.open(ann.image_path).convert("RGB")
        return image, np.concatenate([ann.boxes, ann.labels[:, None]], 1)

    def _placed(self, image: Image.Image, box: np.ndarray, scale: tuple[float, float]):
        iw, ih = image.size
        j = self.cfg.jitter
        aspect = iw / ih * self._rand(1 - j, 1 + j) / self._rand(1 - j, 1 + j)
        s = self._rand(*scale)
        nh, nw = (
            (int(s * SIZE), int(s * SIZE * aspect))
            if aspect < 1
            else (int(s * SIZE / aspect), int(s * SIZE))
        )
        image = image.resize((max(nw, 1), max(nh, 1)), Image.BICUBIC)
        dx, dy = int(self._rand(0, max(SIZE - nw, 1))), int(self._rand(0, max(SIZE - nh, 1)))
        canvas = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
        canvas.paste(image, (dx, dy))
        if self._rand() < 0.5:
            canvas = canvas.transpose(Image.FLIP_LEFT_RIGHT)
        box = box.copy()
        box[:, [0, 2]] = box[:, [0, 2]] * nw / iw + dx
        box[:, [1, 3]] = box[:, [1, 3]] * nh / ih + dy
        box[:, 0:4] = box[:, 0:4].clip(0, SIZE)
        keep = (box[:, 2] - box[:, 0] > 1) & (box[:, 3] - box[:, 1] > 1)
        return np.array(canvas, np.uint8), box[keep]

    def _hsv(self, image: np.ndarray) -> np.ndarray:
        r = np.random.uniform(-1, 1, 3) * np.array(self.cfg.hsv_gains) + 1
        hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
        x = np.arange(0, 256, dtype=r.dtype)
        luts = [((x * r[0]) % 180), np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255)]
        hsv = cv2.merge([cv2.LUT(c, lut.astype(np.uint8)) for c, lut in zip((hue, sat, val), luts)])
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    def _plain(self, index: int):
        image, box = self._placed(*self._load(index), self.cfg.scale)
        return self._hsv(image), box

    def __getitem__(self, index: int):
        if self._rand() < self.cfg.mosaic_p:
            cut_x, cut_y = int(SIZE * self._rand(0.3, 0.7)), int(SIZE * self._rand(0.3, 0.7))
            picks = [index, *np.random.randint(0, len(self), 3)]
            out = np.full((SIZE, SIZE, 3), 128, np.uint8)
            boxes = []
            for k, i in enumerate(picks):
                image, box = self._placed(*self._load(int(i)), self.cfg.mosaic_scale)
                ys = slice(0, cut_y) if k in (0, 1) else slice(cut_y, SIZE)
                xs = slice(0, cut_x) if k in (0, 2) else slice(cut_x, SIZE)
                out[ys, xs] = image[ys, xs]
                boxes.append(box)
            image, box = self._hsv(out), np.concatenate(boxes)
            if self._rand() < self.cfg.mixup_p:
                other, other_box = self._plain(int(np.random.randint(len(self))))
                image = (image.astype(np.float32) * 0.5 + other * 0.5).astype(np.uint8)
                box = np.concatenate([box, other_box])
        else:
            image, box = self._plain(index)
        image = np.transpose(image.astype(np.float32) / 255.0, (2, 0, 1))
        return torch.from_numpy(image), torch.from_numpy(box.astype(np.float32))


def _reference_collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def throughput(loader: DataLoader, batches: int, sampler=None) -> float:
    """Images per second over ``batches`` batches, after one warm-up batch (worker start)."""
    iterator = iter(loader)
    next(iterator)
    seconds, count = time_call(lambda: sum(len(next(iterator)[0]) for _ in range(batches)))
    return count / seconds


def main(argv: list[str] | None = None) -> int:
    p = CommandParser(
        description="Training-sample throughput vs. a reference loader",
    )
    p.add_argument("--num-images", type=int, default=64, help="distinct tiles on disk")
    p.add_argument("--batches", type=int, default=12, help="timed batches of 8 per measurement")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts")
    args = p.parse_args(argv)
    check_at_least(args, num_images=1, batches=1)
    if min(args.workers) < 0:
        raise InputError(f"--workers {min(args.workers)}: must be at least 0")
    torch.set_num_threads(1)  # the samples, not the tensor ops, are measured
    cfg = AugmentConfig(mosaic_p=0.5, mixup_p=0.5)
    start(
        f"training samples at {SIZE}, mosaic 0.5, mixup 0.5, batch 8, "
        f"{args.num_images} JPEG tiles, {args.batches} timed batches"
    )
    with tempfile.TemporaryDirectory() as tmp:
        annotations = make_tiles(Path(tmp), args.num_images)
        ours = MosaicMixup(VOCDetection(annotations, SIZE, train=True, cfg=cfg))
        reference = ReferenceStyleDataset(annotations, cfg)
        n = args.batches * 8 + 8
        print(f"{'workers':>7}  {'reference img/s':>15}  {'ours img/s':>10}  {'ratio':>6}")
        for workers in args.workers:
            common = {"batch_size": 8, "num_workers": workers, "drop_last": True}
            ref_loader = DataLoader(
                reference,
                sampler=RandomSampler(reference, num_samples=n),
                collate_fn=_reference_collate,
                **common,
            )
            our_loader = DataLoader(
                ours,
                sampler=EpochSampler(RandomSampler(ours, num_samples=n)),
                collate_fn=collate,
                **common,
            )
            ref = throughput(ref_loader, args.batches)
            our = throughput(our_loader, args.batches)
            print(f"{workers:>7}  {ref:>15.1f}  {our:>10.1f}  {our / ref:>5.2f}x")
    return 0


if __name__ == "__main__":
    run_cli(main)
