"""Archive worker: stores what the publisher hands it in the reject archive, off the hot path.

The publisher sends each non-PASS verdict (and a sample of PASS) with its
pixels on the ``archive`` channel without blocking; when this worker is behind,
stopped or dead the channel's queue fills and the publisher skips and counts
(``inspector_archive_skipped_total{reason="behind"}``), so the archive never
slows a verdict. Here: PNGs and a SQLite row per item, retention by age and
size, and a free-disk floor below which nothing is written.
"""

from __future__ import annotations

import json
import time

import numpy as np
import zmq

from inspector.archive.store import Archive
from inspector.daemon import metrics
from inspector.daemon.messages import ARCHIVE, ArchiveItem
from inspector.daemon.workers.base import Worker, endpoint

PRUNE_EVERY_S = 10.0
DISK_CHECK_EVERY_S = 1.0


class ArchiveWorker(Worker):
    role = "archive"

    def setup(self) -> None:
        s = self.settings.archive
        assert s.dir is not None  # the supervisor spawns this worker only with an archive folder
        self.m = metrics.get()
        self.store = Archive(s.dir)
        swept = self.store.sweep()
        if swept:
            self.log.warning("archive: removed files no index row named (a kill mid-write)", files=swept)
        self.inbox = self.ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.RCVHWM, s.queue)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.bind(endpoint(self.spec.runtime_dir, "archive"))
        self.next_prune = 0.0
        self.next_disk = 0.0
        self.disk_low = False
        self.written = 0
        self.log.info("archive", dir=str(s.dir), pass_sample=s.pass_sample, max_mb=s.max_mb)

    def run_loop(self) -> bool:
        if self.stop_requested:
            return False
        now = time.monotonic()
        if now >= self.next_disk:
            self._check_disk()
            self.next_disk = now + DISK_CHECK_EVERY_S
        if now >= self.next_prune:
            self._prune()
            self.next_prune = now + PRUNE_EVERY_S
        if not self.inbox.poll(50):
            return True
        for _ in range(256):  # what is queued, then the disk and retention checks again
            try:
                item = ARCHIVE.recv(self.inbox, zmq.NOBLOCK)
            except zmq.Again:
                break
            self._store(item)
        return True

    def _store(self, item: ArchiveItem) -> None:
        if self.disk_low:
            self.m.archive_skipped.labels("disk_floor").inc()
            return
        try:
            body = json.loads(item.verdict)
            shape = (item.height, item.width)
            frame = np.frombuffer(item.frame, np.uint8).reshape(shape) if item.frame else None
            insp = np.frombuffer(item.inspected, np.uint8).reshape(shape) if item.inspected else None
            original = (
                (item.original_format, item.original) if item.original and item.original_format else None
            )
            self.store.add(body, frame, insp, original=original)
        except Exception as exc:  # a full disk, a corrupt item: counted and logged, never fatal
            self.m.archive_skipped.labels("error").inc()
            self.log.error("archive: could not store a verdict", error=str(exc))
            return
        self.written += 1
        self.m.archive_written.inc()

    def _check_disk(self) -> None:
        floor = self.settings.archive.min_free_mb * 1e6
        low = self.store.disk_free_bytes() < floor
        if low != self.disk_low:
            self.disk_low = low
            self.m.archive_disk_low.set(int(low))
            if low:
                self.log.error(
                    "archive: free disk below the floor; not writing until it recovers",
                    min_free_mb=self.settings.archive.min_free_mb,
                    free_mb=round(self.store.disk_free_bytes() / 1e6, 1),
                )
            else:
                self.log.info("archive: free disk back above the floor; writing again")

    def _prune(self) -> None:
        s = self.settings.archive
        r = self.store.prune(s.max_age_days * 86400, s.max_mb * 1e6)
        if r["removed"]:
            self.log.info("archive: pruned", **r)
        self.m.archive_bytes.set(self.store.total_bytes())

    def teardown(self) -> None:
        # Store what already arrived (bounded by the queue), then close.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                self._store(ARCHIVE.recv(self.inbox, zmq.NOBLOCK))
            except zmq.Again:
                break
        self.log.info("archive stopped", written=self.written)
        self.inbox.close(0)
        self.store.close()
