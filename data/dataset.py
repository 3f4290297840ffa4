"""Datasets: VOC samples for training and evaluation, the mosaic/mixup wrapper, collate and
the sampler that carries the epoch into workers.

Contract of a training sample: ``(image, target)`` with ``image`` uint8 (3, S, S) RGB and
``target`` float32 (N, 5): class id, x1, y1, x2, y2 in input pixels. ``collate`` stacks a
batch into ``images`` uint8 (B, 3, S, S) and ``targets`` float32 (M, 6): image index in the
batch, class id, x1, y1, x2, y2.

Randomness: the generator of sample ``index`` in epoch ``epoch`` is seeded from
``(seed, epoch, index)``. So every worker and every epoch draws different numbers, and a run
is reproducible for a given seed whatever the number of workers. ``EpochSampler`` sends
``(epoch, index)`` pairs, so persistent workers see the epoch too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from data.augment import AugmentConfig, mixup, mosaic, random_place
from data.voc import Annotation, FileIssue
from utils.errors import InputError
from utils.preprocess import resize_image
from utils.sources import ImageReadError, read_image

logger = logging.getLogger(__name__)

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # BGR image, boxes (N, 4), labels (N,)


def quick_check(annotations: Sequence[Annotation]) -> tuple[list[Annotation], list[FileIssue]]:
    """Fast construction-time check (no decoding): image files exist and are not empty."""
    kept, issues = [], []
    for ann in annotations:
        try:
            size = os.path.getsize(ann.image_path)
        except OSError:
            issues.append(FileIssue(ann.image_path, "image file missing", "skipped"))
            continue
        if size == 0:
            issues.append(FileIssue(ann.image_path, "empty image file (0 bytes)", "skipped"))
            continue
        kept.append(ann)
    return kept, issues


class VOCDetection(Dataset):
    """Images and boxes of a list of annotations.

    Args:
        annotations: from ``data.voc`` (boxes in 0-based original pixels).
        input_size: side S of the square network input.
        train: random augmentation (``random_place``); otherwise letterbox.
        include_difficult: keep difficult objects as training targets.
        cfg: augmentation ranges.
        seed: base seed of the per-sample generators.
    """

    def __init__(
        self,
        annotations: Sequence[Annotation],
        input_size: int = 416,
        train: bool = True,
        include_difficult: bool = False,
        cfg: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        annotations, self.issues = quick_check(annotations)
        for issue in self.issues:
            logger.warning("%s", issue)
        if not include_difficult:
            annotations = [a.without_difficult() for a in annotations]
        if not annotations:
            raise InputError("no usable images in the dataset")
        self.annotations = list(annotations)
        self.input_size = input_size
        self.train = train
        self.cfg = cfg or AugmentConfig()
        self.seed = seed
        self.epoch = 0
        self.bad: set[int] = set()  # indices whose image failed to decode (in this process)

    def __len__(self) -> int:
        return len(self.annotations)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index, stream])

    def load(self, index: int, rng: np.random.Generator | None = None) -> Sample:
        """Original image (BGR) with its boxes and labels. An unreadable image is reported
        once, remembered, and replaced by another image so that training never stops."""
        while True:
            ann = self.annotations[index]
            if index not in self.bad:
                try:
                    # annotations refer to the stored pixels: no EXIF rotation
                    image = read_image(ann.image_path, apply_exif=False)
                except ImageReadError as err:
                    self.bad.add(index)
                    logger.warning("%s (skipped; using another image)", err)
                else:
                    return image, *self._fit_boxes(ann, image)
            good = np.setdiff1d(np.arange(len(self.annotations)), list(self.bad))
            if len(good) == 0:
                raise RuntimeError("no readable image left in the dataset")
            rng = rng or np.random.default_rng(index)
            index = int(rng.choice(good))

    @staticmethod
    def _fit_boxes(ann: Annotation, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clips boxes to the decoded image (the XML size may be missing or wrong)."""
        h, w = image.shape[:2]
        boxes = ann.boxes.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h - 1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[keep], ann.labels[keep]

    def sample(self, index: int, epoch: int, rng: np.random.Generator | None = None) -> Sample:
        """One plain training sample (or the letterboxed evaluation sample); ``rng`` defaults
        to the sample's own stream."""
        rng = rng or self.rng(epoch, index)
        image, boxes, labels = self.load(index, rng)
        if self.train:
            return random_place(image, boxes, labels, self.input_size, self.cfg, rng)
        canvas, meta = resize_image(image, self.input_size, letterbox=True)
        boxes = boxes * np.float32([meta.scale_x, meta.scale_y] * 2) + np.float32(
            [meta.pad_x, meta.pad_y] * 2
        )
        return canvas, boxes.astype(np.float32), labels

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        return to_sample(*self.sample(index, epoch))


def to_sample(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
    """BGR HWC uint8 + boxes + labels -> (RGB CHW uint8 tensor, (N, 5) float32 target)."""
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)
    target = np.concatenate([labels.reshape(-1, 1).astype(np.float32), boxes.reshape(-1, 4)], 1)
    return torch.from_numpy(np.ascontiguousarray(rgb)), torch.from_numpy(target)


class MosaicMixup(Dataset):
    """Wraps a training ``VOCDetection``: with ``cfg.mosaic_p`` a sample is a 4-image mosaic,
    and a mosaic is blended with a plain sample with ``cfg.mixup_p``.

    ``close()`` (or ``set_epoch`` past ``close_epoch``) switches both off, as training does for
    its final part.
    """

    def __init__(self, dataset: VOCDetection, close_epoch: int | None = None) -> None:
        self.dataset = dataset
        self.close_epoch = close_epoch
        self.enabled = True
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def close(self) -> None:
        self.enabled = False

    def active(self, epoch: int) -> bool:
        return self.enabled and (self.close_epoch is None or epoch < self.close_epoch)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        ds, cfg = self.dataset, self.dataset.cfg
        rng = ds.rng(epoch, index, stream=1)
        if not self.active(epoch) or rng.random() >= cfg.mosaic_p:
            return to_sample(*ds.sample(index, epoch))
        others = rng.integers(len(ds), size=3)
        parts = [ds.load(index, rng)] + [ds.load(int(i), rng) for i in others]
        result = mosaic(parts, ds.input_size, cfg, rng)
        if rng.random() < cfg.mixup_p:
            # the partner draws from the mosaic's stream, not its own plain-sample stream,
            # so it is not a copy of a sample seen alone this epoch
            result = mixup(result, ds.sample(int(rng.integers(len(ds))), epoch, rng))
        return to_sample(*result)


class EpochSampler(Sampler):
    """Wraps an index sampler and yields ``(epoch, index)``; call ``set_epoch`` each epoch.

    The inner sampler (random, sequential or ``DistributedSampler``) gets ``set_epoch`` too
    when it has one.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks images; targets get their image index as first column: (M, 6)."""
    images = torch.stack([b[0] for b in batch])
    targets = [
        torch.cat([torch.full((len(t), 1), float(i)), t], 1) for i, (_, t) in enumerate(batch)
    ]
    return images, torch.cat(targets) if targets else torch.zeros(0, 6)


class SeededShuffle(Sampler):
    """A permutation that depends only on (seed, epoch): resumable without saved RNG state."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size
