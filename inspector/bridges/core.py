"""What every PLC bridge does with the daemon's verdict stream: fail-safe state, reject FIFOs, counts.

The Modbus and OPC UA bridges only present this state in their protocol; the
logic - when to fail safe, when to clear, what a lost verdict is, which
rejects a PLC must act on - lives here once and is tested without a network.

Fail safe (the PLC rejects every part while it is set) when:

- the bridge has just started and has not yet seen a ready heartbeat (``starting``);
- no heartbeat for ``heartbeat_misses`` intervals (``no_heartbeat``; detected 10% early, so a PLC
  polling the bridge sees it within those intervals);
- a heartbeat says the daemon is not ready (``not_ready``);
- a gap in ``seq``: verdicts were lost between daemon and bridge (``seq_gap``);
  the number of frames whose verdict was lost is counted;
- the daemon restarted (its heartbeat's uptime went down, or ``seq`` started
  again at 1) (``daemon_restarted``): frames in flight then got no verdict.

It clears only on a heartbeat that says ready *and* whose ``last_seq`` equals
the last verdict the bridge has seen - heartbeats and verdicts both back, none
missing.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

VERDICT_CODES = {"PASS": 1, "FAIL": 2, "ERROR": 3, "TIMEOUT": 4, "DROPPED": 5}
FAILSAFE_CODES = {
    None: 0,
    "starting": 1,
    "no_heartbeat": 2,
    "not_ready": 3,
    "seq_gap": 4,
    "daemon_restarted": 5,
}
U32 = 1 << 32


def u32(value: Any) -> int:
    """A protocol id as a 32-bit number: integers modulo 2**32, strings as their CRC-32."""
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int):
        return value % U32
    return zlib.crc32(str(value).encode())


@dataclass(frozen=True)
class Reject:
    """One verdict with ``reject: true`` that a PLC must act on."""

    seq: int
    camera_id: str
    frame_id: Any
    encoder: int | None
    verdict: str
    score: float | None
    reason: str | None


@dataclass
class RejectFifo:
    """A PLC-acknowledged ring of rejects for one camera.

    ``head`` counts rejects written, ``tail`` what the PLC has acknowledged (it writes ``tail``
    back after reading entries ``tail .. head-1``, each at index ``n % depth``). When the PLC
    falls more than ``depth`` behind, the oldest unread entries are overwritten and counted in
    ``overflow`` (the PLC must then fail safe itself: it has missed rejects).
    """

    depth: int
    entries: list[Reject | None] = field(default_factory=list)
    head: int = 0
    tail: int = 0
    overflow: int = 0

    def __post_init__(self) -> None:
        self.entries = [None] * self.depth

    def push(self, r: Reject) -> None:
        if self.head - self.tail >= self.depth:
            self.overflow += 1
            self.tail += 1  # the oldest unread entry is gone; the PLC sees it in `overflow`
        self.entries[self.head % self.depth] = r
        self.head += 1

    def ack(self, tail16: int) -> bool:
        """The PLC wrote its 16-bit tail: accept it if it lies within the unread range."""
        behind = (self.head - tail16) % 0x10000
        if behind > self.head - self.tail or behind > self.depth:
            return False
        self.tail = self.head - behind
        return True

    @property
    def unread(self) -> int:
        return self.head - self.tail


@dataclass
class CameraState:
    index: int
    fifo: RejectFifo
    counts: Counter[str] = field(default_factory=Counter)
    last: dict[str, Any] = field(default_factory=dict)
    health: str = "ok"
    health_reason: str | None = None


class BridgeState:
    """The daemon as a PLC sees it; feed it messages and clock ticks, read it from any protocol."""

    def __init__(
        self,
        cameras: list[str] | None = None,
        max_cameras: int = 8,
        fifo_depth: int = 64,
        heartbeat_misses: int = 3,
        on_reject: Callable[[Reject], None] | None = None,
        on_failsafe: Callable[[bool, str | None], None] | None = None,
    ) -> None:
        self.max_cameras = max(max_cameras, len(cameras or []))
        self.fifo_depth = fifo_depth
        self.heartbeat_misses = heartbeat_misses
        self.cameras: dict[str, CameraState] = {}
        for c in cameras or []:
            self._camera(c)
        self.fixed = bool(cameras)
        self.failsafe = True
        self.reason: str | None = "starting"
        self.transitions = 0
        self.last_seq: int | None = None
        self.lost = 0
        self.counts: Counter[str] = Counter()
        self.heartbeats = 0
        self.last_heartbeat: float | None = None
        self.interval = 1.0
        self.ready = False
        self.uptime = -1.0
        self.malformed = 0
        self.unknown_cameras = 0
        self.model_version: str | None = None
        self.on_reject = on_reject
        self.on_failsafe = on_failsafe

    # -- input ---------------------------------------------------------------------------------
    def feed(self, parts: list[bytes], now: float) -> None:
        """One ``[topic, body]`` message from the daemon's PUB socket; malformed ones are counted."""
        try:
            if len(parts) != 2:
                raise ValueError("not [topic, body]")
            body = json.loads(parts[1].decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
            if parts[0] == b"heartbeat":
                self.on_heartbeat(body, now)
            elif parts[0] == b"verdict":
                self.on_verdict(body)
            else:
                raise ValueError(f"unknown topic {parts[0][:20]!r}")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
            self.malformed += 1

    def on_heartbeat(self, hb: dict[str, Any], now: float) -> None:
        interval = float(hb["interval_s"])
        uptime = float(hb["uptime_s"])
        last_seq = int(hb["last_seq"])
        ready = hb["ready"] is True
        restarted = uptime < self.uptime
        self.heartbeats += 1
        self.last_heartbeat, self.interval, self.uptime, self.ready = now, interval, uptime, ready
        self.model_version = hb.get("model_version")
        for cid, h in (hb.get("cameras") or {}).items():
            cam = self._camera(cid)
            if cam is not None and isinstance(h, dict):
                cam.health, cam.health_reason = str(h.get("state", "ok")), h.get("reason")
        if restarted:
            self.last_seq = last_seq
            self._set(True, "daemon_restarted")
            return
        if self.last_seq is None:
            self.last_seq = last_seq  # joined mid-stream: this is where our count starts
        if not ready:
            self._set(True, "not_ready")
        elif last_seq == self.last_seq:
            self._set(False, None)

    def on_verdict(self, v: dict[str, Any]) -> None:
        seq = int(v["seq"])
        verdict = str(v["verdict"])
        if verdict not in VERDICT_CODES:
            raise ValueError(f"unknown verdict {verdict!r}")
        if self.last_seq is not None:
            if seq == 1 and self.last_seq > 1:
                self._set(True, "daemon_restarted")
            elif seq > self.last_seq + 1:
                self.lost += seq - self.last_seq - 1
                self._set(True, "seq_gap")
        self.last_seq = seq
        self.counts[verdict] += 1
        camera_id = v.get("camera_id")
        cam = self._camera(camera_id) if isinstance(camera_id, str) else None
        if cam is None:
            self.unknown_cameras += 1
        else:
            cam.counts[verdict] += 1
            cam.last = v
        if v.get("reject") is not False or verdict != "PASS":
            score = v.get("defect_score")
            r = Reject(
                seq=seq,
                camera_id=camera_id if isinstance(camera_id, str) else "",
                frame_id=v.get("frame_id"),
                encoder=v.get("encoder") if isinstance(v.get("encoder"), int) else None,
                verdict=verdict,
                score=float(score) if isinstance(score, (int, float)) else None,
                reason=v.get("reason"),
            )
            if cam is not None:
                cam.fifo.push(r)
            if self.on_reject is not None:
                self.on_reject(r)

    def tick(self, now: float) -> None:
        """Call often (every tenth of a heartbeat interval or so): notices a silent daemon."""
        # 10% early, so that with this tick, the event loop and the PLC's own poll, the PLC sees it
        # within the N intervals.
        limit = 0.9 * self.heartbeat_misses * self.interval
        if self.last_heartbeat is not None and now - self.last_heartbeat > limit:
            self._set(True, "no_heartbeat")

    # -- helpers -------------------------------------------------------------------------------
    def _camera(self, camera_id: str | None) -> CameraState | None:
        if camera_id is None:
            return None
        cam = self.cameras.get(camera_id)
        if cam is None and not getattr(self, "fixed", False) and len(self.cameras) < self.max_cameras:
            cam = self.cameras[camera_id] = CameraState(len(self.cameras), RejectFifo(self.fifo_depth))
        return cam

    def _set(self, failsafe: bool, reason: str | None) -> None:
        if failsafe == self.failsafe and (reason == self.reason or not failsafe):
            return
        if failsafe and self.failsafe and self.reason != "starting":
            # already failing safe: keep the first reason, unless it is only "starting"
            return
        changed = failsafe != self.failsafe
        self.failsafe, self.reason = failsafe, reason
        if changed:
            self.transitions += 1
        if self.on_failsafe is not None:
            self.on_failsafe(failsafe, reason)
