"""``Detections``: one image's boxes, scores and class ids, from the decoder to the JSON file.

``nets.decode.detect`` returns them in network-input pixels; ``Detections.to_original`` maps
them to the original image (the only place boxes change coordinate frame); ``to_json`` and
``from_json`` write and read the rows of the ``predict.py --json`` format. Evaluation flattens
many of them with ``utils.evaluation.metrics.BoxSet.from_detections``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain

import numpy as np

from utils.preprocess import ResizeMeta, boxes_to_original


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections of one image, sorted by decreasing score.

    The boxes are in the pixel frame of a ``width`` x ``height`` image: the network input (a
    square of the input side) as ``detect`` returns them, the original image after
    ``to_original`` (0-based pixel coordinates, clipped to [0, W-1] x [0, H-1]).

    Attributes:
        boxes: (N, 4) float x1, y1, x2, y2 (float32 from the model, float64 read from JSON).
        scores: (N,) float, objectness * class probability.
        labels: (N,) int64 class ids.
        class_names: names indexed by class id (``names`` falls back to the id).
        width: width of the image the boxes are in (0: unknown).
        height: height of that image (0: unknown).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: Sequence[str] = field(repr=False, default=())
    width: int = 0
    height: int = 0

    @property
    def names(self) -> list[str]:
        """Class name of each detection (its id as text where no name is known)."""
        return [self.class_names[k] if k < len(self.class_names) else str(k) for k in self.labels]

    def __len__(self) -> int:
        return len(self.scores)

    def to_original(self, meta: ResizeMeta) -> Detections:
        """These detections, from network-input pixels to the original image's.

        Args:
            meta: how the original image was resized onto the network input.

        Returns:
            A copy with boxes (N, 4) xyxy in 0-based original pixels, clipped to the image,
            and ``width``, ``height`` of the original image.
        """
        return replace(
            self,
            boxes=boxes_to_original(self.boxes, meta),
            width=meta.width,
            height=meta.height,
        )

    def to_json(self) -> list[dict]:
        """Rows of the ``predict.py --json`` format.

        Returns:
            One dict per detection: ``xyxy`` (4 floats rounded to 0.01), ``score`` (rounded to
            1e-5), ``class_id`` and ``class_name``.
        """
        return [
            {
                "xyxy": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "class_id": int(label),
                "class_name": name,
            }
            for box, score, label, name in zip(self.boxes, self.scores, self.labels, self.names)
        ]

    @classmethod
    def from_json(
        cls,
        rows: Sequence[Mapping],
        *,
        class_names: Sequence[str] = (),
        width: int = 0,
        height: int = 0,
    ) -> Detections:
        """Reads back rows that ``to_json`` wrote (``class_name`` is not needed).

        Args:
            rows: dicts with ``xyxy`` (4 numbers), ``score`` and ``class_id``.
            class_names: names by class id for the result.
            width: width of the image the boxes are in.
            height: height of that image.

        Returns:
            The detections with boxes (N, 4) float64 xyxy, scores (N,) float64 and labels (N,)
            int64, in the order of ``rows``.

        Raises:
            KeyError, TypeError, ValueError: a row without the fields above, or fewer than
                4 box coordinates per row in all.
        """
        n = len(rows)
        boxes = np.fromiter(chain.from_iterable(r["xyxy"] for r in rows), np.float64, 4 * n)
        return cls(
            boxes=boxes.reshape(n, 4),
            scores=np.fromiter((r["score"] for r in rows), np.float64, n),
            labels=np.fromiter((r["class_id"] for r in rows), np.int64, n),
            class_names=class_names,
            width=width,
            height=height,
        )
