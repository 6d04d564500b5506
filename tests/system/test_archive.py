"""The reject archive behind the real daemon: one entry per non-PASS verdict, the PASS sample, kills,
a stopped archive worker, the free-disk floor, and the ``inspector archive`` commands."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.archive.store import Archive
from tests.conftest import REPO
from tests.system.harness import Daemon, assert_exactly_one, kinds
from tests.system.test_faults import metric, wait_until

pytestmark = pytest.mark.slow


def archived(root: Path) -> list[dict]:
    a = Archive(root, readonly=True)
    try:
        return list(a.query())
    finally:
        a.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inspector", "archive", *args], capture_output=True, text=True, timeout=120
    )


def test_one_entry_per_non_pass_verdict_with_its_pixels_and_a_pass_sample(
    tmp_path: Path, tiny_engines: Path, pool
):
    # The set trained on generated impellers: a real mix of PASS and FAIL on this pool (the tiny test set
    # scores every frame alike).
    engines = REPO / "engines" / "synthetic"
    root = tmp_path / "archive"
    d = Daemon(
        tmp_path,
        engines,
        [f"archive.dir={root}", "archive.pass_sample=0.5", "archive.min_free_mb=0", "archive.queue=100000"],
    )
    sent, images = [], {}
    try:
        d.wait_ready()
        for i in range(160):
            fid = f"f{i}"
            images[fid] = pool[i % len(pool)]
            d.send_frame(images[fid], fid)
            sent.append(("cam0", fid))
            time.sleep(0.04)
            if i % 40 == 39:
                d.send([b"not a frame"])  # ERROR at ingest: a verdict with no pixels
                time.sleep(0.3)
        d.wait_verdicts(len(sent) + 4, 90)
        assert metric(d, "inspector_archive_skipped_total") == 0
    finally:
        assert d.stop() == 0  # the archive worker stores what it was handed before exiting
    assert_exactly_one([v for v in d.verdicts if v["frame_id"] is not None], sent)
    rows = archived(root)
    by_seq = {r["seq"]: r for r in rows}
    assert len(by_seq) == len(rows)  # no verdict archived twice
    non_pass = [v for v in d.verdicts if v["verdict"] != "PASS"]
    assert {v["seq"] for v in non_pass} <= set(by_seq), "a non-PASS verdict is missing from the archive"
    passes = [v for v in d.verdicts if v["verdict"] == "PASS"]
    kept = sum(v["seq"] in by_seq for v in passes)
    assert len(rows) == len(non_pass) + kept
    # The PASS sample: binomial(n, 0.5) within 4.5 standard deviations.
    n = len(passes)
    assert n >= 20, kinds(d.verdicts)
    assert abs(kept - 0.5 * n) <= 4.5 * math.sqrt(n * 0.25) + 1, (kept, n)
    # Each entry's received image is the camera's frame, pixel for pixel; routed frames have a second one.
    a = Archive(root, readonly=True)
    for v in [v for v in d.verdicts if v["seq"] in by_seq]:
        e = by_seq[v["seq"]]
        assert json.loads(e["body"]) == v  # the verdict as published
        if v["frame_id"] is None or v["verdict"] == "DROPPED":
            assert e["received"] is None
            continue
        rec = cv2.imread(str(a.path(e, "received")), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(rec, images[v["frame_id"]]), v["frame_id"]
        if v["verdict"] in ("PASS", "FAIL"):
            assert (e["inspected"] is not None) == (v["denoiser"] != "none"), v
    a.close()

    # The commands an operator uses, on the archive this run left.
    r = cli("list", "--dir", str(root), "--verdict", "FAIL", "--limit", "5")
    assert r.returncode == 0, r.stderr
    fails = sum(v["verdict"] == "FAIL" for v in d.verdicts)
    assert f"5 shown of {fails} matching" in r.stdout or f"{fails} shown of {fails} matching" in r.stdout
    r = cli("list", "--dir", str(root), "--json", "--camera", "cam0", "--limit", "1000")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == sum(1 for e in rows if e["camera_id"] == "cam0")
    fail_id = next(e["id"] for e in rows if e["verdict"] == "FAIL")
    r = cli("show", "--dir", str(root), str(fail_id), "--evidence", "--engines", str(engines))
    assert r.returncode == 0, r.stderr
    assert "evidence" in r.stdout and Path(r.stdout.split("evidence  ")[1].split(" (")[0]).is_file()
    r = cli("export", "--dir", str(root), "--verdict", "FAIL", "--out", str(tmp_path / "fails.zip"))
    assert r.returncode == 0 and f"exported {fails} entries" in r.stdout
    r = cli("list", "--dir", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no archive" in r.stderr
    r = cli("list", "--dir", str(root), "--since", "last tuesday")
    assert r.returncode == 2 and "not a time" in r.stderr


def test_a_stopped_archive_worker_never_holds_up_a_verdict(tmp_path: Path, tiny_engines: Path, pool):
    root = tmp_path / "archive"
    d = Daemon(
        tmp_path,
        tiny_engines,
        [
            f"archive.dir={root}",
            "archive.pass_sample=1",
            "archive.queue=4",
            "archive.min_free_mb=0",
            "supervisor.hang_timeout_s=60",
        ],
    )
    try:
        d.wait_ready()
        victim = d.worker_pids()["archive"]
        os.kill(victim, signal.SIGSTOP)
        try:
            sent = []
            for i in range(60):
                d.send_frame(pool[i % len(pool)], f"s{i}")
                sent.append(("cam0", f"s{i}"))
            # Every frame is answered while the archive worker cannot take anything.
            d.wait_verdicts(len(sent), 90)
            skipped = metric(d, "inspector_archive_skipped_total")
            assert skipped > 0
        finally:
            os.kill(victim, signal.SIGCONT)
        assert_exactly_one(d.verdicts, sent)
    finally:
        assert d.stop() == 0
    # Accounting: every verdict was either stored or skipped-and-counted (pass_sample = 1 offers all).
    assert len(archived(root)) + skipped == len(d.verdicts), (len(archived(root)), skipped)


def test_kills_of_the_archive_worker_and_of_the_daemon_leave_a_consistent_archive(
    tmp_path: Path, tiny_engines: Path, pool
):
    root = tmp_path / "archive"
    d = Daemon(
        tmp_path, tiny_engines, [f"archive.dir={root}", "archive.pass_sample=1", "archive.min_free_mb=0"]
    )
    try:
        d.wait_ready()
        first = d.worker_pids()["archive"]
        for i in range(40):
            d.send_frame(pool[i % len(pool)], f"a{i}")
            if i == 20:
                os.kill(first, signal.SIGKILL)  # mid-stream
        d.wait_verdicts(40, 60)
        wait_until(lambda: d.worker_pids().get("archive") not in (None, first), 20, "a new archive worker")
        assert all(v["verdict"] in ("PASS", "FAIL", "DROPPED") for v in d.verdicts), kinds(d.verdicts)
        probe = iter(range(10**6))

        def writing() -> bool:  # the new worker is connected once what is sent gets written
            d.send_frame(pool[0], f"p{next(probe)}")
            time.sleep(0.2)
            return metric(d, "inspector_archive_written_total") > 0

        wait_until(writing, 30, "the new archive worker to store frames")
        n = len(d.verdicts)
        for i in range(300):
            d.send_frame(pool[i % len(pool)], f"b{i}")
        wait_until(lambda: len(d.verdicts) >= n + 30, 60, "some of the second stream's verdicts")
        os.kill(d.proc.pid, signal.SIGKILL)  # the whole daemon, mid-stream
        d.proc.wait(10)
        wait_until(lambda: not d.worker_pids(), 20, "the orphaned workers to exit")
    finally:
        d.stop()
    db = sqlite3.connect(f"file:{root / 'index.sqlite3'}?mode=ro", uri=True)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    a = Archive(root)  # what the next start does: sweep files no row names
    rows = list(a.query())
    assert rows
    for e in rows:  # every file a row names is there and whole
        for kind in ("received", "inspected"):
            p = a.path(e, kind)
            if p is not None:
                assert cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) is not None, p
    a.sweep()
    named = {e[k] for e in rows for k in ("received", "inspected") if e[k]}
    on_disk = {p.relative_to(root).as_posix() for p in (root / "frames").rglob("*") if p.is_file()}
    assert on_disk == named
    a.close()


def test_below_the_free_disk_floor_nothing_is_written_and_it_is_said(
    tmp_path: Path, tiny_engines: Path, pool
):
    root = tmp_path / "archive"
    # A floor above any disk's free space: the worker must refuse to write from the first check.
    d = Daemon(
        tmp_path, tiny_engines, [f"archive.dir={root}", "archive.min_free_mb=1e12", "archive.pass_sample=1"]
    )
    try:
        d.wait_ready()
        wait_until(lambda: metric(d, "inspector_archive_disk_low") == 1, 10, "the disk-low gauge")
        for i in range(20):
            d.send_frame(pool[i % len(pool)], f"d{i}")
        d.wait_verdicts(20, 60)
        wait_until(lambda: metric(d, "inspector_archive_skipped_total") >= 20, 10, "skips counted")
    finally:
        assert d.stop() == 0
    assert archived(root) == []
    assert "free disk below the floor" in d.log_path.read_text()


def test_a_frame_of_another_size_is_archived_as_the_camera_sent_it(tmp_path: Path, tiny_engines: Path, pool):
    """A 600x600 frame is resized to the set's 300x300 on arrival; the archive keeps what the camera sent (a
    JPEG byte for byte, raw pixels as a lossless PNG) and the resized frame as what the classifier saw."""
    from inspector.protocol import encode_frame

    root = tmp_path / "archive"
    d = Daemon(
        tmp_path, tiny_engines, [f"archive.dir={root}", "archive.pass_sample=1", "archive.min_free_mb=0"]
    )
    big = cv2.resize(pool[0], (600, 600), interpolation=cv2.INTER_CUBIC)
    try:
        d.wait_ready()
        jpeg = encode_frame(big, "cam0", "big-jpeg", time.time_ns(), "jpeg")  # stamped now: not stale
        d.send(encode_frame(big, "cam0", "big-raw", time.time_ns(), "raw"))
        d.send(jpeg)
        d.send_frame(pool[1], "small")  # the set's own size: stored as before
        d.wait_verdicts(3, 60)
    finally:
        assert d.stop() == 0
    a = Archive(root, readonly=True)
    got = {json.loads(e["body"])["frame_id"]: e for e in a.query()}
    assert set(got) == {"big-raw", "big-jpeg", "small"}
    raw = a.path(got["big-raw"], "received")
    assert raw is not None and raw.suffix == ".png"
    assert np.array_equal(cv2.imread(str(raw), cv2.IMREAD_GRAYSCALE), big)
    sent_jpeg = a.path(got["big-jpeg"], "received")
    assert sent_jpeg is not None, (
        got["big-jpeg"]["body"] and sent_jpeg.suffix == ".jpg" and sent_jpeg.read_bytes() == jpeg[1]
    )
    for fid in ("big-raw", "big-jpeg"):
        seen = a.path(got[fid], "inspected")
        assert seen is not None and cv2.imread(str(seen), cv2.IMREAD_GRAYSCALE).shape == (300, 300)
        assert a.path(got[fid], "evidence") != a.path(got[fid], "received")  # never over the original
    small = a.path(got["small"], "received")
    assert small is not None and cv2.imread(str(small), cv2.IMREAD_GRAYSCALE).shape == (300, 300)
    a.close()
