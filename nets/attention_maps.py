"""What each attention block attends to, read from a forward pass with temporary hooks.

``capture_attention(model)`` is a context manager: inside it, forward hooks on the submodules
that produce each block's attention record their outputs; on leaving it (normally or by an
exception) every hook is removed. Hooks only read, so the model's outputs are the same with
and without capture. After a ``model(x)`` inside the block, ``maps()`` gives per image, per
insertion point, the block's maps at that point's resolution (network-input coordinates,
letterbox included):

* ``spatial`` (H, W): where the block puts weight. CBAM's spatial gate; BAM's spatial branch
  after a sigmoid (the block applies ``sigmoid(channel + spatial)`` jointly, so this is the
  spatial branch's share alone); cbam_plus's spatial gate; coordinate attention's
  ``a_h x a_w`` outer product averaged over channels; SimAM's weights averaged over channels;
  non-local's attention received per position (the column sums of the softmax affinity: 1 is
  a uniform share, the map sums to H * W).
* ``channels`` (C,): per-channel weights in [0, 1]. SE, ECA, CBAM's and cbam_plus's channel
  gates, BAM's channel branch after a sigmoid (its share alone, as above).

A block type without a recipe (phi 0 has no block; a plugin's block unless it calls
``register_attention_map``) yields no entry for its point. ``AttentionMap`` adds the image's
``ResizeMeta`` so that ``to_original`` maps the spatial map onto the original image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nets.blocks import (
    BAMBlock,
    CBAMBlock,
    CBAMPlusBlock,
    CoordAttention,
    ECABlock,
    NonLocalBlock,
    SEBlock,
    SimAM,
)
from utils.errors import InputError
from utils.preprocess import ResizeMeta

# taps (submodule path -> its output, batch first) and the block's output shape (B, C, H, W)
# -> spatial (B, H, W) or None, channels (B, C) or None
MapBuilder = Callable[
    [dict[str, torch.Tensor], torch.Size], tuple[torch.Tensor | None, torch.Tensor | None]
]


@dataclass(frozen=True)
class MapRecipe:
    """How to read a block type's maps.

    Attributes:
        taps: paths (as in ``named_modules``) of the block's submodules whose outputs are
            recorded.
        build: turns the recorded outputs into ``(spatial (B, H, W), channels (B, C))``,
            either None when the block has no such map.
        spatial_kind: what the spatial values are, for labels (e.g. "sigmoid gate").
    """

    taps: tuple[str, ...]
    build: MapBuilder
    spatial_kind: str = ""


_RECIPES: dict[type[nn.Module], MapRecipe] = {}


def register_attention_map(
    block_cls: type[nn.Module], taps: tuple[str, ...], *, spatial_kind: str = ""
) -> Callable[[MapBuilder], MapBuilder]:
    """Decorator on a ``MapBuilder``: ``capture_attention`` reads ``block_cls`` blocks (and
    subclasses without their own recipe) by hooking ``taps`` and calling the builder.

    Raises:
        ValueError: ``block_cls`` already has a recipe.
    """

    def decorator(build: MapBuilder) -> MapBuilder:
        if block_cls in _RECIPES:
            raise InputError(f"{block_cls.__name__} already has an attention-map recipe")
        _RECIPES[block_cls] = MapRecipe(tuple(taps), build, spatial_kind)
        return build

    return decorator


def recipe_for(block: nn.Module) -> MapRecipe | None:
    """The recipe of ``block``'s type or its nearest base class that has one, else None."""
    for cls in type(block).__mro__:
        if cls in _RECIPES:
            return _RECIPES[cls]
    return None


SIGMOID_GATE = "sigmoid gate"


@register_attention_map(SEBlock, ("fc",))
def _se(taps, shape):
    return None, taps["fc"]  # the MLP ends with its sigmoid: (B, C)


@register_attention_map(
    CBAMBlock, ("channelattention", "spatialattention"), spatial_kind=SIGMOID_GATE
)
def _cbam(taps, shape):
    return taps["spatialattention"][:, 0], taps["channelattention"].flatten(1)


@register_attention_map(ECABlock, ("sigmoid",))
def _eca(taps, shape):
    return None, taps["sigmoid"][:, 0]  # (B, 1, C)


@register_attention_map(
    CoordAttention, ("sigmoid_h", "sigmoid_w"), spatial_kind="a_h x a_w, mean over channels"
)
def _coord(taps, shape):
    # (B, C, H, 1) * (B, C, 1, W): the per-channel outer products the block multiplies x by
    return (taps["sigmoid_h"] * taps["sigmoid_w"]).mean(dim=1), None


@register_attention_map(
    BAMBlock, ("channel_bn", "spatial_bn"), spatial_kind="sigmoid of the spatial branch"
)
def _bam(taps, shape):
    # channel_bn / spatial_bn are identities once folded: their outputs are the branches still
    return torch.sigmoid(taps["spatial_bn"][:, 0]), torch.sigmoid(taps["channel_bn"].flatten(1))


@register_attention_map(
    CBAMPlusBlock,
    ("channel_gate.weight_tap", "spatial_gate.weight_tap"),
    spatial_kind=SIGMOID_GATE,
)
def _cbam_plus(taps, shape):
    return taps["spatial_gate.weight_tap"][:, 0], taps["channel_gate.weight_tap"].flatten(1)


@register_attention_map(SimAM, ("weight_tap",), spatial_kind="sigmoid weight, mean over channels")
def _simam(taps, shape):
    return taps["weight_tap"].mean(dim=1), None


@register_attention_map(
    NonLocalBlock,
    ("affinity_tap",),
    spatial_kind="attention received (softmax column sum; 1 = uniform)",
)
def _nonlocal(taps, shape):
    affinity = taps["affinity_tap"]  # (B, N, N): row i attends to column j
    return affinity.sum(dim=1).reshape(shape[0], shape[2], shape[3]), None


@dataclass(frozen=True)
class RawMaps:
    """One block's maps for one image, at its point's resolution (see the module doc)."""

    block: str
    spatial: np.ndarray | None  # (H, W) float32
    channels: np.ndarray | None  # (C,) float32
    spatial_kind: str = ""


class AttentionCapture:
    """The hooks of one ``capture_attention`` and what they recorded."""

    def __init__(self, model: nn.Module) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._taps: dict[str, dict[str, torch.Tensor]] = {}  # point -> tap -> output
        self._shapes: dict[str, torch.Size] = {}
        self._recipes: dict[str, MapRecipe] = {}
        self.unmapped: list[str] = []  # points whose block has no recipe
        blocks = getattr(model, "attention_blocks", dict)()  # YoloBody: {"feat1_att": ...}
        self._blocks = {name.removesuffix("_att"): block for name, block in blocks.items()}
        self._block_name = getattr(model, "phi_name", None)

    def _attach(self) -> None:
        for point, block in self._blocks.items():
            self._handles.append(block.register_forward_hook(self._shape_recorder(point)))
            recipe = recipe_for(block)
            if recipe is None:
                self.unmapped.append(point)
                continue
            self._recipes[point] = recipe
            self._taps[point] = {}
            modules = dict(block.named_modules())
            for tap in recipe.taps:
                if tap not in modules:
                    raise InputError(
                        f"attention map of {point} ({type(block).__name__}): "
                        f"the block has no submodule {tap!r}"
                    )
                self._handles.append(modules[tap].register_forward_hook(self._recorder(point, tap)))

    def _recorder(self, point: str, tap: str):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            # a copy: the tensor could be reused in place later in the forward pass
            self._taps[point][tap] = output.detach().clone()

        return hook

    def _shape_recorder(self, point: str):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            self._shapes[point] = output.shape

        return hook

    def remove(self) -> None:
        """Removes every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def maps(self) -> list[dict[str, RawMaps]]:
        """Per image of the last forward pass, point -> its ``RawMaps`` (points in the model's
        order; those without a recipe are absent). Empty before any forward pass and for a
        model without attention blocks.

        Raises:
            ValueError: a recipe returned maps of the wrong shape (names the point).
        """
        if not self._shapes:
            return []
        batch = next(iter(self._shapes.values()))[0]
        per_image: list[dict[str, RawMaps]] = [{} for _ in range(batch)]
        for point, recipe in self._recipes.items():
            if point not in self._shapes:
                continue
            shape = self._shapes[point]
            spatial, channels = recipe.build(self._taps[point], shape)
            spatial = _to_numpy(spatial, (shape[0], shape[2], shape[3]), point, "spatial")
            channels = _to_numpy(channels, (shape[0], shape[1]), point, "channel")
            for i in range(batch):
                per_image[i][point] = RawMaps(
                    block=self._block_name or type(self._blocks[point]).__name__,
                    spatial=None if spatial is None else spatial[i],
                    channels=None if channels is None else channels[i],
                    spatial_kind=recipe.spatial_kind if spatial is not None else "",
                )
        return per_image


def _to_numpy(
    t: torch.Tensor | None, expected: tuple[int, ...], point: str, what: str
) -> np.ndarray | None:
    if t is None:
        return None
    if tuple(t.shape) != expected:
        raise InputError(f"{point}: {what} map of shape {tuple(t.shape)}, expected {expected}")
    return t.float().cpu().numpy()


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[AttentionCapture]:
    """Hooks ``model``'s attention blocks for the duration of the ``with`` block::

        with capture_attention(model) as capture:
            outputs = model(x)
        maps = capture.maps()  # [{point: RawMaps}] per image

    The hooks are removed on leaving, also when the forward pass raises.
    """
    capture = AttentionCapture(model)
    try:
        capture._attach()
        yield capture
    finally:
        capture.remove()


@dataclass(frozen=True)
class AttentionMap:
    """One attention block's maps for one image.

    Attributes:
        point: the insertion point (``feat1``, ``csp2``...).
        block: the block's registered name.
        spatial: (H, W) float32 at the point's resolution, covering the whole network input
            (letterbox padding included); None for channel-only blocks.
        channels: (C,) float32 channel weights in [0, 1]; None for spatial-only blocks.
        spatial_kind: what the spatial values are.
        input_size: the network input side the map covers.
        meta: how the original image was resized onto that input.
    """

    point: str
    block: str
    spatial: np.ndarray | None
    channels: np.ndarray | None
    spatial_kind: str
    input_size: int
    meta: ResizeMeta

    @property
    def stride(self) -> float:
        """Input pixels per map cell."""
        if self.spatial is None:
            raise InputError(f"{self.point} ({self.block}) has no spatial map")
        return self.input_size / self.spatial.shape[1]

    def to_original(self) -> np.ndarray:
        """The spatial map on the original image's pixel grid: (height, width) float32, each
        pixel centre mapped through the resize and padding onto the map cells and
        interpolated bilinearly (values stay within the map's range).

        Raises:
            ValueError: the block has no spatial map.
        """
        if self.spatial is None:
            raise InputError(f"{self.point} ({self.block}) has no spatial map")
        meta = self.meta
        h, w = self.spatial.shape
        sx, sy = self.input_size / w, self.input_size / h
        # original pixel centre -> input pixel -> map cell coordinate (cell centres at k + 0.5)
        xs = ((np.arange(meta.width) + 0.5) * meta.scale_x + meta.pad_x) / sx - 0.5
        ys = ((np.arange(meta.height) + 0.5) * meta.scale_y + meta.pad_y) / sy - 0.5
        # bilinear = linear along y, then along x: two small matrix products, exact in float
        # (cv2.remap quantises the weights to 1/32 of a cell)
        spatial = self.spatial.astype(np.float32)
        return (_linear_weights(ys, h) @ spatial @ _linear_weights(xs, w).T).astype(np.float32)


def _linear_weights(coords: np.ndarray, n: int) -> np.ndarray:
    """(len(coords), n) float32: row r interpolates linearly between the two cells around
    ``coords[r]`` (clamped to the first and last cell)."""
    coords = np.clip(coords, 0, n - 1)
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    t = (coords - lo).astype(np.float32)
    weights = np.zeros((len(coords), n), np.float32)
    rows = np.arange(len(coords))
    np.add.at(weights, (rows, lo), 1 - t)
    np.add.at(weights, (rows, hi), t)
    return weights
