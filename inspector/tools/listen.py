"""A verdict listener (what a PLC bridge does): subscribe, check ``seq`` for gaps, watch heartbeats."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import zmq

from inspector.protocol import ProtocolError, decode_message
from inspector.terminal import printable


class Listener:
    """Collects verdicts and heartbeats from a daemon's PUB endpoint (in a thread, or with :meth:`poll`)."""

    def __init__(
        self, endpoint: str, ctx: zmq.Context[Any] | None = None, curve: tuple[Path, Path] | None = None
    ) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        if curve is not None:  # (the daemon's public key file, this listener's secret key file)
            from inspector.daemon.security import client

            client(self.sock, *curve)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.verdicts: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        self.gaps = 0
        self.malformed = 0
        self._last_seq: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_verdict: Any = None

    def poll(self, timeout_ms: int = 100) -> int:
        """Receive what arrives within ``timeout_ms``; returns the number of messages taken."""
        n = 0
        if self._thread is not None and threading.current_thread() is not self._thread:
            # A ZeroMQ socket belongs to one thread: with the listener thread running, let it receive.
            time.sleep(timeout_ms / 1000)
            return 0
        if not self.sock.poll(timeout_ms):
            return 0
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return n
            n += 1
            try:
                topic, body = decode_message(parts)
            except (ProtocolError, ValueError):
                self.malformed += 1
                continue
            if topic == "verdict":
                seq = body["seq"]
                if self._last_seq is not None and seq != self._last_seq + 1:
                    self.gaps += 1
                self._last_seq = seq
                self.verdicts.append(body)
                if self.on_verdict is not None:
                    self.on_verdict(body)
            elif topic == "heartbeat":
                self.heartbeats.append(body)

    def start(self) -> Listener:
        def loop() -> None:
            while not self._stop.is_set():
                self.poll(50)

        self._thread = threading.Thread(target=loop, name="listener", daemon=True)
        self._thread.start()
        return self

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` verdicts arrived (threaded mode); False on timeout."""
        end = time.monotonic() + timeout
        while len(self.verdicts) < count:
            if time.monotonic() > end:
                return False
            time.sleep(0.02)
        return True

    def wait_heartbeat(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self.heartbeats:
            if time.monotonic() > end:
                return False
            if self._thread is None:
                self.poll(50)
            else:
                time.sleep(0.02)
        return True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.sock.close(0)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = Counter(v["verdict"] for v in verdicts)
    lat = [v["latency_ms"]["total"] for v in verdicts if v.get("latency_ms")]
    return {
        "verdicts": len(verdicts),
        "by_kind": dict(kinds),
        "latency_ms_p50": percentile(lat, 50),
        "latency_ms_p99": percentile(lat, 99),
    }


def format_verdict(v: dict[str, Any]) -> str:
    """One line per verdict; ids and reasons are the sender's text, printed with control characters escaped."""
    score = v.get("defect_score")
    s = f"{score:.3f}" if isinstance(score, float) else "-"
    reason = f"  ({printable(v['reason'])})" if v.get("reason") else ""
    return (
        f"seq {v['seq']:>7}  {printable(v.get('camera_id')):>8}/{printable(v.get('frame_id')):<8} "
        f"{printable(v['verdict']):<7} score {s:<6} "
        f"noise {printable(v.get('noise_type') or '-'):<11} {v['latency_ms']['total']:7.1f} ms{reason}"
    )


def listen_forever(
    endpoint: str,
    summary: bool,
    out: TextIO = sys.stdout,
    duration: float = 0.0,
    curve: tuple[Path, Path] | None = None,
) -> int:
    lst = Listener(endpoint, curve=curve)
    t0 = time.monotonic()
    last = t0
    try:
        while duration <= 0 or time.monotonic() - t0 < duration:
            before = len(lst.verdicts)
            lst.poll(200)
            if not summary:
                for v in lst.verdicts[before:]:
                    print(format_verdict(v), file=out, flush=True)
            elif time.monotonic() - last >= 1.0:
                last = time.monotonic()
                s = summarize(lst.verdicts[-5000:])
                print(
                    f"{len(lst.verdicts)} verdicts {s['by_kind']}  p50 {s['latency_ms_p50']:.1f} ms  p99 {s['latency_ms_p99']:.1f} ms  "
                    f"gaps {lst.gaps}  heartbeats {len(lst.heartbeats)}",
                    file=out,
                    flush=True,
                )
    except KeyboardInterrupt:
        pass
    finally:
        lst.close()
    return 0
