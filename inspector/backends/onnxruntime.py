"""ONNX Runtime backend: the embedded default that runs on any CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from inspector.backends.base import EngineError


class OnnxRuntimeEngine:
    """An ONNX model on ONNX Runtime's CPU execution provider."""

    def __init__(self, path: Path, name: str, intra_op_threads: int = 0, inter_op_threads: int = 1) -> None:
        self.name = name
        self.path = Path(path)
        if not self.path.is_file():
            raise EngineError(f"engine file {str(self.path)!r} for stage {name!r} does not exist")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for corrupt files
            raise EngineError(
                f"ONNX Runtime cannot load {str(self.path)!r} for stage {name!r}: {exc}"
            ) from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise EngineError(
                f"{str(self.path)!r} has {len(inputs)} inputs; a stage engine takes one frames tensor"
            )
        self.input_name = inputs[0].name
        self.output_name = self._session.get_outputs()[0].name

    def infer(self, frames: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise EngineError(f"engine {self.name!r} is closed")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1] != 1:
            raise EngineError(
                f"engine {self.name!r} takes uint8 (N, 1, H, W) frames, got {frames.dtype} {frames.shape}"
            )
        try:
            out = self._session.run([self.output_name], {self.input_name: np.ascontiguousarray(frames)})[0]
        except Exception as exc:
            raise EngineError(f"engine {self.name!r} failed on a batch of {frames.shape[0]}: {exc}") from exc
        return np.asarray(out)

    def close(self) -> None:
        self._session = None
