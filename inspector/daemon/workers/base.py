"""One worker base: ``setup()``, ``run_loop()`` (one iteration), ``teardown()``, called by ``run()``.

Workers are spawned (never forked: the inference process may own a GPU
context). They ignore SIGINT (the supervisor drains on Ctrl-C), exit when the
supervisor asks or when it has died, and title themselves ``inspector.<role>``.

Everything between processes goes over ZeroMQ ``ipc://`` sockets (the consumer
binds, producers connect, so messages queue from the first send) in the
daemon's private runtime folder, plus lock-free shared counters. Why not
``multiprocessing.Queue``: a process SIGKILLed while holding a Queue's
internal lock leaves every other user of that Queue blocked forever, and the
daemon must survive its inference worker being killed mid-stream.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass
from typing import Any

import zmq

from inspector import logs
from inspector.config import Settings


@dataclass
class Shared:
    """Lock-free counters shared with the supervisor (each written by one process only)."""

    progress: Any  # RawValue('Q'): inference loop iterations (pipeline progress for the watchdog)
    processed: Any  # RawValue('Q'): frames inferred
    ready: Any  # RawValue('i'): 1 when the inference engines are loaded and warm (and a remote tier answers)
    loaded: (
        Any  # RawValue('i'): 1 once the inference worker has its engines (ready may be 0: a remote tier down)
    )
    next_ticket: Any  # RawValue('Q'): ingest's ticket counter, survives ingest restarts
    reload_gen: Any  # RawValue('Q'): bumped by the supervisor on SIGHUP
    ingest_gen: Any  # RawValue('Q'): bumped by the supervisor before each ingest (re)start
    ingest_ready: Any  # RawValue('i'): 1 once the ingest worker holds its free-slot list
    stop: Any  # RawArray('i', 4): drain requests for ingest, inference, publisher, archive
    alive: Any  # RawArray('Q', 4): each worker's liveness stamp (monotonic ns of its last loop turn)
    service_ns: Any  # RawValue('Q'): inference's measured time per frame (moving average), for admission
    healthy: Any  # RawValue('i'): the supervisor's one readiness answer (readyz, heartbeats, metric)
    reload_done: Any  # RawValue('Q'): the reload generation inference has swapped in
    reload_failed: Any  # RawValue('Q'): the reload generation inference failed to load


@dataclass
class WorkerSpec:
    role: str
    settings: dict[str, Any]
    runtime_dir: str
    ring_name: str
    ring_slots: int
    frame_size: tuple[int, int]
    model_version: str
    settings_file: str


STOP_INDEX = {"ingest": 0, "inference": 1, "publisher": 2, "archive": 3}


def endpoint(runtime_dir: str, name: str) -> str:
    return f"ipc://{runtime_dir}/{name}.sock"


class Worker:
    """Subclasses implement setup, run_loop and teardown; ``run`` is not overridden."""

    role = "worker"

    def __init__(self, spec: WorkerSpec, shared: Shared) -> None:
        self.spec = spec
        self.shared = shared
        self.settings = Settings(**spec.settings)
        self.parent = os.getppid()
        self.log = logs.configure(self.settings.log.level, self.settings.log.json_lines, role=self.role)
        self.ctx: zmq.Context[Any] = zmq.Context()

    def curve_guard(self) -> Any:
        """The CURVE allow-list for this process's bound socket, or None when security.curve is off."""
        sec = self.settings.security
        if not sec.curve:
            return None
        from inspector.daemon import metrics
        from inspector.daemon.security import CurveGuard

        assert sec.server_key is not None and sec.clients is not None
        return CurveGuard(self.ctx, sec.server_key, sec.clients, self.log, metrics.get().auth_refused)

    @property
    def stop_requested(self) -> bool:
        return bool(self.shared.stop[STOP_INDEX[self.role]])

    def parent_alive(self) -> bool:
        return os.getppid() == self.parent

    def run(self) -> None:
        try:
            import setproctitle

            setproctitle.setproctitle(f"inspector.{self.role}")
        except ImportError:
            pass
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.setup()
        index = STOP_INDEX[self.role]
        try:
            while self.parent_alive():
                self.shared.alive[index] = now_ns()
                if not self.run_loop():
                    break
        finally:
            self.teardown()
            self.ctx.destroy(linger=0)
            if not self.parent_alive():
                self.orphaned()

    def orphaned(self) -> None:
        """The supervisor died (SIGKILL): remove what it would have removed, so nothing is left behind.

        Every worker does this on its way out; unlinking is idempotent and safe while others still
        have the segment mapped.
        """
        from inspector.daemon.ring import unlink_segment

        unlink_segment(self.spec.ring_name)
        shutil.rmtree(self.spec.runtime_dir, ignore_errors=True)
        self.log.warning("supervisor gone; removed its shared memory and runtime folder")

    def setup(self) -> None:
        raise NotImplementedError

    def run_loop(self) -> bool:
        """One iteration; return False to finish."""
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError


def read_settings(path: str) -> Settings:
    """The settings the supervisor wrote for its workers (rewritten on a successful reload)."""
    import json
    from pathlib import Path

    return Settings(**json.loads(Path(path).read_text()))


def now_ns() -> int:
    return time.monotonic_ns()


def run_worker(cls_path: str, spec: WorkerSpec, shared: Shared) -> None:
    """Spawn target: import the worker class by path and run it."""
    import importlib

    module, _, name = cls_path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    cls(spec, shared).run()
