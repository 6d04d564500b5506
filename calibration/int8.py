"""INT8 post-training quantization: each stage's float32 ONNX into an explicit Q/DQ model.

ONNX Runtime's own quantization tool (``quantize_static``, QDQ format,
symmetric int8 activations and weights, per-channel weights) calibrated on
real frames - a folder of images, or frames recorded from the line with
``inspector record``. Only convolutions and fully connected layers are
quantized: the stage-1 DFT MatMuls, the log-magnitude and every
preprocessing op stay float32 (quantizing a spectrum's dynamic range to 8
bits would wreck it). The Q/DQ file runs on ONNX Runtime's CPU provider and
is what TensorRT 11 consumes for INT8 (networks are strongly typed; precision
lives in the model).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from inspector import noise as nz

QUANTIZED_OPS = ["Conv", "Gemm"]


class FrameReader(CalibrationDataReader):
    """ONNX Runtime calibration data reader over (N, H, W) uint8 frames, in batches."""

    def __init__(self, frames: np.ndarray, batch: int = 16, input_name: str = "frames") -> None:
        self.frames = frames
        self.batch = batch
        self.input_name = input_name
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _gen(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.frames), self.batch):
            yield {self.input_name: np.ascontiguousarray(self.frames[i : i + self.batch][:, None])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._gen()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def quantize_model(fp32: Path, out: Path, frames: np.ndarray, batch: int = 16) -> Path:
    """Write the Q/DQ INT8 version of ``fp32`` to ``out``, calibrated (min-max) on ``frames``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(frames) == 0:
        raise ValueError("INT8 calibration needs at least one frame")
    tmp = Path(tempfile.mkdtemp(prefix="inspector-int8-"))
    try:
        pre = tmp / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        reader = FrameReader(frames, batch)
        out.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(pre),
            str(out),
            calibration_data_reader=reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def count_qdq(path: Path) -> dict[str, int]:
    """How many QuantizeLinear / DequantizeLinear nodes a model holds, and of which ops it keeps float."""
    import onnx

    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    return {
        "QuantizeLinear": ops.count("QuantizeLinear"),
        "DequantizeLinear": ops.count("DequantizeLinear"),
        "Conv": ops.count("Conv"),
        "MatMul": ops.count("MatMul"),
    }


def calibration_set(source: str, count: int, seed: int) -> np.ndarray:
    """Frames as the line sees them: the calibration split of a build data set (``synthetic``, or a
    ``<root>/train|test/<class>/`` tree such as the casting photographs: carved from ``train``, never
    the test split) with noise added, or any other folder of images (recorded with ``inspector record``)
    as they are."""
    if source == "synthetic" or ((Path(source) / "train").is_dir() and (Path(source) / "test").is_dir()):
        from engines.data import load_split  # numpy + OpenCV only: no torch

        split = load_split(source, "calib", count, seed, progress=False)
        frames = split.frames.copy()
        for i in range(len(frames)):
            frames[i] = nz.apply_random(
                frames[i], nz.NOISE_TYPES[i % 4], np.random.default_rng([seed, 901, i])
            )
        return frames
    root = Path(source)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not files:
        raise ValueError(f"no images to calibrate on under {str(root)!r}")
    from inspector.tools.folder import read_gray  # any images will do: no class folders needed

    return np.stack([read_gray(p, 300) for p in files[:count]])
