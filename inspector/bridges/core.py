"""What every PLC bridge does with the daemon's verdict stream: fail-safe state, verdict rings, reject FIFOs.

The Modbus and OPC UA bridges only present this state in their protocol; the
logic - when to fail safe, when to clear, what a lost verdict is, which
verdicts a PLC must act on - lives here once and is tested without a network.

The contract a PLC follows (docs/plc.md): a part passes only when the bridge
positively says PASS *for that part* (its frame id in the camera's verdict ring),
in time, while fail-safe is 0. Anything else - a reject, no verdict, a verdict
the PLC missed - rejects the part.

Fail safe (the PLC rejects every part while it is set) when:

- the bridge has just started and has not yet seen a ready heartbeat (``starting``);
- no heartbeat for ``heartbeat_misses`` intervals (``no_heartbeat``; detected 10% early, so a PLC
  polling the bridge sees it within those intervals);
- a heartbeat says the daemon is not ready (``not_ready``);
- verdicts were lost between daemon and bridge (``seq_gap``): a gap in ``seq``, or a heartbeat
  whose ``last_seq`` is ahead of the last verdict the bridge saw; the lost frames are counted;
- the daemon restarted (its heartbeat's uptime went down, or ``seq`` started
  again at 1) (``daemon_restarted``): frames in flight then got no verdict;
- a reject the bridge cannot route to a camera (camera unknown, missing, or past
  ``max_cameras``) (``unroutable_reject``): no PLC can match it to its part;
- a camera's reject FIFO overflowed (``fifo_overflow``): held until the PLC has acknowledged
  (written ``tail``) past every reject it lost;
- the daemon's heartbeat reports frames it took in and has not answered (``frames_unanswered``);
- the bridge itself failed (``bridge_fault``): it then exits, and systemd restarts it.

It clears only on a heartbeat that says ready, reports no unanswered frame, *and*
whose ``last_seq`` equals the last verdict the bridge has seen - heartbeats and
verdicts both back, none missing - with no FIFO overflow still unacknowledged.
A bridge fault never clears.
"""

from __future__ import annotations

import json
import math
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
    "unroutable_reject": 6,
    "fifo_overflow": 7,
    "frames_unanswered": 8,
    "bridge_fault": 9,
}
U32 = 1 << 32
MAX_DEPTH = 64  # entries per FIFO / verdict ring: a power of two, so that index = u16 count mod depth


NO_ID = 0xFFFFFFFF  # a missing frame id or encoder in a register entry: no PLC triggers a camera with it


def u32(value: Any) -> int:
    """A protocol id as a 32-bit number: integers modulo 2**32, strings as their CRC-32, none as 0xFFFFFFFF."""
    if isinstance(value, bool) or value is None:
        return NO_ID
    if isinstance(value, int):
        return value % U32
    return zlib.crc32(str(value).encode())


def check_depth(depth: int) -> int:
    """A FIFO / ring depth a PLC can index with a wrapping 16-bit counter: a power of two, 1..64."""
    if not isinstance(depth, int) or depth < 1 or depth > MAX_DEPTH or depth & (depth - 1):
        raise ValueError(
            f"depth {depth!r} is not a power of two from 1 to {MAX_DEPTH} (a PLC indexes entries with "
            "a 16-bit counter modulo the depth, which must divide 65536; 64 entries fill a camera's block)"
        )
    return depth


@dataclass(frozen=True)
class Reject:
    """One verdict with ``reject: true`` that a PLC must act on (``camera_seq``: the camera's reject count)."""

    seq: int
    camera_id: str
    frame_id: Any
    encoder: int | None
    verdict: str
    score: float | None
    reason: str | None
    camera_seq: int = 0


@dataclass
class VerdictRing:
    """The last ``depth`` verdicts of one camera, PASS and reject alike: the PLC's positive answer per part.

    ``count`` counts verdicts written; entry ``n`` sits at index ``n % depth``. The PLC copies new
    entries each scan (nothing to acknowledge); if ``count`` moved by more than ``depth`` since its
    last scan it missed verdicts, and parts it holds no PASS for are rejected anyway.
    """

    depth: int
    entries: list[Reject | None] = field(default_factory=list)
    count: int = 0

    def __post_init__(self) -> None:
        self.entries = [None] * self.depth

    def push(self, r: Reject) -> None:
        self.entries[self.count % self.depth] = r
        self.count += 1


@dataclass
class RejectFifo:
    """A PLC-acknowledged ring of rejects for one camera.

    ``head`` counts rejects written, ``tail`` what the PLC has acknowledged (it writes ``tail``
    back after reading entries ``tail .. head-1``, each at index ``n % depth``). When the PLC
    falls more than ``depth`` behind, the oldest unread entries are overwritten and counted in
    ``overflow``, and - once a PLC has acknowledged at least once, so it is known to use the FIFO -
    ``lost_until`` holds the head at that moment: the bridge fails safe until the PLC acknowledges
    a tail at or past it. A PLC that never writes ``tail`` (it proves passes from the verdict ring,
    or it is an OPC UA client) does not use the FIFO: its overflow is counted, never latched.
    """

    depth: int
    entries: list[Reject | None] = field(default_factory=list)
    head: int = 0
    tail: int = 0
    overflow: int = 0
    lost_until: int | None = None
    acked: bool = False  # a PLC has written tail at least once: it reads this FIFO

    def __post_init__(self) -> None:
        self.entries = [None] * self.depth

    def push(self, r: Reject) -> bool:
        """Write a reject; True when an unread one had to be overwritten for it."""
        lost = self.head - self.tail >= self.depth
        if lost:
            self.overflow += 1
            self.tail += 1  # the oldest unread entry is gone; the PLC sees it in `overflow`
        self.entries[self.head % self.depth] = r
        self.head += 1
        if lost and self.acked:
            self.lost_until = self.head
        return lost and self.acked

    def ack(self, tail16: int) -> bool:
        """The PLC wrote its 16-bit tail: accept it if it lies within the unread range."""
        behind = (self.head - tail16) % 0x10000
        if behind > self.head - self.tail or behind > self.depth:
            return False
        self.tail = self.head - behind
        self.acked = True
        if self.lost_until is not None and self.tail >= self.lost_until:
            self.lost_until = None  # read past every reject it lost
        return True

    @property
    def unread(self) -> int:
        return self.head - self.tail


@dataclass
class CameraState:
    index: int
    fifo: RejectFifo
    ring: VerdictRing
    counts: Counter[str] = field(default_factory=Counter)
    last: dict[str, Any] = field(default_factory=dict)
    health: str = "ok"
    health_reason: str | None = None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _int(v: Any, what: str, low: int = 0) -> int:
    if type(v) is not int or v < low:
        raise ValueError(f"{what} is not an integer >= {low}: {v!r:.40}")
    return v


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{what} is not a finite number: {v!r:.40}")
    return float(v)


def _opt(v: Any, types: tuple[type, ...], what: str) -> Any:
    if v is not None and (isinstance(v, bool) or not isinstance(v, types)):
        raise ValueError(f"{what} has the wrong type: {v!r:.40}")
    return v


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
        ring_depth: int | None = None,
        on_each: Callable[[Reject, int], None] | None = None,
    ) -> None:
        self.max_cameras = max(max_cameras, len(cameras or []))
        self.fifo_depth = check_depth(fifo_depth)
        self.ring_depth = check_depth(ring_depth if ring_depth is not None else fifo_depth)
        self.heartbeat_misses = heartbeat_misses
        self.cameras: dict[str, CameraState] = {}
        self.fixed = False
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
        self.unanswered = 0
        self.malformed = 0
        self.unknown_cameras = 0  # verdicts of a camera the bridge does not map
        self.unroutable = 0  # of those, rejects: no PLC can match them to a part
        self.model_version: str | None = None
        self.ticks = 0  # +1 per 100 ms while the subscription loop is alive (the PLC's `bridge_tick`)
        self._period: int | None = None
        self.fault: str | None = None
        self.on_reject = on_reject
        self.on_failsafe = on_failsafe
        self.on_each = on_each  # every verdict of a mapped camera, with the camera's verdict count

    # -- input ---------------------------------------------------------------------------------
    def feed(self, parts: list[bytes], now: float) -> None:
        """One ``[topic, body]`` message from the daemon's PUB socket; malformed ones are counted.

        A message is checked whole before it changes anything: a malformed one leaves the state as
        it was (a lost verdict then shows as the next one's ``seq`` gap)."""
        try:
            if len(parts) != 2:
                raise ValueError("not [topic, body]")
            body = json.loads(parts[1].decode("utf-8"), parse_constant=_no_constant)
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
            if parts[0] == b"heartbeat":
                self.on_heartbeat(body, now)
            elif parts[0] == b"verdict":
                self.on_verdict(body)
            else:
                raise ValueError(f"unknown topic {parts[0][:20]!r}")
        except (
            ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, RecursionError, OverflowError
        ):  # fmt: skip
            self.malformed += 1

    def on_heartbeat(self, hb: dict[str, Any], now: float) -> None:
        interval = _number(hb["interval_s"], "interval_s")
        if interval <= 0:
            raise ValueError("interval_s <= 0")
        uptime = _number(hb["uptime_s"], "uptime_s")
        last_seq = _int(hb["last_seq"], "last_seq")
        ready = hb["ready"]
        if not isinstance(ready, bool):
            raise ValueError("ready is not a boolean")
        unanswered = _int(hb.get("unanswered", 0), "unanswered")
        model_version = _opt(hb.get("model_version"), (str,), "model_version")
        cams = _opt(hb.get("cameras"), (dict,), "cameras") or {}
        health = {}
        for cid, h in cams.items():
            if not isinstance(h, dict):
                raise ValueError("a camera's health is not an object")
            health[cid] = (str(h.get("state", "ok")), _opt(h.get("reason"), (str,), "health reason"))
        # -- checked whole; from here the state changes --
        restarted = uptime < self.uptime
        self.heartbeats += 1
        self.last_heartbeat, self.interval, self.uptime, self.ready = now, interval, uptime, ready
        self.model_version, self.unanswered = model_version, unanswered
        for cid, (state, reason) in health.items():
            cam = self._camera(cid)
            if cam is not None:
                cam.health, cam.health_reason = state, reason
        if restarted:
            self.last_seq = last_seq
            self._set(True, "daemon_restarted")
            return
        if self.last_seq is None:
            self.last_seq = last_seq  # joined mid-stream: this is where our count starts
        elif last_seq > self.last_seq:
            # The daemon published verdicts the bridge never received (heartbeats follow verdicts on
            # one socket, in order): those frames' verdicts are lost.
            self.lost += last_seq - self.last_seq
            self.last_seq = last_seq
            self._set(True, "seq_gap")
            return
        if not ready:
            self._set(True, "not_ready")
        elif unanswered:
            self._set(True, "frames_unanswered")
        elif last_seq == self.last_seq and not self._latched():
            self._set(False, None)

    def on_verdict(self, v: dict[str, Any]) -> None:
        seq = _int(v["seq"], "seq", 1)
        verdict = v["verdict"]
        if verdict not in VERDICT_CODES:
            raise ValueError(f"unknown verdict {verdict!r:.40}")
        camera_id = _opt(v.get("camera_id"), (str,), "camera_id")
        frame_id = _opt(v.get("frame_id"), (str, int), "frame_id")
        encoder = _opt(v.get("encoder"), (int,), "encoder")
        score = v.get("defect_score")
        score = None if score is None else _number(score, "defect_score")
        reason = _opt(v.get("reason"), (str,), "reason")
        if verdict == "PASS" and v.get("reject") is not False:
            # A PASS that does not say reject = false contradicts itself: taken as lost (malformed), so the
            # next verdict's seq gap fails safe; it never shows as a PASS in a ring.
            raise ValueError("a PASS without reject = false")
        reject = verdict != "PASS"
        # -- checked whole; from here the state changes --
        if self.last_seq is not None:
            if seq == 1 and self.last_seq > 1:
                self._set(True, "daemon_restarted")
            elif seq > self.last_seq + 1:
                self.lost += seq - self.last_seq - 1
                self._set(True, "seq_gap")
        self.last_seq = seq
        self.counts[verdict] += 1
        cam = self._camera(camera_id)
        r = Reject(seq, camera_id or "", frame_id, encoder, verdict, score, reason)
        if cam is None:
            self.unknown_cameras += 1
        else:
            cam.counts[verdict] += 1
            cam.last = v
            cam.ring.push(r)
            if self.on_each is not None:
                self.on_each(r, cam.ring.count)
        if not reject:
            return
        if cam is None:
            self.unroutable += 1
            self._set(True, "unroutable_reject")
        else:
            r = Reject(seq, camera_id or "", frame_id, encoder, verdict, score, reason, cam.fifo.head + 1)
            if cam.fifo.push(r):
                self._set(True, "fifo_overflow")
        if self.on_reject is not None:
            self.on_reject(r)

    def tick(self, now: float) -> None:
        """Call from the live subscription loop (every few tens of ms): notices a silent daemon, and
        advances ``ticks`` every 100 ms - a hung loop freezes it, which is what a PLC watches."""
        period = int(now * 10)
        if period != self._period:  # a new 100 ms period of the clock: +1, at most once per period
            self.ticks += 1
            self._period = period
        # 10% early, so that with this tick, the event loop and the PLC's own poll, the PLC sees it
        # within the N intervals.
        limit = 0.9 * self.heartbeat_misses * self.interval
        if self.last_heartbeat is not None and now - self.last_heartbeat > limit:
            self._set(True, "no_heartbeat")

    def failed(self, why: str) -> None:
        """The bridge itself broke (its subscription task died): fail safe for good; the caller exits."""
        self.fault = why
        changed = not self.failsafe
        self.failsafe, self.reason = True, "bridge_fault"  # overrides whatever reason it had
        if changed:
            self.transitions += 1
        if self.on_failsafe is not None:
            self.on_failsafe(True, "bridge_fault")

    # -- helpers -------------------------------------------------------------------------------
    def _latched(self) -> bool:
        """Conditions a heartbeat cannot clear: an unacknowledged FIFO overflow, a bridge fault."""
        return self.fault is not None or any(c.fifo.lost_until is not None for c in self.cameras.values())

    def _camera(self, camera_id: str | None) -> CameraState | None:
        if camera_id is None:
            return None
        cam = self.cameras.get(camera_id)
        if cam is None and not self.fixed and len(self.cameras) < self.max_cameras:
            cam = self.cameras[camera_id] = CameraState(
                len(self.cameras), RejectFifo(self.fifo_depth), VerdictRing(self.ring_depth)
            )
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
