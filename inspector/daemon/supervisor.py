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
from inspector.config import ConfigError, Settings, load_settings, restart_only_changes
from inspector.daemon.messages import CONTROL, Reseed, Stop, WorkerDied
from inspector.daemon.systemd import Notifier
from inspector.daemon.workers.base import STOP_INDEX, Shared, WorkerSpec, endpoint, now_ns, run_worker
from inspector.manifest import check_own_thresholds, load_manifest

WORKERS = {
    "publisher": "inspector.daemon.workers.publisher:PublisherWorker",
    "inference": "inspector.daemon.workers.inference:InferenceWorker",
    "ingest": "inspector.daemon.workers.ingest:IngestWorker",
    "archive": "inspector.daemon.workers.archive:ArchiveWorker",
}
# Off the verdict path: not part of readiness, restarted on its own budget, never stops the daemon.
OPTIONAL = ("archive",)


MAX_RUNTIME_BASE = 60  # characters: base + /inspector-<pid>-<8>/ + the longest socket name < 107


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
        self.restarting: tuple[str, float] | None = None
        self.reload_pending: tuple[int, str] | None = None
        self._pending_settings: Settings = settings

    # -- start ------------------------------------------------------------------------------
    def start(self) -> None:
        self.settings = s = _resolve_archive(self.settings)
        self._pending_settings = s
        try:
            manifest = load_manifest(s.engines.path)
            if s.engines.threshold is None:
                check_own_thresholds(s.engines.path, manifest)  # an INT8 set at borrowed thresholds
        except ValueError as exc:
            raise DaemonError(str(exc)) from exc
        self.model_version = manifest.model_version
        self.frame_size = (manifest.frame_size, manifest.frame_size)
        base = os.environ.get("RUNTIME_DIRECTORY")
        base_dir = Path(base.split(":")[0]) if base else Path(tempfile.gettempdir())
        # ZeroMQ ipc:// endpoints live in the runtime folder; a Unix socket path holds at most 107 bytes
        # (runtime folder: base + ~30, socket name: ~16).
        if len(str(base_dir.resolve())) > MAX_RUNTIME_BASE:
            raise DaemonError(
                f"the runtime folder's base {str(base_dir)!r} is {len(str(base_dir.resolve()))} characters: the "
                f"daemon's Unix sockets inside it would pass the 107-byte limit; use a base of at most "
                f"{MAX_RUNTIME_BASE} characters (RuntimeDirectory= under systemd, or TMPDIR)"
            )
        self._sweep(base_dir)
        # The pid in the names lets the next start sweep what a SIGKILLed daemon left behind.
        self.runtime_dir = Path(tempfile.mkdtemp(prefix=f"inspector-{os.getpid()}-", dir=base_dir))
        from inspector.daemon import metrics

        metrics.use_directory(self.runtime_dir / "metrics")
        (self.runtime_dir / "metrics").mkdir()
        self.settings_file = self.runtime_dir / "settings.json"
        self._write_settings(s)
        from inspector.daemon.ring import SlotRing

        self.ring = SlotRing.create(s.ring.slots, *self.frame_size)
        self.ctx = mp.get_context("spawn")
        self.shared = Shared(
            progress=self.ctx.RawValue("Q", 0),
            processed=self.ctx.RawValue("Q", 0),
            ready=self.ctx.RawValue("i", 0),
            loaded=self.ctx.RawValue("i", 0),
            next_ticket=self.ctx.RawValue("Q", 0),
            reload_gen=self.ctx.RawValue("Q", 0),
            ingest_gen=self.ctx.RawValue("Q", 0),
            ingest_ready=self.ctx.RawValue("i", 0),
            stop=self.ctx.RawArray("i", 4),
            alive=self.ctx.RawArray("Q", 4),
            service_ns=self.ctx.RawValue("Q", 0),
            healthy=self.ctx.RawValue("i", 0),
            reload_done=self.ctx.RawValue("Q", 0),
            reload_failed=self.ctx.RawValue("Q", 0),
        )
        self.zctx: zmq.Context[Any] = zmq.Context()
        self.control = self.zctx.socket(zmq.PUSH)
        self.control.setsockopt(zmq.LINGER, 1000)
        self.control.connect(endpoint(str(self.runtime_dir), "control"))
        self.m = metrics.get()
        metrics.prime()
        if s.metrics.enabled:
            self.http = metrics.HealthServer(s.metrics.host, s.metrics.port, self.live, self.ready)
            self.http.start()
            self.log.info(
                "http endpoints",
                url=f"http://{s.metrics.host}:{self.http.port}",
                paths=["/metrics", "/healthz", "/readyz"],
            )
        if s.archive.dir is not None:
            self._spawn("archive")
        self._spawn("publisher")
        self._spawn("inference")
        self._wait_ready()
        self._spawn("ingest")
        self._wait_ingest()
        self.state = State.READY
        self._set_health()
        self.notifier.ready(f"ready: {self.model_version}")
        self.log.info(
            "ready", model_version=self.model_version, ingest=s.ingest.endpoint, publish=s.publish.endpoint
        )

    def _sweep(self, base_dir: Path) -> None:
        """Remove the ring segments and runtime folders of daemons that died without cleaning up."""
        from inspector.backends.triton import sweep_shm
        from inspector.daemon.ring import pid_alive, sweep_dead

        removed = sweep_dead() + sweep_shm()  # ring segments, and Triton regions (triton.shared_memory = on)
        for d in base_dir.glob("inspector-*-*"):
            pid = d.name.split("-")[1]
            if d.is_dir() and pid.isdigit() and not pid_alive(int(pid)) and (d / "settings.json").exists():
                shutil.rmtree(d, ignore_errors=True)
                removed.append(str(d))
        if removed:
            self.log.warning("removed what a dead daemon left behind", paths=removed)

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
        self.shared.alive[STOP_INDEX[role]] = 0  # not watched for hangs until its loop turns
        p = self.ctx.Process(
            target=run_worker, args=(WORKERS[role], spec, self.shared), name=f"inspector.{role}", daemon=False
        )
        p.start()
        self.procs[role] = p
        self.log.info("worker started", worker=role, pid=p.pid)

    def _wait_ready(self) -> None:
        """Until the inference worker has its engines. With a remote tier (Triton) that is down it starts
        loaded but not ready: the daemon comes up, answers every frame ERROR and says not ready until the
        tier answers (a line host must not exit - and be given up by systemd - because the tier is away)."""
        deadline = time.monotonic() + self.settings.supervisor.ready_timeout_s
        while not self.shared.loaded.value:
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
        """The one readiness answer: /readyz, the inspector_ready metric and heartbeats all read it."""
        return bool(getattr(self, "shared", None) is not None and self.shared.healthy.value)

    def _assess(self) -> bool:
        now = now_ns()
        return (
            self.state is State.READY
            and bool(self.shared.ready.value)
            and bool(self.shared.ingest_ready.value)
            and all(p.is_alive() for r, p in self.procs.items() if r not in OPTIONAL)
            # the optional archive worker is restarted when it hangs, but a slow disk never takes the line down
            and not [r for r in self._hung(now) if r not in OPTIONAL]
        )

    def _hung(self, now: int) -> list[str]:
        """Workers whose loop has not turned for hang_timeout_s (SIGSTOP, a deadlock, a stuck call)."""
        limit = int(self.settings.supervisor.hang_timeout_s * 1e9)
        out = []
        for role in self.procs:
            stamp = int(self.shared.alive[STOP_INDEX[role]])
            if stamp and now - stamp > limit:
                out.append(role)
        return out

    def _set_health(self) -> None:
        healthy = self._assess()
        if bool(self.shared.healthy.value) != healthy:
            self.shared.healthy.value = int(healthy)
            self.m.ready.set(int(healthy))
            self.log.info("readiness changed", ready=healthy)

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
                self._check_reload()
                if not self._check_workers():
                    self.exit_code = 1
                    break
                self._set_health()
                now = time.monotonic()
                # The watchdog is fed while the inference loop turns over (pipeline progress, not a
                # timer), or while an inference restart is loading engines within ready_timeout_s.
                if wd and now - last_ping >= wd / 3:
                    prog = int(self.shared.progress.value)
                    if prog != last_progress or self.restarting is not None:
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
        """Restart what died or hung; False when the daemon must stop. Never blocks."""
        for role in self._hung(now_ns()):
            p = self.procs[role]
            if p.is_alive():
                self.log.error(
                    "worker stopped making progress; killing it",
                    worker=role,
                    pid=p.pid,
                    hang_timeout_s=self.settings.supervisor.hang_timeout_s,
                )
                self.m.hung.labels(role).inc()
                if role not in OPTIONAL:
                    self.shared.healthy.value = 0
                    self.m.ready.set(0)
                p.kill()
                p.join(1)
        if self.restarting is not None:
            role, deadline = self.restarting
            if self.shared.loaded.value:
                self.log.info("inference worker back", pid=self.procs[role].pid)
                self.restarting = None
            elif time.monotonic() > deadline and self.procs[role].is_alive():
                self.log.error("inference restart did not get ready in time; killing it")
                self.procs[role].kill()
                self.procs[role].join(1)
        for role, p in list(self.procs.items()):
            if p.is_alive():
                continue
            self.log.error("worker died", worker=role, pid=p.pid, exitcode=p.exitcode)
            from inspector.daemon import metrics

            metrics.mark_dead(p.pid)
            if role == "publisher":
                self.log.error(
                    "the publisher keeps the verdict ledger; stopping so systemd restarts the daemon whole"
                )
                return False
            now = time.monotonic()
            if role in OPTIONAL:
                self._restart_optional(role, now)
                continue
            while self.restarts and now - self.restarts[0] > self.settings.supervisor.restart_window_s:
                self.restarts.popleft()
            if len(self.restarts) >= self.settings.supervisor.max_restarts:
                self.log.error("restart budget exhausted", max_restarts=self.settings.supervisor.max_restarts)
                return False
            self.restarts.append(now)
            self.m.restarts.labels(role).inc()
            if role == "inference":
                self.shared.ready.value = 0
                self.shared.loaded.value = 0
                self._abandon_reload("the inference worker restarted while loading it")
                CONTROL.send(self.control, WorkerDied(role))
                self._spawn("inference")
                # Waited for in later turns of the loop (the watchdog keeps being fed meanwhile).
                self.restarting = ("inference", time.monotonic() + self.settings.supervisor.ready_timeout_s)
            else:  # ingest
                self.shared.ingest_gen.value += 1
                self.shared.ingest_ready.value = 0
                first_ticket = int(self.shared.next_ticket.value)  # the dead ingest's last ticket + 1
                self._spawn("ingest")
                CONTROL.send(self.control, Reseed(int(self.shared.ingest_gen.value), first_ticket))
        return True

    def _restart_optional(self, role: str, now: float) -> None:
        """Restart an off-path worker on its own budget; past it, carry on without (logged)."""
        window = self.settings.supervisor.restart_window_s
        self.optional_restarts = [t for t in getattr(self, "optional_restarts", []) if now - t <= window]
        if len(self.optional_restarts) >= self.settings.supervisor.max_restarts:
            self.log.error(
                "worker keeps dying; carrying on without it (verdicts are unaffected)", worker=role
            )
            del self.procs[role]
            return
        self.optional_restarts.append(now)
        self.m.restarts.labels(role).inc()
        self._spawn(role)

    def reload(self) -> None:
        """Phase one of SIGHUP: validate, hand the new settings to inference; READY comes in phase two."""
        if self.reload_pending is not None:
            self.log.warning("reload already in progress; this SIGHUP is folded into it")
        self.notifier.reloading()
        try:
            new = _resolve_archive(load_settings(self.config_path, self.overrides))
            if new.archive.dir != self.settings.archive.dir:
                raise ValueError("archive.dir changed: restart the daemon to move the archive")
            changed = restart_only_changes(self.settings, new)
            if changed:
                raise ValueError(
                    f"{', '.join(changed)} changed: these take effect only at a restart "
                    "(systemctl restart inspector); the reload applies nothing"
                )
            manifest = load_manifest(new.engines.path)
            if new.engines.threshold is None:
                check_own_thresholds(new.engines.path, manifest)
            if (manifest.frame_size, manifest.frame_size) != self.frame_size:
                raise ValueError(
                    f"{new.engines.path} works on {manifest.frame_size}x{manifest.frame_size} frames, "
                    f"the frame ring holds {self.frame_size[0]}x{self.frame_size[1]}: restart the daemon to change it"
                )
        except (ConfigError, ValueError) as exc:
            self.log.error("reload refused; keeping the running configuration", error=str(exc))
            self.m.reloads.labels("refused").inc()
            self.notifier.ready(f"reload refused: {str(exc)[:200]}")
            return
        self._pending_settings = new
        self._write_settings(new)
        self.shared.reload_gen.value += 1
        self.reload_pending = (int(self.shared.reload_gen.value), manifest.model_version)
        self.log.info("reload requested", engines=str(new.engines.path))

    def _abandon_reload(self, why: str) -> None:
        """A pending reload that can no longer complete: answered as failed, the running settings kept."""
        if self.reload_pending is None:
            return
        self.reload_pending = None
        self._write_settings(self.settings)  # the restarted worker loads what is running, not half a reload
        self.m.reloads.labels("failed").inc()
        self.log.error("reload abandoned; the previous configuration keeps serving", reason=why)
        self.notifier.ready(f"reload abandoned ({why}); still serving {self.model_version}")

    def _check_reload(self) -> None:
        """Phase two: READY "reloaded" only once inference reports the swap; a failure is reported."""
        if self.reload_pending is None:
            return
        gen, version = self.reload_pending
        if self.shared.reload_done.value >= gen:
            self.reload_pending = None
            self.settings, self.model_version = self._pending_settings, version
            self.m.reloads.labels("ok").inc()
            self.log.info("reloaded", model_version=version)
            self.notifier.ready(f"reloaded: {version}")
        elif self.shared.reload_failed.value >= gen:
            self.reload_pending = None
            self._write_settings(self.settings)  # the running configuration, for any worker restarted later
            self.m.reloads.labels("failed").inc()
            self.log.error("reload failed in the inference worker; the previous engines keep serving")
            self.notifier.ready(f"reload failed; still serving {self.model_version}")

    # -- stop -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Drain and release everything; idempotent."""
        if self.state is State.STOPPED:
            return
        self.state = State.DRAINING
        if getattr(self, "shared", None) is not None:
            self.shared.healthy.value = 0
            self.m.ready.set(0)
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
            CONTROL.send(self.control, Stop())
            self.procs["publisher"].join(timeout)
        if "archive" in self.procs and shared is not None:
            shared.stop[STOP_INDEX["archive"]] = 1
            self.procs["archive"].join(timeout)
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


def _resolve_archive(s: Settings) -> Settings:
    """Fix the archive folder once ($STATE_DIRECTORY/archive when unset), so every worker agrees."""
    folder = s.archive.folder()
    if folder is None or s.archive.dir == folder:
        return s
    return s.model_copy(update={"archive": s.archive.model_copy(update={"dir": folder})})


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
