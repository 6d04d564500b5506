"""The archive's store on its own: retention, the crash rules (files before rows, rows before files), filters."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.archive.store import Archive, Filters, parse_time


def body(
    seq: int, verdict: str = "FAIL", cam: str = "cam0", t: int | None = None, version: str = "v1"
) -> dict:
    return {
        "seq": seq,
        "camera_id": cam,
        "frame_id": f"f{seq}",
        "verdict": verdict,
        "reject": verdict != "PASS",
        "published_ns": t if t is not None else 1_800_000_000_000_000_000 + seq * 10**9,
        "defect_score": 0.9,
        "threshold": 0.5,
        "noise_type": "gaussian",
        "denoiser": "autoencoder",
        "model_version": version,
    }


def img(v: int) -> np.ndarray:
    return np.full((32, 32), v, np.uint8)


def test_entries_round_trip_with_their_images(tmp_path: Path):
    a = Archive(tmp_path)
    i = a.add(body(1), img(10), img(20))
    j = a.add(body(2, "TIMEOUT"), None, None)  # no pixels: a row without files
    e = a.get(i)
    assert e is not None and json.loads(e["body"])["frame_id"] == "f1"
    assert cv2.imread(str(a.path(e, "received")), cv2.IMREAD_GRAYSCALE).tolist() == img(10).tolist()
    assert cv2.imread(str(a.path(e, "inspected")), cv2.IMREAD_GRAYSCALE).tolist() == img(20).tolist()
    assert a.path(a.get(j), "received") is None
    assert [r["id"] for r in a.query()] == [j, i]  # newest first
    assert a.count(Filters(verdicts=("TIMEOUT",))) == 1


def test_filters_by_camera_verdict_time_and_engine_version(tmp_path: Path):
    a = Archive(tmp_path)
    for s in range(10):
        a.add(
            body(s, "FAIL" if s % 2 else "ERROR", cam=f"c{s % 3}", version="v2" if s >= 5 else "v1"),
            None,
            None,
        )
    t5 = body(5)["published_ns"]
    assert a.count(Filters(camera="c1")) == 3
    assert a.count(Filters(verdicts=("FAIL",))) == 5
    assert a.count(Filters(since_ns=t5)) == 5 and a.count(Filters(until_ns=t5)) == 5
    assert a.count(Filters(model_version="v2", verdicts=("ERROR",))) == 2
    assert len(list(a.query(Filters(limit=3)))) == 3


def test_retention_by_age_then_by_size_removes_rows_and_files(tmp_path: Path):
    a = Archive(tmp_path)
    rng = np.random.default_rng(0)
    for s in range(20):
        a.add(body(s), rng.integers(0, 255, (64, 64), np.uint8), None)  # noise: PNGs of similar size
    files = lambda: sorted(p for p in (tmp_path / "frames").rglob("*.png"))  # noqa: E731
    assert len(files()) == 20
    now = body(20)["published_ns"]
    r = a.prune(max_age_s=10.5, max_bytes=None, now_ns=now)  # seq 0..9 are older than 10.5 s
    assert r["removed"] == 10 and len(files()) == 10 and a.count() == 10
    per = a.total_bytes() / 10
    r = a.prune(max_age_s=None, max_bytes=per * 4.5)
    assert a.total_bytes() <= per * 4.5 and a.count() == 4 and len(files()) == 4
    assert min(r["seq"] for r in a.query()) == 16  # the oldest went first


def test_a_kill_between_file_and_row_leaves_only_unnamed_files_which_sweep_removes(tmp_path: Path):
    a = Archive(tmp_path)
    a.add(body(1), img(1), img(2))
    # What a SIGKILL can leave: a half-written temp file, and a whole file whose row never committed.
    day = next((tmp_path / "frames").iterdir())
    (day / "000000000009-1.received.png.tmp").write_bytes(b"\x89PNG half")
    (day / "000000000009-1.received.png").write_bytes(cv2.imencode(".png", img(3))[1].tobytes())
    for e in a.query():  # the index never names a missing file
        for k in ("received", "inspected"):
            assert a.path(e, k).is_file()
    assert a.sweep() == 2
    assert len(list((tmp_path / "frames").rglob("*"))) == 3  # the day folder and entry 1's two images
    assert sqlite3.connect(tmp_path / "index.sqlite3").execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_row_naming_a_path_outside_the_archive_is_refused(tmp_path: Path):
    a = Archive(tmp_path)
    i = a.add(body(1), img(1), None)
    with a.db:
        a.db.execute("UPDATE entries SET received = '../../etc/passwd' WHERE id = ?", (i,))
    with pytest.raises(ValueError, match="outside the archive"):
        a.path(a.get(i), "received")
    with pytest.raises(ValueError):
        a.path(a.get(i), "../x")


def test_export_to_a_zip_and_a_folder(tmp_path: Path):
    import zipfile

    a = Archive(tmp_path / "arch")
    a.add(body(1), img(1), img(2))
    a.add(body(2, "ERROR"), None, None)
    assert a.export(Filters(), tmp_path / "out.zip") == 2
    z = zipfile.ZipFile(tmp_path / "out.zip")
    names = set(z.namelist())
    assert "verdicts.jsonl" in names and sum(n.endswith(".png") for n in names) == 2
    lines = [json.loads(x) for x in z.read("verdicts.jsonl").decode().splitlines()]
    assert {x["verdict"]["verdict"] for x in lines} == {"FAIL", "ERROR"}
    assert a.export(Filters(verdicts=("FAIL",)), tmp_path / "folder") == 1
    assert len(list((tmp_path / "folder").glob("*.png"))) == 2


def test_parse_time_takes_iso_and_ages():
    assert parse_time("2026-12-01T00:00") == parse_time("2026-12-01T00:00+00:00")
    assert parse_time("2h", now=10_000.0) == int((10_000 - 7200) * 1e9)
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday-ish")


def test_a_readonly_open_of_a_missing_archive_says_what_is_wrong(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no archive"):
        Archive(tmp_path / "nothing", readonly=True)
