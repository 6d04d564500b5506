"""The notify protocol against a real datagram socket, and the unit files against systemd-analyze."""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from inspector.daemon.systemd import Notifier

REPO = Path(__file__).resolve().parents[2]


def test_notify_over_a_real_socket(tmp_path):
    path = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    n = Notifier(str(path))
    assert n.enabled
    assert n.ready("warm")
    assert server.recv(1024) == b"READY=1\nSTATUS=warm"
    assert n.watchdog()
    assert server.recv(1024) == b"WATCHDOG=1"
    n.close()
    server.close()


def test_abstract_namespace_socket():
    name = f"inspector-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    n = Notifier("@" + name)
    assert n.stopping()
    assert server.recv(1024) == b"STOPPING=1"
    server.close()


def test_no_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and not n.ready()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_files_verify_without_warnings(tmp_path):
    # Executables must exist for verify: point the install prefix at this checkout's venv.
    bin_dir = REPO / ".venv" / "bin"
    assert (bin_dir / "inspector").exists() and (bin_dir / "inspector-build").exists()
    units = sorted((REPO / "systemd").glob("*.service")) + sorted((REPO / "systemd").glob("*.timer"))
    assert {u.name for u in units} >= {
        "inspector.service",
        "inspector-rebuild.service",
        "inspector-bridge-modbus@.service",
        "inspector-bridge-opcua@.service",
        "inspector-ui.service",
    }
    names = []
    for unit in units:
        name = unit.name.replace("@.", "@line1.")  # a template is verified as an instance
        (tmp_path / name).write_text(unit.read_text().replace("/opt/line-inspector", str(REPO)))
        names.append(name)
    res = subprocess.run(
        ["systemd-analyze", "verify", *[str(tmp_path / n) for n in names]],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and res.stdout.strip() == "" and res.stderr.strip() == "", (
        res.stdout + res.stderr
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_verify_check_catches_a_typo(tmp_path):
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nType=notify\nWatchdogSecs=5\nExecStart=/bin/true\n")
    res = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True)
    assert res.returncode == 0  # verify does not fail on unknown keys...
    assert "Unknown key" in res.stderr  # ...which is why the test above fails on any output
