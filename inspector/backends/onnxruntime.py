"""ONNX Runtime backend: the embedded default that runs on any CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from inspector.backends.base import EngineError


class OnnxRuntimeEngine:
    """An ONNX model on ONNX Runtime's CPU execution provider."""

    def __init__(
        self, path: Path, name: str, intra_op_threads: int = 0, inter_op_threads: int = 1, spin: bool = False
    ) -> None:
        self.name = name
        self.path = Path(path)
        if not self.path.is_file():
            raise EngineError(f"engine file {str(self.path)!r} for stage {name!r} does not exist")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No spinning: each stage is its own session with its own thread pool, and ORT's threads busy-wait
        # after every run by default - so while the next stage (or the sinusoid fit, or ingest) runs, the
        # previous stage's threads keep the cores spinning. Measured on the 2-core machine, line mix of
        # real photographs, tight loop at batch 8: 38 frames/s spinning, 67 without (bench/profile.json).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
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
