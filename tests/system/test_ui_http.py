"""The operator page's HTTP surface under hostile and everyday use: a real ``inspector ui`` process, real HTTP.

Issue #27 ("the page a shift uses"): DNS rebinding (Host allow-list), half-sent requests, wrong tokens
without a limit, evidence computed on a GET, unbounded camera state, totals that reset with the page,
and the archive's filters, paging, review marks and export. The page in a browser: test_ui.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import zmq

from tests.system.page import Ui, add_entries, half_sent, sample_archive, still_open
from tests.system.test_faults import wait_until

pytestmark = pytest.mark.slow
VERDICTS = ("PASS", "FAIL", "ERROR", "TIMEOUT", "DROPPED")


def nowhere(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/none.sock"


def test_every_request_must_name_an_allowed_host(tmp_path: Path):
    """DNS rebinding: a web page whose name resolves to 127.0.0.1 must not reach the page."""
    evil = ("evil.example", "127.0.0.1.evil.example", "localhost.evil.example", "", "[::2]", "user@127.0.0.1")

    def refused(ui: Ui, hosts: tuple[str, ...]) -> None:
        for host in hosts:
            for h in (host, f"{host}:{ui.port}") if host else ("",):
                for path in ("/", "/api/state", "/api/rejects", "/static/app.js"):
                    code, _, body = ui.request("GET", path, {"Host": h})
                    assert code == 400, (h, path, code)
                    assert b"csrf" not in body and b"<html" not in body
                code, _, _ = ui.request("POST", "/api/export", {"Host": h, "X-CSRF-Token": "x"}, b"")
                assert code == 400, h

    def answered(ui: Ui, hosts: tuple[str, ...]) -> None:
        for host in hosts:
            code, headers, _ = ui.request("GET", "/api/state", {"Host": host})
            assert code == 200, (host, code)
            assert headers["content-security-policy"].startswith("default-src 'self'")

    ui = Ui("--publish", nowhere(tmp_path))
    try:
        refused(ui, (*evil, "line3-inspect.plant.example"))
        p = ui.port
        answered(ui, (f"127.0.0.1:{p}", "127.0.0.1", f"localhost:{p}", "LOCALHOST", f"[::1]:{p}"))
    finally:
        ui.stop()
    ui = Ui("--publish", nowhere(tmp_path), "--allowed-host", "Line3-Inspect.plant.example")
    try:
        refused(ui, evil)
        answered(ui, (f"line3-inspect.plant.example:{ui.port}", "line3-inspect.plant.example.", "127.0.0.1"))
    finally:
        ui.stop()
    # Bound to every address: an IP literal of the address the connection arrived on is the page's own
    # origin (rebinding needs a name); any other name or address is refused.
    ui = Ui("--host", "0.0.0.0", "--token", "t0ken", "--publish", nowhere(tmp_path))
    try:
        auth = {"Authorization": "Bearer t0ken"}
        code, _, _ = ui.request(
            "GET", "/api/state", {**auth, "Host": f"127.0.0.2:{ui.port}"}, connect="127.0.0.2"
        )
        assert code == 200
        for host in (f"127.0.0.3:{ui.port}", f"evil.example:{ui.port}"):
            code, _, _ = ui.request("GET", "/api/state", {**auth, "Host": host}, connect="127.0.0.2")
            assert code == 400, host
    finally:
        ui.stop()


def test_half_sent_requests_neither_starve_the_page_nor_stay_open(tmp_path: Path):
    ui = Ui("--publish", nowhere(tmp_path))
    socks: list[Any] = []
    try:
        socks = half_sent(ui.host, ui.port, 1000)
        t0 = time.monotonic()
        code, _ = ui.get("/api/state")
        took = time.monotonic() - t0
        print(f"a real request beside 1000 half-sent ones: {code} in {took:.3f} s")
        assert code == 200 and took < 3.0
        # At most 64 connections may wait for a request head (the oldest are closed first) ...
        wait_until(lambda: still_open(socks) <= 64, 5, "the oldest half-sent connections to be closed")
        # ... and none of them for more than 10 s.
        wait_until(lambda: still_open(socks) == 0, 15, "every half-sent connection to be closed")
        assert ui.get("/api/state")[0] == 200
        # A request head larger than 16 kB is refused, not buffered.
        code, _, _ = ui.request("GET", "/api/state", {"X-Big": "x" * 20_000})
        assert code == 431
        s = socket.create_connection((ui.host, ui.port), timeout=10)  # ... and one that never ends, too
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"x" * 20_000)
        assert s.recv(100).startswith(b"HTTP/1.1 400")
        s.close()
    finally:
        for s in socks:
            s.close()
        ui.stop()


def test_wrong_tokens_are_limited_per_client_address(tmp_path: Path):
    ui = Ui("--publish", nowhere(tmp_path), "--token", "s3cret-token")
    try:
        right, wrong = {"Authorization": "Bearer s3cret-token"}, {"Authorization": "Bearer guess"}
        assert ui.get("/api/state", right)[0] == 200
        assert ui.get("/api/state")[0] == 401  # no token at all: not an attempt
        for _ in range(4):
            assert ui.get("/api/state", wrong)[0] == 401
        code, headers, body = ui.request("GET", "/api/state", wrong)
        assert code == 429, (code, body)
        assert 1 <= int(headers["retry-after"]) <= 60
        # While limited, even the right token is refused from that address (a guess could not be told apart).
        assert ui.get("/api/state", right)[0] == 429
        assert ui.get("/?token=s3cret-token")[0] == 429
        assert ui.get("/api/state", {"Cookie": "inspector_token=s3cret-token"})[0] == 429
        # Another address is not affected, and has its own count.
        code, _, _ = ui.request("GET", "/api/state", right, source="127.0.0.2")
        assert code == 200
        for _ in range(5):
            code, _, _ = ui.request("GET", "/?token=guess", source="127.0.0.3")
        assert code == 429
        code, _, _ = ui.request("GET", "/?token=s3cret-token", source="127.0.0.3")
        assert code == 429
        code, headers, _ = ui.request("GET", "/?token=s3cret-token", source="127.0.0.4")
        assert code == 303 and "inspector_token=" in headers["set-cookie"]
    finally:
        ui.stop()


def test_evidence_is_computed_only_on_a_post_with_the_csrf_token(tmp_path: Path, tiny_engines: Path, pool):
    root = tmp_path / "archive"
    (n,) = add_entries(root, [{"seq": 1, "verdict": "FAIL", "camera_id": "c", "frame_id": 1}], pool[1])
    from inspector.archive.store import Archive

    a = Archive(root, readonly=True)
    evidence = a.path(a.get(n) or {}, "evidence")
    a.close()
    assert evidence is not None
    ui = Ui("--archive", str(root), "--publish", nowhere(tmp_path), "--engines", str(tiny_engines))
    try:
        url = f"/api/image/{n}/evidence"
        # What a cross-site <img src=...> sends: nothing is computed, nothing written.
        cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
        for headers in ({}, cross):
            code, resp, _ = ui.request("GET", url, headers)
            assert code == 404, code
            assert resp["cross-origin-resource-policy"] == "same-origin"
        time.sleep(0.5)
        assert not evidence.exists()
        token = ui.csrf()
        assert len(token) >= 32
        for headers in (
            {},
            {"X-CSRF-Token": "wrong"},
            {"X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"},
            {"X-CSRF-Token": token, "Origin": "http://evil.example"},
        ):
            code, _, _ = ui.post(url, headers=headers)
            assert code == 403, headers
        assert not evidence.exists()
        code, _, body = ui.post(url, headers={"X-CSRF-Token": token, "Origin": f"http://127.0.0.1:{ui.port}"})
        assert code == 200, body
        assert json.loads(body)["url"] == url and evidence.is_file()
        code, png = ui.get(url)
        assert code == 200
        img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[:2] == pool[1].shape
        listed = ui.json("/api/rejects?verdict=FAIL")["entries"][0]
        assert listed["has_evidence"] is True
    finally:
        ui.stop()


def _publisher(tmp_path: Path) -> tuple[zmq.Context, zmq.Socket, str]:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    endpoint = f"ipc://{tmp_path}/verdicts.sock"
    pub.bind(endpoint)
    return ctx, pub, endpoint


def _send(pub: zmq.Socket, topic: bytes, body: dict[str, Any]) -> None:
    pub.send_multipart([topic, json.dumps(body).encode()])


def test_state_is_bounded_and_shift_totals_come_from_the_daemons_counters(tmp_path: Path):
    """159 camera ids never make a 159-row table; totals survive a page restart (the daemon's counters)."""
    ctx, pub, endpoint = _publisher(tmp_path)
    started_ns = time.time_ns() - 3_600_000_000_000
    counters = {"PASS": 9000, "FAIL": 40, "ERROR": 7, "TIMEOUT": 2, "DROPPED": 1}

    def beat(ui: Ui) -> dict[str, Any]:
        hb = {"type": "heartbeat", "v": 1, "daemon_id": "d1", "model_version": "m", "ready": True,
              "interval_s": 0.2, "last_seq": 0, "verdicts": counters, "started_ns": started_ns,
              "cameras": {f"h{i}": {"state": "ok"} for i in range(200)}}  # fmt: skip
        box: dict[str, Any] = {}

        def heard() -> bool:
            _send(pub, b"heartbeat", hb)
            box.update(ui.json("/api/state"))
            return bool(box["daemon"]["heard"])

        wait_until(heard, 15, "the page to hear a heartbeat")
        return box

    ui = Ui("--publish", endpoint)
    try:
        beat(ui)
        sent: dict[str, int] = dict.fromkeys(VERDICTS, 0)
        for i in range(159):
            kind = VERDICTS[i % 5]
            sent[kind] += 1
            _send(
                pub,
                b"verdict",
                {"seq": i + 1, "camera_id": f"cam-{i:03d}", "verdict": kind, "reject": kind != "PASS"},
            )
        wait_until(lambda: ui.json("/api/state")["last_seq"] == 159, 10, "the page to hear 159 verdicts")
        s = ui.json("/api/state")
        assert len(s["cameras"]) <= 64 and len(s["camera_health"]) <= 64
        assert set(s["cameras"]) == {f"cam-{i:03d}" for i in range(95, 159)}  # the most recently seen
        other = s["cameras_other"]
        assert other["folded"] >= 95
        for k in VERDICTS:
            assert sum(c[k] for c in s["cameras"].values()) + other["counts"][k] == sent[k]
        assert len(json.dumps(s)) < 40_000
        # Totals: the daemon's counters and start, not what this page happened to hear.
        t = s["totals"]
        assert t["source"] == "daemon" and t["counts"] == counters and t["total"] == sum(counters.values())
        assert abs(datetime.fromisoformat(t["since"]).timestamp() * 1e9 - started_ns) < 1e6
        assert s["page_counts"] == sent
    finally:
        ui.stop()
    ui = Ui("--publish", endpoint)  # a restarted page: the totals carry on
    try:
        t = beat(ui)["totals"]
        assert t["counts"] == counters and t["source"] == "daemon"
    finally:
        ui.stop()
        pub.close(0)
        ctx.term()


def test_the_archive_is_filtered_and_paged_with_zoned_times(tmp_path: Path):
    root = tmp_path / "archive"
    now_ns = time.time_ns()
    rows = sample_archive(root, now_ns)
    ui = Ui("--archive", str(root), "--publish", nowhere(tmp_path))
    try:

        def want(camera=None, verdicts=("FAIL", "ERROR", "TIMEOUT", "DROPPED"), since=None, until=None):
            got = [
                r
                for r in rows
                if (camera is None or r["camera_id"] == camera)
                and r["verdict"] in verdicts
                and (since is None or r["published_ns"] >= since)
                and (until is None or r["published_ns"] < until)
            ]
            return [r["id"] for r in sorted(got, key=lambda r: -r["published_ns"])]

        r = ui.json("/api/rejects?camera=c1&verdict=FAIL&limit=100")
        assert [e["id"] for e in r["entries"]] == want("c1", ("FAIL",)) and r["total"] == len(
            want("c1", ("FAIL",))
        )
        r = ui.json("/api/rejects?verdict=ERROR&verdict=TIMEOUT&limit=100")
        assert [e["id"] for e in r["entries"]] == want(verdicts=("ERROR", "TIMEOUT"))
        r = ui.json("/api/rejects?verdict=PASS&limit=100")  # the sampled PASS, on request only
        assert r["total"] == 10
        two_h = now_ns - 2 * 3600 * 10**9
        r = ui.json("/api/rejects?since=2h&limit=100")  # the entry exactly 2 h before now_ns is just out
        assert [e["id"] for e in r["entries"]] == want(since=two_h + 1) and r["total"] == len(
            want(since=two_h + 1)
        )
        # ISO 8601 with a zone: +01:00 and Z name the same instant.
        cut = datetime.fromtimestamp((now_ns - 3 * 3600 * 10**9) / 1e9, UTC).replace(microsecond=0)
        plus1 = cut.astimezone(timezone(timedelta(hours=1))).isoformat()
        for since in (plus1.replace("+", "%2B"), cut.isoformat().replace("+00:00", "Z")):
            r = ui.json(f"/api/rejects?since={since}&until=1h&limit=100")
            assert [e["id"] for e in r["entries"]] == want(
                since=int(cut.timestamp() * 1e9), until=now_ns - 3600 * 10**9 + 1
            ), since
        for bad in ("since=2026-12-01T06:00", "since=yesterday", "until=2026-13-01T00:00Z", "since=1h&since=2h",
                    "verdict=MAYBE", "verdict=FAIL&verdict=FAIL", "offset=-1", "limit=101", "review=great"):  # fmt: skip
            code, body = ui.get(f"/api/rejects?{bad}")
            assert code == 400, (bad, code, body)
        # Paging: pinned to the entries there were at the first page, so new rejects do not shift the pages.
        first = ui.json("/api/rejects?limit=7")
        seen = [e["id"] for e in first["entries"]]
        add_entries(
            root,
            [{"seq": 999, "verdict": "FAIL", "camera_id": "c1", "frame_id": "new", "published_ns": now_ns}],
        )
        offset = 7
        while offset < first["total"]:
            page = ui.json(f"/api/rejects?limit=7&offset={offset}&max_id={first['max_id']}")
            assert page["total"] == first["total"]
            seen += [e["id"] for e in page["entries"]]
            offset += 7
        assert seen == want()
        assert ui.json("/api/rejects?limit=7")["total"] == first["total"] + 1
        # Every time carries its zone, and says the same instant as the ns it came from.
        for e in first["entries"]:
            t = datetime.fromisoformat(e["published"])
            assert t.utcoffset() is not None and abs(t.timestamp() * 1e9 - e["published_ns"]) < 1e6
        s = ui.json("/api/state")
        for k in (s["now"], s["page_started"], s["totals"]["since"]):
            assert datetime.fromisoformat(k).utcoffset() is not None
    finally:
        ui.stop()


def test_review_marks_are_the_pages_own_with_who_and_when(tmp_path: Path):
    root = tmp_path / "archive"
    rows = sample_archive(root, time.time_ns())
    index = root / "index.sqlite3"
    before = hashlib.sha256(index.read_bytes()).hexdigest()
    ui = Ui("--archive", str(root), "--publish", nowhere(tmp_path))
    fail = next(r["id"] for r in reversed(rows) if r["verdict"] == "FAIL")
    err = next(r["id"] for r in reversed(rows) if r["verdict"] == "ERROR")
    try:
        token = ui.csrf()
        mark = {"mark": "false_reject", "note": "flash reflection", "by": "Anna K."}
        url = f"/api/reviews/{fail}"
        assert ui.post(url, mark)[0] == 403  # no CSRF token
        assert ui.post(url, mark, {"X-CSRF-Token": "nope"})[0] == 403
        h = {"X-CSRF-Token": token}
        for bad in ({**mark, "by": ""}, {**mark, "by": " "}, {"mark": "false_reject"}, {**mark, "mark": "pass"},
                    {**mark, "note": "x" * 501}, {**mark, "by": "x" * 65}):  # fmt: skip
            assert ui.post(url, bad, h)[0] == 400, bad
        assert ui.post(url, mark, {**h, "Content-Type": "text/plain"})[0] == 415
        assert ui.post("/api/reviews/99999", mark, h)[0] == 404
        t0 = datetime.now(UTC)
        code, _, body = ui.post(url, mark, h)
        assert code == 200, body
        r = json.loads(body)["review"]
        at = datetime.fromisoformat(r["at"])
        assert r["by"] == "Anna K." and r["mark"] == "false_reject" and r["note"] == "flash reflection"
        assert at.utcoffset() is not None and abs((at - t0).total_seconds()) < 5
        assert ui.post(f"/api/reviews/{err}", {"mark": "confirmed_defect", "by": "Ben"}, h)[0] == 200
        code, _, body = ui.post(url, {"mark": "unsure", "by": "Chris", "note": "second look"}, h)
        assert code == 200
        history = ui.json(url)["reviews"]
        assert [(x["mark"], x["by"]) for x in history] == [("false_reject", "Anna K."), ("unsure", "Chris")]
        # The card shows the latest; filters select by it.
        e = next(e for e in ui.json("/api/rejects?limit=100")["entries"] if e["id"] == fail)
        assert e["review"]["mark"] == "unsure" and e["review"]["by"] == "Chris"
        assert [e["id"] for e in ui.json("/api/rejects?review=unsure")["entries"]] == [fail]
        assert ui.json("/api/rejects?review=false_reject")["total"] == 0
        assert [e["id"] for e in ui.json("/api/rejects?review=reviewed")["entries"]] == sorted(
            [fail, err], reverse=True
        )
        unreviewed = ui.json("/api/rejects?review=unreviewed&limit=100")
        assert unreviewed["total"] == 48 and fail not in [e["id"] for e in unreviewed["entries"]]
    finally:
        ui.stop()
    # In the page's own file beside the archive, never in the daemon's index; kept across a restart.
    assert (tmp_path / "operator-page" / "reviews.sqlite").is_file()
    assert hashlib.sha256(index.read_bytes()).hexdigest() == before
    ui = Ui("--archive", str(root), "--publish", nowhere(tmp_path))
    try:
        assert ui.json("/api/rejects?review=unsure")["entries"][0]["id"] == fail
    finally:
        ui.stop()
    elsewhere = tmp_path / "state"
    ui = Ui("--archive", str(root), "--publish", nowhere(tmp_path), "--state-dir", str(elsewhere))
    try:
        assert ui.json("/api/rejects?review=reviewed")["total"] == 0
        assert (
            ui.post(
                f"/api/reviews/{fail}", {"mark": "confirmed_defect", "by": "D"}, {"X-CSRF-Token": ui.csrf()}
            )[0]
            == 200
        )
    finally:
        ui.stop()
    assert (elsewhere / "reviews.sqlite").is_file()


def test_a_selection_is_exported_as_a_zip(tmp_path: Path):
    root = tmp_path / "archive"
    now_ns = time.time_ns()
    rows = sample_archive(root, now_ns)
    ui = Ui("--archive", str(root), "--publish", nowhere(tmp_path))
    try:
        token = ui.csrf()
        fail = next(r["id"] for r in reversed(rows) if r["verdict"] == "FAIL" and r["camera_id"] == "c1")
        assert (
            ui.post(
                f"/api/reviews/{fail}", {"mark": "confirmed_defect", "by": "Anna"}, {"X-CSRF-Token": token}
            )[0]
            == 200
        )
        q = "/api/export?camera=c1&verdict=FAIL&since=4h"
        assert ui.get(q)[0] == 405  # never a GET
        assert ui.post(q)[0] == 403
        code, headers, body = ui.post(q, headers={"X-CSRF-Token": token})
        assert code == 200, body[:300]
        assert headers["content-type"] == "application/zip" and "attachment" in headers["content-disposition"]
        want = {r["id"] for r in rows if r["camera_id"] == "c1" and r["verdict"] == "FAIL"
                and r["published_ns"] > now_ns - 4 * 3600 * 10**9}  # fmt: skip
        z = zipfile.ZipFile(io.BytesIO(body))
        lines = [json.loads(x) for x in z.read("verdicts.jsonl").decode().splitlines()]
        assert {x["id"] for x in lines} == want
        assert int(headers["x-entries"]) == len(lines)
        assert all(x["verdict"]["camera_id"] == "c1" and x["verdict"]["verdict"] == "FAIL" for x in lines)
        pngs = [n for n in z.namelist() if n.endswith(".png")]
        assert len(pngs) == len(lines)
        reviews = [json.loads(x) for x in z.read("reviews.jsonl").decode().splitlines()]
        assert [(x["entry_id"], x["mark"], x["by"]) for x in reviews] == [(fail, "confirmed_defect", "Anna")]
        sel = json.loads(z.read("selection.json"))
        assert sel["camera"] == "c1" and sel["verdicts"] == ["FAIL"] and sel["entries"] == len(lines)
        assert datetime.fromisoformat(sel["since"]).utcoffset() is not None
    finally:
        ui.stop()


def test_the_http_surface_refuses_traversal_bad_parameters_and_missing_tokens(tmp_path: Path):
    from inspector.archive.store import Archive

    root = tmp_path / "archive"
    a = Archive(root)
    a.add({"seq": 1, "verdict": "FAIL", "camera_id": "c", "frame_id": 1}, np.zeros((8, 8), np.uint8), None)
    with a.db:  # a tampered row must not open a file outside the archive
        a.add(
            {"seq": 2, "verdict": "FAIL", "camera_id": "c", "frame_id": 2}, np.zeros((8, 8), np.uint8), None
        )
        a.db.execute("UPDATE entries SET received = '../../../../etc/passwd' WHERE seq = 2")
    a.close()
    secret = (tmp_path / "secret.txt").resolve()
    secret.write_text("not for the page")
    ui = Ui("--archive", str(root), "--publish", nowhere(tmp_path), "--token", "s3cret")
    try:
        auth = {"Authorization": "Bearer s3cret"}
        assert ui.get("/api/state")[0] == 401
        assert ui.get("/api/state", {"Authorization": "Bearer wrong"})[0] == 401
        assert ui.get("/api/state", auth)[0] == 200
        assert ui.get("/?token=wrong")[0] == 401
        assert ui.get("/?token=s3cret")[0] == 303  # sets the cookie
        assert ui.get("/api/state", {"Cookie": "inspector_token=s3cret"})[0] == 200
        assert ui.get("/api/image/1/received", auth)[0] == 200
        for path in (
            "/static/../../../../etc/passwd",
            "/static/..%2f..%2f..%2fetc%2fpasswd",
            "/api/image/1/../../../../etc/passwd",
            f"/api/image/1/received/../../../..{secret}",
            "/api/image/1/secret",
            "/api/image/-1/received",
            "/api/image/99999999999999999999/received",
            "/etc/passwd",
            "/index.html/../../etc/passwd",
        ):
            code, body = ui.get(path, auth)
            assert 400 <= code < 500, (path, code)
            assert b"root:" not in body and b"not for the page" not in body
        assert ui.get("/api/image/2/received", auth)[0] == 403  # the tampered row
        token = ui.csrf(auth)
        code, _, _ = ui.post("/api/image/2/evidence", headers={**auth, "X-CSRF-Token": token})
        assert code in (403, 409)  # refused: outside the archive (or no engine set here)
        for q in (
            "limit=abc",
            "limit=0",
            "limit=100000",
            "limit=1&limit=2",
            "camera=" + "x" * 65,
            "camera=a/b",
            "offset=99999999",
            "max_id=x",
        ):
            assert ui.get(f"/api/rejects?{q}", auth)[0] == 400, q
        assert ui.get("/api/rejects?" + "&".join(f"k{i}=1" for i in range(50)), auth)[0] == 400
        assert ui.get("/api/state?" + "x" * 5000, auth)[0] == 414
        assert ui.get("/api/rejects?limit=5&camera=c", auth)[0] == 200
        for method in ("PUT", "DELETE", "PATCH"):
            code, _, _ = ui.request(
                method, "/api/state", {**auth, "X-CSRF-Token": token, "Content-Length": "0"}
            )
            assert code == 405, method
    finally:
        ui.stop()
    r = subprocess.run(
        [sys.executable, "-m", "inspector", "ui", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "INSPECTOR_UI_TOKEN"},
    )
    assert r.returncode == 2 and "without a token" in r.stderr
