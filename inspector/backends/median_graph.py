"""The impulse median (``inspector.denoise.adaptive_median``) as an ONNX graph, for the GPU path.

The GPU path used a hand-written CUDA kernel, compiled with nvcc when the
worker started, that stopped at the 5x5 step while the CPU function has a
further fallback - and no CPU test could run it. This graph computes the CPU
function exactly with standard operators, so ONNX Runtime checks it in CI
(``tests/unit/test_median_graph.py``: equal to ``adaptive_median`` pixel for
pixel, dense noise included) and ``inspector rebuild`` turns the same file
into a TensorRT plan on the GPU host; no CUDA toolkit is needed at run time.

    x (N,1,H,W) uint8 -> float
    m3 = 5th of the 9 values of each 3x3 window (edge-replicated)   = cv2.medianBlur(x, 3)
    m5 = 13th of the 25 values of each 5x5 window (edge-replicated) = cv2.medianBlur(x, 5)
    fill = m3 where m3 is not an impulse, else m5
    fill = round(5x5 mean of m5, reflect-101 borders) where fill is still an impulse = cv2.blur(m5, (5, 5))
    out = fill where x is an impulse (0 or 255), else x                 -> uint8

A window's values come from a convolution with one-hot kernels (one output
channel per window position) and the median from TopK along the channels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OPSET = 17


def median_model(height: int, width: int) -> Any:
    """The graph for (N, 1, height, width) uint8 frames (``onnx.ModelProto``; needs the onnx package)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def window_median(src: str, k: int, tag: str) -> str:
        r = k // 2
        pads = const(f"pads{k}", np.array([0, 0, r, r, 0, 0, r, r], np.int64))
        padded = node("Pad", [src, pads], f"pad{tag}", mode="edge")
        onehot = np.zeros((k * k, 1, k, k), np.float32)
        for i in range(k * k):
            onehot[i, 0, i // k, i % k] = 1.0
        windows = node("Conv", [padded, const(f"onehot{k}", onehot)], f"win{tag}")
        kk = const(f"k{k}", np.array([k * k // 2 + 1], np.int64))
        top = node("TopK", [windows, kk], f"top{tag}", axis=1, largest=1, sorted=1)
        nodes[-1].output.append(f"topidx{tag}")
        start = const(f"s{k}", np.array([k * k // 2], np.int64))
        end = const(f"e{k}", np.array([k * k // 2 + 1], np.int64))
        axis = const(f"ax{k}", np.array([1], np.int64))
        return node("Slice", [top, start, end, axis], f"med{tag}")

    def impulse(src: str, tag: str) -> str:
        lo = node("Equal", [src, const(f"zero{tag}", np.array(0.0, np.float32))], f"lo{tag}")
        hi = node("Equal", [src, const(f"full{tag}", np.array(255.0, np.float32))], f"hi{tag}")
        return node("Or", [lo, hi], f"imp{tag}")

    x = node("Cast", ["frames"], "x", to=TensorProto.FLOAT)
    m3 = window_median(x, 3, "3")
    m5 = window_median(x, 5, "5")
    fill = node("Where", [impulse(m3, "m3"), m5, m3], "fill")
    # cv2.blur's default border is BORDER_REFLECT_101, which is ONNX Pad's "reflect".
    pads = const("pads_blur", np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64))
    padded = node("Pad", [m5, pads], "m5pad", mode="reflect")
    box = node("Conv", [padded, const("box", np.full((1, 1, 5, 5), 1.0, np.float32))], "box_sum")
    # Integer sums over 25: never exactly half-way, so rounding agrees with OpenCV's.
    mean = node("Round", [node("Div", [box, const("n25", np.array(25.0, np.float32))], "box_mean")], "blur")
    fill2 = node("Where", [impulse(fill, "fill"), mean, fill], "fill2")
    out = node("Where", [impulse(x, "x"), fill2, x], "outf")
    node("Cast", [out], "denoised", to=TensorProto.UINT8)

    graph = helper.make_graph(
        nodes,
        "impulse_median",
        [helper.make_tensor_value_info("frames", TensorProto.UINT8, ["N", 1, height, width])],
        [helper.make_tensor_value_info("denoised", TensorProto.UINT8, ["N", 1, height, width])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="line-inspector"
    )
    onnx.checker.check_model(model)
    return model
