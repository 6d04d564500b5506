"""The pipelined stream loop of the GPU path, as a schedule of device operations.

The scheduler decides *what* runs on which stream and which event orders it;
an executor decides *how*. The pycuda executor (``inspector.backends.tensorrt``)
turns each operation into an async copy, an ``execute_async_v3`` or a kernel
launch on a CUDA stream; :class:`SimulatedExecutor` runs the very same
schedule on the CPU with numpy buffers and ONNX Runtime engines, executing the
streams in an adversarial interleaving that respects nothing but stream order
and event waits - so a missing wait shows up as a wrong result in a CPU test.

Per batch (double-buffered: batch N uses buffer set N % 2):

    copy stream:    [wait consumed(N-2)] upload frames -> record uploaded(N)
    compute stream: wait uploaded(N) -> noise engine -> download noise logits -> record noise(N)
    host:           wait noise(N), route (the only host round trip: N x 4 floats)
    compute stream: gather AE frames (d2d) -> autoencoder -> scatter back (d2d);
                    impulse median in place for salt-and-pepper frames;
                    frames routed to a host filter (the periodic sinusoid fit) are filtered
                    on the host from the batch's own frames into staging buffer fix(N % 2)
                    and uploaded into their slot (no extra round trip: the host has them);
                    defect engine -> record consumed(N) -> download scores -> record done(N)
    host:           wait done(N)

so batch N+1's upload on the copy stream overlaps batch N's compute.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from inspector.denoise import AUTOENCODER, CLASSICAL_FILTERS, adaptive_median, route_frames, routes
from inspector.pipeline import FrameResult, Pipeline, check_frames, softmax


@dataclass(frozen=True)
class Op:
    """One device operation: ``kind`` with its arguments, issued on ``stream``."""

    stream: str
    kind: str  # h2d | h2d_slot | d2h | d2d | run | median | record | wait
    args: dict[str, Any] = field(default_factory=dict)


class Executor(Protocol):
    def submit(self, op: Op) -> None: ...

    def host_wait(self, event: str) -> None:
        """Block the host until ``event`` has completed."""
        ...

    def host(self, name: str) -> np.ndarray:
        """A host (page-locked) buffer by name."""
        ...


class StreamScheduler:
    """Issues the per-batch schedule above; ``run`` returns the same results as the CPU pipeline."""

    def __init__(
        self,
        executor: Executor,
        route: dict[str, str] | None = None,
        copy_stream: str = "copy",
        compute_stream: str = "compute",
    ) -> None:
        self.x = executor
        self.route = route if route is not None else routes("adaptive_median", "sinusoid_fit")
        self.cs, self.ks = copy_stream, compute_stream
        self.batch_no = 0
        self.frames: dict[int, np.ndarray] = {}  # batch N's frames until infer(N), for host filters

    def upload(self, frames: np.ndarray) -> int:
        """Stage ``frames`` into host buffer set N % 2 and enqueue its upload; returns N."""
        n = self.batch_no
        self.batch_no += 1
        b = n % 2
        if n >= 2:
            self.x.host_wait(f"uploaded{n - 2}")  # the host buffer is free again once its upload is done
        self.x.host(f"in{b}")[: len(frames)] = frames
        self.frames[n] = frames
        if n >= 2:
            self.x.submit(Op(self.cs, "wait", {"event": f"consumed{n - 2}"}))
        self.x.submit(Op(self.cs, "h2d", {"src": f"in{b}", "dst": f"d_in{b}", "n": len(frames)}))
        self.x.submit(Op(self.cs, "record", {"event": f"uploaded{n}"}))
        return n

    def infer(self, n: int, count: int) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        """Run batch ``n`` (already uploaded); returns noise class ids, confidences, denoiser names and scores."""
        b, k = n % 2, self.ks
        sub = self.x.submit
        sub(Op(k, "wait", {"event": f"uploaded{n}"}))
        sub(Op(k, "run", {"engine": "noise", "src": f"d_in{b}", "dst": f"d_noise{b}", "n": count}))
        sub(Op(k, "d2h", {"src": f"d_noise{b}", "dst": f"noise{b}", "n": count}))
        sub(Op(k, "record", {"event": f"noise{n}"}))
        self.x.host_wait(f"noise{n}")
        probs = softmax(self.x.host(f"noise{b}")[:count])
        ids, conf = probs.argmax(axis=1), probs.max(axis=1)
        frames = self.frames.pop(n)
        names = route_frames(self.route, ids)
        ae = [i for i, name in enumerate(names) if name == AUTOENCODER]
        for j, i in enumerate(ae):
            sub(Op(k, "d2d", {"src": f"d_in{b}", "src_i": i, "dst": f"d_ae_in{b}", "dst_i": j}))
        if ae:
            sub(
                Op(k, "run", {"engine": "denoise", "src": f"d_ae_in{b}", "dst": f"d_ae_out{b}", "n": len(ae)})
            )
        for j, i in enumerate(ae):
            sub(Op(k, "d2d", {"src": f"d_ae_out{b}", "src_i": j, "dst": f"d_in{b}", "dst_i": i}))
        for i, name in enumerate(names):
            if name == "adaptive_median":  # a CUDA kernel on the device
                sub(Op(k, "median", {"buf": f"d_in{b}", "i": i}))
            elif name in CLASSICAL_FILTERS:  # on the host; fix{b} is free: infer(N - 2) waited for done
                self.x.host(f"fix{b}")[i] = CLASSICAL_FILTERS[name](frames[i])
                sub(Op(k, "h2d_slot", {"src": f"fix{b}", "dst": f"d_in{b}", "i": i}))
        sub(Op(k, "run", {"engine": "defect", "src": f"d_in{b}", "dst": f"d_defect{b}", "n": count}))
        sub(Op(k, "record", {"event": f"consumed{n}"}))
        sub(Op(k, "d2h", {"src": f"d_defect{b}", "dst": f"defect{b}", "n": count}))
        sub(Op(k, "record", {"event": f"done{n}"}))
        self.x.host_wait(f"done{n}")
        scores = softmax(self.x.host(f"defect{b}")[:count])[:, 1]
        return ids, conf, names, scores


class StreamedPipeline:
    """A :class:`~inspector.pipeline.Pipeline` whose three stages run as one stream schedule.

    Same contract as ``Pipeline.run`` (the inference worker uses either): the
    schedule above on ``executor`` - :class:`~inspector.backends.tensorrt.PycudaExecutor`
    on a GPU, :class:`SimulatedExecutor` in the CPU tests. Per-stage host
    timings do not exist on a stream (the stages overlap on the device), so
    each result carries the batch's wall time under ``"streams"``.
    """

    def __init__(self, pipe: Pipeline, executor: Any) -> None:
        self.pipe, self.executor = pipe, executor
        self.engines, self.routes, self.manifest = pipe.engines, pipe.routes, pipe.manifest
        self.threshold, self.thresholds = pipe.threshold, pipe.thresholds
        self.sched = StreamScheduler(executor, pipe.routes)

    def submit(self, frames: np.ndarray) -> tuple[int, int, float]:
        """Stage ``frames`` and enqueue their upload; returns a ticket for :meth:`collect`.

        Up to two batches may be submitted before the first is collected (the
        schedule's buffer sets): submitting batch N+1 before collecting batch
        N puts N+1's upload on the copy stream while N computes.
        """
        check_frames(frames)
        t0 = time.perf_counter()
        return self.sched.upload(frames), len(frames), t0

    def collect(self, ticket: tuple[int, int, float]) -> list[FrameResult]:
        """Run the submitted batch through the stages and return its results."""
        n, count, t0 = ticket
        ids, conf, names, scores = self.sched.infer(n, count)
        return self.pipe.results(ids, conf, names, scores, {"streams": (time.perf_counter() - t0) * 1e3})

    def run(self, frames: np.ndarray) -> list[FrameResult]:
        return self.collect(self.submit(frames))

    def denoise(self, frames: np.ndarray, noise_idx: np.ndarray) -> tuple[np.ndarray, list[str]]:
        return self.pipe.denoise(frames, noise_idx)

    def close(self) -> None:
        close = getattr(self.executor, "close", None)
        if close is not None:
            close()
        self.pipe.close()


class SimulatedExecutor:
    """The schedule on the CPU: numpy "device" buffers, ONNX Runtime engines, streams run in a random
    interleaving that honours only per-stream order and event waits (as a GPU would)."""

    def __init__(
        self,
        engines: dict[str, Any],
        max_batch: int,
        frame: tuple[int, int],
        seed: int = 0,
        prefer: str | None = None,
    ) -> None:
        self.engines = engines
        self.rng = random.Random(seed)
        self.prefer = prefer  # run this stream whenever it can run (the most adversarial order for it)
        h, w = frame
        self.bufs: dict[str, np.ndarray] = {}
        for b in (0, 1):
            self.bufs[f"in{b}"] = np.zeros((max_batch, h, w), np.uint8)
            self.bufs[f"fix{b}"] = np.zeros((max_batch, h, w), np.uint8)
            self.bufs[f"d_in{b}"] = np.zeros((max_batch, h, w), np.uint8)
            self.bufs[f"d_ae_in{b}"] = np.zeros((max_batch, h, w), np.uint8)
            self.bufs[f"d_ae_out{b}"] = np.zeros((max_batch, h, w), np.uint8)
            self.bufs[f"d_noise{b}"] = np.zeros((max_batch, 4), np.float32)
            self.bufs[f"noise{b}"] = np.zeros((max_batch, 4), np.float32)
            self.bufs[f"d_defect{b}"] = np.zeros((max_batch, 2), np.float32)
            self.bufs[f"defect{b}"] = np.zeros((max_batch, 2), np.float32)
        self.queues: dict[str, deque[Op]] = {}
        self.done_events: set[str] = set()
        self.executed: list[Op] = []

    def host(self, name: str) -> np.ndarray:
        return self.bufs[name]

    def submit(self, op: Op) -> None:
        self.queues.setdefault(op.stream, deque()).append(op)

    def _ready(self, op: Op) -> bool:
        return op.kind != "wait" or op.args["event"] in self.done_events

    def _step(self) -> bool:
        ready = [s for s, q in self.queues.items() if q and self._ready(q[0])]
        if not ready:
            return False
        pick = self.prefer if self.prefer in ready else self.rng.choice(ready)
        op = self.queues[pick].popleft()
        self._execute(op)
        self.executed.append(op)
        return True

    def host_wait(self, event: str) -> None:
        while event not in self.done_events:
            if not self._step():
                raise RuntimeError(f"deadlock: host waits for {event!r}, which no stream can reach")

    def drain(self) -> None:
        while self._step():
            pass

    def _execute(self, op: Op) -> None:
        a, bufs = op.args, self.bufs
        if op.kind in ("h2d", "d2h"):
            bufs[a["dst"]][: a["n"]] = bufs[a["src"]][: a["n"]]
        elif op.kind == "d2d":
            bufs[a["dst"]][a["dst_i"]] = bufs[a["src"]][a["src_i"]]
        elif op.kind == "h2d_slot":
            bufs[a["dst"]][a["i"]] = bufs[a["src"]][a["i"]]
        elif op.kind == "run":
            out = self.engines[a["engine"]].infer(bufs[a["src"]][: a["n"], None])
            bufs[a["dst"]][: a["n"]] = out[:, 0] if out.ndim == 4 else out
        elif op.kind == "median":
            bufs[a["buf"]][a["i"]] = adaptive_median(bufs[a["buf"]][a["i"]])
        elif op.kind == "record":
            self.done_events.add(a["event"])
        elif op.kind == "wait":
            pass
        else:
            raise ValueError(f"unknown op {op.kind!r}")
