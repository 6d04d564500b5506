"""A line host installs the runtime alone: no torch, and the daemon still serves (issue 16, item 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SYNTHETIC

pytestmark = pytest.mark.slow


def test_the_runtime_profile_installs_without_torch_and_serves_a_demo(tmp_path: Path):
    venv = tmp_path / "line-host"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    res = subprocess.run(
        ["make", "-C", str(REPO), "install-runtime", f"RUNTIME_VENV={venv}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    py = venv / "bin" / "python"
    # Run from outside the checkout, so only the installed package can be imported.
    probe = subprocess.run(
        [str(py), "-c", "import importlib.util as u, inspector; print(u.find_spec('torch'), inspector.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    none, where = probe.stdout.split()
    assert none == "None" and str(venv) in where, probe.stdout
    check = subprocess.run(
        [str(venv / "bin" / "inspector"), "check-config", "--config", str(REPO / "config" / "example-line.toml"),
         "--set", f"engines.path={SYNTHETIC}"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    demo = subprocess.run(
        [str(venv / "bin" / "inspector"), "demo", "--engines", str(SYNTHETIC), "--count", "40", "--rate", "20",
         "--page-port", "0"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert "verdicts received        40  (missing 0, duplicated 0" in demo.stdout, demo.stdout
    assert "operator page: http://127.0.0.1:" in demo.stdout, demo.stdout  # its assets ship in the wheel
    assert "reject archive" in demo.stdout
