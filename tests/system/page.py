"""Helpers for the operator page's tests: ``inspector ui`` as a process, raw HTTP to it, headless Chromium."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


class Ui:
    """``inspector ui --port 0 ARGS``: its URL from the first line; the rest of its output drained and kept."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inspector", "ui", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.output: list[str] = [line]
        if not line.startswith("operator page: "):
            self.proc.wait(10)
            raise AssertionError(line + self.proc.stdout.read())
        self.url = line.split(": ", 1)[1].strip()
        self.host, port = self.url.split("//")[1].rstrip("/").rsplit(":", 1)
        self.port = int(port)
        # A full pipe would stall the page's event loop on a log line: read it all, always.
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        source: str | None = None,
        connect: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request as written (the path is not normalised), from ``source`` to ``connect`` if given."""
        c = http.client.HTTPConnection(
            connect or self.host, self.port, timeout=30, source_address=(source, 0) if source else None
        )
        c.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        if body is not None:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        code, _, body = self.request("GET", path, headers)
        return code, body

    def json(self, path: str, headers: dict[str, str] | None = None) -> Any:
        code, body = self.get(path, headers)
        assert code == 200, (path, code, body[:300])
        return json.loads(body)

    def post(
        self, path: str, obj: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        h = dict(headers or {})
        body = None
        if obj is not None:
            body = json.dumps(obj).encode()
            h.setdefault("Content-Type", "application/json")
        return self.request("POST", path, h, body if body is not None else b"")

    def csrf(self, headers: dict[str, str] | None = None) -> str:
        return str(self.json("/api/state", headers)["csrf"])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(15)
        self.drain.join(5)
        return code


def half_sent(host: str, port: int, n: int) -> list[socket.socket]:
    """``n`` connections, each with half a request head sent and never finished."""
    out = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"GET /api/state HTTP/1.1\r\nHost: " + host.encode() + b"\r\nX-Slow: ")
        out.append(s)
    return out


def still_open(socks: list[socket.socket]) -> int:
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            n += s.recv(1) != b""
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def browser(width: int, height: int, tz: str | None = None, downloads: Path | None = None):
    """Debian's headless Chromium through Selenium; ``tz`` sets the browser's time zone."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("CI") or os.environ.get("INSPECTOR_REQUIRE_DATA"):
            pytest.fail(
                "chromium/chromedriver missing: make test installs them (apt: chromium chromium-driver)"
            )
        pytest.skip("no /usr/bin/chromium + /usr/bin/chromedriver (apt install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--lang=en-GB",
        f"--window-size={width},{height}",
    ):
        o.add_argument(flag)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    env = {**os.environ, **({"TZ": tz} if tz else {})}
    drv = webdriver.Chrome(options=o, service=Service(CHROMEDRIVER, env=env))
    if downloads is not None:
        drv.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
    return drv


def page_counts(drv) -> dict[str, int]:
    """The shift totals as the page shows them (read in one script: the page re-renders every second)."""
    return drv.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#counts .count')]"
        ".map(e => [e.dataset.verdict, parseInt(e.querySelector('b').textContent)]))"
    )


def add_entries(
    root: Path, rows: list[dict[str, Any]], image: np.ndarray | list[np.ndarray] | None = None
) -> list[int]:
    """Archive rows the way the daemon's archive worker does (``Archive.add``); returns their ids.

    FAIL and PASS rows get pixels (``image``, or each of a list in turn), the others none."""
    from inspector.archive.store import Archive

    imgs = (
        image if isinstance(image, list) else [image if image is not None else np.zeros((32, 32), np.uint8)]
    )
    a = Archive(root)
    try:
        return [
            a.add(r, imgs[i % len(imgs)] if r.get("verdict") in ("FAIL", "PASS") else None, None)
            for i, r in enumerate(rows)
        ]
    finally:
        a.close()


def sample_archive(root: Path, now_ns: int, images: list[np.ndarray] | None = None) -> list[dict[str, Any]]:
    """60 entries, one every 5 min up to ``now_ns``: cameras c1/c2, FAIL ERROR TIMEOUT DROPPED FAIL PASS in turn."""
    rows = []
    for i in range(60):
        rows.append(
            {
                "seq": i + 1,
                "verdict": ("FAIL", "ERROR", "TIMEOUT", "DROPPED", "FAIL", "PASS")[i % 6],
                "camera_id": f"c{i % 2 + 1}",
                "frame_id": f"f{i}",
                "published_ns": now_ns - (60 - i) * 5 * 60 * 10**9,  # every 5 min over the last 5 h
                "reason": None if i % 6 in (0, 4, 5) else "bad_header: test",
                "defect_score": 0.9,
                "threshold": 0.5,
            }
        )
    ids = add_entries(root, rows, images)
    return [r | {"id": n} for r, n in zip(rows, ids, strict=True)]
