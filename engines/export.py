"""ONNX export of a trained stage: dynamic batch (and frame size) axis, uint8 input, parity checked."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

OPSET = 18
# Parity tolerances, torch eager vs ONNX Runtime on the same random uint8 frames:
# logits to 1e-3 absolute; the autoencoder's uint8 output to 1 grey level (rounding at .5).
PARITY_ATOL = {"noise": 1e-3, "defect": 1e-3, "denoise": 1.0}


def export_onnx(model: nn.Module, path: Path, frame_size: int = 300) -> Path:
    """Write ``model`` as ONNX with input ``frames`` uint8 (batch, 1, height, width) and output ``out``."""
    model.eval()
    example = torch.zeros((2, 1, frame_size, frame_size), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    height = torch.export.Dim("height", min=32, max=4096)
    width = torch.export.Dim("width", min=32, max=4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter and its optimizer chat on stdout/stderr; keep the build log readable.
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["frames"],
            output_names=["out"],
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
            dynamic_shapes=({0: batch, 2: height, 3: width},),
            verbose=False,
        )
    return path


def parity(
    model: nn.Module, path: Path, stage: str, frame_size: int = 300, n: int = 4, seed: int = 0
) -> float:
    """Largest absolute difference between torch and ONNX Runtime outputs on random frames; raises past tolerance."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, 1, frame_size, frame_size), dtype=np.uint8)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"frames": frames})[0].astype(np.float64)
    with torch.no_grad():
        want = model(torch.from_numpy(frames)).numpy().astype(np.float64)
    diff = float(np.abs(got - want).max())
    if diff > PARITY_ATOL[stage]:
        raise RuntimeError(
            f"ONNX parity failed for stage {stage}: max |torch - ort| = {diff} > {PARITY_ATOL[stage]}"
        )
    return diff
