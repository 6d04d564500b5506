"""Ingest: camera frames off ZeroMQ, validated, written once into the slot ring, slot ids passed on.

Per message, exactly one of:
- bad input (protocol error) -> an ERROR verdict straight to the publisher;
- no free ring slot, or the inference queue full -> a DROPPED verdict
  (drop policy: the arriving frame is shed, frames already queued keep their
  place, so latency stays bounded under overload);
- accepted -> an ``accepted`` note to the publisher (so it can answer for the
  frame if inference dies) and a job to the inference worker.
"""

from __future__ import annotations

from typing import Any

import cv2
import zmq

from inspector import metrics
from inspector.protocol import Limits, ProtocolError, Verdict, decode_frame
from inspector.ring import SlotRing
from inspector.workers.base import Worker, endpoint, now_ns, verdict_msg


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
        # ("reseed", gen, slots) replaces the free list; ("free", gen, slots) adds to it. Messages of
        # another ingest generation, or frees before this generation's reseed, are ignored: the reseed
        # already counts those slots, and taking them twice would put two frames in one slot.
        while True:
            try:
                kind, gen, slots = self.free.recv_pyobj(zmq.NOBLOCK)
            except zmq.Again:
                return
            if gen != self.gen:
                continue
            if kind == "reseed":
                self.free_slots = list(slots)
                self.seeded = True
                self.shared.ingest_ready.value = 1
            elif self.seeded:
                self.free_slots.extend(slots)

    def _reject(
        self,
        ticket: int,
        meta: dict[str, Any],
        t_recv: int,
        verdict: Verdict,
        reason: str,
        slot: int | None = None,
    ) -> None:
        self.results.send_pyobj(verdict_msg(ticket, slot, meta, t_recv, verdict.value, reason))

    def run_loop(self) -> bool:
        if self.stop_requested:
            return False
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
        self.m.ring_free.set(len(self.free_slots))
        return True

    def handle(self, parts: list[bytes]) -> None:
        t_recv = now_ns()
        ticket = int(self.shared.next_ticket.value)
        self.shared.next_ticket.value = ticket + 1
        self.m.frames.inc()
        try:
            header, img = decode_frame(parts, self.limits)
        except ProtocolError as exc:
            self.m.input_errors.labels(exc.reason).inc()
            self.log.warning("bad input", reason=exc.reason, detail=exc.detail, **exc.header)
            self._reject(ticket, exc.header, t_recv, Verdict.ERROR, f"{exc.reason}: {exc.detail}")
            return
        meta = header.model_dump(include={"camera_id", "frame_id", "encoder", "ts_ns"})
        if img.shape != self.spec.frame_size:
            # Engines were trained at frame_size; a frame of another size is resized (area) once, here.
            img = cv2.resize(
                img, (self.spec.frame_size[1], self.spec.frame_size[0]), interpolation=cv2.INTER_AREA
            )
        if not self.free_slots:
            self._take_free()
        if not self.free_slots:
            self.m.drops.labels("ring_full").inc()
            self._log_drop("ring_full", meta)
            self._reject(
                ticket,
                meta,
                t_recv,
                Verdict.DROPPED,
                "overload: no free frame slot (drop policy: shed the arriving frame)",
            )
            return
        slot = self.free_slots.pop()
        self.ring.frames[slot] = img
        deadline = t_recv + int(self.settings.batching.deadline_ms * 1e6)
        job = (ticket, slot, meta, t_recv, deadline, self.gen)
        try:
            self.jobs.send_pyobj(job, zmq.NOBLOCK)
        except zmq.Again:
            self.m.drops.labels("queue_full").inc()
            self._log_drop("queue_full", meta)
            self._reject(
                ticket,
                meta,
                t_recv,
                Verdict.DROPPED,
                "overload: inference queue full (drop policy: shed the arriving frame)",
                slot,
            )
            return
        self.results.send_pyobj(
            {
                "kind": "accepted",
                "ticket": ticket,
                "slot": slot,
                "meta": meta,
                "t_recv": t_recv,
                "deadline": deadline,
            }
        )

    def _log_drop(self, reason: str, meta: dict[str, Any]) -> None:
        # Overload can mean thousands of drops a second: log the first and then one in a hundred.
        self.drops += 1
        if self.drops % 100 == 1:
            self.log.warning(
                "overload: frame dropped", reason=reason, drops=self.drops, seeded=self.seeded, **meta
            )

    def teardown(self) -> None:
        self.log.info("ingest stopped")
        self.cams.close(0)
        self.jobs.close(0)
        self.free.close(0)
        self.results.close(2000)
        self.ring.close()
