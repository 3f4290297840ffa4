"""How close each inference path runs to this machine's limit: the matrix-multiply peaks of
float32, bfloat16 and INT8 measured in the same run, the model's convolution GFLOPs, and each
path's forward time as a multiple of its floor (GFLOPs / peak of its number format).

The peaks: torch ``mm`` for float32 and bfloat16 (or a oneDNN 3x3 convolution where that is
faster, see ``torch_peak``), and ONNX Runtime ``MatMulInteger`` (uint8 x int8 -> int32) for
INT8, what the INT8 export runs on (``torch._int_mm`` has no VNNI kernel on CPU: measured 79
against ORT's 449 GOPS on a 2-core AVX-512 EPYC). A model's layers rarely reach these peaks
(small layers, memory traffic, the operators that are not convolutions), so 1.0x is the floor,
not a target.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

PEAK_SIZE = 2048  # side of the square GEMMs: large enough to run at the kernels' peak
FORMATS = ("float32", "bfloat16", "int8")


def _best_seconds(fn, runs: int) -> float:
    fn()  # warm-up: kernel selection, thread pools, first-touch of the output
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples)  # a peak: the fastest run, the least disturbed by other work


def gemm_gflops(size: int, seconds: float) -> float:
    """GFLOP/s (or GOP/s) of one ``size`` x ``size`` by ``size`` x ``size`` multiply taking
    ``seconds``: 2 * size**3 operations (one multiply and one add per term)."""
    return 2 * size**3 / seconds / 1e9


def torch_peak(dtype: torch.dtype, size: int = PEAK_SIZE, runs: int = 5) -> float:
    """GFLOP/s of torch in ``dtype`` at its current thread count: the better of ``mm`` (MKL for
    float32, oneDNN for bfloat16) and a oneDNN 3x3 convolution of 256 to 256 channels on a
    52x52 channels-last map (a layer of the model's own shape, an implicit GEMM). MKL's float32
    GEMM reached only about half of oneDNN's convolutions on the AMD EPYC this project runs on,
    so ``mm`` alone would put the floor above the forward passes themselves."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    gemm = gemm_gflops(size, _best_seconds(lambda: torch.mm(a, b, out=out), runs))
    channels, side = 256, 52
    image = torch.randn(1, channels, side, side, generator=generator).to(dtype)
    image = image.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, channels, 3, 3, generator=generator).to(dtype)
    weight = weight.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = _best_seconds(lambda: nn.functional.conv2d(image, weight, padding=1), runs)
    conv = 2 * channels * channels * 9 * side * side / seconds / 1e9
    return max(gemm, conv)


def ort_int8_peak(size: int = PEAK_SIZE, runs: int = 5, threads: int | None = None) -> float:
    """GOP/s of ONNX Runtime's ``MatMulInteger`` (uint8 activations x int8 weights -> int32),
    the kernel of its quantized convolutions and GEMMs; ``threads``: intra-op threads (None:
    ORT's default, as the INT8 path runs)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (size, size), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "int8_gemm",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])],
        initializer=[numpy_helper.from_array(weights, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    activations = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return gemm_gflops(size, _best_seconds(lambda: session.run(None, {"A": activations}), runs))


def matmul_peaks(size: int = PEAK_SIZE, runs: int = 5, threads: int | None = None) -> dict:
    """``{"float32", "bfloat16", "int8"}`` -> GFLOP/s (GOP/s for int8) measured now."""
    return {
        "float32": torch_peak(torch.float32, size, runs),
        "bfloat16": torch_peak(torch.bfloat16, size, runs),
        "int8": ort_int8_peak(size, runs, threads),
    }


def conv_gflops(model: nn.Module, input_size: int) -> float:
    """GFLOPs of one forward at batch 1 counted over the convolutions and linear layers (the
    multiply-adds, two operations each; activations, pooling and resizes are not counted, as
    in the usual model tables: 6.9 for YOLOv4-tiny at 416)."""
    total = 0

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            total += 2 * output.numel() * k // module.groups
        elif isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for hook in hooks:
            hook.remove()
    return total / 1e9


def floor_ms(gflop: float, peak_gflops: float) -> float:
    """The shortest possible forward: ``gflop`` of work at ``peak_gflops``, in ms."""
    return 1000 * gflop / peak_gflops


def roofline_rows(
    forward_ms: dict[str, float], formats: dict[str, str], gflop: float, peaks: dict
) -> dict[str, dict]:
    """Per path: its format, the floor (ms) at that format's peak and its forward median as
    a multiple of it. ``forward_ms`` and ``formats`` are keyed by path; a path whose format
    has no measured peak is left out."""
    rows = {}
    for path, ms in forward_ms.items():
        fmt = formats.get(path)
        if fmt not in peaks:
            continue
        floor = floor_ms(gflop, peaks[fmt])
        rows[path] = {"format": fmt, "floor_ms": floor, "forward_ms": ms, "x_floor": ms / floor}
    return rows
