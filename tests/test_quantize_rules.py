"""Which nodes INT8 keeps in float, and the check of INT8 against float on held-out images
(utils/inference/quantize.py, the ``--int8`` export)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from nets.checkpoint import ModelInfo, save_checkpoint
from nets.decode import Geometry
from nets.yolo import YoloBody
from tools import export as export_tool
from utils.errors import InputError
from utils.inference.export import ExportConfig, ExportResult, export_onnx, parse_float_groups
from utils.inference.onnx_runner import onnx_metadata
from utils.inference.quantize import (
    DEFAULT_FLOAT,
    TARGET_LOSS,
    HeldOutCheck,
    _ap,
    check_held_out,
    float_nodes,
    quantize_int8,
    split_holdout,
)

ATTENTION_OPS = {  # op types of each block's nodes that are not learned layers
    1: {"Sigmoid"},
    2: {"Sigmoid"},
    3: {"Sigmoid"},
    4: {"Sigmoid"},
    5: {"Sigmoid"},
    6: {"Sigmoid"},
    7: {"Sigmoid"},
    8: {"Softmax"},
}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("rules")
    out = {}
    for phi in range(9):
        torch.manual_seed(phi)
        meta = {"phi": phi, "class_names": ["a", "b", "c"]}
        path = folder / f"phi{phi}.onnx"
        out[phi] = export_onnx(YoloBody(3, phi), path, Geometry(input_size=64), metadata=meta)
    return out


def _images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}.jpg"
        # smooth blobs rather than noise: activations with a spread, as in photos
        small = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
        cv2.imwrite(str(path), cv2.resize(small, (112, 96), interpolation=cv2.INTER_CUBIC))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("phi", range(9))
def test_float_groups_pick_the_right_nodes(graphs, phi) -> None:
    graph = onnx.load(str(graphs[phi])).graph
    by_name = {n.name: n for n in graph.node}
    heads = float_nodes(graphs[phi], ["heads"])
    assert sorted(o for h in heads for o in by_name[h].output) == ["out16", "out32"]
    (first,) = float_nodes(graphs[phi], ["first"])
    assert by_name[first].input[0] == "images" and by_name[first].op_type == "Conv"
    early = float_nodes(graphs[phi], ["early"])
    early_convs = [n for n in early if by_name[n].op_type == "Conv"]
    assert early_convs[0] == first and len(early_convs) == 6  # stem 2 + the first CSP block 4
    attention = float_nodes(graphs[phi], ["attention"])
    assert not set(early) & set(attention)
    if phi == 0:
        assert attention == [] and float_nodes(graphs[phi], ["gates", "arith", "att_conv"]) == []
        return
    points = {name.split("/")[1] for name in attention}
    assert points == {"feat1_att", "feat2_att", "upsample_att"}  # the default points
    outside = [n.name for n in graph.node if n.name not in attention and n.op_type != "Identity"]
    assert not any("_att/" in name for name in outside)
    gates = {by_name[n].op_type for n in float_nodes(graphs[phi], ["gates"])}
    assert gates == ATTENTION_OPS[phi]
    learned = float_nodes(graphs[phi], ["att_conv"])
    weights = {t.name for t in graph.initializer}
    assert all(set(by_name[n].input) & weights for n in learned)
    if phi == 7:  # SimAM has no learned layer: its energy is arithmetic
        assert learned == [] and len(float_nodes(graphs[phi], ["arith"])) >= 9
    # the groups inside a block are disjoint and within "attention"
    parts = [set(float_nodes(graphs[phi], [g])) for g in ("gates", "arith", "att_conv")]
    assert sum(map(len, parts)) == len(set().union(*parts))
    assert set().union(*parts) <= set(attention)


def test_kept_groups_stay_float_in_the_int8_graph(graphs, tmp_path) -> None:
    calibration = _images(tmp_path / "calib", 3)
    out = quantize_int8(
        graphs[8],
        tmp_path / "int8.onnx",
        calibration,
        method="minmax",
        keep_float=("heads", "attention"),
    )
    graph = onnx.load(str(out)).graph
    weight_type = {t.name: t.data_type for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    attention = [n for n in convs if n.name.startswith(("/feat1_att/", "/feat2_att/"))]
    backbone = [n for n in convs if n.name.startswith("/backbone/")]
    assert attention and backbone
    assert all(weight_type.get(n.input[1]) == onnx.TensorProto.FLOAT for n in attention)
    # backbone weights arrive through DequantizeLinear of INT8 initializers
    producers = {o: n for n in graph.node for o in n.output}
    for conv in backbone:
        dequant = producers[conv.input[1]]
        assert dequant.op_type == "DequantizeLinear"
        assert weight_type[dequant.input[0]] == onnx.TensorProto.INT8
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    assert producers[softmax.input[0]].op_type != "DequantizeLinear"
    meta = onnx_metadata(out)["quantization"]
    assert meta["float_groups"] == ["heads", "attention"] and meta["float_nodes"] > 30
    with pytest.raises(ValueError, match="float groups"):
        quantize_int8(graphs[8], tmp_path / "x.onnx", calibration, keep_float=("softmax",))


def test_early_layers_stay_float_when_asked(graphs, tmp_path) -> None:
    images = _images(tmp_path / "calib", 3)
    keep = (*DEFAULT_FLOAT, "early")
    out = quantize_int8(graphs[4], tmp_path / "int8.onnx", images, method="minmax", keep_float=keep)
    assert onnx_metadata(out)["quantization"]["float_groups"] == list(keep)
    graph = onnx.load(str(out)).graph
    weight_type = {t.name: t.data_type for t in graph.initializer}
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    early = [n for n in float_nodes(graphs[4], ["early"]) if n in convs]
    assert early and all(
        weight_type.get(convs[n].input[1]) == onnx.TensorProto.FLOAT for n in early
    )
    later = convs["/backbone/resblock_body2/conv1/conv/Conv"]
    assert weight_type.get(later.input[1]) != onnx.TensorProto.FLOAT  # dequantized INT8
    assert ExportConfig(int8="calib", int8_float="heads, first,early").float_groups == keep
    with pytest.raises(ValueError, match="--int8-float"):
        ExportConfig(int8="calib", int8_float="heads,stem")
    assert parse_float_groups("heads,heads,first") == ("heads", "first")
    assert parse_float_groups(" auto ") == "auto"
    for empty in ("", ",", " , "):  # an empty shell variable: refused, not "nothing in float"
        with pytest.raises(ValueError, match="no group named; give auto or groups from"):
            parse_float_groups(empty)
    # INT8 settings without --int8 would be ignored: refused
    with pytest.raises(ValueError, match="--int8-float, --calib-method: INT8 settings"):
        ExportConfig(int8_float="heads", calib_method="minmax")


def test_a_check_with_nothing_to_compare_is_no_loss(tmp_path) -> None:
    # the float model found nothing at >= 0.25 on the held-out images; INT8's low-score boxes
    # would give AP50 0 ("100 points lost"), which says nothing about INT8
    held = {"images": 2, "float_boxes": 0, "found": 0, "ap50": 0.0}
    check = HeldOutCheck(**held)
    assert not check.compared and check.loss == 0.0
    assert check.describe().startswith("INT8 not checked: the float model detected nothing")
    info = ModelInfo(phi=0, phi_name="none", num_classes=3, class_names=["a", "b", "c"])
    cfg = ExportConfig(out=str(tmp_path / "m.onnx"), int8="calib")
    quant = {"method": "minmax", "calibration_images": 8, "held_out": held}
    lines = ExportResult((tmp_path / "m.onnx",), info, 64, cfg, quant).int8_check()
    assert lines == [check.describe()]


def test_ap_matches_a_brute_force_count() -> None:
    assert _ap(np.array([True, True]), 2) == 1.0
    assert _ap(np.array([], bool), 0) == 1.0 and _ap(np.array([False]), 0) == 0.0
    # hit, miss, hit of 4 labels: precision 1 up to recall 1/4, 2/3 up to 2/4
    assert _ap(np.array([True, False, True]), 4) == pytest.approx(0.25 + 0.25 * 2 / 3)
    assert _ap(np.array([False, True]), 1) == pytest.approx(0.5)


def test_split_holdout_keeps_every_fifth() -> None:
    paths = [f"{i}.jpg" for i in range(12)]
    calibrate, held = split_holdout(paths)
    assert held == ["4.jpg", "9.jpg"] and len(calibrate) == 10
    assert not set(held) & set(calibrate)
    assert split_holdout(paths[:4]) == (paths[:4], [])


def test_held_out_check_of_a_graph_against_itself_loses_nothing(graphs, tmp_path) -> None:
    images = _images(tmp_path / "held", 3)
    same = check_held_out(graphs[1], graphs[1], [*images, str(tmp_path / "gone.jpg")])
    assert same.images == 3  # the missing one skipped
    assert same.float_boxes > 0 and same.loss == 0 and same.found == same.float_boxes
    assert "points lost" in same.describe()


def _checkpoint(tmp_path: Path, phi: int) -> Path:
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    info = ModelInfo(phi=phi, phi_name=YoloBody(3, phi).phi_name, num_classes=3, class_names=names)
    weights = tmp_path / "w.pth"
    save_checkpoint(weights, YoloBody(3, phi), info)
    return weights


def test_export_int8_prints_the_held_out_cost(tmp_path, capsys) -> None:
    weights = _checkpoint(tmp_path, 1)
    _images(tmp_path / "calib", 6)
    out = tmp_path / "m.onnx"
    argv = ["--weights", str(weights), "--img-size", "64", "--out", str(out)]
    assert export_tool.main([*argv, "--int8", str(tmp_path / "calib")]) == 0
    printed = capsys.readouterr().out
    quant = onnx_metadata(out)["quantization"]
    assert quant["calibration_images"] == 5  # the 5th of 6 held out
    held = quant["held_out"]
    assert held["images"] == 1 and 0 <= held["ap50"] <= 1
    # auto: both methods with the default float groups; the early layers too only when
    # those missed the target on the held-out images; the least loss kept
    tried = quant["tried"]
    fast = {key: tried.pop(key) for key in ("minmax heads+first", "percentile heads+first")}
    if min(fast.values()) <= TARGET_LOSS:
        assert not tried and quant["float_groups"] == ["heads", "first"]
    else:
        assert set(tried) == {"minmax heads+first+early", "percentile heads+first+early"}
    kept = f"{quant['method']} {'+'.join(quant['float_groups'])}"
    assert {**fast, **tried}[kept] == min({**fast, **tried}.values())
    assert "on 1 held-out calibration images" in printed
    assert f"{100 * (1 - held['ap50']):.1f} points lost" in printed


def test_a_block_over_the_target_is_flagged(tmp_path) -> None:
    info = ModelInfo(phi=8, phi_name="nonlocal", num_classes=3, class_names=["a", "b", "c"])
    cfg = ExportConfig(out=str(tmp_path / "m.onnx"), int8="calib")
    held = {"images": 20, "float_boxes": 50, "found": 40, "ap50": 0.97}
    over = ExportResult(
        (tmp_path / "m.onnx",),
        info,
        64,
        cfg,
        {"method": "minmax", "calibration_images": 80, "held_out": held},
    )
    lines = over.int8_check()
    assert HeldOutCheck(**held).describe() == lines[0]
    assert lines[1].startswith("warning: INT8 of nonlocal lost 3.0 points")
    within = {**held, "ap50": 0.995}
    ok = ExportResult(over.paths, info, 64, cfg, {**over.quantization, "held_out": within})
    assert len(ok.int8_check()) == 1 and "warning" not in ok.describe()
    unchecked = ExportResult(
        over.paths, info, 64, cfg, {"method": "minmax", "calibration_images": 3}
    )
    assert "not checked" in unchecked.int8_check()[0]


def test_the_early_layers_kept_by_auto_are_said(tmp_path) -> None:
    info = ModelInfo(phi=4, phi_name="ca", num_classes=3, class_names=["a", "b", "c"])
    held = {"images": 20, "float_boxes": 50, "found": 50, "ap50": 0.998}
    quant = {
        "method": "minmax",
        "calibration_images": 80,
        "held_out": held,
        "float_groups": ["heads", "first", "early"],
        "tried": {
            "minmax heads+first": 2.4,
            "percentile heads+first": 1.9,
            "minmax heads+first+early": 0.2,
            "percentile heads+first+early": 0.6,
        },
    }
    cfg = ExportConfig(out=str(tmp_path / "m.onnx"), int8="calib")
    result = ExportResult((tmp_path / "m.onnx",), info, 64, cfg, quant)
    said = result.describe()
    assert "float: heads+first+early" in said
    assert "kept the early layers in float: without them INT8 lost 1.9 points" in said
    assert "--int8-float heads,first for the faster graph" in said
    quant_fast = {**quant, "float_groups": ["heads", "first"], "tried": {"minmax heads+first": 0}}
    assert "kept the early" not in ExportResult(result.paths, info, 64, cfg, quant_fast).describe()


def test_auto_float_groups_without_held_out_images_keep_the_default(graphs, tmp_path) -> None:
    graph, images = graphs[4], _images(tmp_path / "calib", 3)
    out = quantize_int8(graph, tmp_path / "int8.onnx", images, keep_float="auto")
    quant = onnx_metadata(out)["quantization"]
    assert quant["float_groups"] == list(DEFAULT_FLOAT) and "tried" not in quant
    with pytest.raises(InputError, match="give group names or auto"):
        quantize_int8(graph, tmp_path / "x.onnx", images, keep_float="fast")


def test_auto_starts_ca_at_its_measured_setting(tmp_path) -> None:
    torch.manual_seed(4)
    meta = {"phi": 4, "phi_name": "ca", "class_names": ["a", "b", "c"]}
    graph = export_onnx(
        YoloBody(3, 4), tmp_path / "ca.onnx", Geometry(input_size=64), metadata=meta
    )
    images = _images(tmp_path / "calib", 6)
    out = quantize_int8(
        graph, tmp_path / "int8.onnx", images[:5], keep_float="auto", check_paths=images[5:]
    )
    quant = onnx_metadata(out)["quantization"]
    assert quant["float_groups"] == [*DEFAULT_FLOAT, "early"] and quant["method"] == "minmax"
    assert "tried" not in quant  # one setting: no faster graph was tried first
    # float groups asked for are kept (CA's start is the auto setting only)
    plain = quantize_int8(graph, tmp_path / "f.onnx", images[:5], keep_float=DEFAULT_FLOAT)
    assert onnx_metadata(plain)["quantization"]["float_groups"] == list(DEFAULT_FLOAT)


def test_benchmark_per_phi_reports_every_phi(tmp_path, capsys) -> None:
    import json

    from voc_factory import CLASSES, make_split

    from benchmarks import int8 as benchmark_int8

    root, classes = make_split(tmp_path, num_train=6, num_test=2)
    for phi in (0, 8):
        torch.manual_seed(phi)
        net = YoloBody(len(CLASSES), phi)
        info = ModelInfo(
            phi=phi,
            phi_name=net.phi_name,
            num_classes=len(CLASSES),
            class_names=list(CLASSES),
            input_size=64,
        )
        save_checkpoint(tmp_path / f"phi{phi}.pth", net, info)
    report_path = tmp_path / "per_phi.json"
    argv = ["--per-phi", str(tmp_path / "phi{phi}.pth"), "--phis", "0", "8", "--data", "voc"]
    argv += ["--voc-root", str(root), "--classes", str(classes), "--calib-split", "2007:trainval"]
    argv += ["--out", str(tmp_path / "onnx"), "--json", str(report_path)]
    assert benchmark_int8.main(argv) == 0
    report = json.loads(report_path.read_text())
    assert set(report["phis"]) == {"0", "8"}
    assert report["phis"]["8"]["block"] == "nonlocal"
    assert report["phis"]["8"]["quantization"]["calibration_images"] == 5  # 1 of 6 held out
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line[:4].strip() in ("0", "8")]
    assert [r[1] for r in rows] == ["none", "nonlocal"]
    for row, phi in zip(rows, ("0", "8")):
        got = report["phis"][phi]
        assert float(row[4]) == pytest.approx(
            100 * (got["int8_voc12"] - got["fp32_voc12"]), abs=0.01
        )
        assert row[5] == ("ok" if float(row[4]) >= -1.0 else "OVER")


def test_a_block_measured_over_the_target_is_flagged_at_export(tmp_path, capsys) -> None:
    from utils.inference.quantize import MEASURED_LOSSES

    weights = _checkpoint(tmp_path, 4)  # CA: measured over the target on the demo set
    _images(tmp_path / "calib", 2)
    out = tmp_path / "ca.onnx"
    argv = ["--weights", str(weights), "--img-size", "64", "--out", str(out)]
    int8 = ["--int8", str(tmp_path / "calib")]
    # the default keeps CA's early layers in float, as measured, and says why
    assert export_tool.main([*argv, *int8]) == 0
    printed = capsys.readouterr().out
    assert "kept the early layers in float: without them CA's INT8 lost 1.7-4.1" in printed
    assert "warning" not in printed
    assert "INT8 not checked" in printed  # 2 images: none held out
    # the faster graph asked for: warned with the measured loss and the remedy
    assert export_tool.main([*argv, *int8, "--int8-float", "heads,first"]) == 0
    printed = capsys.readouterr().out
    assert f"without the early layers in float lost {MEASURED_LOSSES['ca']}" in printed
    assert "--int8-float heads,first,early keeps them" in printed
    assert export_tool.main([*argv[:-1], str(tmp_path / "fp32.onnx")]) == 0
    assert "warning" not in capsys.readouterr().out  # float exports are not flagged
