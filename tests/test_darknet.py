"""Darknet weights: official load, errors, export round trip, and OpenCV DNN as the reference."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from nets.checkpoint import CheckpointMismatchError, load_model
from nets.darknet import (
    DarknetFormatError,
    darknet_layers,
    export_darknet,
    load_darknet_weights,
    save_darknet_weights,
)
from nets.decode import Geometry, cxcywh_to_xyxy, decode_outputs
from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK, YoloBody
from utils.inference.predictor import Detector, InferenceConfig


def _randomize(model: YoloBody, seed: int = 0) -> YoloBody:
    """Non-trivial weights and batch-norm statistics, so a round trip checks every array."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    return model.eval()


def test_darknet_layer_order_has_21_convs() -> None:
    layers = darknet_layers(YoloBody(80))
    assert len(layers) == 21
    assert [bn is None for _, _, bn in layers].count(True) == 2  # the two output convs


def test_official_weights_full_load_and_bit_exact_export(official_weights, tmp_path) -> None:
    model = YoloBody(80)
    report = load_darknet_weights(model, official_weights)
    assert len(report.loaded) == 21 and not report.skipped
    assert report.version == (0, 2, 5)
    out = tmp_path / "roundtrip.weights"
    save_darknet_weights(model, out, version=report.version, seen=report.seen)
    assert out.read_bytes() == Path(official_weights).read_bytes()


def test_official_weights_other_class_count_skips_output_convs(official_weights) -> None:
    full, voc = YoloBody(80), YoloBody(20, "cbam")
    load_darknet_weights(full, official_weights)
    before = {k: v.clone() for k, v in voc.state_dict().items()}
    report = load_darknet_weights(voc, official_weights)
    assert report.file_num_classes == 80
    assert set(report.skipped) == {
        "yolo_headP5.1",
        "yolo_headP4.1",
        "feat1_att",
        "feat2_att",
        "upsample_att",
    }
    assert "80 classes" in report.skipped["yolo_headP5.1"]
    for key, value in voc.state_dict().items():
        if key.startswith(("yolo_headP5.1", "yolo_headP4.1")) or "_att" in key:
            assert torch.equal(value, before[key]), key  # untouched
        else:
            assert torch.equal(value, full.state_dict()[key]), key


@pytest.mark.parametrize(("num_classes", "phi_ok"), [(3, True), (80, True)])
def test_export_then_load_is_bit_exact(tmp_path, num_classes, phi_ok) -> None:
    src = _randomize(YoloBody(num_classes), seed=num_classes)
    export_darknet(src, tmp_path / "m.weights", tmp_path / "m.cfg", Geometry(input_size=160))
    dst = YoloBody(num_classes)
    report = load_darknet_weights(dst, tmp_path / "m.weights")
    assert not report.skipped
    for key, value in src.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, dst.state_dict()[key]), key


def test_old_header_with_int32_seen(tmp_path) -> None:
    src = _randomize(YoloBody(2))
    save_darknet_weights(src, tmp_path / "old.weights", version=(0, 1, 0), seen=12345)
    raw = (tmp_path / "old.weights").read_bytes()
    assert np.frombuffer(raw, np.int32, 4, 0).tolist() == [0, 1, 0, 12345]
    report = load_darknet_weights(dst := YoloBody(2), tmp_path / "old.weights")
    assert report.seen == 12345
    assert torch.equal(dst.yolo_headP4[1].weight, src.yolo_headP4[1].weight)


def test_export_refuses_attention(tmp_path) -> None:
    with pytest.raises(ValueError, match="only phi 0"):
        save_darknet_weights(YoloBody(3, "se"), tmp_path / "x.weights")


@pytest.fixture
def small_weights(tmp_path) -> Path:
    path = tmp_path / "small.weights"
    save_darknet_weights(_randomize(YoloBody(3)), path)
    return path


def test_truncated_file_is_reported(small_weights) -> None:
    raw = small_weights.read_bytes()
    small_weights.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DarknetFormatError, match="truncated") as err:
        load_darknet_weights(YoloBody(3), small_weights)
    assert str(small_weights) in str(err.value)


def test_leftover_bytes_are_reported(small_weights) -> None:
    small_weights.write_bytes(small_weights.read_bytes() + b"\0" * 12)
    with pytest.raises(DarknetFormatError, match="leftover") as err:
        load_darknet_weights(YoloBody(3), small_weights)
    assert str(small_weights) in str(err.value)


def test_wrong_header_is_reported(small_weights) -> None:
    raw = bytearray(small_weights.read_bytes())
    raw[0:4] = np.array([1234], np.int32).tobytes()
    small_weights.write_bytes(bytes(raw))
    with pytest.raises(DarknetFormatError, match="not a darknet weights file"):
        load_darknet_weights(YoloBody(3), small_weights)


def test_tiny_file_is_reported(tmp_path) -> None:
    path = tmp_path / "tiny.weights"
    path.write_bytes(b"\0" * 8)
    with pytest.raises(DarknetFormatError, match="too short"):
        load_darknet_weights(YoloBody(3), path)


def _opencv_rows_in_our_order(outs: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """OpenCV orders rows (cell, anchor); ours (anchor, cell). Reorder OpenCV's to ours."""
    rows = []
    for out, side in zip(outs, sizes):
        rows.append(
            out.reshape(side, side, 3, -1).transpose(2, 0, 1, 3).reshape(3 * side * side, -1)
        )
    return np.concatenate(rows)


def _raw_compare(model: YoloBody, net: cv2.dnn.Net, image: np.ndarray, size: int, anchors_mask):
    blob = cv2.dnn.blobFromImage(image, 1 / 255.0, (size, size), swapRB=True, crop=False)
    net.setInput(blob)
    outs = net.forward(net.getUnconnectedOutLayersNames())
    with torch.no_grad():
        geometry = Geometry(anchors=DEFAULT_ANCHORS, anchors_mask=anchors_mask, input_size=size)
        ours = decode_outputs(model(torch.from_numpy(blob)), geometry)
    ours = ours[0].numpy()
    ref = _opencv_rows_in_our_order(list(outs), [size // 32, size // 16])
    return ours, ref


@pytest.mark.parametrize("index", [0, 1])
def test_official_weights_match_opencv_dnn(official_weights, official_cfg, sample_images, index):
    image = cv2.imread(str(sample_images[index]))
    model, _ = load_model(official_weights)
    model.eval()
    net = cv2.dnn.readNetFromDarknet(str(official_cfg), str(official_weights))
    ours, ref = _raw_compare(model, net, image, 416, DEFAULT_ANCHORS_MASK)
    assert ours.shape == ref.shape == (3 * (13 * 13 + 26 * 26), 85)
    # Before NMS: boxes (normalised cx, cy, w, h) and objectness.
    assert np.abs(ours[:, :4] / 416 - ref[:, :4]).max() <= 1e-3
    assert np.abs(ours[:, 4] - ref[:, 4]).max() <= 1e-3
    # OpenCV stores obj * cls and zeroes values at or below its 0.2 region threshold.
    class_scores = ours[:, 5:] * ours[:, 4:5]
    kept = ref[:, 5:] > 0
    assert kept.sum() > 0
    assert np.abs(class_scores[kept] - ref[:, 5:][kept]).max() <= 1e-3
    assert class_scores[~kept].max() <= 0.2 + 1e-3

    # After NMS. Reference: OpenCV's rows, its best class per row, its per-class NMS on float
    # boxes (NMSBoxesBatched). DetectionModel itself rounds boxes to int pixels, so it is
    # compared below with a one-pixel tolerance instead of by IoU.
    h, w = image.shape[:2]
    cls_best, score_best = ref[:, 5:].argmax(1), ref[:, 5:].max(1)
    cand = np.flatnonzero(score_best >= 0.25)
    cx, cy, bw, bh = (ref[cand, i] for i in range(4))
    rects = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h], 1)
    keep = cv2.dnn.NMSBoxesBatched(
        rects.tolist(), score_best[cand].tolist(), cls_best[cand].tolist(), 0.25, 0.45
    )
    keep = cand[np.ravel(keep).astype(int)]
    ref_xyxy = cxcywh_to_xyxy(torch.from_numpy(ref[keep, :4] * [w, h, w, h])).numpy()
    ref_xyxy[:, 0::2] = ref_xyxy[:, 0::2].clip(0, w - 1)
    ref_xyxy[:, 1::2] = ref_xyxy[:, 1::2].clip(0, h - 1)

    info = load_model(official_weights)[1]
    config = InferenceConfig(letterbox=False, conf_thresh=0.25, nms_thresh=0.45)
    dets = Detector(model, info, class_names=[str(i) for i in range(80)], config=config)(image)
    assert len(dets) == len(keep) > 0
    iou = box_iou(torch.from_numpy(ref_xyxy), torch.from_numpy(dets.boxes)).numpy()
    matched = []
    for i, (cls, score) in enumerate(zip(cls_best[keep], score_best[keep])):
        same = np.flatnonzero(dets.labels == cls)
        assert same.size, f"OpenCV class {cls} missing from ours"
        j = same[np.argmax(iou[i, same])]
        assert iou[i, j] >= 0.98, (cls, iou[i, j])
        assert abs(dets.scores[j] - score) <= 0.01
        matched.append(j)
    assert sorted(matched) == list(range(len(dets)))  # one to one

    dm = cv2.dnn_DetectionModel(net)
    dm.setInputParams(size=(416, 416), scale=1 / 255.0, swapRB=True)
    cv_ids, cv_scores, cv_boxes = dm.detect(image, confThreshold=0.25, nmsThreshold=0.45)
    assert sorted(np.ravel(cv_ids).tolist()) == sorted(dets.labels.tolist())
    for cls, score, (x, y, bw_px, bh_px) in zip(np.ravel(cv_ids), np.ravel(cv_scores), cv_boxes):
        box = np.array([x, y, x + bw_px, y + bh_px], np.float32)
        box[0::2], box[1::2] = box[0::2].clip(0, w - 1), box[1::2].clip(0, h - 1)
        err = np.abs(dets.boxes[dets.labels == cls] - box).max(1)
        assert err.min() <= 2.0  # int truncation of position and size
        assert np.abs(dets.scores[dets.labels == cls] - score).min() <= 0.01


def test_exported_cfg_and_weights_run_in_opencv(tmp_path, sample_images) -> None:
    """Our cfg writer + weights writer give a network OpenCV runs with our model's outputs."""
    model = _randomize(YoloBody(3), seed=7)
    export_darknet(model, tmp_path / "m.weights", tmp_path / "m.cfg", Geometry(input_size=160))
    net = cv2.dnn.readNetFromDarknet(str(tmp_path / "m.cfg"), str(tmp_path / "m.weights"))
    image = cv2.imread(str(sample_images[0]))
    ours, ref = _raw_compare(model, net, image, 160, DEFAULT_ANCHORS_MASK)
    assert ours.shape == ref.shape == (3 * (5 * 5 + 10 * 10), 8)
    assert np.abs(ours[:, :4] / 160 - ref[:, :4]).max() <= 1e-3
    assert np.abs(ours[:, 4] - ref[:, 4]).max() <= 1e-3


def test_inference_refuses_darknet_weights_for_another_model(official_weights) -> None:
    """Output layers or attention that would stay random are an error for inference."""
    with pytest.raises(CheckpointMismatchError, match=r"80 classes.*20 classes.*train\.py"):
        load_model(official_weights, num_classes=20)
    with pytest.raises(CheckpointMismatchError, match=r"phi 2 \(cbam\)"):
        load_model(official_weights, phi="cbam")


def test_header_cut_inside_seen_is_reported(tmp_path) -> None:
    path = tmp_path / "cut.weights"
    path.write_bytes(np.array([0, 2, 5, 0], np.int32).tobytes()[:18])
    with pytest.raises(DarknetFormatError, match="too short"):
        load_darknet_weights(YoloBody(3), path)
