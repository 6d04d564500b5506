"""The operator page in a real headless browser (Debian's chromium + chromedriver, driven by Selenium),
against the real daemon and archive; and its HTTP surface against hostile requests."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.system.harness import Daemon
from tests.system.test_faults import wait_until

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


class Ui:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inspector", "ui", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line.startswith("operator page: "), line + (
            self.proc.stdout.read() if self.proc.stdout else ""
        )
        self.url = line.split(": ", 1)[1].strip()
        self.host, self.port = self.url.split("//")[1].rstrip("/").split(":")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        c = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        c.putrequest("GET", path, skip_accept_encoding=True)  # the path goes out as written (no normalising)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def browser(width: int, height: int):
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
        f"--window-size={width},{height}",
    ):
        o.add_argument(flag)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=o, service=Service(CHROMEDRIVER))


def page_counts(drv) -> dict[str, int]:
    """The counts as the page shows them (read in one script: the page re-renders every second)."""
    return drv.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#counts .count')]"
        ".map(e => [e.dataset.verdict, parseInt(e.querySelector('b').textContent)]))"
    )


def test_the_page_shows_live_counts_and_new_rejects_in_a_real_browser(
    tmp_path: Path, tiny_engines: Path, pool
):
    from selenium.webdriver.common.by import By

    root = tmp_path / "archive"
    d = Daemon(tmp_path, tiny_engines, [f"archive.dir={root}", "archive.min_free_mb=0"])
    ui = drv = None
    try:
        d.wait_ready()
        ui = Ui("--archive", str(root), "--publish", d.publish, "--engines", str(tiny_engines))
        drv = browser(1366, 768)
        drv.get(ui.url)
        wait_until(lambda: "READY" in drv.find_element(By.ID, "status").text, 15, "the page to say READY")
        for i in range(30):
            d.send_frame(pool[i % len(pool)], f"f{i}")
        d.wait_verdicts(30, 60)
        want = Counter(v["verdict"] for v in d.verdicts)
        wait_until(
            lambda: (
                page_counts(drv)
                == {k: want.get(k, 0) for k in ("PASS", "FAIL", "ERROR", "TIMEOUT", "DROPPED")}
            ),
            10,
            f"the page's counts to match the verdicts {dict(want)}",
        )
        # A new reject appears in the gallery within 2 s of its verdict.
        for i in range(20):
            n = len(d.verdicts)
            d.send_frame(pool[i % len(pool)], f"late{i}")
            d.wait_verdicts(n + 1, 30)
            v = d.verdicts[-1]
            if v["verdict"] == "FAIL":
                break
        assert v["verdict"] == "FAIL", "no FAIL among 20 frames"
        t_verdict = time.monotonic()
        wait_until(
            lambda: bool(drv.find_elements(By.CSS_SELECTOR, f'#gallery [data-frame="{v["frame_id"]}"]')),
            5,
            "the new reject in the gallery",
        )
        elapsed = time.monotonic() - t_verdict
        print(f"new reject on the page {elapsed:.2f} s after its verdict")
        assert elapsed <= 2.0, elapsed
        card = drv.find_element(By.CSS_SELECTOR, f'#gallery [data-frame="{v["frame_id"]}"]')
        assert "FAIL" in card.text and "score" in card.text and "threshold" in card.text
        imgs = card.find_elements(By.TAG_NAME, "img")
        assert imgs and all(drv.execute_script("return arguments[0].naturalWidth", im) > 0 for im in imgs)
        # Where the classifier looked: computed on click, shown in the card.
        card.find_element(By.TAG_NAME, "button").click()
        wait_until(
            lambda: any(
                "evidence" in (im.get_attribute("src") or "")
                and drv.execute_script("return arguments[0].naturalWidth", im) > 0
                for im in card.find_elements(By.TAG_NAME, "img")
            ),
            30,
            "the evidence map",
        )
        assert drv.find_element(By.CSS_SELECTOR, "#plot rect.bar")  # this minute's reject rate
        drv.save_screenshot(str(tmp_path / "operator-page-1366x768.png"))
        # Every script and style came from the page's own server; no console errors.
        srcs = drv.execute_script(
            "return [...document.scripts].map(s => s.src).concat([...document.styleSheets].map(s => s.href))"
        )
        assert srcs and all(s.startswith(ui.url.rstrip("/")) for s in srcs), srcs
        errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        # A phone: no sideways scrolling.
        drv.set_window_size(390, 844)
        time.sleep(0.5)
        assert drv.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        drv.save_screenshot(str(tmp_path / "operator-page-phone.png"))
        assert (tmp_path / "operator-page-1366x768.png").stat().st_size > 10_000
    finally:
        if drv is not None:
            drv.quit()
        if ui is not None:
            ui.stop()
        assert d.stop() == 0


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
    ui = Ui("--archive", str(root), "--publish", f"ipc://{tmp_path}/none.sock", "--token", "s3cret")
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
        for q in (
            "limit=abc",
            "limit=0",
            "limit=100000",
            "limit=1&limit=2",
            "camera=" + "x" * 65,
            "camera=a/b",
        ):
            assert ui.get(f"/api/rejects?{q}", auth)[0] == 400, q
        assert ui.get("/api/rejects?" + "&".join(f"k{i}=1" for i in range(50)), auth)[0] == 400
        assert ui.get("/api/state?" + "x" * 5000, auth)[0] == 414
        assert ui.get("/api/rejects?limit=5&camera=c", auth)[0] == 200
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
