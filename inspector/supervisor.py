"""The supervisor (main process): starts the workers, watches them, and owns the one shutdown path.

States: STARTING -> READY -> DRAINING -> STOPPED. Start order: publisher (the
sink for every verdict), inference (load and warm the engines), then ingest,
so no frame is accepted before it can be answered. READY=1 goes to systemd
once all three run.

Worker death: an inference worker that dies is restarted (bounded restarts
per window) and the publisher answers ERROR for every frame it had in
flight; an ingest worker is restarted under a new generation (frames it had
handed over are answered ERROR, its ring slots are re-counted); a publisher
death, or too many restarts, stops the daemon with a non-zero exit so
systemd restarts it whole.

Shutdown (SIGTERM or SIGINT, one path): stop ingest, let inference drain its
queue, let the publisher answer anything left, join each with a timeout,
kill what does not exit, unlink the shared memory, remove the runtime folder.
SIGHUP: re-read the configuration; if valid, the inference worker swaps in
the engines and batching settings between two batches (no frame is dropped;
socket addresses need a restart).
"""

from __future__ import annotations

import collections
import json
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Any

import zmq

from inspector import logs
from inspector.config import ConfigError, Settings, load_settings
from inspector.manifest import load_manifest
from inspector.systemd import Notifier
from inspector.workers.base import STOP_INDEX, Shared, WorkerSpec, endpoint, run_worker

WORKERS = {
    "publisher": "inspector.workers.publisher:PublisherWorker",
    "inference": "inspector.workers.inference:InferenceWorker",
    "ingest": "inspector.workers.ingest:IngestWorker",
}


class State(Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class DaemonError(RuntimeError):
    """The daemon cannot start or cannot go on; the message says why."""


class Supervisor:
    def __init__(
        self, settings: Settings, config_path: Path | None = None, overrides: list[str] | None = None
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = overrides or []
        self.log = logs.configure(settings.log.level, settings.log.json_lines, role="supervisor")
        self.state = State.STARTING
        self.notifier = Notifier()
        self.procs: dict[str, Any] = {}
        self.restarts: collections.deque[float] = collections.deque()
        self._stop_signal = False
        self._reload_signal = False
        self.exit_code = 0
        self.http: Any = None
        self.runtime_dir: Path | None = None
        self.ring: Any = None

    # -- start ------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        try:
            manifest = load_manifest(s.engines.path)
        except ValueError as exc:
            raise DaemonError(str(exc)) from exc
        self.model_version = manifest.model_version
        self.frame_size = (manifest.frame_size, manifest.frame_size)
        base = os.environ.get("RUNTIME_DIRECTORY")
        self.runtime_dir = Path(
            tempfile.mkdtemp(prefix="inspector-", dir=base.split(":")[0] if base else None)
        )
        from inspector import metrics

        metrics.use_directory(self.runtime_dir / "metrics")
        (self.runtime_dir / "metrics").mkdir()
        self.settings_file = self.runtime_dir / "settings.json"
        self._write_settings(s)
        from inspector.ring import SlotRing

        self.ring = SlotRing.create(s.ring.slots, *self.frame_size)
        self.ctx = mp.get_context("spawn")
        self.shared = Shared(
            progress=self.ctx.RawValue("Q", 0),
            processed=self.ctx.RawValue("Q", 0),
            ready=self.ctx.RawValue("i", 0),
            next_ticket=self.ctx.RawValue("Q", 0),
            reload_gen=self.ctx.RawValue("Q", 0),
            ingest_gen=self.ctx.RawValue("Q", 0),
            ingest_ready=self.ctx.RawValue("i", 0),
            stop=self.ctx.RawArray("i", 3),
        )
        self.zctx: zmq.Context[Any] = zmq.Context()
        self.control = self.zctx.socket(zmq.PUSH)
        self.control.setsockopt(zmq.LINGER, 1000)
        self.control.connect(endpoint(str(self.runtime_dir), "results"))
        self.m = metrics.get()
        if s.metrics.enabled:
            self.http = metrics.HealthServer(s.metrics.host, s.metrics.port, self.live, self.ready)
            self.http.start()
            self.log.info(
                "http endpoints",
                url=f"http://{s.metrics.host}:{self.http.port}",
                paths=["/metrics", "/healthz", "/readyz"],
            )
        self._spawn("publisher")
        self._spawn("inference")
        self._wait_ready()
        self._spawn("ingest")
        self._wait_ingest()
        self.state = State.READY
        self.m.ready.set(1)
        self.notifier.ready(f"ready: {self.model_version}")
        self.log.info(
            "ready", model_version=self.model_version, ingest=s.ingest.endpoint, publish=s.publish.endpoint
        )

    def _write_settings(self, s: Settings) -> None:
        self.settings_file.write_text(json.dumps(s.model_dump(mode="json")))

    def _spawn(self, role: str) -> None:
        spec = WorkerSpec(
            role=role,
            settings=self.settings.model_dump(mode="json"),
            runtime_dir=str(self.runtime_dir),
            ring_name=self.ring.name,
            ring_slots=self.settings.ring.slots,
            frame_size=self.frame_size,
            model_version=self.model_version,
            settings_file=str(self.settings_file),
        )
        self.shared.stop[STOP_INDEX[role]] = 0
        p = self.ctx.Process(
            target=run_worker, args=(WORKERS[role], spec, self.shared), name=f"inspector.{role}", daemon=False
        )
        p.start()
        self.procs[role] = p
        self.log.info("worker started", worker=role, pid=p.pid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.settings.supervisor.ready_timeout_s
        while not self.shared.ready.value:
            if not self.procs["inference"].is_alive():
                raise DaemonError(
                    f"the inference worker exited (code {self.procs['inference'].exitcode}) while loading engines; see its log above"
                )
            if self._stop_signal:
                raise DaemonError("stopped before the engines were ready")
            if time.monotonic() > deadline:
                raise DaemonError(f"engines not ready after {self.settings.supervisor.ready_timeout_s} s")
            time.sleep(0.02)

    def _wait_ingest(self) -> None:
        deadline = time.monotonic() + 30
        while not self.shared.ingest_ready.value:
            if not self.procs["ingest"].is_alive():
                raise DaemonError(
                    f"the ingest worker exited (code {self.procs['ingest'].exitcode}); is {self.settings.ingest.endpoint} in use?"
                )
            if time.monotonic() > deadline:
                raise DaemonError("the ingest worker did not come up in 30 s")
            time.sleep(0.01)

    # -- health -------------------------------------------------------------------------------
    def live(self) -> bool:
        return self.state in (State.STARTING, State.READY, State.DRAINING)

    def ready(self) -> bool:
        return (
            self.state is State.READY
            and bool(self.shared.ready.value)
            and all(p.is_alive() for p in self.procs.values())
        )

    # -- run ----------------------------------------------------------------------------------
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = True

    def _on_hup(self, signum: int, _frame: FrameType | None) -> None:
        self._reload_signal = True

    def run(self) -> int:
        """Supervise until a stop signal or a fatal worker failure; then drain. Returns the exit code."""
        last_progress = -1
        last_ping = 0.0
        last_status = time.monotonic()
        last_processed = 0
        wd = self.notifier.watchdog_s
        try:
            while not self._stop_signal:
                time.sleep(0.05)
                if self._reload_signal:
                    self._reload_signal = False
                    self.reload()
                if not self._check_workers():
                    self.exit_code = 1
                    break
                now = time.monotonic()
                # The watchdog is fed only while the inference loop turns over (pipeline progress, not a timer).
                if wd and now - last_ping >= wd / 3:
                    prog = int(self.shared.progress.value)
                    if prog != last_progress:
                        self.notifier.watchdog()
                        last_progress, last_ping = prog, now
                if now - last_status >= 5.0:
                    processed = int(self.shared.processed.value)
                    rate = (processed - last_processed) / (now - last_status)
                    self.notifier.status(
                        f"{self.state.value}: {rate:.1f} frames/s, {processed} inspected, model {self.model_version}"
                    )
                    last_status, last_processed = now, processed
        finally:
            self.stop()
        return self.exit_code

    def _check_workers(self) -> bool:
        for role, p in list(self.procs.items()):
            if p.is_alive():
                continue
            self.log.error("worker died", worker=role, pid=p.pid, exitcode=p.exitcode)
            from inspector import metrics

            metrics.mark_dead(p.pid)
            if role == "publisher":
                self.log.error(
                    "the publisher keeps the verdict ledger; stopping so systemd restarts the daemon whole"
                )
                return False
            now = time.monotonic()
            while self.restarts and now - self.restarts[0] > self.settings.supervisor.restart_window_s:
                self.restarts.popleft()
            if len(self.restarts) >= self.settings.supervisor.max_restarts:
                self.log.error("restart budget exhausted", max_restarts=self.settings.supervisor.max_restarts)
                return False
            self.restarts.append(now)
            self.m.restarts.labels(role).inc()
            if role == "inference":
                self.shared.ready.value = 0
                self.control.send_pyobj({"kind": "worker_died", "role": role})
                self._spawn("inference")
                try:
                    self._wait_ready()
                except DaemonError as exc:
                    self.log.error("inference restart failed", error=str(exc))
                    return False
            else:  # ingest
                self.shared.ingest_gen.value += 1
                self.shared.ingest_ready.value = 0
                self._spawn("ingest")
                self.control.send_pyobj({"kind": "reseed", "gen": int(self.shared.ingest_gen.value)})
        return True

    def reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_settings(self.config_path, self.overrides)
            load_manifest(new.engines.path)
        except (ConfigError, ValueError) as exc:
            self.log.error("reload refused; keeping the running configuration", error=str(exc))
            self.notifier.ready("reload refused")
            return
        self.settings = new
        self._write_settings(new)
        self.shared.reload_gen.value += 1
        self.log.info("reload requested", engines=str(new.engines.path))
        self.notifier.ready(f"reloaded: {new.engines.path}")

    # -- stop -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Drain and release everything; idempotent."""
        if self.state is State.STOPPED:
            return
        self.state = State.DRAINING
        self.notifier.stopping()
        self.log.info("draining")
        timeout = self.settings.supervisor.drain_timeout_s
        shared = getattr(self, "shared", None)
        for role in ("ingest", "inference"):
            p = self.procs.get(role)
            if p is None:
                continue
            if shared is not None:
                shared.stop[STOP_INDEX[role]] = 1
            p.join(timeout)
        if "publisher" in self.procs and self.procs["publisher"].is_alive():
            self.control.send_pyobj({"kind": "stop"})
            self.procs["publisher"].join(timeout)
        for role, p in self.procs.items():
            if p.is_alive():
                self.log.warning("worker did not exit in time; killing", worker=role, pid=p.pid)
                p.kill()
                p.join(2)
        if getattr(self, "control", None) is not None:
            self.control.close(0)
            self.zctx.destroy(linger=0)
        if self.http is not None:
            self.http.stop()
        if self.ring is not None:
            self.ring.close()
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self.state = State.STOPPED
        self.log.info("stopped", exit_code=self.exit_code)


def serve(settings: Settings, config_path: Path | None = None, overrides: list[str] | None = None) -> int:
    sup = Supervisor(settings, config_path, overrides)
    sup.install_signals()
    try:
        sup.start()
    except DaemonError as exc:
        sup.log.error("cannot start", error=str(exc))
        sup.exit_code = 1
        sup.stop()
        return 1
    return sup.run()
