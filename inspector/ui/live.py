"""What the page hears from the daemon: verdicts and heartbeats, over a SUB socket in a thread of its own.

Everything here is bounded, whatever the daemon (or something pretending to be
it) sends: at most ``max_cameras`` camera ids are kept by name (the most
recently seen; the rest are summed into one "other" row), the reject-rate plot
keeps an hour of minutes, the 10 s rate window holds timestamps for 10 s, and a
heartbeat's camera health is cut to the same number of cameras.

The shift totals are the daemon's own counters (heartbeat ``verdicts`` since
``started_ns``), so a page that restarts does not start again from zero; the
per-camera table and the plot are what this page has heard since it started,
and say so.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zmq

from inspector.archive.store import VERDICTS

MAX_CAMERAS = 64
OTHER = "other"


def iso(ns_or_s: float | int | None, ns: bool = True) -> str | None:
    """ISO 8601 with the UTC offset (``2026-12-01T10:00:00.123+00:00``) from ns (or s) since the epoch."""
    if ns_or_s is None:
        return None
    secs = float(ns_or_s) / 1e9 if ns else float(ns_or_s)
    try:
        return datetime.fromtimestamp(secs, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return None


def _count(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


class LiveState:
    """What the subscriber thread has heard (guarded by a lock); ``snapshot`` is what ``/api/state`` serves."""

    def __init__(self, max_cameras: int = MAX_CAMERAS) -> None:
        self.lock = threading.Lock()
        self.max_cameras = max_cameras
        self.started = time.time()
        self.kinds: collections.Counter[str] = collections.Counter()
        # Most recently seen last; the least recently seen is folded into ``other`` past max_cameras.
        self.cameras: collections.OrderedDict[str, collections.Counter[str]] = collections.OrderedDict()
        self.other: collections.Counter[str] = collections.Counter()
        self.other_folded = 0  # camera ids folded into "other" (one id may come back and be folded again)
        self.minutes: collections.OrderedDict[int, list[int]] = (
            collections.OrderedDict()
        )  # minute -> [all, rejects]
        self.recent: collections.deque[float] = collections.deque()
        self.heartbeat: dict[str, Any] | None = None
        self.heartbeat_at = 0.0
        self.last_seq = 0

    def verdict(self, v: dict[str, Any], now: float) -> None:
        kind = str(v.get("verdict"))
        if kind not in VERDICTS:
            return
        cam = v.get("camera_id")
        cam = str(cam)[:64] if cam is not None else "(none)"
        with self.lock:
            self.kinds[kind] += 1
            counts = self.cameras.get(cam)
            if counts is None:
                counts = self.cameras[cam] = collections.Counter()
                while len(self.cameras) > self.max_cameras:
                    _, gone = self.cameras.popitem(last=False)
                    self.other.update(gone)
                    self.other_folded += 1
            else:
                self.cameras.move_to_end(cam)
            counts[kind] += 1
            minute = int(now // 60)
            b = self.minutes.setdefault(minute, [0, 0])
            b[0] += 1
            b[1] += int(kind != "PASS")
            while self.minutes and next(iter(self.minutes)) < minute - 60:
                self.minutes.popitem(last=False)
            self.recent.append(now)
            while self.recent and self.recent[0] < now - 10:
                self.recent.popleft()
            seq = v.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool):
                self.last_seq = max(self.last_seq, seq)

    def beat(self, h: dict[str, Any], now: float) -> None:
        with self.lock:
            self.heartbeat, self.heartbeat_at = h, now

    def snapshot(self, now: float) -> dict[str, Any]:
        with self.lock:
            while self.recent and self.recent[0] < now - 10:
                self.recent.popleft()
            hb = self.heartbeat or {}
            try:
                interval = float(hb.get("interval_s") or 1.0)
            except (TypeError, ValueError):
                interval = 1.0
            age = now - self.heartbeat_at if self.heartbeat else None
            minute = int(now // 60)
            page_counts = {k: self.kinds.get(k, 0) for k in VERDICTS}
            daemon_counts = hb.get("verdicts")
            started_ns = hb.get("started_ns")
            if isinstance(daemon_counts, dict) and isinstance(started_ns, int):
                source, counts, since_ns = (
                    "daemon",
                    {k: _count(daemon_counts.get(k)) for k in VERDICTS},
                    started_ns,
                )
            else:  # a daemon from before heartbeats carried its counters: what this page heard
                source, counts, since_ns = "page", page_counts, int(self.started * 1e9)
            totals = {
                "source": source,
                "counts": counts,
                "total": sum(counts.values()),
                "since": iso(since_ns),
                "since_ns": since_ns,
            }
            raw_health = hb.get("cameras")
            health_in: dict[str, Any] = raw_health if isinstance(raw_health, dict) else {}
            shown = list(reversed(self.cameras))  # most recently seen first
            names = shown + [c for c in health_in if c not in self.cameras]
            kept = sorted(str(c)[:64] for c in names[: self.max_cameras])
            health = {c: health_in[c] for c in kept if isinstance(health_in.get(c), dict)}
            cams = {c: {k: self.cameras[c].get(k, 0) for k in VERDICTS} for c in kept if c in self.cameras}
            return {
                "now": iso(now, ns=False),
                "page_started": iso(self.started, ns=False),
                "totals": totals,
                "page_counts": page_counts,
                "rate_per_s": round(len(self.recent) / 10.0, 2),
                "cameras": cams,
                "cameras_other": {
                    "folded": self.other_folded + max(len(names) - self.max_cameras, 0),
                    "counts": {k: self.other.get(k, 0) for k in VERDICTS},
                },
                "camera_health": health,
                "daemon": {
                    "heard": self.heartbeat is not None,
                    "ready": bool(hb.get("ready")) and age is not None and age < 3 * interval,
                    "heartbeat_age_s": None if age is None else round(age, 2),
                    "daemon_id": hb.get("daemon_id"),
                    "model_version": hb.get("model_version"),
                    "uptime_s": hb.get("uptime_s"),
                    "last_seq": hb.get("last_seq"),
                    "started": iso(started_ns) if isinstance(started_ns, int) else None,
                },
                "last_seq": self.last_seq,
                "reject_rate": [
                    {"minute_ago": minute - m, "frames": b[0], "rejects": b[1]}
                    for m, b in self.minutes.items()
                    if minute - m <= 60
                ],
            }


def subscribe(
    endpoint: str, state: LiveState, stop: threading.Event, curve: tuple[Path, Path] | None
) -> None:
    """The subscriber thread: owns its socket; malformed messages are skipped."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)  # a verdict or heartbeat is a few kB
    if curve is not None:
        from inspector.daemon.security import client

        client(sock, *curve)
    for topic in (b"verdict", b"heartbeat"):
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(endpoint)
    try:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    body = json.loads(parts[1])
                    if not isinstance(body, dict):
                        continue
                except (IndexError, ValueError):
                    continue
                if parts[0] == b"verdict":
                    state.verdict(body, time.time())
                elif parts[0] == b"heartbeat":
                    state.beat(body, time.time())
    finally:
        sock.close(0)
        ctx.term()
