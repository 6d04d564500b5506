"""INT8 sets carry their own thresholds or are refused (issue #27, item 7).

An INT8 set quantized where the float32 set's labelled data is not (``inspector rebuild --int8-out`` on
a line host) keeps the float32 set's thresholds; on the shipped photograph set those are 3.1-4.6x the
INT8 set's own, so it would pass defective parts. The pipeline - and with it the daemon's inference
worker, at start and on reload - refuses such a set unless one explicit threshold is configured.
The sets here are the shipped INT8 set's files with the manifest ``inspector rebuild`` writes without
labels: no quantization needed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from inspector.manifest import ManifestError, borrowed_thresholds, load_manifest, write_manifest
from inspector.pipeline import Pipeline
from inspector.tools.synthetic import ImpellerGenerator

REPO = Path(__file__).resolve().parents[2]
FP32 = REPO / "engines" / "default"
INT8 = REPO / "engines" / "default-int8"
FROM_FLOAT32 = (
    "the float32 set ('../shared/data/casting' was not on the rebuilding host): "
    "recalibrate with inspector-build calibrate where labelled frames exist"
)


def int8_copy(tmp_path: Path, int8: dict[str, Any] | None, borrow: bool = True) -> Path:
    """The shipped INT8 set's files with its manifest's ``calibration.int8`` replaced by ``int8`` (removed
    when None) and, with ``borrow``, the float32 set's thresholds in place of its own."""
    dst = tmp_path / "engines-int8"
    shutil.copytree(INT8, dst, ignore=shutil.ignore_patterns("figures", "report.*"))
    m = load_manifest(dst)
    calibration = {k: v for k, v in m.calibration.items() if k != "int8"}
    if int8 is not None:
        calibration["int8"] = int8
    update: dict[str, Any] = {"calibration": calibration}
    if borrow:
        fp32 = load_manifest(FP32, verify=False)
        update |= {"threshold": fp32.threshold, "thresholds": fp32.thresholds}
    write_manifest(dst, m.model_copy(update=update))
    return dst


def rebuilt_without_labels(tmp_path: Path) -> Path:
    """What ``inspector rebuild --int8-out`` writes where the set's labelled data is not."""
    record = {
        k: v
        for k, v in load_manifest(INT8).calibration["int8"].items()
        if k not in ("threshold", "thresholds")
    }
    return int8_copy(tmp_path, {**record, "thresholds_calibrated": False, "thresholds_from": FROM_FLOAT32})


def test_the_shipped_sets_load_as_before():
    frames = ImpellerGenerator(seed=5).batch(0, 4)[0]
    for root in (INT8, FP32):
        m = load_manifest(root)
        assert borrowed_thresholds(m) is None
        pipe = Pipeline.from_manifest(root)
        assert pipe.threshold == m.threshold and pipe.thresholds == m.thresholds
        assert len(pipe.run(frames)) == 4
        pipe.close()
    # The INT8 set's thresholds are the ones calibrated on its own scores, well below float32's.
    m8, m32 = load_manifest(INT8), load_manifest(FP32, verify=False)
    assert m8.thresholds == m8.calibration["int8"]["thresholds"]
    assert all(m32.thresholds[k] > 3 * v for k, v in m8.thresholds.items())


def test_an_int8_set_with_the_float32_thresholds_is_refused(tmp_path: Path):
    root = rebuilt_without_labels(tmp_path)
    m = load_manifest(root)  # intact: tools can still read it (inspector-build calibrate fixes it)
    assert m.precision == "int8-qdq" and borrowed_thresholds(m) == FROM_FLOAT32
    with pytest.raises(ManifestError) as exc:
        Pipeline.from_manifest(root)
    msg = str(exc.value)
    assert "kept the float32 set's thresholds" in msg and "pass defective parts" in msg
    # How to fix it: calibrate on labelled frames, or one explicit threshold.
    assert f"inspector-build calibrate --engines {root}" in msg
    assert f"--int8-out {root} --calib-data auto" in msg
    assert "engines.threshold" in msg and "INSPECTOR_ENGINES__THRESHOLD" in msg


def test_an_explicit_threshold_serves_it(tmp_path: Path):
    root = rebuilt_without_labels(tmp_path)
    pipe = Pipeline.from_manifest(root, threshold=0.05)
    assert pipe.threshold == 0.05 and pipe.thresholds == {}
    results = pipe.run(ImpellerGenerator(seed=5).batch(0, 4)[0])
    assert {r.threshold for r in results} == {0.05}
    pipe.close()


def test_the_daemons_loader_refuses_it_unless_the_configuration_sets_a_threshold(tmp_path: Path):
    """The inference worker's own loader, as run at start and on reload (SIGHUP)."""
    from inspector.config import load_settings
    from inspector.daemon.workers.inference import load_pipeline

    root = rebuilt_without_labels(tmp_path)
    with pytest.raises(ManifestError, match="kept the float32 set's thresholds"):
        load_pipeline(load_settings(None, [f"engines.path={root}"]), (300, 300))
    pipe = load_pipeline(load_settings(None, [f"engines.path={root}", "engines.threshold=0.05"]), (300, 300))
    assert pipe.threshold == 0.05 and pipe.thresholds == {}
    pipe.close()


def test_the_daemon_refuses_to_start_on_it_with_the_reason(tmp_path: Path):
    """``inspector serve`` says why at once (the supervisor's check), before any worker starts."""
    import subprocess
    import sys

    root = rebuilt_without_labels(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "inspector", "serve", "--set", f"engines.path={root}", "--set", "metrics.port=0",
         "--set", f"ingest.endpoint=ipc://{tmp_path}/f.sock", "--set", f"publish.endpoint=ipc://{tmp_path}/v.sock"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "kept the float32 set's thresholds" in out, out[-2000:]
    assert "Traceback" not in out, out[-2000:]


@pytest.mark.parametrize(
    "record",
    [
        {"source": "frames", "thresholds_from": FROM_FLOAT32},  # written by inspector rebuild before the flag
        {"source": "frames", "frames": 16},  # no thresholds of its own recorded at all
        {"source": "frames", "thresholds_calibrated": False, "threshold": 0.1},  # calibration not finished
        None,  # no INT8 record at all: nothing is trusted by absence
    ],
)
def test_any_int8_record_without_thresholds_of_its_own_is_refused(
    tmp_path: Path, record: dict[str, Any] | None
):
    root = int8_copy(tmp_path, record)
    assert borrowed_thresholds(load_manifest(root)) is not None
    with pytest.raises(ManifestError, match="kept the float32 set's thresholds"):
        Pipeline.from_manifest(root)


def test_an_int8_set_recalibrated_afterwards_loads(tmp_path: Path):
    """``inspector-build calibrate`` rewrites the whole calibration block with thresholds scored through the
    INT8 set itself, and says so in ``calibration.int8`` (engines/package.py)."""
    by = {"thresholds_calibrated": True, "by": "inspector-build calibrate on INT8 scores"}
    root = int8_copy(tmp_path, by, borrow=False)
    m = load_manifest(root)
    assert borrowed_thresholds(m) is None
    pipe = Pipeline.from_manifest(root)
    assert pipe.thresholds == m.thresholds
    pipe.close()
