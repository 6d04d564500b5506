"""INT8 Q/DQ quantization on ONNX Runtime (CPU), from real frames, and `inspector record`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from calibration.int8 import count_qdq, quantize_model
from inspector.noise import parse_mix
from inspector.tools.camera import run_camera, synthetic_shots
from inspector.tools.record import record
from inspector.tools.synthetic import ImpellerGenerator


def test_qdq_models_keep_the_spectrum_in_float_and_agree_with_float32(tiny_engines: Path, tmp_path: Path):
    frames, _ = ImpellerGenerator(seed=8).batch(0, 24)
    for stage in ("noise", "defect", "denoise"):
        out = quantize_model(tiny_engines / f"{stage}.onnx", tmp_path / f"{stage}.onnx", frames)
        q = count_qdq(out)
        assert q["QuantizeLinear"] > 0 and q["DequantizeLinear"] > 0
        if stage == "noise":
            assert q["MatMul"] == 6  # the DFT stays float32
        a = ort.InferenceSession(str(tiny_engines / f"{stage}.onnx")).run(None, {"frames": frames[:8, None]})[
            0
        ]
        b = ort.InferenceSession(str(out)).run(None, {"frames": frames[:8, None]})[0]
        assert a.shape == b.shape and a.dtype == b.dtype
        tol = 3.0 if stage == "denoise" else 0.05 * (np.abs(a).max() + 1)
        assert np.abs(a.astype(float) - b.astype(float)).mean() < tol, stage


def test_quantize_command_writes_a_servable_set(tiny_engines: Path, tmp_path: Path):
    out = tmp_path / "int8"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "engines",
            "quantize",
            "--engines",
            str(tiny_engines),
            "--out",
            str(out),
            "--calib-frames",
            "16",
            "--test-frames",
            "16",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    from inspector.manifest import load_manifest
    from inspector.pipeline import Pipeline

    m = load_manifest(out)
    assert m.precision == "int8-qdq" and m.model_version.endswith("-int8")
    assert "inspector-build quantize" in m.command
    md = (out / "report.md").read_text()
    assert "| stage | float32 | int8 | speed-up |" in md and "defect accuracy - clean" in md
    assert "defect accuracy @0.5 - mixed noise full pipeline" in md and "At threshold 0.5:" in md
    # Its own operating point, calibrated like the float32 set's, recorded in manifest and report.
    rep = json.loads((out / "report.json").read_text())
    assert m.threshold == rep["threshold"]["int8"] and 0.0 <= m.threshold <= 1.0
    assert m.calibration["int8"]["threshold"] == m.threshold
    assert "Each set at its own calibrated threshold" in md
    pipe = Pipeline.from_manifest(out)
    assert len(pipe.run(ImpellerGenerator(seed=1).batch(0, 3)[0])) == 3
    pipe.close()


def test_record_saves_what_a_camera_sends(tmp_path: Path):
    endpoint = f"ipc://{tmp_path}/rec.sock"
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(record(endpoint, tmp_path / "rec", 5, timeout_s=30)))
    t.start()
    time.sleep(0.3)
    run_camera(
        endpoint, synthetic_shots(1, 0.5, parse_mix("clean=1")), 5, 0, camera_id="cam/7", encoding="png"
    )
    t.join(30)
    assert result["saved"] == 5
    files = sorted((tmp_path / "rec" / "cam_7").glob("*.png"))
    assert [f.name for f in files] == [f"{i}.png" for i in range(5)]


def test_rebuild_skips_tensorrt_with_a_clear_message(tiny_engines: Path):
    res = subprocess.run(
        [sys.executable, "-m", "engines", "rebuild", "--engines", str(tiny_engines)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "every file matches its sha256" in res.stdout
    assert "skipping the TensorRT step" in res.stdout and "install the gpu extra" in res.stdout
