"""Start the real daemon as a process and drive it from outside through its sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from inspector.bridges.modbus import CAMERA_BASE, ENTRY_BASE, ENTRY_WORDS
from inspector.protocol import encode_frame
from inspector.tools.listen import Listener
from inspector.tools.procs import children, title


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Daemon:
    def __init__(
        self,
        tmp: Path,
        engines: Path | None,
        sets: list[str] | None = None,
        env: dict[str, str] | None = None,
        config: Path | None = None,
        curve: tuple[Path, Path] | None = None,
    ) -> None:
        self.tmp = tmp
        self.ingest = f"ipc://{tmp}/frames.sock"
        self.publish = f"ipc://{tmp}/verdicts.sock"
        self.log_path = tmp / "daemon.log"
        cmd = [sys.executable, "-m", "inspector", "serve"]
        if config is not None:
            cmd += ["--config", str(config)]
        for s in [
            *([f"engines.path={engines}"] if engines is not None else []),
            f"ingest.endpoint={self.ingest}",
            f"publish.endpoint={self.publish}",
            "metrics.port=0",
            "publish.heartbeat_interval_s=0.2",
            *(sets or []),
        ]:
            cmd += ["--set", s]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        self.listener = Listener(self.publish, zmq.Context(), curve=curve).start()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.cam = self.ctx.socket(zmq.PUSH)
        self.cam.setsockopt(zmq.SNDHWM, 100_000)
        self.cam.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            from inspector.daemon.security import client

            client(self.cam, *curve)
        self.cam.connect(self.ingest)

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not any(h.get("ready") for h in self.listener.heartbeats):
            assert self.proc.poll() is None, (
                f"daemon exited {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
            )
            assert time.monotonic() < end, "daemon not ready in time:\n" + self.log_path.read_text()[-3000:]
            time.sleep(0.05)

    def send(self, parts: list[bytes]) -> None:
        self.cam.send_multipart(parts)

    def send_frame(self, img: np.ndarray, frame_id: Any, encoding: str = "raw", camera: str = "cam0") -> None:
        self.send(encode_frame(img, camera, frame_id, time.time_ns(), encoding, encoder=7))

    def worker_pids(self) -> dict[str, int]:
        out = {}
        for c in children(self.proc.pid):
            t = title(c)
            m = re.search(r"inspector\.(ingest|inference|publisher|archive)", t)
            if m:
                out[m.group(1)] = c
        return out

    def metrics_url(self) -> str:
        for line in self.log_path.read_text().splitlines():
            if '"http endpoints"' in line:
                return json.loads(line)["url"]
        raise AssertionError("no metrics URL in the daemon log")

    def wait_verdicts(self, n: int, timeout: float = 60) -> None:
        assert self.listener.wait_for(n, timeout), (
            f"only {len(self.listener.verdicts)} of {n} verdicts:\n" + self.log_path.read_text()[-3000:]
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        time.sleep(0.2)
        self.listener.poll(10)
        self.listener.close()
        self.cam.close(0)
        self.ctx.destroy(0)
        self.log.close()
        return code

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        return self.listener.verdicts


def by_frame(verdicts: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for v in verdicts:
        out[(v["camera_id"], v["frame_id"])].append(v)
    return out


def assert_exactly_one(
    verdicts: list[dict[str, Any]], sent: list[tuple[str, Any]]
) -> dict[Any, dict[str, Any]]:
    """Every sent (camera, frame id) has exactly one verdict, and no verdict is for a frame not sent."""
    got = by_frame(verdicts)
    missing = [k for k in sent if k not in got]
    dupes = {k: [v["verdict"] for v in vs] for k, vs in got.items() if len(vs) > 1}
    extra = [k for k in got if k not in set(sent)]
    assert not missing, f"{len(missing)} frames without a verdict, e.g. {missing[:5]}"
    assert not dupes, f"{len(dupes)} frames with several verdicts, e.g. {list(dupes.items())[:5]}"
    assert not extra, f"verdicts for frames never sent: {extra[:5]}"
    seqs = [v["seq"] for v in verdicts]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    return {k: vs[0] for k, vs in got.items()}


def kinds(verdicts: list[dict[str, Any]]) -> Counter[str]:
    return Counter(v["verdict"] for v in verdicts)


# -- the PLC bridges as processes, and a PLC polling one -------------------------------------------

VERDICT_NAMES = {1: "PASS", 2: "FAIL", 3: "ERROR", 4: "TIMEOUT", 5: "DROPPED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bridge:
    def __init__(self, tmp: Path, kind: str, daemon: str, args: list[str]) -> None:
        self.port = free_port()
        listen = f"127.0.0.1:{self.port}" if kind == "modbus" else f"opc.tcp://127.0.0.1:{self.port}/li/"
        self.url = listen
        self.log_path = tmp / f"bridge-{kind}-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable,
            "-m",
            "inspector",
            "bridge",
            kind,
            "--daemon",
            daemon,
            "--listen",
            listen,
            *args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return code


class Plc:
    """A PLC polling the Modbus map."""

    def __init__(self, port: int) -> None:
        from pymodbus.client import ModbusTcpClient

        self.c = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=1)
        end = time.monotonic() + 30
        while not self.c.connect():
            assert time.monotonic() < end, "the Modbus bridge did not come up"
            time.sleep(0.1)
        self.rejects: list[dict[str, Any]] = []
        self.tail = 0

    def read(self, address: int, count: int) -> list[int]:
        r = self.c.read_holding_registers(address, count=count, device_id=1)
        assert not r.isError(), r
        return list(r.registers)

    def status(self) -> dict[str, int]:
        r = self.read(0, 24)
        u32 = lambda i: r[i] << 16 | r[i + 1]  # noqa: E731
        return {
            "heartbeats": r[1], "ready": r[2], "failsafe": r[3], "reason": r[4], "last_seq": u32(5),
            "lost": u32(7), "PASS": u32(9), "FAIL": u32(11), "ERROR": u32(13), "TIMEOUT": u32(15),
            "DROPPED": u32(17), "alarm_bits": r[20], "depth": r[21], "malformed": r[22],
        }  # fmt: skip

    def poll_fifo(self, camera: int = 0) -> None:
        """What docs/plc.md tells a PLC to do every scan: read head, read tail..head-1, write tail."""
        base = CAMERA_BASE + camera * 1000
        head, _tail, overflow = self.read(base, 3)
        assert overflow == 0, "the PLC fell behind the FIFO"
        depth = self.read(21, 1)[0]
        while self.tail != head:
            i = self.tail % depth
            e = self.read(base + ENTRY_BASE + i * ENTRY_WORDS, ENTRY_WORDS)
            self.rejects.append(
                {
                    "seq": e[0] << 16 | e[1],
                    "frame_id": e[2] << 16 | e[3],
                    "encoder": e[4] << 16 | e[5],
                    "verdict": VERDICT_NAMES[e[6]],
                    "score": e[7],
                }
            )
            self.tail = (self.tail + 1) % 0x10000
        w = self.c.write_register(base + 1, self.tail, device_id=1)
        assert not w.isError(), w

    def close(self) -> None:
        self.c.close()


def wait_for(pred, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, f"{what} not within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - t0
