"""The ``Engine`` protocol and the explicit backend registry."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


class EngineError(RuntimeError):
    """An engine that cannot be loaded or run, with a message that says what to do."""


@runtime_checkable
class Engine(Protocol):
    """One compiled network: uint8 frames ``(N, 1, H, W)`` in, one output array out."""

    name: str

    def infer(self, frames: np.ndarray) -> np.ndarray:
        """Run one batch; raises :class:`EngineError` on failure."""
        ...

    def close(self) -> None:
        """Release the engine's resources; idempotent."""
        ...


# Backend name -> "module:Class". Explicit: an unknown name is an error listing these.
BACKENDS: dict[str, str] = {
    "onnxruntime": "inspector.backends.onnxruntime:OnnxRuntimeEngine",
    "tensorrt": "inspector.backends.tensorrt:TensorRTEngine",
    "openvino": "inspector.backends.openvino:OpenVinoEngine",
    "triton": "inspector.backends.triton:TritonEngine",
}


def open_engine(backend: str, path: str | Path, name: str, **options: Any) -> Engine:
    """Load the engine file ``path`` with ``backend``; errors list the valid backends or say what to install."""
    if backend not in BACKENDS:
        raise EngineError(
            f"unknown engine backend {backend!r}; valid backends: {', '.join(sorted(BACKENDS))}"
        )
    module_name, _, cls_name = BACKENDS[backend].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineError(f"engine backend {backend!r} is not importable ({exc})") from exc
    cls = getattr(module, cls_name)
    engine: Engine = cls(Path(path), name=name, **options)
    return engine
