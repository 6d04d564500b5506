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

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from inspector import metrics
from inspector.config import Settings
from inspector.pipeline import BatchRunner, Pipeline
from inspector.protocol import Verdict
from inspector.synthetic import ImpellerGenerator
from inspector.workers.base import Worker, endpoint, now_ns, verdict_msg

Job = tuple[int, int, dict[str, Any], int, int, int]


def load_pipeline(settings: Settings, frame: tuple[int, int]) -> Any:
    """The engine set as a :class:`Pipeline`; on TensorRT, as one CUDA-stream schedule (``cuda_streams``)."""
    e = settings.engines
    pipe = Pipeline.from_manifest(
        e.path, backend=e.backend, threshold=e.threshold, intra_op_threads=e.intra_op_threads
    )
    if e.backend == "tensorrt" and e.cuda_streams:
        from inspector.engines.tensorrt import streamed_pipeline

        try:
            return streamed_pipeline(pipe, settings.batching.max_batch, frame)
        except Exception:
            pipe.close()
            raise
    return pipe


class InferenceWorker(Worker):
    role = "inference"

    def setup(self) -> None:
        from inspector.ring import SlotRing

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
        self._loader: threading.Thread | None = None
        self._loaded: tuple[Settings, Any] | None = None
        self.pipeline = load_pipeline(self.settings, self.spec.frame_size)
        self._warm_up(self.pipeline)
        self.runner: BatchRunner[tuple[list[Job], int]] = BatchRunner(self.pipeline)
        self.model_version = self.pipeline.manifest.model_version if self.pipeline.manifest else "unknown"
        self.m.model.labels(self.model_version, self.settings.engines.backend).set(1)
        self.shared.ready.value = 1
        self.log.info(
            "engines ready",
            model_version=self.model_version,
            threshold=self.pipeline.threshold,
            thresholds=self.pipeline.thresholds,
            path=str(self.settings.engines.path),
        )

    def _warm_up(self, pipe: Any) -> None:
        n = self.settings.batching.max_batch
        frames, _ = ImpellerGenerator(seed=99).batch(0, n)
        for _ in range(self.settings.engines.warmup_batches):
            # Route every stage once: clean frames, then every denoiser (gaussian, s&p, periodic routes).
            pipe.run(frames)
            pipe.denoise(frames, np.array([1, 2, 3] * n)[:n])

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
            return  # the loader logged why
        new_settings, new_pipe = self._loaded
        self._loaded = None
        old = self.pipeline
        self.pipeline, self.settings = new_pipe, new_settings
        self.runner = BatchRunner(new_pipe)
        self.model_version = new_pipe.manifest.model_version if new_pipe.manifest else "unknown"
        old.close()
        self.log.info(
            "reloaded",
            model_version=self.model_version,
            threshold=new_pipe.threshold,
            thresholds=new_pipe.thresholds,
        )

    def _load_new(self) -> None:
        try:
            data = json.loads(Path(self.spec.settings_file).read_text())
            new_settings = Settings(**data)
            new_pipe = load_pipeline(new_settings, self.spec.frame_size)
            self._warm_up(new_pipe)
            self._loaded = (new_settings, new_pipe)
        except Exception as exc:
            self.log.error("reload failed; keeping the engines in use", error=str(exc))

    def _collect(self) -> list[Job]:
        b = self.settings.batching
        if self.runner.busy:
            # A batch is in flight: take only what is already queued, never wait for more.
            ready: list[Job] = []
            while len(ready) < b.max_batch:
                try:
                    ready.append(self.jobs.recv_pyobj(zmq.NOBLOCK))
                except zmq.Again:
                    break
            return ready
        if not self.jobs.poll(50):
            return []
        batch: list[Job] = [self.jobs.recv_pyobj()]
        flush_at = batch[0][3] + int(b.max_delay_ms * 1e6)
        while len(batch) < b.max_batch:
            try:
                batch.append(self.jobs.recv_pyobj(zmq.NOBLOCK))
                continue
            except zmq.Again:
                pass
            wait_ms = (flush_at - now_ns()) / 1e6
            if wait_ms <= 0:
                break
            self.jobs.poll(math.ceil(wait_ms))
        return batch

    def _send(
        self, job: Job, verdict: Verdict, reason: str | None, extra: dict[str, Any] | None = None
    ) -> None:
        ticket, slot, meta, t_recv, _deadline, _gen = job
        self.results.send_pyobj(
            verdict_msg(ticket, slot, meta, t_recv, verdict.value, reason, **(extra or {}))
        )

    def run_loop(self) -> bool:
        self.shared.progress.value += 1
        self._maybe_reload()
        batch = self._collect()
        if not batch and not self.runner.busy:
            return not self.stop_requested
        self._process(batch)
        return True

    def _process(self, batch: list[Job]) -> None:
        ingest_gen = int(self.shared.ingest_gen.value)
        t_start = now_ns()
        live: list[Job] = []
        for job in batch:
            if job[5] != ingest_gen:
                self._send(job, Verdict.ERROR, "ingest worker restarted before this frame was inspected")
            elif t_start > job[4]:
                self.m.timeouts.labels("queue").inc()
                self._send(job, Verdict.TIMEOUT, "deadline passed while queued")
            else:
                live.append(job)
        if live:
            frames = self.ring.frames[[j[1] for j in live]]  # fancy indexing copies out of the ring
            self.m.batch.observe(len(live))
            self._publish(self.runner.step(frames, (live, t_start)))
        elif self.runner.busy:
            self._publish(self.runner.step(None))

    def _publish(self, finished: list[tuple[tuple[list[Job], int], Any]]) -> None:
        for (live, t_start), outcome in finished:
            # An engine failure rejects that batch; it never kills the worker.
            if isinstance(outcome, Exception):
                self.log.error("engine failure", error=str(outcome), batch=len(live))
                for job in live:
                    self._send(job, Verdict.ERROR, f"engine failure: {outcome}")
            else:
                self._verdicts(live, t_start, outcome)

    def _verdicts(self, live: list[Job], t_start: int, results: list[Any]) -> None:
        t_done = now_ns()
        self.shared.processed.value += len(live)
        stage_ms = results[0].stage_ms
        for stage, ms in stage_ms.items():
            self.m.stage_ms.labels(stage).observe(ms)
        for job, r in zip(live, results, strict=True):
            extra = {
                "defect_score": r.score,
                "threshold": r.threshold,
                "noise_type": r.noise_type,
                "noise_confidence": r.noise_confidence,
                "denoiser": r.denoiser,
                "latency_ms": {"queue": (t_start - job[3]) / 1e6, **stage_ms},
                "model_version": self.model_version,
            }
            if t_done > job[4]:
                self.m.timeouts.labels("inference").inc()
                self._send(job, Verdict.TIMEOUT, "deadline passed during inference", extra)
            else:
                self._send(job, Verdict.FAIL if r.defective else Verdict.PASS, None, extra)

    def teardown(self) -> None:
        # Drain: whatever is still queued is answered before exit (the supervisor stopped ingest first).
        deadline = time.monotonic() + self.settings.supervisor.drain_timeout_s
        while time.monotonic() < deadline:
            batch = self._collect()
            if not batch and not self.runner.busy:
                break
            self._process(batch)
        if self.runner.busy:  # past the drain deadline: still answer the batch in flight
            self._publish(self.runner.step(None))
        self.shared.ready.value = 0
        self.pipeline.close()
        self.jobs.close(0)
        self.results.close(2000)
        self.ring.close()
        self.log.info("inference stopped")
