"""The number format of training (float32, bfloat16 on CPU, float16 on CUDA) and of
inference with ``--amp``, and ``--compile``: which one a machine gets, that autocast really
runs the convolutions in it while weights and outputs stay float32, that 16-bit inference
detects like float32, and that a compiled run trains like an eager one."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import exit_code
from voc_factory import make_split, tiny_train_config

import eval as eval_cli
from nets.checkpoint import ModelInfo
from nets.decode import Geometry
from nets.yolo import DEFAULT_ANCHORS, DEFAULT_ANCHORS_MASK, YoloBody
from utils import precision as precision_module
from utils.inference.predictor import Detector, InferenceConfig
from utils.precision import check_compiler, resolve_precision
from utils.training.config import TrainConfig
from utils.training.fit import fit
from utils.training.loop import TrainStep
from utils.training.loss import YoloLoss
from utils.training.optim import build_optimizer
from utils.training.setup import merge_resume

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
HAS_COMPILER = any(shutil.which(name) for name in ("c++", "g++", "clang++"))


@pytest.mark.parametrize(
    ("amp", "native", "device", "dtype", "warned"),
    [
        (None, True, CPU, torch.bfloat16, False),  # the default where it is fast
        (None, False, CPU, None, False),  # emulated bfloat16 is slower: float32
        (False, True, CPU, None, False),
        (True, True, CPU, torch.bfloat16, False),
        (True, False, CPU, torch.bfloat16, True),  # asked for: honoured, with a warning
        (None, True, CUDA, None, False),  # CUDA keeps float32 unless asked
        (True, True, CUDA, torch.float16, False),
        (False, False, CUDA, None, False),
    ],
)
def test_precision_per_machine(monkeypatch, amp, native, device, dtype, warned) -> None:
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    chosen = resolve_precision(amp, device)
    assert chosen.dtype == dtype
    assert bool(chosen.warning) == warned
    assert chosen.describe().startswith("precision: " + ("float32" if dtype is None else ""))


def _step(model: YoloBody, dtype: torch.dtype | None) -> TrainStep:
    model = copy.deepcopy(model).to(memory_format=torch.channels_last).train()
    geometry = Geometry(anchors=DEFAULT_ANCHORS, anchors_mask=DEFAULT_ANCHORS_MASK, input_size=96)
    criterion = YoloLoss(model.num_classes, geometry)
    step = TrainStep(model, criterion, build_optimizer(model, TrainConfig()), autocast_dtype=dtype)
    step.set_lr(0.01)
    return step


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8, generator=generator)
    targets = torch.tensor(
        [[0, 0, 10.0, 12.0, 50.0, 60.0], [0, 1, 40.0, 30.0, 90.0, 70.0], [1, 2, 5, 5, 30, 40]]
    )
    return images, targets


def test_bfloat16_step_convolves_in_bfloat16_and_keeps_float32_weights() -> None:
    torch.manual_seed(0)
    model = YoloBody(3, 0)
    images, targets = _batch()
    float32, bfloat16 = _step(model, None), _step(model, torch.bfloat16)
    seen: list[torch.dtype] = []
    first_conv = next(m for m in bfloat16.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    before = [p.detach().clone() for p in bfloat16.model.parameters()]

    reference, mixed = float32(images, targets), bfloat16(images, targets)

    assert seen == [torch.bfloat16]
    for loss_32, loss_16 in zip(reference, mixed):  # same loss up to bfloat16's 8-bit mantissa
        assert loss_16 == pytest.approx(loss_32, rel=3e-2)
    params = list(bfloat16.model.parameters())
    assert all(p.dtype == torch.float32 for p in params)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in params)
    assert any(not torch.equal(a, b) for a, b in zip(before, params))  # it did step
    assert not bfloat16.scaler.is_enabled()  # bfloat16 needs no loss scaling


def test_compile_without_a_compiler_is_one_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ValueError, match="--compile needs a C\\+\\+ compiler"):
        check_compiler()


def test_precision_and_compile_may_change_on_resume() -> None:
    saved = TrainConfig(amp=None, compile=False)
    asked = TrainConfig(resume="run/last.pth", amp=False, compile=True)
    merged = merge_resume(saved, asked, given={"resume", "amp", "compile"})
    assert (merged.amp, merged.compile) == (False, True)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_COMPILER, reason="torch.compile's inductor needs a C++ compiler")
def test_compiled_run_trains_like_an_eager_one(tmp_path) -> None:
    voc_root, classes = make_split(tmp_path / "voc", 6, 2)
    runs = {}
    for compiled in (False, True):
        cfg = tiny_train_config(
            voc_root,
            classes,
            log_dir=str(tmp_path / "logs"),
            name=f"compile_{compiled}",
            compile=compiled,
            amp=False,
            epochs=2,
            seed=1,
            lr=0.01,
        )
        runs[compiled] = fit(cfg)
    eager, compiled = runs[False].history, runs[True].history
    for a, b in zip(eager, compiled):  # inductor reorders float sums: close, not equal
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
    state = torch.load(runs[True].run_dir / "weights" / "last.pth", weights_only=False)
    assert not any("_orig_mod" in key for key in state["model"])  # the bare model's keys


def _detector(weights, amp: bool) -> Detector:
    return Detector.from_weights(str(weights), config=InferenceConfig(device="cpu", amp=amp))


def test_inference_amp_runs_the_network_in_bfloat16_and_detects_like_float32(
    official_weights, sample_images
) -> None:
    exact, fast = _detector(official_weights, False), _detector(official_weights, True)
    assert exact.precision.dtype is None and fast.precision.dtype == torch.bfloat16
    seen = []
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    for path in sample_images:
        image = cv2.imread(str(path))
        batch, _ = fast.preprocess([image])
        assert all(o.dtype == torch.float32 for o in fast.forward(batch))  # decoded in float32
        want, got = exact(image), fast(image)
        assert got.names == want.names, path  # the same objects, best first
        assert np.abs(got.boxes - want.boxes).max() < 4.0, path  # pixels of a 1080-px photo
        assert np.abs(got.scores - want.scores).max() < 0.03, path
    assert seen and set(seen) == {torch.bfloat16}


def test_inference_amp_is_refused_for_an_onnx_graph() -> None:
    with pytest.raises(ValueError, match="--amp runs the torch backend"):
        InferenceConfig(backend="onnxruntime", amp=True)
    info = ModelInfo(phi=0, phi_name="none", num_classes=1)
    with pytest.raises(ValueError, match="--amp runs the torch backend"):
        Detector(None, info, class_names=["a"], config=InferenceConfig(amp=True), runner=print)


@pytest.mark.slow
def test_eval_amp_scores_like_float32_and_says_so(
    tmp_path, trained_tiny_checkpoint, capsys
) -> None:
    root, classes, weights = trained_tiny_checkpoint(epochs=3)
    args = ["--weights", weights, "--voc-root", str(root), "--classes", str(classes)]
    args += ["--split", "2007:test", "--device", "cpu", "--no-coco", "--workers", "0"]
    maps = {}
    for flag in ("--no-amp", "--amp"):
        out = tmp_path / flag.strip("-")
        assert eval_cli.main([*args, flag, "--save-dir", str(out), "--json", f"{out}.json"]) == 0
        maps[flag] = json.loads(Path(f"{out}.json").read_text())["voc12_map50"]
        protocol = next(line for line in capsys.readouterr().out.splitlines() if "IoU" in line)
        assert ("bfloat16 autocast" in protocol) == (flag == "--amp"), protocol
    assert maps["--amp"] == pytest.approx(maps["--no-amp"], abs=0.05)


def test_amp_where_it_cannot_apply_is_refused_before_any_work(tmp_path, capsys) -> None:
    import predict

    onnx = str(tmp_path / "m.onnx")
    assert exit_code(predict.main, ["--export-onnx", onnx, "--amp"]) == 2
    assert "--export-onnx writes a float32 graph" in capsys.readouterr().err
    assert not Path(onnx).exists()
    # the .pth would be evaluated first: the mix is refused before it is read
    args = ["--data", "demo", "--amp", "--save-dir", str(tmp_path / "out")]
    assert exit_code(eval_cli.main, [*args, "--weights", tmp_path / "a.pth", onnx]) == 2
    assert f"error: {onnx}: --amp runs the torch backend" in capsys.readouterr().err
    assert exit_code(eval_cli.main, [*args, "--detections", tmp_path / "d.json"]) == 2
    assert "--amp runs a model; --detections only scores" in capsys.readouterr().err


def test_attention_maps_under_amp_come_from_the_same_16_bit_pass() -> None:
    torch.manual_seed(0)
    model = YoloBody(3, "cbam").eval()
    info = ModelInfo(phi=2, phi_name="cbam", num_classes=3, input_size=96)
    image = np.random.default_rng(0).integers(0, 255, (80, 120, 3), np.uint8)
    maps = {}
    for amp in (False, True):
        config = InferenceConfig(device="cpu", amp=amp)
        detector = Detector(copy.deepcopy(model), info, class_names=["a", "b", "c"], config=config)
        maps[amp] = detector.attention_maps(image)
    assert set(maps[True]) == set(maps[False]) and maps[True]
    for point, exact in maps[False].items():
        fast = maps[True][point]
        assert fast.channels.dtype == np.float32
        assert np.abs(fast.channels - exact.channels).max() < 0.05, point
        assert not np.array_equal(fast.channels, exact.channels), point  # really bfloat16
