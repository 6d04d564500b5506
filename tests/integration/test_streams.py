"""The GPU stream schedule, run on the CPU by an executor that interleaves streams adversarially."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest

from inspector import noise as nz
from inspector.pipeline import Pipeline
from inspector.streams import Op, SimulatedExecutor, StreamScheduler
from inspector.tools.synthetic import ImpellerGenerator


@pytest.fixture(scope="module")
def batches() -> list[np.ndarray]:
    g = ImpellerGenerator(seed=77)
    rng = np.random.default_rng(3)
    out = []
    for b in range(5):
        out.append(
            np.stack(
                [
                    nz.apply_random(g.sample(b * 6 + i).image, nz.NOISE_TYPES[(b + i) % 4], rng)
                    for i in range(6)
                ]
            )
        )
    return out


def _pipelined(sched: StreamScheduler, batches: list[np.ndarray]) -> list[tuple]:
    # Upload batch N+1 before inferring batch N: the overlap the schedule exists for.
    results = []
    ns = [sched.upload(batches[0])]
    for i in range(len(batches)):
        if i + 1 < len(batches):
            ns.append(sched.upload(batches[i + 1]))
        results.append(sched.infer(ns[i], len(batches[i])))
    return results


@pytest.mark.parametrize(("seed", "prefer"), [(0, None), (1, None), (2, "compute"), (3, "copy")])
def test_schedule_matches_the_cpu_pipeline_under_any_interleaving(tiny_engines: Path, batches, seed, prefer):
    pipe = Pipeline.from_manifest(tiny_engines)
    ex = SimulatedExecutor(pipe.engines, max_batch=8, frame=(300, 300), seed=seed, prefer=prefer)
    got = _pipelined(StreamScheduler(ex, pipe.routes), batches)
    for frames, (ids, _conf, names, scores) in zip(batches, got, strict=True):
        want = pipe.run(frames)
        assert [nz.NOISE_TYPES[i] for i in ids] == [r.noise_type for r in want]
        assert names == [r.denoiser for r in want]
        np.testing.assert_allclose(scores, [r.score for r in want], atol=1e-5)
    # The schedule allows overlap: batch 1's upload was issued before batch 0's defect engine.
    order = [(op.kind, op.args.get("engine", op.args.get("dst"))) for op in ex.executed]
    if prefer != "compute":
        assert order.index(("h2d", "d_in1")) < order.index(("run", "defect"))
    pipe.close()


class _NoUploadWait(StreamScheduler):
    """A broken schedule: compute does not wait for the upload."""

    def infer(self, n, count):  # type: ignore[no-untyped-def]
        submit = self.x.submit
        self.x.submit = lambda op: (
            None if (op.kind == "wait" and op.args["event"].startswith("uploaded")) else submit(op)
        )  # type: ignore[method-assign]
        try:
            return super().infer(n, count)
        finally:
            self.x.submit = submit  # type: ignore[method-assign]


class _StatEngine:
    """A stand-in whose output depends on every pixel, so stale or half-copied buffers always show."""

    def __init__(self, name: str) -> None:
        self.name = name

    def infer(self, frames: np.ndarray) -> np.ndarray:
        m = frames.reshape(len(frames), -1).astype(np.float64).mean(axis=1)
        if self.name == "noise":
            out = np.zeros((len(frames), 4), np.float32)
            out[np.arange(len(frames)), (m * 7).astype(int) % 4] = 5.0
            return out
        if self.name == "denoise":
            return np.clip(frames.astype(int) + 1, 0, 255).astype(np.uint8)
        return np.stack([np.zeros_like(m), m / 20.0], axis=1).astype(np.float32)

    def close(self) -> None:
        pass


def test_a_missing_wait_is_caught(batches):
    pipe = Pipeline({s: _StatEngine(s) for s in ("noise", "denoise", "defect")}, threshold=0.5)
    # The correct schedule agrees with the CPU pipeline on these engines too...
    ex = SimulatedExecutor(pipe.engines, max_batch=8, frame=(300, 300), seed=0, prefer="compute")
    for frames, (_i, _c, _n, scores) in zip(batches, _pipelined(StreamScheduler(ex), batches), strict=True):
        np.testing.assert_allclose(scores, [r.score for r in pipe.run(frames)], atol=1e-6)
    # ...and the broken one does not.
    mismatches = 0
    for seed in range(2):
        ex = SimulatedExecutor(pipe.engines, max_batch=8, frame=(300, 300), seed=seed, prefer="compute")
        got = _pipelined(_NoUploadWait(ex), batches)
        for frames, (_ids, _c, _n, scores) in zip(batches, got, strict=True):
            want = [r.score for r in pipe.run(frames)]
            mismatches += not np.allclose(scores, want, atol=1e-6)
    assert mismatches > 0, "the simulated executor failed to expose a missing event wait"


def test_deadlock_is_reported():
    ex = SimulatedExecutor({}, max_batch=1, frame=(32, 32))
    ex.submit(Op("compute", "wait", {"event": "never"}))
    with pytest.raises(RuntimeError, match="deadlock"):
        ex.host_wait("something")


def test_streamed_pipeline_is_a_drop_in_for_the_pipeline(tiny_engines: Path, batches):
    """What the inference worker runs on TensorRT (cuda_streams), here on the CPU executor."""
    from inspector.streams import StreamedPipeline

    pipe = Pipeline.from_manifest(tiny_engines)
    ex = SimulatedExecutor(pipe.engines, max_batch=8, frame=(300, 300), seed=5)
    streamed = StreamedPipeline(pipe, ex)
    for frames in [*batches, batches[0][:1], batches[1][:3]]:
        got, want = streamed.run(frames), pipe.run(frames)
        assert [(r.noise_type, r.denoiser, r.defective) for r in got] == [
            (r.noise_type, r.denoiser, r.defective) for r in want
        ]
        np.testing.assert_allclose([r.score for r in got], [r.score for r in want], atol=1e-5)
        assert set(got[0].stage_ms) == {"streams"}
    with pytest.raises(ValueError, match="uint8"):
        streamed.run(batches[0].astype(np.float32))
    streamed.close()


def test_streamed_pipeline_routes_every_denoiser_like_the_pipeline(batches):
    """Stand-in engines that spread frames over all four noise types: the host-side sinusoid fit
    (uploaded into its slot), the device median and the autoencoder all run, as in Pipeline.run."""
    from inspector.streams import StreamedPipeline

    pipe = Pipeline({s: _StatEngine(s) for s in ("noise", "denoise", "defect")}, threshold=0.5)
    seen = set()
    for seed in range(3):
        streamed = StreamedPipeline(
            pipe, SimulatedExecutor(pipe.engines, max_batch=8, frame=(300, 300), seed=seed)
        )
        for frames in batches:
            got, want = streamed.run(frames), pipe.run(frames)
            assert [r.denoiser for r in got] == [r.denoiser for r in want]
            np.testing.assert_allclose([r.score for r in got], [r.score for r in want], atol=1e-6)
            seen |= {r.denoiser for r in got}
    assert {"sinusoid_fit", "adaptive_median", "autoencoder", "none"} <= seen


def test_batch_runner_keeps_one_batch_in_flight_and_answers_every_batch_once(tiny_engines: Path, batches):
    from inspector.pipeline import BatchRunner
    from inspector.streams import StreamedPipeline

    ref = Pipeline.from_manifest(tiny_engines)
    pipe = Pipeline.from_manifest(tiny_engines)
    ex = SimulatedExecutor(pipe.engines, max_batch=8, frame=(300, 300), seed=5, prefer="copy")
    runner = BatchRunner(StreamedPipeline(pipe, ex))
    assert runner.overlaps
    done: list = []
    # The worker's pattern: a batch per step while frames wait, None when nothing is waiting.
    for i, frames in enumerate(batches[:3]):
        done += runner.step(frames, i)
    assert runner.busy and [p for p, _ in done] == [0, 1]  # batch 2 in flight
    done += runner.step(None)
    assert not runner.busy
    done += runner.step(batches[3], 3) + runner.step(batches[4][:2], 4) + runner.step(None)
    assert [p for p, _ in done] == [0, 1, 2, 3, 4]
    want = [batches[0], batches[1], batches[2], batches[3], batches[4][:2]]
    for (_, got), frames in zip(done, want, strict=True):
        exp = ref.run(frames)
        assert [r.noise_type for r in got] == [r.noise_type for r in exp]
        np.testing.assert_allclose([r.score for r in got], [r.score for r in exp], atol=1e-5)
        assert [r.defective for r in got] == [r.defective for r in exp]
    # Batch 1 was uploaded before batch 0's defect engine ran: the overlap the runner exists for.
    order = [(op.kind, op.args.get("engine", op.args.get("dst"))) for op in ex.executed]
    assert order.index(("h2d", "d_in1")) < order.index(("run", "defect"))
    ref.close()
    runner.pipe.close()


def test_batch_runner_turns_a_failure_into_that_batchs_outcome_only(tiny_engines: Path, batches):
    from inspector.pipeline import BatchRunner

    pipe = Pipeline.from_manifest(tiny_engines)
    runner = BatchRunner(pipe)
    assert not runner.overlaps
    bad = runner.step(batches[0].astype(np.float32), "bad")  # not uint8: the pipeline refuses it
    good = runner.step(batches[1], "good")
    assert bad[0][0] == "bad" and isinstance(bad[0][1], ValueError)
    assert good[0][0] == "good" and len(good[0][1]) == len(batches[1]) and not runner.busy
    pipe.close()


class CountedEvent:
    """Stands in for pycuda's Event (no GPU here): counts creations and destructions."""

    live = 0
    made = 0

    def __init__(self) -> None:
        CountedEvent.live += 1
        CountedEvent.made += 1

    def __del__(self) -> None:
        CountedEvent.live -= 1


class PooledExecutor(SimulatedExecutor):
    """The simulated GPU with events held as PycudaExecutor holds them (an EventPool): every wait must
    find the very event its record made, and old events must go."""

    def __init__(self, *a, **kw) -> None:
        from inspector.backends.tensorrt import EventPool

        super().__init__(*a, **kw)
        self.pool = EventPool(CountedEvent)
        self.recorded: dict[str, weakref.ref] = {}  # weak: the test must not keep events alive itself
        self.peak = 0

    def submit(self, op: Op) -> None:
        if op.kind == "record":
            self.recorded[op.args["event"]] = weakref.ref(self.pool.get(op.args["event"]))
        elif op.kind == "wait":
            name = op.args["event"]
            assert name not in self.recorded or self.pool.get(name) is self.recorded[name](), name
        self.peak = max(self.peak, CountedEvent.live)
        super().submit(op)

    def host_wait(self, event: str) -> None:
        assert self.pool.get(event) is self.recorded[event](), event
        super().host_wait(event)


def test_cuda_events_are_released_once_no_step_can_name_them(tiny_engines: Path, batches):
    from inspector.pipeline import BatchRunner
    from inspector.streams import StreamedPipeline

    pipe = Pipeline.from_manifest(tiny_engines)
    ex = PooledExecutor(pipe.engines, max_batch=8, frame=(300, 300), seed=9)
    runner = BatchRunner(StreamedPipeline(pipe, ex))
    answered = 0
    for i in range(60):
        answered += len(runner.step(batches[i % len(batches)][:3], i))
    answered += len(runner.step(None))
    assert answered == 60
    # 4 events per batch were made; only the last few batches' are alive (was: all 240, forever).
    assert CountedEvent.made >= 4 * 60
    assert ex.peak <= 4 * 5, ex.peak
    ex.pool.clear()  # what PycudaExecutor.close() does
    assert CountedEvent.live == 0
    pipe.close()


def test_warm_up_runs_every_route_on_the_stream_path():
    """Warm-up used to run the synchronous path only, so the stream schedule's kernels and uploads first
    ran on live frames. Now every route runs on the path live frames take, both buffer sets included."""
    from inspector.daemon.workers.inference import warm_up
    from inspector.streams import StreamedPipeline
    from tests.conftest import SYNTHETIC

    pipe = Pipeline.from_manifest(SYNTHETIC)  # a real noise classifier: the routes are really taken
    ex = SimulatedExecutor(pipe.engines, max_batch=8, frame=(300, 300), seed=1)
    streamed = StreamedPipeline(pipe, ex)
    assert warm_up(streamed, 8, 1) > 0
    ran = {(op.kind, op.args.get("engine")) for op in ex.executed}
    assert {
        ("run", "noise"),
        ("run", "denoise"),
        ("run", "defect"),
        ("median", None),
        ("h2d_slot", None),
    } <= ran
    assert {"d_in0", "d_in1"} <= {op.args.get("dst") for op in ex.executed if op.kind == "h2d"}
    streamed.close()
