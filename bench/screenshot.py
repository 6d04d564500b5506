"""Screenshot of the operator page with real rejects, for the README (docs/operator-page.png).

Runs ``inspector demo`` on the casting test photographs with ``--hold``, opens the
page in Debian's headless chromium (Selenium), asks for the evidence map of the
newest FAIL, and saves the page at 1366x768 (a panel PC) and 390x844 (a phone).

    .venv/bin/python bench/screenshot.py [--data ../shared/data/casting] [--out docs]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "casting")
    ap.add_argument("--engines", type=Path, default=REPO / "engines" / "default")
    ap.add_argument("--count", type=int, default=120)
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    a = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    demo = subprocess.Popen(
        [sys.executable, "-m", "inspector", "demo", "--engines", str(a.engines), "--folder", str(a.data / "test"),
         "--count", str(a.count), "--rate", "10", "--page-port", "0", "--hold"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert demo.stdout is not None
    url = None
    for line in demo.stdout:
        print(line, end="", flush=True)
        if line.startswith("operator page: "):
            url = line.split(": ", 1)[1].split()[0]
        if line.startswith("holding"):
            break
    if url is None:
        print("no operator page URL from the demo", file=sys.stderr)
        return 1
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1366,768"):  # fmt: skip
        o.add_argument(flag)
    drv = webdriver.Chrome(options=o, service=Service("/usr/bin/chromedriver"))
    try:
        drv.get(url)
        time.sleep(3)
        button = drv.find_elements(By.CSS_SELECTOR, "#gallery article button")
        if button:
            button[0].click()
            time.sleep(8)  # the occlusion map: a few hundred inferences
        a.out.mkdir(parents=True, exist_ok=True)
        drv.set_window_size(1366, 1100)
        drv.save_screenshot(str(a.out / "operator-page.png"))
        drv.set_window_size(390, 844)
        time.sleep(1)
        drv.save_screenshot(str(a.out / "operator-page-phone.png"))
    finally:
        drv.quit()
        demo.send_signal(signal.SIGINT)
        rest = demo.communicate(timeout=120)[0]
        print(rest)
    print(f"written {a.out / 'operator-page.png'} and {a.out / 'operator-page-phone.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
