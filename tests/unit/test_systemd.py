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


def _service(unit: str) -> dict[str, list[str]]:
    """A unit file's [Service] settings, each key's values in order (a key may repeat)."""
    out: dict[str, list[str]] = {}
    section = None
    for raw in (REPO / "systemd" / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _user(unit: str, service: dict[str, list[str]]) -> tuple[str, str, bool]:
    """(user, group, dynamic) a unit runs as: a DynamicUser without User= is named after its unit."""
    dynamic = service.get("DynamicUser", ["no"])[-1] in ("yes", "true", "1", "on")
    default = unit.split("@")[0].removesuffix(".service") if dynamic else "root"
    user = service.get("User", [default])[-1]
    return user, service.get("Group", [user])[-1], dynamic


def test_rebuild_unit_runs_as_the_daemons_user():
    """Another user on the daemon's StateDirectory makes systemd re-own the whole state folder (engines and
    archive) under the running daemon, and leaves the sets it writes owned by someone else."""
    daemon, rebuild = _service("inspector.service"), _service("inspector-rebuild.service")
    assert _user("inspector-rebuild.service", rebuild) == _user("inspector.service", daemon)
    # Named explicitly: without User= a dynamic user would take this unit's own name.
    assert rebuild["User"] == ["inspector"] and rebuild["Group"] == ["inspector"]
    assert rebuild["StateDirectory"] == daemon["StateDirectory"]
    # Its hardening stays.
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictNamespaces": "yes",
        "UMask": daemon["UMask"][-1],
    }.items():
        assert rebuild[key] == [value], key
    # And it writes the sets it makes where the daemon reads them.
    engines = daemon["Environment"][-1].partition("INSPECTOR_ENGINES__PATH=")[2]
    assert f"--engines {engines} " in rebuild["ExecStart"][0]
