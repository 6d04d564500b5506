"""Publisher: the single place verdicts leave the daemon, and the keeper of "exactly one per frame".

Every accepted frame is *pending* here from its ``accepted`` note until its
verdict is published. The first verdict for a ticket is published with the
next ``seq``; any later one (a stale result after the frame was already
answered) is counted and dropped. The publisher also answers for frames no
one else will: when the supervisor reports the inference worker dead, every
pending frame gets ERROR; a pending frame past its deadline (plus a grace)
gets TIMEOUT. Publishing a verdict frees the frame's ring slot. Heartbeats go
out every ``heartbeat_interval_s`` so bridges can fail safe on silence.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import OrderedDict
from typing import Any

import zmq

from inspector.daemon import metrics
from inspector.daemon.health import Cameras, HealthLimits
from inspector.daemon.messages import (
    ARCHIVE,
    CONTROL,
    FREE,
    RESULTS,
    Accepted,
    ArchiveItem,
    FrameIds,
    FreeSlots,
    Inspection,
    Outcome,
    Reseed,
    SeedSlots,
    Stop,
    WorkerDied,
)
from inspector.daemon.workers.base import Worker, endpoint, now_ns, read_settings
from inspector.manifest import load_manifest
from inspector.protocol import PROTOCOL_VERSION, TOPIC_HEARTBEAT, TOPIC_VERDICT, Verdict, encode_message

ANSWERED_MEMORY = 1 << 18  # tickets remembered as answered, to drop stale duplicates
LATENCY_KEYS = ("queue", "noise", "denoise", "defect", "total")
MAX_CAM_SEQ_GAP = 10_000  # a larger jump in a camera's counter is a restarted camera, not lost frames
CAMERAS_TRACKED = 4096  # cameras whose last cam_seq is remembered (least recently seen forgotten)
LOST_SETTLE_S = 0.5  # after an ingest restart, what its predecessor sent has arrived by then
LOST_FALLBACK_S = 30.0  # a ticket missing this long is answered whatever the reason
UNANSWERED_AFTER_S = 1.0  # a ticket missing this long counts in the heartbeat's `unanswered`


def finite(x: float | None) -> float | None:
    """``x`` where it is a finite number, else None (NaN and infinities are not JSON, and never a score)."""
    return x if x is not None and math.isfinite(x) else None


class SlotLedger:
    """Which ring slots go back to ingest, so that no slot is ever listed free twice.

    Ingest hands out only slots this ledger gave it under its own generation. A reseed (a new
    ingest) lists every slot not held by a frame still pending here; those held slots are
    remembered with their ticket. A verdict then frees its slot only when the frame is of the
    current generation (ingest took the slot from this generation's list), or when it is the
    remembered holder of a slot held at the reseed. A frame of an older generation that was not
    pending at the reseed (its ``accepted`` note arrived after it) frees nothing: its slot was
    already in the reseed's list. Proof by cases is in ``tests/unit/test_slot_ledger.py``.
    """

    def __init__(self, slots: int, gen: int) -> None:
        self.slots = slots
        self.gen = gen
        self.held: dict[int, int] = {}  # slot -> ticket, for frames of older generations

    def reseed(self, gen: int, pending: dict[int, tuple[int | None, int]]) -> list[int]:
        """New generation; ``pending`` maps ticket -> (slot, gen). Returns the new free list."""
        self.gen = gen
        self.held = {slot: ticket for ticket, (slot, _g) in pending.items() if slot is not None}
        return [s for s in range(self.slots) if s not in self.held]

    def release(self, slot: int, ticket: int, gen: int | None) -> bool:
        """True when ``slot`` goes back to ingest now that ``ticket`` is answered."""
        if gen == self.gen and slot not in self.held:
            return True
        if self.held.get(slot) == ticket:
            del self.held[slot]
            return True
        return False


class PublisherWorker(Worker):
    role = "publisher"

    def setup(self) -> None:
        s = self.settings
        self.m = metrics.get()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, s.publish.sndhwm)
        self.pub.setsockopt(zmq.LINGER, s.publish.linger_ms)
        self.guard = self.curve_guard()
        if self.guard is not None:
            self.guard.serve(self.pub, "publish")
        if s.publish.bind:
            self.pub.bind(s.publish.endpoint)
        else:
            self.pub.connect(s.publish.endpoint)
        rd = self.spec.runtime_dir
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.bind(endpoint(rd, "results"))
        self.control = self.ctx.socket(zmq.PULL)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(endpoint(rd, "control"))
        self.poller = zmq.Poller()
        self.poller.register(self.inbox, zmq.POLLIN)
        self.poller.register(self.control, zmq.POLLIN)
        self.free = self.ctx.socket(zmq.PUSH)
        self.free.setsockopt(zmq.LINGER, 1000)
        self.free.connect(endpoint(rd, "free"))
        self.gen = int(self.shared.ingest_gen.value)
        self.ledger = SlotLedger(self.spec.ring_slots, self.gen)
        self.backlog: list[SeedSlots | FreeSlots] = [SeedSlots(self.gen, list(range(self.spec.ring_slots)))]
        self.model_version = self.spec.model_version
        self.reload_seen = int(self.shared.reload_done.value)
        self.pending: dict[int, Accepted] = {}
        # Outcomes that overtook their Accepted note (two senders into one socket are not ordered).
        self.early: dict[int, tuple[Outcome, float]] = {}
        self.answered: OrderedDict[int, None] = OrderedDict()
        # Tickets ingest issued that this publisher has heard nothing of (ticket -> when noticed): a frame
        # whose ingest died between taking it and announcing it. Answered ERROR once that ingest is gone.
        self.ticket_base = self.ticket_top = int(self.shared.next_ticket.value)
        self.missing: dict[int, float] = {}
        self.reseeded_at: float | None = None
        self.dead_below = 0  # tickets below this were issued by an ingest that has since died
        self.frames_answered = 0
        self.kinds: dict[str, int] = {v.value: 0 for v in Verdict}  # verdicts published, for heartbeats
        self.started_ns = time.time_ns()
        # Each camera's last cam_seq (its own frame counter), to answer frames it sent that never arrived.
        self.cam_seqs: OrderedDict[str, int] = OrderedDict()
        self.synthetic = 0  # tickets (negative) of verdicts for frames the daemon never received
        self.seq = 0
        self.duplicates = 0
        self.started = time.monotonic()
        self.next_heartbeat = 0.0
        self.next_sweep = 0.0
        self.grace_ns = int(max(s.batching.deadline_ms * 0.25, 250) * 1e6)
        self.cameras = Cameras(HealthLimits(**s.health.model_dump()))
        self.archive: zmq.Socket[Any] | None = None
        if s.archive.dir is not None:  # resolved by the supervisor
            from inspector.daemon.ring import SlotRing

            self.ring = SlotRing.attach(self.spec.ring_name, self.spec.ring_slots, *self.spec.frame_size)
            self.archive = self.ctx.socket(zmq.PUSH)
            self.archive.setsockopt(zmq.SNDHWM, s.archive.queue)
            self.archive.setsockopt(zmq.LINGER, 0)
            # Queue only to a live archive worker: while none is connected (dead, restarting) a send
            # fails at once and the frame is counted as skipped, instead of vanishing with a dead pipe.
            self.archive.setsockopt(zmq.IMMEDIATE, 1)
            self.archive.connect(endpoint(rd, "archive"))
            self.sample = random.Random(0)
        self.log.info("publishing", endpoint=s.publish.endpoint)

    def run_loop(self) -> bool:
        if self.shared.reload_done.value != self.reload_seen:
            self._reloaded()
        events = dict(self.poller.poll(20))
        if self.inbox in events:
            for _ in range(1024):
                try:
                    self.handle(RESULTS.recv(self.inbox, zmq.NOBLOCK))
                except zmq.Again:
                    break
        if self.control in events:
            while True:
                try:
                    msg = CONTROL.recv(self.control, zmq.NOBLOCK)
                except zmq.Again:
                    break
                if not self.command(msg):
                    return False
        self.flush_free()
        if self.guard is not None:
            self.guard.poll()
        now = time.monotonic()
        if now >= self.next_sweep:
            self.sweep()
            self.next_sweep = now + 0.05
        if now >= self.next_heartbeat:
            self.heartbeat()
            self.next_heartbeat = now + self.settings.publish.heartbeat_interval_s
        self.m.queue.labels("pending").set(len(self.pending))
        return True

    def handle(self, msg: Accepted | Outcome) -> None:
        self._saw(msg.ticket)
        if msg.ids is not None:  # from ingest, in the order frames arrived
            self._cam_seq(msg.ids)
        if isinstance(msg, Accepted):
            if msg.ticket in self.answered:
                return
            self.pending[msg.ticket] = msg
            early = self.early.pop(msg.ticket, None)
            if early is not None:
                self.publish(early[0])
        elif msg.ids is None and msg.ticket not in self.pending and msg.ticket not in self.answered:
            self.early[msg.ticket] = (msg, time.monotonic())  # its Accepted note is still on the way
        else:
            self.publish(msg)

    def command(self, msg: WorkerDied | Reseed | Stop) -> bool:
        """A control message from the supervisor; False when the publisher is to finish."""
        if isinstance(msg, WorkerDied):
            self.log.error("answering for frames in flight", role=msg.role, pending=len(self.pending))
            self._answer_all(f"{msg.role} worker died; frame not inspected")
        elif isinstance(msg, Reseed):
            # A new ingest worker: every slot not held by a pending frame is free, under the new generation.
            self.gen = msg.gen
            self.reseeded_at = time.monotonic()
            self.dead_below = max(self.dead_below, msg.first_ticket)
            free = self.ledger.reseed(self.gen, {t: (a.slot, a.gen) for t, a in self.pending.items()})
            self.backlog = [SeedSlots(self.gen, free)]
            self.flush_free()
        elif isinstance(msg, Stop):
            self._answer_all("daemon shut down before this frame was inspected")
            for outcome, _t in list(self.early.values()):
                self.publish(outcome)
            return False
        return True

    def _answer_all(self, reason: str) -> None:
        for a in list(self.pending.values()):
            self.publish(
                Outcome(ticket=a.ticket, verdict=Verdict.ERROR.value, reason=reason, t_recv=a.t_recv)
            )

    def publish(self, msg: Outcome) -> None:
        ticket = msg.ticket
        if ticket in self.answered:
            self.duplicates += 1
            return
        acc = self.pending.pop(ticket, None)
        self.early.pop(ticket, None)
        slot = msg.slot if msg.slot is not None else (acc.slot if acc else None)
        gen = msg.gen if msg.gen is not None else (acc.gen if acc else None)
        deadline = msg.deadline if msg.deadline is not None else (acc.deadline if acc else None)
        ids = msg.ids or (acc.ids if acc else None) or FrameIds()
        self.answered[ticket] = None
        if len(self.answered) > ANSWERED_MEMORY:
            self.answered.popitem(last=False)
        verdict = Verdict(msg.verdict)
        reason = msg.reason
        found = msg.inspection
        if found is not None and (finite(found.defect_score) is None or finite(found.threshold) is None):
            # An engine that returns NaN or an infinity did not inspect the frame: never a PASS (a NaN
            # compares false with any threshold), and never a NaN on the wire.
            self.m.input_errors.labels("non_finite_score").inc()
            if verdict in (Verdict.PASS, Verdict.FAIL):
                verdict = Verdict.ERROR
                reason = f"non_finite_score: the defect classifier returned {found.defect_score!r} (threshold {found.threshold!r})"
        t_pub = now_ns()
        if verdict in (Verdict.PASS, Verdict.FAIL) and deadline is not None and t_pub > deadline:
            # The last hand on a verdict before it leaves: never a late PASS, whatever delayed it.
            self.m.timeouts.labels("late").inc()
            reason = f"deadline passed before publication ({verdict.value} decided {(t_pub - deadline) / 1e6:.0f} ms too late)"
            verdict = Verdict.TIMEOUT
        if ids == FrameIds() and verdict is Verdict.PASS:
            verdict, reason = Verdict.ERROR, "frame identity lost (ingest died before announcing it)"
        total_ms = (t_pub - msg.t_recv) / 1e6
        stages = found.latency_ms if found else {}
        latency = {k: finite(stages.get(k)) for k in LATENCY_KEYS}
        latency["total"] = total_ms
        self.seq += 1
        body = {
            "type": "verdict",
            "v": PROTOCOL_VERSION,
            "seq": self.seq,
            "daemon_id": self.settings.daemon_id,
            "camera_id": ids.camera_id,
            "frame_id": ids.frame_id,
            "encoder": ids.encoder,
            "ts_ns": ids.ts_ns,
            "cam_seq": ids.cam_seq,
            "verdict": verdict.value,
            "reject": verdict.reject,
            "reason": reason,
            "defect_score": finite(found.defect_score) if found else None,
            "threshold": finite(found.threshold) if found else None,
            "noise_type": found.noise_type if found else None,
            "noise_confidence": finite(found.noise_confidence) if found else None,
            "denoiser": found.denoiser if found else None,
            "latency_ms": latency,
            "model_version": found.model_version if found else self.model_version,
            "published_ns": time.time_ns(),
        }
        parts = encode_message(TOPIC_VERDICT, body)
        self.pub.send_multipart(parts)
        self.m.verdicts.labels(verdict.value).inc()
        self.kinds[verdict.value] += 1
        if ticket >= self.ticket_base:
            self.frames_answered += 1
        if self.archive is not None:
            self._archive(verdict, parts[1], slot, ticket, acc)
        if found is not None and ids.camera_id is not None and verdict is not Verdict.ERROR:
            self._health(ids.camera_id, found)
        self.m.e2e_ms.observe(total_ms)
        if slot is not None and self.ledger.release(slot, ticket, gen):
            # Coalesce: one message to ingest per flush, not one per verdict.
            last = self.backlog[-1] if self.backlog else None
            if isinstance(last, FreeSlots) and last.gen == self.gen:
                last.slots.append(slot)
            else:
                self.backlog.append(FreeSlots(self.gen, [slot]))
        if verdict in (Verdict.ERROR, Verdict.TIMEOUT, Verdict.DROPPED):
            self.log.debug(
                "reject",
                verdict=verdict.value,
                reason=body["reason"],
                camera_id=body["camera_id"],
                frame_id=body["frame_id"],
            )

    def _saw(self, ticket: int) -> None:
        """Ticket bookkeeping: every ticket ingest issues must reach this publisher, or be answered here."""
        if ticket >= self.ticket_top:
            now = time.monotonic()
            for t in range(self.ticket_top, ticket):
                self.missing[t] = now
            self.ticket_top = ticket + 1
        else:
            self.missing.pop(ticket, None)

    def _lost_tickets(self) -> None:
        """Answer tickets whose frame ingest took in but never announced (it died in between).

        Tickets issued since the last look are noted as missing; a missing one is answered ERROR once an
        ingest restart has settled (its predecessor's last messages had time to arrive) if that dead
        ingest issued it (below the restart's ``first_ticket``, however late the publisher noticed it),
        or after ``LOST_FALLBACK_S`` whatever happened."""
        issued = int(self.shared.next_ticket.value)
        if issued > self.ticket_top:
            now = time.monotonic()
            for t in range(self.ticket_top, issued):
                self.missing[t] = now
            self.ticket_top = issued
        if not self.missing:
            return
        now = time.monotonic()
        settled = self.reseeded_at is not None and now - self.reseeded_at > LOST_SETTLE_S
        lost = [
            t
            for t, seen in self.missing.items()
            if now - seen > LOST_FALLBACK_S or (settled and t < self.dead_below)
        ]
        for t in lost:
            self.missing.pop(t, None)
            self.m.input_errors.labels("lost_in_ingest").inc()
            self.publish(
                Outcome(
                    ticket=t,
                    verdict=Verdict.ERROR.value,
                    reason="lost_in_ingest: the ingest worker stopped after taking this frame in and "
                    "before announcing it; the frame was not inspected",
                    t_recv=now_ns(),
                )
            )
        if lost:
            self.log.error("frames lost inside ingest answered ERROR", frames=len(lost))

    def _cam_seq(self, ids: FrameIds) -> None:
        """A gap in a camera's ``cam_seq``: the frames in it never reached the daemon (lost in a socket
        queue, a killed ingest, a network drop). Each gets a DROPPED verdict (``not_received``)."""
        if ids.cam_seq is None or ids.camera_id is None:
            return
        cam, seq = ids.camera_id, ids.cam_seq
        last = self.cam_seqs.pop(cam, None)
        # The count goes on from the highest number seen: a frame sent again (or overtaken) does not move
        # it back, else the frames after it would look lost. 0 starts a camera's count again (a restart).
        self.cam_seqs[cam] = seq if last is None or seq > last or seq == 0 else last
        if len(self.cam_seqs) > CAMERAS_TRACKED:
            self.cam_seqs.popitem(last=False)
        if last is None or seq == last + 1:
            return
        if seq <= last or seq - last - 1 > MAX_CAM_SEQ_GAP:
            self.log.warning("camera counter restarted", camera_id=cam, cam_seq=seq, previous=last)
            return
        self.m.drops.labels("not_received").inc(seq - last - 1)
        t = now_ns()
        for k in range(last + 1, seq):
            self.synthetic -= 1
            self.publish(
                Outcome(
                    ticket=self.synthetic,
                    verdict=Verdict.DROPPED.value,
                    reason=f"not_received: camera {cam!r} sent frame cam_seq {k}, which never reached the "
                    f"daemon (next received: {seq})",
                    t_recv=t,
                    ids=FrameIds(camera_id=cam, cam_seq=k),
                )
            )
        self.log.warning("frames never received", camera_id=cam, missing=seq - last - 1, before=seq)

    def _archive(
        self, verdict: Verdict, body: bytes, slot: int | None, ticket: int, acc: Accepted | None = None
    ) -> None:
        """Hand the verdict (and its pixels, copied before the slot is freed) to the archive worker.

        Never blocks: when the archive worker is behind (its queue is full, or it is stopped or dead)
        the frame is skipped and counted. Every non-PASS verdict is offered, and a sample of PASS."""
        s = self.settings.archive
        if verdict is Verdict.PASS and self.sample.random() >= s.pass_sample:
            return
        frame = inspected = None
        if slot is not None:
            frame, inspected = self.ring.snapshot(slot, ticket)
        h, w = self.spec.frame_size
        item = ArchiveItem(
            verdict=body,
            height=h,
            width=w,
            frame=frame,
            inspected=inspected,
            original=acc.original if acc is not None else None,
            original_format=acc.original_format if acc is not None else None,
        )
        try:
            ARCHIVE.send(self.archive, item, zmq.NOBLOCK)  # type: ignore[arg-type]
        except zmq.Again:
            self.m.archive_skipped.labels("behind").inc()

    def _health(self, camera_id: str, found: Inspection) -> None:
        changed = self.cameras.add(
            camera_id, found.noise_type, found.noise_confidence, found.brightness, found.contrast
        )
        if changed:
            cam = self.cameras.cams[camera_id]
            self.m.camera_alarm.labels(camera_id).set(int(cam.state == "alarm"))
            log = self.log.warning if cam.state == "alarm" else self.log.info
            log("camera health", camera_id=camera_id, state=cam.state, reason=cam.reason)
            self.heartbeat()  # bridges hear of it now, not at the next interval

    def _reloaded(self) -> None:
        """Inference swapped in a reload: take its settings and engine version for heartbeats."""
        self.reload_seen = int(self.shared.reload_done.value)
        self.settings = read_settings(self.spec.settings_file)
        self.grace_ns = int(max(self.settings.batching.deadline_ms * 0.25, 250) * 1e6)
        with contextlib.suppress(Exception):
            self.model_version = load_manifest(self.settings.engines.path).model_version
        limits = HealthLimits(**self.settings.health.model_dump())
        if limits != self.cameras.limits:  # new health limits: every camera's window starts again
            self.cameras = Cameras(limits)
            self.log.info("camera health limits changed; health windows start again")
        self.log.info("settings reloaded", model_version=self.model_version)

    def flush_free(self) -> None:
        """Give freed slots back to ingest; kept here while no ingest is connected."""
        while self.backlog:
            try:
                FREE.send(self.free, self.backlog[0], zmq.NOBLOCK)
            except zmq.Again:
                return
            self.backlog.pop(0)

    def sweep(self) -> None:
        """TIMEOUT for pending frames past deadline + grace with no verdict from anyone; ERROR for frames
        lost inside ingest."""
        self._lost_tickets()
        t = now_ns()
        for a in [a for a in self.pending.values() if t > a.deadline + self.grace_ns]:
            self.m.timeouts.labels("publisher").inc()
            self.publish(
                Outcome(
                    ticket=a.ticket,
                    verdict=Verdict.TIMEOUT.value,
                    reason="no result before the deadline",
                    t_recv=a.t_recv,
                )
            )
        # An outcome whose Accepted note never came (ingest died between the two): answer it anyway.
        late = time.monotonic() - 1.0
        for outcome, _seen in [e for e in self.early.values() if e[1] < late]:
            self.publish(outcome)

    def heartbeat(self) -> None:
        now = time.monotonic()
        body = {
            "type": "heartbeat",
            "v": PROTOCOL_VERSION,
            "daemon_id": self.settings.daemon_id,
            "ts_ns": time.time_ns(),
            "last_seq": self.seq,
            "pending": len(self.pending),
            # Frames ingest took in, frames answered, and frames missing past UNANSWERED_AFTER_S (a
            # bridge fails safe while that is not 0).
            "received": int(self.shared.next_ticket.value) - self.ticket_base,
            "answered": self.frames_answered,
            "unanswered": sum(1 for seen in self.missing.values() if now - seen > UNANSWERED_AFTER_S),
            # Verdicts by kind since this daemon started (started_ns, wall clock): totals for a shift view.
            "verdicts": dict(self.kinds),
            "started_ns": self.started_ns,
            # An orphan (the supervisor was killed) says so in its last heartbeat on the way out.
            "ready": bool(self.shared.healthy.value) and self.parent_alive(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "interval_s": self.settings.publish.heartbeat_interval_s,
            "model_version": self.model_version,
            "cameras": self.cameras.summary(),
        }
        self.pub.send_multipart(encode_message(TOPIC_HEARTBEAT, body))

    def teardown(self) -> None:
        self.heartbeat()
        self.log.info("publisher stopped", published=self.seq, stale_duplicates_dropped=self.duplicates)
        self.inbox.close(0)
        self.control.close(0)
        self.free.close(0)
        if self.archive is not None:
            self.archive.close(0)
            self.ring.close()
        self.pub.close(self.settings.publish.linger_ms)
        if self.guard is not None:
            self.guard.close()
