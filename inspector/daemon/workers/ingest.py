"""Ingest: camera frames off ZeroMQ, validated, written once into the slot ring, slot ids passed on.

Per message, exactly one of:
- bad input (protocol error) -> an ERROR verdict straight to the publisher;
- no free ring slot, or the inference queue full -> a DROPPED verdict
  (drop policy: the arriving frame is shed, frames already queued keep their
  place, so latency stays bounded under overload);
- accepted -> an :class:`Accepted` note to the publisher (so it can answer for the
  frame if inference dies; sent first, on the same socket as any reject) and a
  :class:`Job` to the inference worker.
"""

from __future__ import annotations

import time

import cv2
import zmq

from inspector.daemon import metrics
from inspector.daemon.messages import FREE, JOBS, RESULTS, Accepted, FrameIds, Job, Outcome, SeedSlots
from inspector.daemon.ring import SlotRing
from inspector.daemon.workers.base import Worker, endpoint, now_ns, read_settings
from inspector.protocol import Limits, ProtocolError, Verdict, decode_frame


class IngestWorker(Worker):
    role = "ingest"

    def setup(self) -> None:
        s = self.settings
        self.m = metrics.get()
        self.limits = Limits(s.ingest.max_payload_bytes, s.ingest.min_side, s.ingest.max_side)
        self.ring = SlotRing.attach(self.spec.ring_name, self.spec.ring_slots, *self.spec.frame_size)
        rd = self.spec.runtime_dir
        self.jobs = self.ctx.socket(zmq.PUSH)
        self.jobs.setsockopt(zmq.SNDHWM, s.batching.queue_size)
        self.jobs.setsockopt(zmq.LINGER, 0)
        self.jobs.connect(endpoint(rd, "jobs"))
        self.results = self.ctx.socket(zmq.PUSH)
        self.results.setsockopt(zmq.LINGER, 2000)
        self.results.connect(endpoint(rd, "results"))
        self.free = self.ctx.socket(zmq.PULL)
        self.free.setsockopt(zmq.LINGER, 0)
        self.free.bind(endpoint(rd, "free"))
        self.free_slots: list[int] = []
        self.gen = int(self.shared.ingest_gen.value)
        self.seeded = False
        self.drops = 0
        self.bad = 0
        self._slot: int | None = None
        self.reload_seen = int(self.shared.reload_done.value)
        # No camera socket until the publisher has told us which ring slots are free.
        t_end = now_ns() + 30_000_000_000
        while not self.seeded and now_ns() < t_end:
            if self.free.poll(50):
                self._take_free()
        self.cams = self.ctx.socket(zmq.SUB if s.ingest.socket == "sub" else zmq.PULL)
        if s.ingest.socket == "sub":
            self.cams.setsockopt(zmq.SUBSCRIBE, b"")
        self.cams.setsockopt(zmq.RCVHWM, s.ingest.rcvhwm)
        # Safety net against memory exhaustion only: up to 16x the limit still gets a counted ERROR verdict;
        # beyond it ZeroMQ drops the message and the connection (no header can be read to answer).
        self.cams.setsockopt(zmq.MAXMSGSIZE, 16 * s.ingest.max_payload_bytes + 65536)
        self.cams.setsockopt(zmq.LINGER, 0)
        self.guard = self.curve_guard()
        if self.guard is not None:
            self.guard.serve(self.cams, "ingest")
        if s.ingest.bind:
            self.cams.bind(s.ingest.endpoint)
        else:
            self.cams.connect(s.ingest.endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.cams, zmq.POLLIN)
        self.poller.register(self.free, zmq.POLLIN)
        self.log.info(
            "ingest listening", endpoint=s.ingest.endpoint, socket=s.ingest.socket, bind=s.ingest.bind
        )

    def _take_free(self) -> None:
        # SeedSlots replaces the free list; FreeSlots adds to it. Messages of
        # another ingest generation, or frees before this generation's reseed, are ignored: the reseed
        # already counts those slots, and taking them twice would put two frames in one slot.
        while True:
            try:
                msg = FREE.recv(self.free, zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg.gen != self.gen:
                continue
            if isinstance(msg, SeedSlots):
                self.free_slots = list(msg.slots)
                self.seeded = True
                self.shared.ingest_ready.value = 1
            elif self.seeded:
                self.free_slots.extend(msg.slots)

    def _reject(
        self,
        ticket: int,
        ids: FrameIds,
        t_recv: int,
        verdict: Verdict,
        reason: str,
        slot: int | None = None,
    ) -> None:
        RESULTS.send(
            self.results,
            Outcome(
                ticket=ticket,
                verdict=verdict.value,
                reason=reason,
                t_recv=t_recv,
                slot=slot,
                gen=self.gen if slot is not None else None,
                ids=ids,
            ),
        )

    def run_loop(self) -> bool:
        if self.stop_requested:
            return False
        if self.shared.reload_done.value != self.reload_seen:
            self.reload_seen = int(self.shared.reload_done.value)
            self.settings = read_settings(self.spec.settings_file)
            s = self.settings
            self.limits = Limits(s.ingest.max_payload_bytes, s.ingest.min_side, s.ingest.max_side)
            self.log.info("settings reloaded", deadline_ms=s.batching.deadline_ms)
        if self.guard is not None:
            self.guard.poll()
        events = dict(self.poller.poll(50))
        if self.free in events:
            self._take_free()
        if self.cams not in events:
            self.m.ring_free.set(len(self.free_slots))
            return True
        for _ in range(256):  # drain what is waiting, then look at the free list again
            try:
                parts = self.cams.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.handle(parts)
            # Liveness per message, not per drain: a drain of large frames (a 5 MP JPEG decodes in ~30 ms)
            # must not look like a hung ingest to the watchdog.
            self.shared.alive[0] = now_ns()
        self.m.ring_free.set(len(self.free_slots))
        return True

    def handle(self, parts: list[bytes]) -> None:
        """One message in, exactly one outcome out; no input can raise out of here."""
        t_recv = now_ns()
        wall = time.time_ns()
        ticket = int(self.shared.next_ticket.value)
        self.shared.next_ticket.value = ticket + 1
        self.m.frames.inc()
        self._slot = None
        try:
            self._handle(parts, ticket, t_recv, wall)
        except Exception as exc:  # a bug or a case nobody foresaw: this frame is rejected, ingest goes on
            if self._slot is not None:
                self.free_slots.append(self._slot)  # never handed over: still ours
            self.m.input_errors.labels("internal_error").inc()
            self.log.error("frame handling failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            self._reject(
                ticket,
                FrameIds(),
                t_recv,
                Verdict.ERROR,
                f"internal_error: {type(exc).__name__} while reading the frame",
            )

    def _handle(self, parts: list[bytes], ticket: int, t_recv: int, wall: int) -> None:
        try:
            header, img = decode_frame(parts, self.limits)
        except ProtocolError as exc:
            self.m.input_errors.labels(exc.reason).inc()
            self._log_bad(exc)
            self._reject(ticket, FrameIds(**exc.header), t_recv, Verdict.ERROR, f"{exc.reason}: {exc.detail}")
            return
        meta = FrameIds(header.camera_id, header.frame_id, header.encoder, header.ts_ns, header.cam_seq)
        b = self.settings.batching
        deadline = t_recv + int(b.deadline_ms * 1e6)
        ing = self.settings.ingest
        # The age limit: max_age_ms where set, else the deadline itself counted from capture (the default).
        age = ing.max_age_ms
        if age is None and ing.deadline_from == "capture":
            age = b.deadline_ms
        if age is not None:
            skew_ns = int(ing.clock_skew_ms * 1e6)
            age_ns = wall - header.ts_ns
            if age_ns < -skew_ns:
                self.m.input_errors.labels("bad_timestamp").inc()
                self._reject(
                    ticket,
                    meta,
                    t_recv,
                    Verdict.ERROR,
                    f"bad_timestamp: ts_ns is {-age_ns / 1e6:.0f} ms in the future "
                    f"(clock_skew_ms {ing.clock_skew_ms:g}); check the camera's clock (PTP/NTP)",
                )
                return
            deadline = min(deadline, t_recv + int(age * 1e6) + skew_ns - age_ns)
            if deadline <= t_recv:
                self.m.timeouts.labels("stale").inc()
                limit = (
                    f"over ingest.max_age_ms {age:g}"
                    if ing.max_age_ms is not None
                    else f"past the {age:g} ms deadline counted from capture (ts_ns); if the camera's clock "
                    'is not in step with this host\'s (PTP/NTP), set ingest.deadline_from = "receipt"'
                )
                self._reject(
                    ticket,
                    meta,
                    t_recv,
                    Verdict.TIMEOUT,
                    f"stale: captured {age_ns / 1e6:.0f} ms ago, {limit}",
                )
                return
        original = original_format = None
        if img.shape != self.spec.frame_size:
            if self.settings.archive.dir is not None:  # the archive keeps the frame as received, not resized
                original = parts[1]
                original_format = (
                    f"raw:{img.shape[0]}x{img.shape[1]}" if header.encoding == "raw" else header.encoding
                )
            # Engines were trained at frame_size; a frame of another size is resized (area) once, here.
            img = cv2.resize(
                img, (self.spec.frame_size[1], self.spec.frame_size[0]), interpolation=cv2.INTER_AREA
            )
        self._take_free()
        if not self.free_slots:
            self._drop(ticket, meta, t_recv, "ring_full", "no free frame slot")
            return
        if b.admission:
            expected = self._expected_finish_ns()
            # From now, not from receipt: ingest's own time on this frame (decoding a large JPEG, resizing)
            # is already spent, and the deadline counts from capture, so time queued before ingest is too.
            spent = now_ns() - t_recv
            if expected is not None and spent + expected > (deadline - t_recv) * b.admission_margin:
                self._drop(
                    ticket,
                    meta,
                    t_recv,
                    "admission",
                    f"{self._in_flight()} frames ahead would take {expected / 1e6:.0f} ms after "
                    f"{spent / 1e6:.0f} ms in ingest, past the {(deadline - t_recv) / 1e6:.0f} ms left to the deadline",
                )
                return
        slot = self._slot = self.free_slots.pop()
        self.ring.write(slot, ticket, img)
        # The publisher hears of the frame before inference can answer it (same socket as any reject).
        RESULTS.send(
            self.results,
            Accepted(
                ticket=ticket,
                slot=slot,
                gen=self.gen,
                t_recv=t_recv,
                deadline=deadline,
                ids=meta,
                original=original,
                original_format=original_format,
            ),
        )
        self._slot = None  # from here the publisher frees it, with the verdict
        try:
            JOBS.send(self.jobs, Job(ticket, slot, self.gen, t_recv, deadline), zmq.NOBLOCK)
        except zmq.Again:
            self._drop(ticket, meta, t_recv, "queue_full", "inference queue full", slot)

    def _in_flight(self) -> int:
        """Frames in the ring ahead of an arriving one (queued, in inference, or awaiting publication)."""
        return self.spec.ring_slots - len(self.free_slots)

    def _expected_finish_ns(self) -> int | None:
        """When an arriving frame would be answered, from inference's measured time per frame.

        The frames ahead of it plus itself, at the measured per-frame time, plus one more batch
        (its batch may have just started) and the batching delay. None until inference has measured.
        """
        per_frame = int(self.shared.service_ns.value)
        if not per_frame:
            return None
        b = self.settings.batching
        return (self._in_flight() + 1 + b.max_batch) * per_frame + int(b.max_delay_ms * 1e6)

    def _drop(
        self, ticket: int, meta: FrameIds, t_recv: int, reason: str, why: str, slot: int | None = None
    ) -> None:
        self.m.drops.labels(reason).inc()
        self._log_drop(reason, meta)
        self._reject(
            ticket,
            meta,
            t_recv,
            Verdict.DROPPED,
            f"overload: {why} (drop policy: shed the arriving frame)",
            slot,
        )

    def _log_bad(self, exc: ProtocolError) -> None:
        # A hostile sender can send thousands a second: log the first and then one in a hundred.
        self.bad += 1
        if self.bad % 100 == 1:
            self.log.warning(
                "bad input", reason=exc.reason, detail=exc.detail[:200], count=self.bad, **exc.header
            )

    def _log_drop(self, reason: str, meta: FrameIds) -> None:
        # Overload can mean thousands of drops a second: log the first and then one in a hundred.
        self.drops += 1
        if self.drops % 100 == 1:
            self.log.warning(
                "overload: frame dropped",
                reason=reason,
                drops=self.drops,
                seeded=self.seeded,
                camera_id=meta.camera_id,
                frame_id=meta.frame_id,
            )

    def teardown(self) -> None:
        self.log.info("ingest stopped")
        if self.guard is not None:
            self.guard.close()
        self.cams.close(0)
        self.jobs.close(0)
        self.free.close(0)
        self.results.close(2000)
        self.ring.close()
