"""``predict.py --attention-maps``: what each attention block attends to, as images.

Per image and insertion point, in a folder of their own (``predict.py`` uses
``save_dir/attention/``, so that an input image named like a map keeps its annotated copy):
``<stem>_attn_<point>.jpg``, the block's spatial map mapped back through the letterbox onto
the image and overlaid in colour, and, for blocks with channel weights,
``<stem>_attn_<point>_channels.png``, a histogram of those weights. The stem is the one of
the image's annotated copy, unique in the run, and point names hold no ``_attn_``, so no two
maps of a run share a name.

Image files only: a video or webcam is processed as usual but without maps (said once per
run), since a map per frame and point would write several files per frame; run the frames of
interest as images instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nets.attention_maps import AttentionMap
from utils.errors import InputError
from utils.inference.predictor import Detector
from utils.paths import OutputPathError, write_image_atomic
from utils.visualize import draw_channel_histogram, overlay_attention


def render_attention(image_bgr: np.ndarray, amap: AttentionMap) -> np.ndarray:
    """The spatial map of ``amap`` over the image it was computed on (a copy).

    Raises:
        ValueError: the block has no spatial map.
    """
    on_image = amap.to_original()  # raises when there is no spatial map
    h, w = amap.spatial.shape
    title = f"{amap.point} ({w}x{h} cells): {amap.block}, {amap.spatial_kind}"
    return overlay_attention(image_bgr, on_image, title)


def render_channels(amap: AttentionMap) -> np.ndarray:
    """The histogram of ``amap``'s channel weights.

    Raises:
        ValueError: the block has no channel weights.
    """
    if amap.channels is None:
        raise InputError(f"{amap.point} ({amap.block}) has no channel weights")
    return draw_channel_histogram(amap.channels, f"{amap.point}: {amap.block} channel weights")


class AttentionMapWriter:
    """Writes the attention images of each image into ``save_dir`` (created on the first
    write).

    Problems are one line each: a point whose block records no map, or a model without
    attention, is said once per run; a file that cannot be written, or an image whose maps
    cannot be computed, is appended to ``failures`` and the run goes on.
    """

    def __init__(self, detector: Detector, save_dir: Path, failures: list[str]) -> None:
        self.detector = detector
        self.save_dir = Path(save_dir)
        self.failures = failures
        self._said: set[str] = set()

    def _say_once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            tqdm.write(f"--attention-maps: {text}", file=sys.stderr)

    def write(self, image_bgr: np.ndarray, stem: str) -> list[Path]:
        """Computes and writes the maps of one image (files named after ``stem``, one safe
        path component); returns the paths written."""
        blocks = self.detector.torch_model("--attention-maps").attention_blocks()
        if not blocks:  # no second forward pass for nothing
            self._say_once("none", "the model has no attention block (phi 0); no maps written")
            return []
        try:
            maps = self.detector.attention_maps(image_bgr)
        except ValueError as err:  # a plugin recipe returning maps of the wrong shape
            self._fail(f"{stem}: attention maps: {err}")
            return []
        for name in blocks:
            point = name.removesuffix("_att")
            if point not in maps:
                block = self.detector.info.phi_name
                self._say_once(point, f"the {block!r} block at {point} records no map; skipped")
        written = []
        for point, amap in maps.items():
            if amap.spatial is not None:
                path = self.save_dir / f"{stem}_attn_{point}.jpg"
                written += self._imwrite(path, render_attention(image_bgr, amap))
            if amap.channels is not None:
                path = self.save_dir / f"{stem}_attn_{point}_channels.png"
                written += self._imwrite(path, render_channels(amap))
        return written

    def skip_stream(self) -> None:
        """Says (once) that videos and webcams get no maps."""
        self._say_once("stream", "maps are written for image files only; videos run without")

    def _imwrite(self, path: Path, image: np.ndarray) -> list[Path]:
        try:
            return [write_image_atomic(path, image)]
        except OutputPathError as err:
            self._fail(str(err))
            return []

    def _fail(self, problem: str) -> None:
        tqdm.write(f"error: {problem}", file=sys.stderr)
        self.failures.append(problem)
