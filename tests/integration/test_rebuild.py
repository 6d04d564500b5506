"""``inspector rebuild`` on a line host: verify, re-quantize INT8 and (where there is a GPU) build plans,
with torch made unimportable for the whole run; every output made beside the live one and swapped in
whole, a failed rebuild leaving the live sets byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import pytest

from inspector import rebuild as rb
from inspector.manifest import ManifestError, load_manifest, write_manifest
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


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256) and every folder (-> "dir")."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def leftovers(live: Path) -> list[str]:
    """Temp or set-aside folders a rebuild left beside ``live``."""
    return sorted(
        p.name
        for p in live.parent.iterdir()
        if p.name.startswith(f"{live.name}.tmp-") or p.name.startswith(f"{live.name}.old-")
    )


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


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
    # A previous set is live there, with a file the new set does not have: it is replaced whole.
    shutil.copytree(tiny_engines, out)
    (out / "stale-from-the-previous-set.txt").write_text("old")
    before = tree(tiny_engines)
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
    assert m.calibration["int8"]["thresholds_calibrated"] is True
    assert m.thresholds == m.calibration["int8"]["thresholds"]
    assert sorted(p.name for p in out.iterdir()) == [
        "defect.onnx",
        "denoise.onnx",
        "manifest.json",
        "noise.onnx",
    ]
    assert leftovers(out) == [] and leftovers(tiny_engines) == []
    assert tree(tiny_engines) == before  # the float32 set is only read
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
    assert m.calibration["int8"]["thresholds_calibrated"] is False
    assert "the daemon refuses this INT8 set" in r.stdout
    # Those are float32's thresholds: the set is refused for serving, saying how to fix it...
    with pytest.raises(ManifestError, match="kept the float32 set's thresholds") as exc:
        Pipeline.from_manifest(out)
    assert "inspector-build calibrate" in str(exc.value) and "engines.threshold" in str(exc.value)
    # ...unless one threshold is given explicitly (engines.threshold).
    p = Pipeline.from_manifest(out, threshold=0.5)
    assert len(p.run(ImpellerGenerator(seed=3).batch(0, 4)[0])) == 4
    p.close()
    # Asked to calibrate on the set's own data, which is not here: a clear failure, exit 1, and the
    # rest of the rebuild (verification, the plan step) still done; nothing made, no temp folder left.
    r = rebuild("--engines", str(src), "--int8-out", str(tmp_path / "int8b"), "--quiet")
    assert r.returncode == 1
    assert "give --calib-data" in r.stderr and "skipping the TensorRT step" in r.stdout
    assert not (tmp_path / "int8b").exists() and leftovers(tmp_path / "int8b") == []
    assert json.loads((src / "manifest.json").read_text())["data"].endswith("not-on-this-host")


def test_a_tampered_set_is_refused(tmp_path: Path, tiny_engines: Path):
    src = tmp_path / "set"
    shutil.copytree(tiny_engines, src)
    f = src / "defect.onnx"
    f.write_bytes(f.read_bytes() + b"\0")
    r = rebuild("--engines", str(src), "--quiet")
    assert r.returncode == 2 and "sha256" in r.stderr


# In-process from here: the steps are patched to fail where a real rebuild can (torch is importable in
# this process, which the subprocess tests above rule out for the real command).


@pytest.fixture()
def live_int8(tmp_path: Path, tiny_engines: Path) -> Path:
    """A previous INT8 set, live, with plans: any complete engine set does (a copy of the tiny one)."""
    live = tmp_path / "engines-int8"
    shutil.copytree(tiny_engines, live, ignore=shutil.ignore_patterns("figures", "report.*", "checkpoints"))
    (live / "tensorrt").mkdir()
    (live / "tensorrt" / "plans.json").write_text('{"previous": true}\n')
    return live


def _rebuild(engines: Path, int8_out: Path | None, recorded: Path) -> dict[str, Any]:
    return rb.rebuild(engines, int8_out, str(recorded), 16, 8, "inspector rebuild (test)", False)


@pytest.mark.parametrize("where", ["quantize", "plans", "fsync"])
def test_a_rebuild_that_fails_midway_leaves_the_live_set_byte_identical(
    tmp_path: Path,
    tiny_engines: Path,
    recorded: Path,
    live_int8: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
):
    before, fp32_before = tree(live_int8), tree(tiny_engines)
    real_int8_set = rb.int8_set

    def quantize_half(src: Path, out: Path, *args: Any, **kw: Any) -> Any:
        (out / "noise.onnx").write_bytes(b"half a model")  # mid-way: one file written, no manifest
        raise RuntimeError("killed mid-way through quantizing")

    def plans_fail(engine_set: Path, max_batch: int, label: Path) -> Any:
        if load_manifest(engine_set).precision != "int8-qdq":
            return "skipped: the float32 set's plans (not this test's)"
        # The new INT8 set is complete and staged (it verified above)...
        (engine_set / "tensorrt").mkdir(exist_ok=True)
        (engine_set / "tensorrt" / "noise.plan").write_bytes(b"half a plan")
        raise RuntimeError("TensorRT failed to build a plan")  # ...and never goes live

    def fsync_fail(root: Path) -> None:
        raise OSError(28, "No space left on device")

    if where == "quantize":
        monkeypatch.setattr(rb, "int8_set", quantize_half)
    elif where == "plans":
        monkeypatch.setattr(rb, "int8_set", real_int8_set)
        monkeypatch.setattr(rb, "_plans", plans_fail)
    else:
        monkeypatch.setattr(rb, "fsync_tree", fsync_fail)
    if where == "fsync":  # not an INT8-step error: the rebuild stops (inspector rebuild exits 2)
        with pytest.raises(OSError, match="No space left"):
            _rebuild(tiny_engines, live_int8, recorded)
    else:  # reported, exit 1, the float32 plan step still run
        done = _rebuild(tiny_engines, live_int8, recorded)
        assert done["int8"].startswith("failed: ") and str(tiny_engines) in done["plans"]
    assert tree(live_int8) == before  # byte-identical, plans included
    assert tree(tiny_engines) == fp32_before
    assert leftovers(live_int8) == [] and leftovers(tiny_engines) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "rename-aside"])
def test_a_successful_rebuild_replaces_the_set_whole(
    tiny_engines: Path, recorded: Path, live_int8: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
):
    if not exchange:  # a kernel or filesystem without RENAME_EXCHANGE: renamed aside, then in
        monkeypatch.setattr(rb, "exchange", lambda a, b: False)
    inode = live_int8.stat().st_ino
    done = _rebuild(tiny_engines, live_int8, recorded)
    assert done["int8"] == str(live_int8)
    m = load_manifest(live_int8)
    assert m.precision == "int8-qdq" and m.calibration["int8"]["thresholds_calibrated"] is True
    # Whole: the previous set's plans (for its own files) went with it, nothing of it is left.
    assert sorted(p.name for p in live_int8.iterdir()) == [
        "defect.onnx",
        "denoise.onnx",
        "manifest.json",
        "noise.onnx",
    ]
    assert live_int8.stat().st_ino != inode  # a new folder renamed in, not the old one rewritten
    assert leftovers(live_int8) == []
    Pipeline.from_manifest(live_int8).close()


def _fake_build_set(fail: bool) -> Any:
    """A stand-in for TensorRT's plan build on a GPU host: writes ``<set>/tensorrt/`` like the real one."""

    def build_set(engine_set: Path, max_batch: int = 8) -> dict[str, Any]:
        out = engine_set / "tensorrt"
        # The live plans' timing cache is handed to the build (rebuilds stay fast).
        assert (out / "timing.cache").read_bytes() == b"cache"
        load_manifest(engine_set)  # the staged twin verifies like the set itself
        (out / "noise.plan").write_bytes(b"new plan")
        if fail:
            raise RuntimeError("TensorRT failed to build a plan for denoise.onnx")
        (out / "plans.json").write_text('{"new": true}\n')
        return {"tensorrt": "11.0", "gpu": "fake", "compute_capability": "9.0"}

    return build_set


@pytest.mark.parametrize("fail", [False, True], ids=["built", "build-fails"])
def test_the_float32_sets_plans_are_swapped_in_whole(
    tmp_path: Path, tiny_engines: Path, recorded: Path, monkeypatch: pytest.MonkeyPatch, fail: bool
):
    from inspector.backends import trt_build

    live = tmp_path / "engines"
    shutil.copytree(tiny_engines, live)
    plans = live / "tensorrt"
    plans.mkdir()
    (plans / "plans.json").write_text('{"previous": true}\n')
    (plans / "old-only.plan").write_bytes(b"old")
    (plans / "timing.cache").write_bytes(b"cache")
    before = tree(live)
    monkeypatch.setattr(trt_build, "build_set", _fake_build_set(fail))
    if fail:
        with pytest.raises(RuntimeError, match="failed to build a plan"):
            _rebuild(live, None, recorded)
        assert tree(live) == before
    else:
        done = _rebuild(live, None, recorded)
        assert done["plans"][str(live)]["gpu"] == "fake"
        assert sorted(p.name for p in plans.iterdir()) == ["noise.plan", "plans.json", "timing.cache"]
        assert (plans / "plans.json").read_text() == '{"new": true}\n'
        # The set's own files are untouched (hard-linked into the staged twin, never written).
        assert {k: v for k, v in tree(live).items() if not k.startswith("tensorrt")} == {
            k: v for k, v in before.items() if not k.startswith("tensorrt")
        }
    assert leftovers(live) == [] and leftovers(plans) == []


def test_what_a_killed_rebuild_left_is_swept(tmp_path: Path, tiny_engines: Path):
    live = tmp_path / "engines-int8"
    gone, running = dead_pid(), os.getppid()
    # Killed between the two renames of a swap: the live set is aside, the new one still in its temp folder.
    shutil.copytree(tiny_engines, tmp_path / f"engines-int8.old-{gone}")
    (tmp_path / f"engines-int8.tmp-{gone}").mkdir()
    (tmp_path / f"engines-int8.tmp-{running}").mkdir()  # another rebuild, still running: not touched
    removed = rb.sweep(live)
    assert removed == [tmp_path / f"engines-int8.tmp-{gone}"]
    assert tree(live) == tree(tiny_engines)  # put back whole
    assert leftovers(live) == [f"engines-int8.tmp-{running}"]


def test_a_load_that_straddles_a_swap_loads_the_new_set_whole(
    tmp_path: Path, tiny_engines: Path, monkeypatch: pytest.MonkeyPatch
):
    """A reader that opened the previous set's manifest when the swap came reads the new set again."""
    import inspector.pipeline as pl

    live = tmp_path / "engines"
    shutil.copytree(tiny_engines, live)
    new = tmp_path / "engines.tmp-1"
    shutil.copytree(tiny_engines, new)
    write_manifest(new, load_manifest(new).model_copy(update={"model_version": "the-new-one"}))
    real_open, swapped = pl.open_engine, []

    def open_engine(*args: Any, **kw: Any) -> Any:
        if not swapped:  # the swap lands after the manifest was read, before the engines are open
            swapped.append(rb.publish(new, live))
        return real_open(*args, **kw)

    monkeypatch.setattr(pl, "open_engine", open_engine)
    pipe = Pipeline.from_manifest(live)
    assert swapped and pipe.manifest is not None and pipe.manifest.model_version == "the-new-one"
    pipe.close()
