"""Decoding, letterbox geometry and NMS."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from nets.decode import (
    SCALE_X_Y,
    Geometry,
    cxcywh_to_xyxy,
    decode_candidates,
    decode_outputs,
    detect,
    detect_batch,
    postprocess,
)
from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK
from utils.detections import Detections
from utils.preprocess import (
    PAD_VALUE,
    boxes_to_input,
    boxes_to_original,
    boxes_to_original_many,
    resize_image,
)

ANCHORS = [(10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)]
MASK = [(3, 4, 5), (1, 2, 3)]


def geometry(size: int) -> Geometry:
    return Geometry(anchors=ANCHORS, anchors_mask=MASK, input_size=size)


def _empty_maps(num_classes: int, size: int) -> list[torch.Tensor]:
    ch = 3 * (5 + num_classes)
    # Very negative logits: objectness and classes ~ 0 everywhere.
    return [torch.full((1, ch, size // s, size // s), -20.0) for s in (32, 16)]


def test_decode_hand_built_map() -> None:
    size, nc = 64, 2  # levels 2x2 (stride 32) and 4x4 (stride 16)
    maps = _empty_maps(nc, size)
    # Level 1 (stride 16), anchor slot 2 (= anchor 3: 81x82), row 3, column 1.
    base = 2 * (5 + nc)
    maps[1][0, base + 0, 3, 1] = 0.0  # sigmoid 0.5 -> cell centre
    maps[1][0, base + 1, 3, 1] = 10.0  # sigmoid ~1 -> 1.025 of a cell with scale_x_y
    maps[1][0, base + 2, 3, 1] = math.log(2.0)
    maps[1][0, base + 3, 3, 1] = 0.0
    maps[1][0, base + 4, 3, 1] = 3.0
    maps[1][0, base + 5 + 1, 3, 1] = 1.0
    dec = decode_outputs(maps, geometry(size))
    assert dec.shape == (1, 3 * 4 + 3 * 16, 5 + nc)
    index = 3 * 4 + 2 * 16 + 3 * 4 + 1  # level-0 rows, then (anchor, row, column)
    row = dec[0, index]
    sig10 = 1 / (1 + math.exp(-10))
    expected_cy = (sig10 * SCALE_X_Y - (SCALE_X_Y - 1) / 2 + 3) * 16
    torch.testing.assert_close(row[0], torch.tensor((0.5 + 1) * 16.0))
    torch.testing.assert_close(row[1], torch.tensor(expected_cy))
    assert row[1] > 4 * 16  # scale_x_y lets the centre leave its cell
    torch.testing.assert_close(row[2], torch.tensor(162.0))
    torch.testing.assert_close(row[3], torch.tensor(82.0))
    torch.testing.assert_close(row[4], torch.sigmoid(torch.tensor(3.0)))
    torch.testing.assert_close(row[6], torch.sigmoid(torch.tensor(1.0)))
    # Every other row has ~zero objectness.
    others = torch.cat([dec[0, :index, 4], dec[0, index + 1 :, 4]])
    assert others.max() < 1e-8

    result = postprocess(dec, conf_thresh=0.25, input_size=size)[0]
    assert isinstance(result, Detections) and (result.width, result.height) == (size, size)
    assert result.labels.tolist() == [1]
    cx, cy, w, h = row[:4].tolist()
    torch.testing.assert_close(
        torch.from_numpy(result.boxes[0]),
        torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]),
    )
    torch.testing.assert_close(torch.from_numpy(result.scores)[0], row[4] * row[6])


def test_decode_non_square_uses_per_axis_stride() -> None:
    maps = [torch.zeros(1, 3 * 6, 2, 4), torch.zeros(1, 3 * 6, 4, 8)]
    dec = decode_outputs(maps, geometry(128))
    # Anchor 0 of level 0 at row 1, column 3: centre ((0.5 + 3) * 32, (0.5 + 1) * 128 / 2... )
    row = dec[0, 1 * 4 + 3]
    assert row[0].item() == pytest.approx(3.5 * 32)
    assert row[1].item() == pytest.approx(1.5 * 64)


def _random_maps(batch: int, num_classes: int, size: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ch = 3 * (5 + num_classes)
    maps = [torch.randn(batch, ch, size // s, size // s, generator=g) * 3 for s in (32, 16)]
    for m in maps:  # objectness mostly low, as from a trained model
        m.view(batch, 3, -1, *m.shape[2:])[:, :, 4] -= 4
    return maps


@pytest.mark.parametrize("conf", [0.0, 0.001, 0.25, 0.9])
def test_decode_candidates_equal_filtered_decode_outputs(conf: float) -> None:
    maps = _random_maps(batch=3, num_classes=4, size=128, seed=1)
    maps[0][1] = -30.0  # image 1 has no candidate on level 0
    full = decode_outputs(maps, geometry(128))
    candidates = decode_candidates(maps, geometry(128), min_objectness=conf)
    assert len(candidates) == 3
    for image in range(3):
        expected = full[image][full[image][:, 4] >= conf]
        torch.testing.assert_close(candidates[image], expected, rtol=1e-6, atol=1e-5)
    if conf == 0.0:
        assert all(len(c) == full.shape[1] for c in candidates)


@pytest.mark.parametrize(("agnostic", "classes"), [(False, None), (True, None), (False, (1, 3))])
def test_detect_equals_postprocess_of_full_decode(agnostic, classes) -> None:
    maps = _random_maps(batch=2, num_classes=4, size=160, seed=2)
    for conf in (0.01, 0.25):
        options = dict(
            conf_thresh=conf, nms_thresh=0.45, max_det=300, agnostic=agnostic, classes=classes
        )
        ours = detect(maps, geometry(160), **options)
        full = decode_outputs(maps, geometry(160))
        expected = postprocess(full, **options, input_size=160)
        assert any(len(r.scores) for r in expected)
        for a, b in zip(ours, expected):
            assert (a.width, a.height) == (b.width, b.height) == (160, 160)
            assert a.labels.tolist() == b.labels.tolist()
            torch.testing.assert_close(a.boxes, b.boxes)
            torch.testing.assert_close(a.scores, b.scores)


@pytest.mark.parametrize(("max_det", "agnostic"), [(None, False), (7, False), (None, True)])
def test_detect_batch_equals_detect_bit_for_bit(max_det, agnostic) -> None:
    """Evaluation's batched path gives ``detect``'s detections exactly (same floats, same
    order): on a batch that takes both of ``batched_nms``'s paths (above and below 1,000
    boxes), has an image without candidates, and ties in score."""
    maps = _random_maps(batch=4, num_classes=3, size=416, seed=3)
    for m in maps:
        obj = m.view(4, 3, -1, *m.shape[2:])[:, :, 4]
        obj[1] = -30.0  # no candidate at all
        obj[2] -= 4.0  # a few hundred candidates
        m[3] = m[3].clamp(min=0) * 40  # saturated sigmoids: many scores exactly 1.0
    options = dict(conf_thresh=0.001, nms_thresh=0.5, max_det=max_det, agnostic=agnostic)
    per_image = detect(maps, geometry(416), **options)
    counts = [len(d) for d in per_image]
    assert counts[1] == 0 and min(counts[0], counts[2], counts[3]) > 0
    candidates = [len(c) for c in decode_candidates(maps, geometry(416), min_objectness=0.001)]
    assert candidates[0] > 1000 > candidates[2] > 0
    assert (per_image[3].scores == 1.0).sum() > 1
    flat = detect_batch(maps, geometry(416), **options)
    assert len(flat) == sum(counts)
    assert flat.image.tolist() == np.repeat(np.arange(4), counts).tolist()
    for name in ("boxes", "scores", "labels"):
        expected = np.concatenate([getattr(d, name) for d in per_image])
        assert getattr(flat, name).dtype == expected.dtype
        assert np.array_equal(getattr(flat, name), expected), name


def test_detect_batch_without_any_candidate() -> None:
    flat = detect_batch(_empty_maps(2, 64), geometry(64), conf_thresh=0.25)
    assert len(flat) == 0 and flat.boxes.shape == (0, 4) and flat.image.shape == (0,)


@pytest.mark.parametrize(("w", "h"), [(200, 100), (100, 200), (160, 160), (333, 517)])
def test_letterbox_geometry_and_round_trip(w: int, h: int) -> None:
    image = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = w // 4, h // 3, w // 2, (2 * h) // 3
    image[y1 : y2 + 1, x1 : x2 + 1] = 255
    canvas, meta = resize_image(image, 160, letterbox=True)
    assert canvas.shape == (160, 160, 3)
    assert abs(meta.scale_x - meta.scale_y) < 0.02  # aspect ratio kept
    if meta.pad_y:
        assert (canvas[: meta.pad_y] == PAD_VALUE).all()
    if meta.pad_x:
        assert (canvas[:, : meta.pad_x] == PAD_VALUE).all()
    box = torch.tensor([[x1, y1, x2 + 1, y2 + 1]], dtype=torch.float32)  # pixel edges
    mapped = boxes_to_input(box, meta)[0]
    ys, xs = np.nonzero(canvas[..., 0] > 200)
    found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    assert (mapped - found).abs().max() <= 1.5  # where the white square really landed
    back = boxes_to_original(boxes_to_input(box, meta), meta, clip=False)
    torch.testing.assert_close(back, box)


def test_plain_resize_meta() -> None:
    canvas, meta = resize_image(np.zeros((100, 300, 3), np.uint8), 96, letterbox=False)
    assert canvas.shape == (96, 96, 3)
    assert (meta.scale_x, meta.scale_y, meta.pad_x, meta.pad_y) == (96 / 300, 96 / 100, 0, 0)
    box = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    torch.testing.assert_close(boxes_to_original(boxes_to_input(box, meta), meta), box)


def test_boxes_are_clipped_to_zero_based_pixels() -> None:
    _, meta = resize_image(np.zeros((50, 80, 3), np.uint8), 64, letterbox=True)
    out = boxes_to_original(torch.tensor([[-30.0, -30.0, 500.0, 500.0]]), meta)
    assert out.tolist() == [[0.0, 0.0, 79.0, 49.0]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_boxes_to_original_many_equals_one_call_per_image(dtype) -> None:
    rng = np.random.default_rng(0)
    metas = [
        resize_image(np.zeros((h, w, 3), np.uint8), 416, letterbox=letterbox)[1]
        for w, h, letterbox in [
            (333, 517, True),
            (160, 320, True),
            (97, 61, False),
            (416, 416, True),
        ]
    ]
    image = np.sort(rng.integers(0, len(metas), 400))
    boxes = rng.uniform(-40, 460, (400, 4)).astype(dtype)  # some outside: clipped
    many = boxes_to_original_many(boxes, image, metas)
    assert many.dtype == dtype
    for k, meta in enumerate(metas):
        expected = boxes_to_original(boxes[image == k], meta)
        assert np.array_equal(many[image == k], expected)
    assert np.array_equal(many, np.clip(many, 0, None)) and many.max() <= 516
    empty = boxes_to_original_many(np.zeros((0, 4), dtype), np.zeros(0, np.int64), metas)
    assert empty.shape == (0, 4)


def _candidates(rows: list[list[float]], num_classes: int = 3) -> torch.Tensor:
    """rows: cx, cy, w, h, obj, class id, class prob -> (1, N, 5 + C)."""
    out = torch.zeros(1, len(rows), 5 + num_classes)
    for i, (cx, cy, w, h, obj, cls, prob) in enumerate(rows):
        out[0, i, :5] = torch.tensor([cx, cy, w, h, obj])
        out[0, i, 5 + int(cls)] = prob
    return out


def test_nms_is_class_wise_by_default_and_agnostic_on_request() -> None:
    dec = _candidates(
        [
            [50, 50, 40, 40, 0.9, 0, 1.0],  # kept
            [52, 50, 40, 40, 0.8, 0, 1.0],  # same class, IoU ~0.9: suppressed
            [51, 50, 40, 40, 0.7, 1, 1.0],  # other class: kept class-wise, not agnostic
            [150, 150, 20, 20, 0.6, 0, 1.0],  # far away: kept
        ]
    )
    res = postprocess(dec, conf_thresh=0.25, nms_thresh=0.45)[0]
    assert res.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert res.labels.tolist() == [0, 1, 0]
    res = postprocess(dec, conf_thresh=0.25, nms_thresh=0.45, agnostic=True)[0]
    assert res.scores.tolist() == pytest.approx([0.9, 0.6])


def test_score_is_objectness_times_best_class_and_threshold_applies() -> None:
    dec = _candidates([[50, 50, 10, 10, 0.5, 2, 0.6], [90, 90, 10, 10, 0.5, 1, 0.4]])
    res = postprocess(dec, conf_thresh=0.25)[0]
    assert res.scores.tolist() == pytest.approx([0.3])
    assert res.labels.tolist() == [2]


def test_classes_filter_and_max_det() -> None:
    rows = [[20.0 * i + 10, 10, 8, 8, 0.9 - 0.01 * i, i % 3, 1.0] for i in range(9)]
    dec = _candidates(rows)
    res = postprocess(dec, conf_thresh=0.1, classes=[1])[0]
    assert res.labels.tolist() == [1, 1, 1]
    res = postprocess(dec, conf_thresh=0.1, max_det=4)[0]
    assert len(res.scores) == 4
    assert res.scores.tolist() == sorted(res.scores.tolist(), reverse=True)


def test_nothing_above_threshold_gives_empty_results() -> None:
    res = postprocess(_candidates([[10, 10, 5, 5, 0.01, 0, 0.5]]), conf_thresh=0.25)[0]
    assert res.boxes.shape == (0, 4) and res.scores.shape == (0,) and len(res) == 0


def test_cxcywh_to_xyxy() -> None:
    out = cxcywh_to_xyxy(torch.tensor([[10.0, 20.0, 4.0, 6.0]]))
    assert out.tolist() == [[8.0, 17.0, 12.0, 23.0]]


def test_geometry_is_immutable_and_resizable() -> None:
    g = geometry(160)
    assert g.anchors == tuple(ANCHORS) and g.anchors_mask == tuple(MASK)
    assert g.at_size(None) is g and g.at_size(160) is g
    assert g.at_size(320).input_size == 320 and g.input_size == 160
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.input_size = 320  # type: ignore[misc]
    assert hash(g) == hash(geometry(160))
    assert Geometry() == Geometry(
        anchors=DEFAULT_ANCHORS, anchors_mask=DEFAULT_ANCHORS_MASK, input_size=416
    )


def test_detections_to_original_maps_clips_and_keeps_the_input() -> None:
    _, meta = resize_image(np.zeros((50, 80, 3), np.uint8), 64, letterbox=True)
    boxes = np.array([[-30.0, -30.0, 500.0, 500.0], [8.3, 16.7, 40.1, 47.9]], np.float32)
    dets = Detections(
        boxes=boxes.copy(),
        scores=np.array([0.9, 0.5], np.float32),
        labels=np.array([1, 0]),
        class_names=("a", "b"),
        width=64,
        height=64,
    )
    out = dets.to_original(meta)
    assert (out.width, out.height) == (80, 50) and out.names == ["b", "a"]
    assert out.boxes.dtype == np.float32 and out.boxes[0].tolist() == [0.0, 0.0, 79.0, 49.0]
    # numpy and torch boxes map to the same float32 values
    expected = boxes_to_original(torch.from_numpy(boxes), meta).numpy()
    np.testing.assert_array_equal(out.boxes, expected)
    np.testing.assert_array_equal(dets.boxes, boxes)  # the input-pixel detections are kept
    assert out.scores is dets.scores and out.labels is dets.labels


def test_detections_json_round_trip() -> None:
    dets = Detections(
        boxes=np.array([[1.234, 2.5, 30.0, 40.26], [0, 0, 5, 5]], np.float32),
        scores=np.array([0.123456, 0.05], np.float32),
        labels=np.array([2, 7]),
        class_names=("a", "b", "c"),
    )
    rows = dets.to_json()
    assert rows[0] == {
        "xyxy": [1.23, 2.5, 30.0, 40.26],
        "score": 0.12346,
        "class_id": 2,
        "class_name": "c",
    }
    assert rows[1]["class_name"] == "7"  # no name for this id
    back = Detections.from_json(json.loads(json.dumps(rows)), class_names=dets.class_names)
    assert back.to_json() == rows
    assert back.boxes.shape == (2, 4) and back.labels.dtype == np.int64
    empty = Detections.from_json([], width=3, height=4)
    assert empty.boxes.shape == (0, 4) and len(empty) == 0 and empty.to_json() == []
    with pytest.raises(
        ValueError, match=r"^1 detection lacking xyxy, score or class_id \(row 0\)$"
    ):
        Detections.from_json([{"xyxy": [0, 0, 1, 1], "score": 0.5}])
