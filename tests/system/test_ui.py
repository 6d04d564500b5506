"""The operator page in a real headless browser (Debian's chromium + chromedriver, driven by Selenium),
against the real daemon and archive. Its HTTP surface under hostile requests: test_ui_http.py.

``INSPECTOR_UI_SCREENSHOTS=<folder>`` also writes the screenshots there (how docs/operator-page*.png are made).
"""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.system.harness import Daemon
from tests.system.page import Ui, browser, page_counts, sample_archive
from tests.system.test_faults import wait_until

pytestmark = pytest.mark.slow
VERDICTS = ("PASS", "FAIL", "ERROR", "TIMEOUT", "DROPPED")
ZONE = "Asia/Tokyo"  # not the machine's zone: the page must show the browser's, and name it


def local(iso: str, zone: str) -> str:
    """What the page should show for an ISO time in a browser in ``zone`` (without the zone's name)."""
    return datetime.fromisoformat(iso).astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")


def shoot(drv, tmp_path: Path, name: str) -> None:
    drv.save_screenshot(str(tmp_path / name))
    assert (tmp_path / name).stat().st_size > 10_000
    if os.environ.get("INSPECTOR_UI_SCREENSHOTS"):
        shutil.copyfile(tmp_path / name, Path(os.environ["INSPECTOR_UI_SCREENSHOTS"]) / name)


def review_of(drv, card) -> tuple[str, str]:
    """A card's review line and its time (read in one script: saving a mark replaces the line)."""
    text, iso = drv.execute_script(
        "const r = arguments[0].querySelector('.review'), t = r.querySelector('time');"
        " return [r.textContent, t ? t.dateTime : '']",
        card,
    )
    return text, iso


def no_console_errors(drv, url: str) -> None:
    srcs = drv.execute_script(
        "return [...document.scripts].map(s => s.src).concat([...document.styleSheets].map(s => s.href))"
    )
    assert srcs and all(s.startswith(url.rstrip("/")) for s in srcs), srcs
    errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_the_page_shows_the_shift_new_rejects_evidence_and_marks_in_a_real_browser(
    tmp_path: Path, tiny_engines: Path, pool
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    root = tmp_path / "archive"
    d = Daemon(tmp_path, tiny_engines, [f"archive.dir={root}", "archive.min_free_mb=0"])
    ui = drv = None
    args = ("--archive", str(root), "--publish", d.publish, "--engines", str(tiny_engines))
    try:
        d.wait_ready()
        for i in range(30):
            d.send_frame(pool[i % len(pool)], f"f{i}")
        d.wait_verdicts(30, 60)
        heard = Counter(v["verdict"] for v in d.verdicts)
        want = {k: heard.get(k, 0) for k in VERDICTS}
        # The page starts after those verdicts: its totals are the daemon's, not what it heard itself.
        ui = Ui(*args)
        drv = browser(1366, 768, tz=ZONE)
        drv.get(ui.url)
        wait_until(lambda: "READY" in drv.find_element(By.ID, "status").text, 15, "the page to say READY")
        wait_until(lambda: page_counts(drv) == want, 10, f"the shift totals to be the daemon's {want}")
        text, iso = drv.execute_script(  # in one script: the page re-renders it every second
            "const s = document.getElementById('since'); return [s.textContent, s.querySelector('time').dateTime]"
        )
        assert "daemon started" in text and f"{local(iso, ZONE)} " in text, (text, iso)
        assert ZONE in drv.find_element(By.ID, "zone").text
        # A restarted page: the totals carry on.
        ui.stop()
        ui = Ui(*args)
        drv.get(ui.url)
        drv.get_log("browser")  # the old page's last polls, refused while it restarted
        wait_until(lambda: page_counts(drv) == want, 15, "the totals after a page restart")
        # A new defect reject appears within 2 s of its verdict.
        for i in range(20):
            n = len(d.verdicts)
            d.send_frame(pool[i % len(pool)], f"late{i}")
            d.wait_verdicts(n + 1, 30)
            v = d.verdicts[-1]
            if v["verdict"] == "FAIL":
                break
        assert v["verdict"] == "FAIL", "no FAIL among 20 frames"
        t_verdict = time.monotonic()
        sel = f'#gallery [data-frame="{v["frame_id"]}"]'
        wait_until(lambda: bool(drv.find_elements(By.CSS_SELECTOR, sel)), 5, "the new reject in the gallery")
        elapsed = time.monotonic() - t_verdict
        print(f"new reject on the page {elapsed:.2f} s after its verdict")
        assert elapsed <= 2.0, elapsed
        card = drv.find_element(By.CSS_SELECTOR, sel)
        assert "FAIL" in card.text and "score" in card.text and "threshold" in card.text
        stamp = card.find_element(By.TAG_NAME, "time")
        assert stamp.get_attribute("datetime").endswith("+00:00")
        shown, zone = stamp.text.rsplit(" ", 1)
        assert shown == local(stamp.get_attribute("datetime"), ZONE) and zone and zone != "UTC", stamp.text
        imgs = card.find_elements(By.TAG_NAME, "img")
        assert imgs and all(drv.execute_script("return arguments[0].naturalWidth", im) > 0 for im in imgs)
        # Where the classifier looked: computed on a click (a POST with the page's CSRF token).
        card.find_element(By.CSS_SELECTOR, "button.evidence-btn").click()
        wait_until(
            lambda: any(
                "evidence" in (im.get_attribute("src") or "")
                and drv.execute_script("return arguments[0].naturalWidth", im) > 0
                for im in card.find_elements(By.TAG_NAME, "img")
            ),
            30,
            "the evidence map",
        )
        # A review mark with who and when.
        card.find_element(By.CSS_SELECTOR, "details summary").click()
        Select(card.find_element(By.NAME, "mark")).select_by_value("confirmed_defect")
        card.find_element(By.NAME, "note").send_keys("crack at the hub")
        card.find_element(By.CSS_SELECTOR, "form.mark button").click()
        wait_until(lambda: "enter your name" in card.text, 5, "the page to ask who marks it")
        drv.find_element(By.ID, "reviewer").send_keys("Anna")
        card.find_element(By.CSS_SELECTOR, "form.mark button").click()
        wait_until(lambda: "confirmed defect" in review_of(drv, card)[0], 5, "the mark")
        text, iso = review_of(drv, card)
        assert "Anna" in text and "crack at the hub" in text and f"{local(iso, ZONE)} " in text, text
        assert drv.find_element(By.CSS_SELECTOR, "#plot rect.bar")  # this minute's reject rate
        drv.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.3)
        shoot(drv, tmp_path, "operator-page.png")
        no_console_errors(drv, ui.url)
        # A phone: no sideways scrolling.
        drv.set_window_size(390, 844)
        time.sleep(0.5)
        assert drv.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        shoot(drv, tmp_path, "operator-page-phone.png")
    finally:
        if drv is not None:
            drv.quit()
        if ui is not None:
            ui.stop()
        assert d.stop() == 0


def test_a_burst_of_errors_and_of_cameras_does_not_crowd_out_the_defect_rejects(
    tmp_path: Path, tiny_engines: Path, pool
):
    from selenium.webdriver.common.by import By

    from inspector.protocol import encode_frame

    root = tmp_path / "archive"
    d = Daemon(tmp_path, tiny_engines, [f"archive.dir={root}", "archive.min_free_mb=0"])
    ui = drv = None
    try:
        d.wait_ready()
        ui = Ui("--archive", str(root), "--publish", d.publish)
        drv = browser(1366, 768)
        drv.get(ui.url)
        wait_until(lambda: "READY" in drv.find_element(By.ID, "status").text, 15, "the page to say READY")
        for i in range(100):  # 100 camera ids
            d.send_frame(pool[i % len(pool)], f"p{i}", camera=f"cam-{i:03d}")
        d.wait_verdicts(100, 60)
        fails = [v["frame_id"] for v in d.verdicts if v["verdict"] == "FAIL"]
        assert fails, "no FAIL among 100 frames"
        # Then a burst of malformed frames: truncated payloads, each an ERROR.
        for i in range(60):
            header, payload = encode_frame(pool[0], "cam-000", f"bad{i}", time.time_ns())
            d.send([header, payload[:100]])
        d.wait_verdicts(160, 60)
        assert sum(v["verdict"] == "ERROR" for v in d.verdicts) >= 60

        def gallery() -> list[str]:
            return drv.execute_script(
                "return [...document.querySelectorAll('#gallery .reject')].map(e => e.dataset.frame)"
            )

        def errors() -> list[str]:
            return drv.execute_script(
                "return [...document.querySelectorAll('#errors tbody tr')].map(e => e.dataset.frame)"
            )

        latest = list(reversed(fails))[:12]
        wait_until(lambda: gallery() == latest, 10, f"the gallery to keep the latest FAILs {latest}")
        wait_until(lambda: errors() == [f"bad{i}" for i in range(59, 47, -1)], 10, "the latest errors apart")
        # The camera table: at most 64 rows by name and one "other" row; every verdict counted once.
        rows = drv.execute_script(
            "return [...document.querySelectorAll('#cameras tbody tr')].map(r => [r.dataset.camera,"
            " [...r.cells].slice(1, 6).map(c => parseInt(c.textContent))])"
        )
        named = [r for r in rows if r[0]]
        assert len(named) <= 64 and len(rows) == len(named) + 1, len(rows)
        totals = [sum(r[1][k] for r in rows) for k in range(5)]
        assert totals == [sum(v["verdict"] == k for v in d.verdicts) for k in VERDICTS]
    finally:
        if drv is not None:
            drv.quit()
        if ui is not None:
            ui.stop()
        assert d.stop() == 0


def test_the_archive_is_browsed_marked_and_exported_in_a_real_browser(tmp_path: Path, pool):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    root = tmp_path / "archive"
    now_ns = time.time_ns()
    rows = sample_archive(root, now_ns, pool)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    ui = Ui("--archive", str(root), "--publish", f"ipc://{tmp_path}/none.sock")
    drv = None
    zone = "Europe/Berlin"
    try:
        drv = browser(1366, 768, tz=zone, downloads=downloads)
        drv.get(ui.url)
        count = lambda: drv.find_element(By.ID, "archive-count").text  # noqa: E731
        ids = lambda: [int(x) for x in drv.execute_script(  # noqa: E731
            "return [...document.querySelectorAll('#archive .reject')].map(e => e.dataset.id)")]  # fmt: skip
        newest = sorted((r for r in rows if r["verdict"] != "PASS"), key=lambda r: -r["published_ns"])
        wait_until(lambda: count() == "1–24 of 50", 10, "the archive's first page")
        assert ids() == [r["id"] for r in newest[:24]]
        card = drv.find_element(By.CSS_SELECTOR, "#archive .reject")
        t = card.find_element(By.TAG_NAME, "time")
        assert t.text.startswith(local(t.get_attribute("datetime"), zone) + " ")
        # Paging.
        drv.find_element(By.ID, "older").click()
        wait_until(lambda: count() == "25–48 of 50", 5, "page 2")
        assert ids() == [r["id"] for r in newest[24:48]]
        drv.find_element(By.ID, "older").click()
        wait_until(lambda: count() == "49–50 of 50", 5, "page 3")
        assert drv.find_element(By.ID, "older").get_attribute("disabled") is not None
        drv.find_element(By.ID, "newer").click()
        wait_until(lambda: count() == "25–48 of 50", 5, "back to page 2")
        # Filters: one camera, FAIL only, a time range given in the browser's own zone.
        form = drv.find_element(By.ID, "filters")
        form.find_element(By.NAME, "camera").send_keys("c1")
        for box in form.find_elements(By.CSS_SELECTOR, 'input[name="verdict"]'):
            if box.is_selected() != (box.get_attribute("value") == "FAIL"):
                box.click()
        Select(form.find_element(By.NAME, "range")).select_by_value("custom")
        lo, hi = now_ns - 4 * 3600 * 10**9, now_ns - 3600 * 10**9
        berlin = lambda ns: datetime.fromtimestamp(ns / 1e9, ZoneInfo(zone)).strftime("%Y-%m-%dT%H:%M:%S")  # noqa: E731
        drv.execute_script(
            "arguments[0].value = arguments[2]; arguments[1].value = arguments[3];",
            form.find_element(By.NAME, "since"),
            form.find_element(By.NAME, "until"),
            berlin(lo - 10**9),
            berlin(hi + 10**9),
        )
        form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
        want = [
            r["id"]
            for r in newest
            if r["camera_id"] == "c1" and r["verdict"] == "FAIL" and lo <= r["published_ns"] <= hi
        ]
        wait_until(lambda: count() == f"1–{len(want)} of {len(want)}", 5, f"{len(want)} entries")
        assert ids() == want
        # A mark from the archive, then the marked ones alone.
        drv.find_element(By.ID, "reviewer").send_keys("Ben")
        card = drv.find_element(By.CSS_SELECTOR, f'#archive .reject[data-id="{want[1]}"]')
        card.find_element(By.CSS_SELECTOR, "details summary").click()
        Select(card.find_element(By.NAME, "mark")).select_by_value("false_reject")
        card.find_element(By.NAME, "note").send_keys("glare")
        card.find_element(By.CSS_SELECTOR, "form.mark button").click()
        wait_until(lambda: "false reject" in review_of(drv, card)[0], 5, "the mark")
        assert "Ben" in review_of(drv, card)[0]
        drv.execute_script("document.getElementById('archive-h').scrollIntoView()")
        time.sleep(0.3)
        shoot(drv, tmp_path, "operator-page-archive.png")
        Select(form.find_element(By.NAME, "review")).select_by_value("false_reject")
        form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
        wait_until(lambda: count() == "1–1 of 1", 5, "the one marked entry")
        assert ids() == [want[1]]
        # Export what is selected: a zip with that entry, its PNG, its verdict and its review.
        drv.find_element(By.ID, "export").click()
        wait_until(lambda: any(p.suffix == ".zip" for p in downloads.iterdir()), 15, "the export download")
        z = zipfile.ZipFile(next(p for p in downloads.iterdir() if p.suffix == ".zip"))
        lines = z.read("verdicts.jsonl").decode().splitlines()
        assert len(lines) == 1 and f'"id": {want[1]}' in lines[0]
        assert "glare" in z.read("reviews.jsonl").decode()
        assert any(n.endswith(".png") for n in z.namelist())
        assert "exported 1 entries" in drv.find_element(By.ID, "archive-msg").text
        no_console_errors(drv, ui.url)
    finally:
        if drv is not None:
            drv.quit()
        ui.stop()
