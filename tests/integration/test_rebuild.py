"""``inspector rebuild`` on a line host: verify, re-quantize INT8 and (where there is a GPU) build plans,
with torch made unimportable for the whole run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from inspector.manifest import load_manifest, write_manifest
from inspector.pipeline import Pipeline
from inspector.tools.synthetic import ImpellerGenerator

# Runs the CLI in a fresh interpreter where importing torch (or anything under it) raises.
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not allowed in inspector rebuild (test)")
        return None
sys.meta_path.insert(0, NoTorch())
from inspector.cli import main
rc = main(sys.argv[1:])
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
sys.exit(rc)
"""


def rebuild(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, "rebuild", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture()
def recorded(tmp_path: Path) -> Path:
    """Frames as `inspector record` leaves them: a folder of PNGs, no labels."""
    out = tmp_path / "recorded"
    out.mkdir()
    for i, f in enumerate(ImpellerGenerator(seed=77).batch(0, 16)[0]):
        cv2.imwrite(str(out / f"frame-{i:03d}.png"), f)
    return out


def test_rebuild_quantizes_and_calibrates_without_torch(tmp_path: Path, tiny_engines: Path, recorded: Path):
    out = tmp_path / "int8"
    r = rebuild(
        "--engines", str(tiny_engines), "--int8-out", str(out), "--calib-data", str(recorded), "--quiet"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every file matches its sha256" in r.stdout
    assert "skipping the TensorRT step" in r.stdout  # no GPU here; on a GPU host the plans are built
    m = load_manifest(out)  # verifies every file's sha256
    fp32 = load_manifest(tiny_engines)
    assert m.precision == "int8-qdq" and m.model_version == fp32.model_version + "-int8"
    assert m.calibration["int8"]["source"] == str(recorded) and m.calibration["int8"]["frames"] == 16
    # The set's data (generated impellers) is here, so the INT8 set got its own thresholds on it.
    assert "thresholds" in m.calibration["int8"] and "thresholds_from" not in m.calibration["int8"]
    for entry in m.stages.values():
        assert entry.training["int8_qdq"]["QuantizeLinear"] > 0
    p = Pipeline.from_manifest(out)
    frames = ImpellerGenerator(seed=3).batch(0, 8)[0]
    assert len(p.run(frames)) == 8
    p.close()


def test_without_the_sets_data_it_keeps_the_float32_thresholds_and_says_so(
    tmp_path: Path, tiny_engines: Path, recorded: Path
):
    src = tmp_path / "set"
    shutil.copytree(tiny_engines, src)
    write_manifest(src, load_manifest(src).model_copy(update={"data": str(tmp_path / "not-on-this-host")}))
    fp32 = load_manifest(src)
    out = tmp_path / "int8"
    r = rebuild("--engines", str(src), "--int8-out", str(out), "--calib-data", str(recorded), "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    m = load_manifest(out)
    assert m.thresholds == fp32.thresholds and m.threshold == fp32.threshold
    assert "not on the rebuilding host" in m.calibration["int8"]["thresholds_from"]
    # Asked to calibrate on the set's own data, which is not here: a clear failure, exit 1, and the
    # rest of the rebuild (verification, the plan step) still done.
    r = rebuild("--engines", str(src), "--int8-out", str(tmp_path / "int8b"), "--quiet")
    assert r.returncode == 1
    assert "give --calib-data" in r.stderr and "skipping the TensorRT step" in r.stdout
    assert json.loads((src / "manifest.json").read_text())["data"].endswith("not-on-this-host")


def test_a_tampered_set_is_refused(tmp_path: Path, tiny_engines: Path):
    src = tmp_path / "set"
    shutil.copytree(tiny_engines, src)
    f = src / "defect.onnx"
    f.write_bytes(f.read_bytes() + b"\0")
    r = rebuild("--engines", str(src), "--quiet")
    assert r.returncode == 2 and "sha256" in r.stderr
