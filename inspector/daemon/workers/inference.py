"""Inference: latency-bounded dynamic batching over the three-stage pipeline.

A batch is flushed when it holds ``max_batch`` frames or when its oldest frame
has waited ``max_delay_ms`` since receipt (Triton's dynamic batcher and
DeepStream's nvstreammux work the same way). A frame past its deadline before
or after inference gets TIMEOUT, never a late PASS. An engine failure turns
the batch into ERROR verdicts; it never kills the worker. On SIGHUP the
supervisor bumps a generation counter; this worker builds and warms the new
pipeline in a thread while the old one keeps serving, then swaps them between
two batches, so a reload drops nothing.

On the CUDA-stream schedule (TensorRT backend) one batch stays in flight: the
next batch, if frames are already waiting, is uploaded before the current one
is collected, so its upload overlaps the current one's compute
(:class:`~inspector.pipeline.BatchRunner`); with nothing waiting, the batch in
flight is collected at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from inspector.backends.base import EngineError
from inspector.config import Settings
from inspector.daemon import metrics
from inspector.daemon.messages import JOBS, RESULTS, Inspection, Job, Outcome
from inspector.daemon.workers.base import Worker, endpoint, now_ns
from inspector.pipeline import BatchRunner, Pipeline
from inspector.protocol import Verdict
from inspector.tools.synthetic import ImpellerGenerator

REMOTE_SHARE = 0.4  # of supervisor.hang_timeout_s: what one batch's (or probe's) remote calls may take
IDENTITY_EVERY_S = 30.0  # how often a remote tier's served models are checked to still be this set's


def load_pipeline(settings: Settings, frame: tuple[int, int]) -> Any:
    """The engine set as a :class:`Pipeline`; on TensorRT, as one CUDA-stream schedule (``cuda_streams``)."""
    e = settings.engines
    options: dict[str, Any] = {"intra_op_threads": e.intra_op_threads}
    if e.backend == "openvino":
        # One static-shape model per batch size the batcher makes (1..max_batch, at most 8).
        static = settings.batching.max_batch if e.static_shapes else 0
        options.update(precision=e.precision, cache_dir=e.cache_dir, static_batches=static)
    if e.backend == "triton":
        # offline_ok: a tier that is down at start leaves the daemon loaded but not ready, not exited
        options.update(settings.triton.model_dump(), max_batch=settings.batching.max_batch, offline_ok=True)
    pipe = Pipeline.from_manifest(e.path, backend=e.backend, threshold=e.threshold, **options)
    if e.backend == "tensorrt" and e.cuda_streams:
        from inspector.backends.tensorrt import streamed_pipeline

        try:
            return streamed_pipeline(pipe, settings.batching.max_batch, frame)
        except Exception:
            pipe.close()
            raise
    return pipe


def warm_up(pipe: Any, max_batch: int, rounds: int) -> int:
    """Run every route on the path live frames will take; returns the time per frame (ns) of a full batch.

    Frames of each noise type go through ``pipe.run`` - on TensorRT with CUDA streams that is the
    stream schedule, so its kernels, uploads and both buffer sets run before the first live frame -
    two batches overlapped through a :class:`BatchRunner` (as the worker runs them), then every denoiser
    once more directly, in case the noise classifier routes a warm-up frame elsewhere. The first
    estimate lets ingest's admission work from the first frame; measured batches replace it.
    """
    from inspector import noise as nz

    n = max_batch
    clean, _ = ImpellerGenerator(seed=99).batch(0, n)
    rng = np.random.default_rng(99)
    mixed = np.stack([nz.apply_random(clean[i], nz.NOISE_TYPES[i % 4], rng) for i in range(n)])
    runner: BatchRunner[int] = BatchRunner(pipe)
    per_frame = 0
    for _ in range(rounds):
        t0 = now_ns()
        done = runner.step(clean, 0) + runner.step(mixed, 1) + runner.step(None)
        for _payload, out in done:
            if isinstance(out, Exception):
                raise out
        pipe.denoise(clean, np.array([1, 2, 3] * n)[:n])
        per_frame = (now_ns() - t0) // (2 * n)
    return per_frame


class InferenceWorker(Worker):
    role = "inference"

    def setup(self) -> None:
        from inspector.daemon.ring import SlotRing

        self.m = metrics.get()
        self.ring = SlotRing.attach(self.spec.ring_name, self.spec.ring_slots, *self.spec.frame_size)
        rd = self.spec.runtime_dir
        self.jobs = self.ctx.socket(zmq.PULL)
        self.jobs.setsockopt(zmq.RCVHWM, self.settings.batching.queue_size)
        self.jobs.setsockopt(zmq.LINGER, 0)
        self.jobs.bind(endpoint(rd, "jobs"))
        self.results = self.ctx.socket(zmq.PUSH)
        self.results.setsockopt(zmq.LINGER, 2000)
        self.results.connect(endpoint(rd, "results"))
        self.reload_gen = int(self.shared.reload_gen.value)
        self.keep_inspected = self.settings.archive.dir is not None  # resolved by the supervisor
        self._loader: threading.Thread | None = None
        self._loaded: tuple[Settings, Any] | None = None
        self.remote_down = False  # a remote engine (Triton) stopped answering: not ready until it does
        self._probed = 0.0
        self._identity_checked = time.monotonic()
        self.pipeline = load_pipeline(self.settings, self.spec.frame_size)
        try:
            self.per_frame_ns = self._warm_up(self.pipeline)
        except EngineError as exc:
            if not getattr(exc, "unavailable", False):
                raise
            # The remote tier is away at start: loaded, not ready; the probe brings the daemon up when it
            # answers, and admission works from measured batches from then on.
            self.log.error("inference server not answering at start; not ready until it does", error=str(exc))
            self.per_frame_ns = 0
            self.remote_down = True
        self.shared.service_ns.value = self.per_frame_ns
        self.runner: BatchRunner[tuple[list[Job], int, tuple[np.ndarray, np.ndarray]]] = BatchRunner(
            self.pipeline
        )
        self.model_version = self.pipeline.manifest.model_version if self.pipeline.manifest else "unknown"
        self.m.model.labels(self.model_version, self.settings.engines.backend).set(1)
        self.shared.ready.value = 0 if self.remote_down else 1
        self.shared.loaded.value = 1
        self.log.info(
            "engines loaded" if self.remote_down else "engines ready",
            model_version=self.model_version,
            threshold=self.pipeline.threshold,
            thresholds=self.pipeline.thresholds,
            path=str(self.settings.engines.path),
        )

    def _warm_up(self, pipe: Any) -> int:
        return warm_up(pipe, self.settings.batching.max_batch, self.settings.engines.warmup_batches)

    def _maybe_reload(self) -> None:
        """Build the new pipeline in a thread while this one keeps serving; swap between two batches.

        The swap waits until no batch is in flight (run_loop collects it first).
        """
        gen = int(self.shared.reload_gen.value)
        if gen != self.reload_gen and self._loader is None:
            self.reload_gen = gen
            self._loaded = None
            self._loader = threading.Thread(target=self._load_new, name="reload", daemon=True)
            self._loader.start()
        if self._loader is None or self._loader.is_alive():
            return
        if self.runner.busy:
            self._publish(self.runner.step(None))
        self._loader = None
        if self._loaded is None:
            self.shared.reload_failed.value = self.reload_gen  # the loader logged why
            return
        new_settings, new_pipe = self._loaded
        self._loaded = None
        old, old_version = self.pipeline, self.model_version
        self._arm_remote()  # a remote pipeline's close unregisters its regions within the budget
        old.close()
        self.pipeline, self.settings = new_pipe, new_settings
        self.runner = BatchRunner(new_pipe)
        self.model_version = new_pipe.manifest.model_version if new_pipe.manifest else "unknown"
        self.m.model.labels(old_version, self.settings.engines.backend).set(0)
        self.m.model.labels(self.model_version, new_settings.engines.backend).set(1)
        self.shared.reload_done.value = self.reload_gen  # two-phase: the supervisor says READY now
        self.log.info(
            "reloaded",
            model_version=self.model_version,
            threshold=new_pipe.threshold,
            thresholds=new_pipe.thresholds,
        )

    def _load_new(self) -> None:
        new_pipe = None
        try:
            data = json.loads(Path(self.spec.settings_file).read_text())
            new_settings = Settings(**data)
            new_pipe = load_pipeline(new_settings, self.spec.frame_size)
            self._warm_up(new_pipe)
            self._loaded = (new_settings, new_pipe)
        except Exception as exc:
            if new_pipe is not None:
                with contextlib.suppress(Exception):
                    new_pipe.close()  # the half-built pipeline goes, the running one stays
            self.log.error("reload failed; keeping the engines in use", error=str(exc)[:500])

    def _collect(self) -> list[Job]:
        b = self.settings.batching
        if self.runner.busy:
            # A batch is in flight: take only what is already queued, never wait for more.
            ready: list[Job] = []
            while len(ready) < b.max_batch:
                try:
                    ready.append(JOBS.recv(self.jobs, zmq.NOBLOCK))
                except zmq.Again:
                    break
            return ready
        if not self.jobs.poll(50):
            return []
        batch: list[Job] = [JOBS.recv(self.jobs)]
        flush_at = batch[0].t_recv + int(b.max_delay_ms * 1e6)
        while len(batch) < b.max_batch:
            try:
                batch.append(JOBS.recv(self.jobs, zmq.NOBLOCK))
                continue
            except zmq.Again:
                pass
            wait_ms = (flush_at - now_ns()) / 1e6
            if wait_ms <= 0:
                break
            self.jobs.poll(math.ceil(wait_ms))
        return batch

    def _send(self, job: Job, verdict: Verdict, reason: str | None, found: Inspection | None = None) -> None:
        RESULTS.send(
            self.results,
            Outcome(
                ticket=job.ticket,
                verdict=verdict.value,
                reason=reason,
                t_recv=job.t_recv,
                slot=job.slot,
                gen=job.gen,
                deadline=job.deadline,
                inspection=found,
            ),
        )

    def run_loop(self) -> bool:
        self.shared.progress.value += 1
        self._maybe_reload()
        now = time.monotonic()
        if now - self._identity_checked > IDENTITY_EVERY_S:
            # A tier whose operator loads other files under the same model names (model control) is caught
            # within this long: the next request of each remote stage reads its config again first.
            self._identity_checked = now
            for engine in getattr(self.pipeline, "engines", {}).values():
                if hasattr(engine, "recheck"):
                    engine.recheck()
        batch = self._collect()
        if not batch and not self.runner.busy:
            if self.remote_down:
                self._probe_remote()
            return not self.stop_requested
        self._process(batch)
        return True

    def _process(self, batch: list[Job]) -> None:
        ingest_gen = int(self.shared.ingest_gen.value)
        t_start = now_ns()
        # This batch's expected compute, from the measured time per frame: a frame that cannot make
        # its deadline is answered now instead of being inspected for nothing (work saved for others).
        t_expected = t_start + self.per_frame_ns * len(batch)
        live: list[Job] = []
        for job in batch:
            if job.gen != ingest_gen:
                self._send(job, Verdict.ERROR, "ingest worker restarted before this frame was inspected")
            elif t_start > job.deadline:
                self.m.timeouts.labels("queue").inc()
                self._send(job, Verdict.TIMEOUT, "deadline passed while queued")
            elif t_expected > job.deadline:
                self.m.timeouts.labels("predicted").inc()
                self._send(job, Verdict.TIMEOUT, "deadline would pass during inference; not inspected")
            else:
                live.append(job)
        if live:
            frames, intact = self.ring.read([j.slot for j in live], [j.ticket for j in live])
            if not intact.all():
                for job, ok in zip(live, intact, strict=True):
                    if not ok:
                        self._send(job, Verdict.ERROR, "frame slot held another frame; not inspected")
                frames = frames[intact]
                live = [j for j, ok in zip(live, intact, strict=True) if ok]
        if live:
            self.m.batch.observe(len(live))
            # Brightness and contrast per frame, for camera health (about a millisecond a batch).
            flat = frames.reshape(len(frames), -1)
            looks = (flat.mean(axis=1), flat.std(axis=1))
            self._arm_remote()
            self._publish(self.runner.step(frames, (live, t_start, looks)))
        elif self.runner.busy:
            self._publish(self.runner.step(None))

    def _publish(
        self, finished: list[tuple[tuple[list[Job], int, tuple[np.ndarray, np.ndarray]], Any]]
    ) -> None:
        for (live, t_start, looks), outcome in finished:
            # An engine failure rejects that batch; it never kills the worker.
            if isinstance(outcome, Exception):
                self.log.error("engine failure", error=str(outcome), batch=len(live))
                if getattr(outcome, "unavailable", False):
                    self._remote(down=True)
                for job in live:
                    self._send(job, Verdict.ERROR, f"engine failure: {outcome}")
            else:
                if self.remote_down:
                    # This batch's stages answered; others (a route it did not take) may not: back to ready
                    # only when the probe's one-frame inference through every stage succeeds.
                    self._probed = 0.0
                    self._probe_remote()
                self._verdicts(live, t_start, outcome, looks)

    def _remote(self, down: bool) -> None:
        """A remote engine (Triton) stopped answering, or answers again: the daemon is not ready meanwhile
        (heartbeats say so, bridges fail safe); frames that arrive are still tried and answered ERROR."""
        if down == self.remote_down:
            return
        self.remote_down = down
        self.shared.ready.value = 0 if down else 1
        if down:
            self.log.error("inference server not answering; not ready until it does")
        else:
            self.log.info("inference server answers again; ready")

    def _probe_remote(self) -> None:
        """While a remote engine is down and no frames come, ask it every half second whether it is back."""
        now = time.monotonic()
        if now - self._probed < 0.5:
            return
        self._probed = now
        engines = getattr(self.pipeline, "engines", {})
        checks = [e.ready for e in engines.values() if hasattr(e, "ready")]
        self._arm_remote()
        if checks and all(check() for check in checks):
            self._remote(down=False)

    def _arm_remote(self) -> None:
        """A batch's (or a probe's, or a close's) remote calls together get 40% of the hang timeout (a batch
        and the probe after it: 80%): a slow tier answers ERROR for the batch and turns the daemon not ready,
        it never gets this worker killed as hung."""
        end = time.monotonic() + REMOTE_SHARE * self.settings.supervisor.hang_timeout_s
        for engine in getattr(self.pipeline, "engines", {}).values():
            if hasattr(engine, "deadline"):
                engine.deadline = end

    def _verdicts(
        self, live: list[Job], t_start: int, results: list[Any], looks: tuple[np.ndarray, np.ndarray]
    ) -> None:
        t_done = now_ns()
        self.shared.processed.value += len(live)
        # Time per frame, as a moving average over batches, for admission and the prediction above.
        # On the stream schedule a batch's span overlaps the next one's upload: an overestimate.
        measured = (t_done - t_start) / len(live)
        # (0 until measured: a daemon that started without its remote tier has no warm-up figure)
        self.per_frame_ns = int(
            measured if not self.per_frame_ns else 0.8 * self.per_frame_ns + 0.2 * measured
        )
        self.shared.service_ns.value = self.per_frame_ns
        self.m.service_ms.set(self.per_frame_ns / 1e6)
        stage_ms = results[0].stage_ms
        for stage, ms in stage_ms.items():
            self.m.stage_ms.labels(stage).observe(ms)
        for job, r, bright, contrast in zip(live, results, *looks, strict=True):
            if self.keep_inspected and r.inspected is not None:
                self.ring.write_inspected(job.slot, job.ticket, r.inspected)
            found = Inspection(
                defect_score=r.score,
                threshold=r.threshold,
                noise_type=r.noise_type,
                noise_confidence=r.noise_confidence,
                denoiser=r.denoiser,
                latency_ms={"queue": (t_start - job.t_recv) / 1e6, **stage_ms},
                model_version=self.model_version,
                brightness=float(bright),
                contrast=float(contrast),
            )
            if t_done > job.deadline:
                self.m.timeouts.labels("inference").inc()
                self._send(job, Verdict.TIMEOUT, "deadline passed during inference", found)
            else:
                self._send(job, Verdict.FAIL if r.defective else Verdict.PASS, None, found)

    def teardown(self) -> None:
        # Drain: whatever is still queued is answered before exit (the supervisor stopped ingest first).
        deadline = time.monotonic() + self.settings.supervisor.drain_timeout_s
        while time.monotonic() < deadline:
            batch = self._collect()
            if not batch and not self.runner.busy:
                break
            if self.remote_down and batch:  # the tier is away: answer now, do not wait on it per batch
                for job in batch:
                    self._send(
                        job, Verdict.ERROR, "engine failure: inference server not answering; not inspected"
                    )
                continue
            self._process(batch)
        if self.runner.busy:  # past the drain deadline: still answer the batch in flight
            self._publish(self.runner.step(None))
        self.shared.ready.value = 0
        self.pipeline.close()
        self.jobs.close(0)
        self.results.close(2000)
        self.ring.close()
        self.log.info("inference stopped")
