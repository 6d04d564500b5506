"""TensorRT backend (TensorRT 11 Python API + pycuda) behind the ``Engine`` seam, and the pycuda
executor of the stream schedule in :mod:`inspector.streams`.

Imports cleanly without tensorrt or pycuda: everything GPU-side is imported
when an engine is opened, and a missing package is an :class:`EngineError`
that says what to install. CUDA state is created in the process that uses it
(the inference worker is spawned, never forked with a CUDA context), on the
device's primary context, which is the one TensorRT's runtime uses.

Teardown order is explicit (never ``__del__``): execution contexts, engines,
runtime, device and page-locked buffers, then the context is popped.

Every device address bound to an execution context (``set_tensor_address``)
is 256-byte aligned, as TensorRT requires: buffers come from ``mem_alloc``
(aligned by CUDA), and a region holding several tensors to bind places them at
a stride rounded up with :func:`aligned`, never at ``base + frame_bytes * i``.
Every TensorRT setter's result is checked (``set_optimization_profile_async``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``): a refusal is
an :class:`EngineError` (a ``RuntimeError``) naming the tensor, the shape or
address and what TensorRT needs, which the inference worker turns into ERROR
verdicts for that batch - never a silently wrong result.

STATUS: written against the documented TensorRT 11 / pycuda APIs and NOT run
on a GPU in this project's sessions (none was lent). The pure parts - profile
choice, plan checks - are tested on the CPU; see docs/gpu.md.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from inspector.backends.base import EngineError


class TensorRTUnavailable(EngineError):
    """No TensorRT, no pycuda, or no GPU on this machine."""


# IExecutionContext.setTensorAddress: "The pointer must have at least 256-byte alignment."
TRT_ALIGNMENT = 256


def aligned(nbytes: int, alignment: int = TRT_ALIGNMENT) -> int:
    """``nbytes`` rounded up to a multiple of ``alignment``: the stride between tensors of one region
    whose addresses are bound to TensorRT (a 300x300 uint8 frame, 90000 bytes, gets a 90112-byte slot)."""
    return -(-int(nbytes) // alignment) * alignment


def checked_input_shape(ctx: Any, engine: str, tensor: str, shape: tuple[int, ...], profile: Any) -> None:
    """``ctx.set_input_shape``, its bool result checked (False: the shape is outside the context's profile)."""
    if not ctx.set_input_shape(tensor, shape):
        raise EngineError(
            f"TensorRT refused the input shape {shape} for tensor {tensor!r} of the {engine!r} plan: TensorRT "
            f"needs a shape inside the execution context's optimization profile (batch range {profile}, the "
            "frame size the plan was built for); rebuild the plans with `inspector rebuild` if the frame size "
            "or max_batch changed"
        )


def checked_tensor_address(ctx: Any, engine: str, tensor: str, address: int) -> None:
    """``ctx.set_tensor_address``, its bool result checked; an address off a 256-byte boundary is refused even
    where TensorRT would take it (a misaligned tensor can fault the CUDA context for every later batch)."""
    address = int(address)
    off = address % TRT_ALIGNMENT
    if not ctx.set_tensor_address(tensor, address) or off:
        why = f", {off} bytes past a {TRT_ALIGNMENT}-byte boundary" if off else ""
        raise EngineError(
            f"TensorRT refused the device address {address:#x} for tensor {tensor!r} of the {engine!r} plan"
            f"{why}: TensorRT needs a device address aligned to {TRT_ALIGNMENT} bytes, bound to an input or "
            "output tensor of this engine"
        )


def plan_profiles_for(max_batch: int) -> list[tuple[int, int, int]]:
    """Optimization profiles (min, opt, max batch) for a daemon flushing batches of up to ``max_batch``.

    Two ranges: small batches (a quiet line, the latency case) and full ones (the throughput case),
    so neither is run with kernels tuned for the other.
    """
    if max_batch <= 2:
        return [(1, max_batch, max_batch)]
    small = max(max_batch // 2, 1)
    return [(1, 1, small), (small + 1, max_batch, max_batch)]


def select_profile(profiles: list[tuple[int, int, int]], batch: int) -> int:
    """Index of the profile whose range holds ``batch``; an EngineError if none does."""
    for i, (lo, _opt, hi) in enumerate(profiles):
        if lo <= batch <= hi:
            return i
    raise EngineError(
        f"batch of {batch} is outside every built profile {profiles}: rebuild with a larger max_batch"
    )


def check_plans(meta: dict[str, Any], trt_version: str, identity: dict[str, str]) -> None:
    """Refuse plans built for another TensorRT version or GPU, saying to rebuild."""
    built = (meta.get("tensorrt"), meta.get("gpu"), meta.get("compute_capability"))
    here = (trt_version, identity.get("gpu"), identity.get("compute_capability"))
    if built != here:
        raise EngineError(
            f"TensorRT plans were built for TensorRT {built[0]} on {built[1]} (sm {built[2]}), this machine has "
            f"TensorRT {here[0]} on {here[1]} (sm {here[2]}): rebuild them here with `inspector rebuild`"
        )


def check_plan_record(rec: dict[str, Any], onnx: Path, plan: Path) -> None:
    """Refuse a stale plan (built from another ONNX file than the set's now) or a damaged one."""
    from inspector.manifest import sha256_file

    if rec.get("onnx_sha256") != sha256_file(onnx):
        raise EngineError(
            f"the TensorRT plan {plan.name} was built from another {onnx.name} than the one in the set now "
            "(stale after an engine update): rebuild the plans with `inspector rebuild`"
        )
    if rec.get("sha256") != sha256_file(plan):
        raise EngineError(f"the TensorRT plan {plan} does not match its sha256 in plans.json: rebuild it")


def require_strongly_typed(version: str) -> None:
    """TensorRT 11 builds every network strongly typed (precision from the Q/DQ ONNX); 10 would build the
    INT8 file weakly typed and free to pick its own precisions, so it is refused."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise TensorRTUnavailable(f"cannot read the TensorRT version {version!r}") from None
    if major < 11:
        raise TensorRTUnavailable(
            f"TensorRT {version} is too old: this project needs TensorRT 11 or newer (strongly typed networks); "
            "pip install 'tensorrt>=11'"
        )


def _require(module: str) -> Any:
    """Import a GPU-only module, or say what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"{module.split('.')[0]} is not importable: install the gpu extra (pip install '.[gpu]')"
        ) from exc


def _import_gpu() -> tuple[Any, Any]:
    return _require("tensorrt"), _require("pycuda.driver")


def gpu_identity() -> dict[str, str]:
    """Name and compute capability of GPU 0."""
    cuda = _require("pycuda.driver")
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            raise TensorRTUnavailable("no CUDA device on this machine")
        dev = cuda.Device(0)
    except cuda.Error as exc:
        raise TensorRTUnavailable(f"CUDA is not usable here: {exc}") from exc
    major, minor = dev.compute_capability()
    return {"gpu": dev.name(), "compute_capability": f"{major}.{minor}"}


class TensorRTEngine:
    """One stage's plan; synchronous ``infer`` for the ``Engine`` seam (the stream loop uses :class:`PycudaExecutor`)."""

    def __init__(self, path: Path, name: str, plans_dir: Path | None = None, **_options: Any) -> None:
        trt, cuda = _import_gpu()
        self.name, self.cuda = name, cuda
        plans = Path(plans_dir) if plans_dir is not None else Path(path).parent / "tensorrt"
        self.plans_dir = plans
        meta_path = plans / "plans.json"
        if not meta_path.is_file():
            raise EngineError(
                f"no TensorRT plans in {str(plans)!r}: build them on this machine with `inspector rebuild`"
            )
        meta = json.loads(meta_path.read_text())
        cuda.init()
        self.ctx = cuda.Device(0).retain_primary_context()
        self.ctx.push()
        try:
            check_plans(meta, trt.__version__, gpu_identity())
            rec = next(p for p in meta["plans"] if p["stage"] == name)
            check_plan_record(rec, Path(path), plans / rec["file"])
            self.profiles = [tuple(p) for p in rec["profiles"]]
            self.logger = trt.Logger(trt.Logger.WARNING)
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine((plans / rec["file"]).read_bytes())
            if self.engine is None:
                raise EngineError(
                    f"TensorRT could not deserialize {rec['file']}: rebuild with `inspector rebuild`"
                )
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
            self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
            self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output)))
            # One execution context per profile, each bound to it once.
            self.stream = cuda.Stream()
            self.contexts = []
            for i in range(len(self.profiles)):
                c = self.engine.create_execution_context()
                if c is None:
                    raise EngineError(
                        f"TensorRT could not create an execution context for {rec['file']} (out of GPU memory?)"
                    )
                if not c.set_optimization_profile_async(i, self.stream.handle):
                    raise EngineError(
                        f"TensorRT refused optimization profile {i} of {rec['file']} (plans.json lists "
                        f"{self.profiles}): the plan and plans.json disagree; rebuild with `inspector rebuild`"
                    )
                self.contexts.append(c)
            self.stream.synchronize()
            h, w = rec["frame"]
            max_b = max(p[2] for p in self.profiles)
            self.h_in = cuda.pagelocked_empty((max_b, 1, h, w), np.uint8)
            self.d_in = cuda.mem_alloc(self.h_in.nbytes)
            out_shape = (
                (max_b, 1, h, w) if name in ("denoise", "median") else (max_b, 4 if name == "noise" else 2)
            )
            self.h_out = cuda.pagelocked_empty(out_shape, self.out_dtype)
            self.d_out = cuda.mem_alloc(self.h_out.nbytes)
        finally:
            self.ctx.pop()

    def run_on_device(self, d_in: int, d_out: int, batch: int, frame: tuple[int, int], stream: Any) -> None:
        """Enqueue this engine on ``stream`` for ``batch`` frames at device pointers ``d_in`` -> ``d_out``
        (each 256-byte aligned); raises :class:`EngineError` on any refusal, before anything is enqueued."""
        index = select_profile(self.profiles, batch)
        ctx = self.contexts[index]
        shape = (batch, 1, *frame)
        checked_input_shape(ctx, self.name, self.input, shape, self.profiles[index])
        checked_tensor_address(ctx, self.name, self.input, d_in)
        checked_tensor_address(ctx, self.name, self.output, d_out)
        if not ctx.execute_async_v3(stream.handle):
            raise EngineError(
                f"TensorRT could not enqueue the {self.name!r} plan (input {self.input!r} of shape {shape} at "
                f"{int(d_in):#x}, output {self.output!r} at {int(d_out):#x}): see TensorRT's log above"
            )

    def infer(self, frames: np.ndarray) -> np.ndarray:
        n = len(frames)
        self.ctx.push()
        try:
            self.h_in[:n] = frames
            self.cuda.memcpy_htod_async(self.d_in, self.h_in, self.stream)
            self.run_on_device(int(self.d_in), int(self.d_out), n, frames.shape[2:], self.stream)
            self.cuda.memcpy_dtoh_async(self.h_out, self.d_out, self.stream)
            self.stream.synchronize()
            return self.h_out[:n].copy()
        finally:
            self.ctx.pop()

    def close(self) -> None:
        if getattr(self, "ctx", None) is None:
            return
        self.ctx.push()
        try:
            self.contexts = []  # contexts, then engine, then runtime, then buffers
            self.engine = None
            self.runtime = None
            for buf in ("d_in", "d_out"):
                if getattr(self, buf, None) is not None:
                    getattr(self, buf).free()
                    setattr(self, buf, None)
        finally:
            self.ctx.pop()
            self.ctx.detach()
            self.ctx = None


class EventPool:
    """CUDA events by name (``uploaded7``, ``done7``: kind + batch number), dropped once no schedule step
    can still name them: the schedule waits on batch N - 2 at most, so events of batches older than
    N - ``keep`` are released when batch N's first event is made. pycuda destroys an event when its last
    reference goes (``cuEventDestroy``; CUDA defers the release while a stream still waits on it)."""

    def __init__(self, create: Any, keep: int = 3) -> None:
        self.create, self.keep = create, keep
        self.events: dict[str, Any] = {}
        self.newest = -(10**9)

    @staticmethod
    def batch(name: str) -> int:
        digits = name[len(name.rstrip("0123456789-")) :]
        return int(digits) if digits.lstrip("-").isdigit() else 0

    def get(self, name: str) -> Any:
        ev = self.events.get(name)
        if ev is None:
            ev = self.events[name] = self.create()
            n = self.batch(name)
            if n > self.newest:
                self.newest = n
                for old in [k for k in self.events if self.batch(k) < n - self.keep]:
                    del self.events[old]
        return ev

    def clear(self) -> None:
        self.events.clear()


class PycudaExecutor:
    """Runs a :class:`~inspector.streams.StreamScheduler` schedule on the GPU.

    Buffers are allocated once at the largest profile; the copy and compute
    streams and one event per (event name) are created in this process.
    """

    def __init__(
        self,
        engines: dict[str, TensorRTEngine],
        max_batch: int,
        frame: tuple[int, int],
        median: TensorRTEngine | None = None,
    ) -> None:
        _trt, cuda = _import_gpu()
        self.cuda, self.engines, self.frame = cuda, engines, frame
        self.median = median  # the impulse median's plan (median_graph); None: no salt-and-pepper route
        cuda.init()
        self.ctx = cuda.Device(0).retain_primary_context()
        # The context is current only inside each call, on the calling thread: the executor is built on
        # a reload's loader thread and used and closed on the serving thread.
        self.ctx.push()
        try:
            self._allocate(max_batch, frame)
        finally:
            self.ctx.pop()

    def _allocate(self, max_batch: int, frame: tuple[int, int]) -> None:
        """Per buffer set ``b`` (double-buffered): the batch tensors the engines read and write, dense
        ``(max_batch, ...)`` as TensorRT takes them (bound at their base only; a frame's slot in them is
        reached by copies, which have no alignment rule), and the median's scratch ``d_med{b}``: two frame
        slots at a stride rounded up to 256 bytes, input and output of the median plan."""
        cuda = self.cuda
        h, w = frame
        self.host_bufs: dict[str, np.ndarray] = {}
        self.dev: dict[str, Any] = {}
        self.item_bytes: dict[str, int] = {}
        for b in (0, 1):
            for name, shape, dtype in (
                (f"in{b}", (max_batch, h, w), np.uint8),
                (f"fix{b}", (max_batch, h, w), np.uint8),
                (f"noise{b}", (max_batch, 4), np.float32),
                (f"defect{b}", (max_batch, 2), np.float32),
            ):
                self.host_bufs[name] = cuda.pagelocked_empty(shape, dtype)
            for name, nbytes, slots in (
                (f"d_in{b}", h * w, max_batch),
                (f"d_ae_in{b}", h * w, max_batch),
                (f"d_ae_out{b}", h * w, max_batch),
                (f"d_med{b}", aligned(h * w), 2),
                (f"d_noise{b}", 16, max_batch),
                (f"d_defect{b}", 8, max_batch),
            ):
                self.dev[name] = cuda.mem_alloc(slots * nbytes)
                self.item_bytes[name] = nbytes
        self.streams = {"copy": cuda.Stream(), "compute": cuda.Stream()}
        self.events = EventPool(cuda.Event)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """The primary context pushed on this thread for the duration of one call."""
        self.ctx.push()
        try:
            yield
        finally:
            self.ctx.pop()

    def host(self, name: str) -> np.ndarray:
        return self.host_bufs[name]

    def _event(self, name: str) -> Any:
        return self.events.get(name)

    def _ptr(self, buf: str, index: int = 0) -> int:
        return int(self.dev[buf]) + index * self.item_bytes[buf]

    def submit(self, op: Any) -> None:
        with self.current():
            self._submit(op)

    def _submit(self, op: Any) -> None:
        a, s, cuda = op.args, self.streams[op.stream], self.cuda
        if op.kind == "h2d":
            cuda.memcpy_htod_async(self.dev[a["dst"]], self.host_bufs[a["src"]][: a["n"]], s)
        elif op.kind == "d2h":
            cuda.memcpy_dtoh_async(self.host_bufs[a["dst"]][: a["n"]], self.dev[a["src"]], s)
        elif op.kind == "h2d_slot":
            cuda.memcpy_htod_async(self._ptr(a["dst"], a["i"]), self.host_bufs[a["src"]][a["i"]], s)
        elif op.kind == "d2d":
            cuda.memcpy_dtod_async(
                self._ptr(a["dst"], a["dst_i"]), self._ptr(a["src"], a["src_i"]), self.item_bytes[a["src"]], s
            )
        elif op.kind == "run":
            self.engines[a["engine"]].run_on_device(
                self._ptr(a["src"]), self._ptr(a["dst"]), a["n"], self.frame, s
            )
        elif op.kind == "median":
            if self.median is None:
                raise EngineError(
                    "no median plan in this set's tensorrt/ folder: rebuild with `inspector rebuild`"
                )
            h, w = self.frame
            med = f"d_med{a['buf'][-1]}"
            # The frame's slot (base + i * h * w, 90000 bytes apart at 300x300: off the 256-byte alignment) is
            # never bound: the frame is copied into aligned scratch slot 0, the median plan writes slot 1,
            # and the result is copied back into the frame's slot.
            cuda.memcpy_dtod_async(self._ptr(med, 0), self._ptr(a["buf"], a["i"]), h * w, s)
            self.median.run_on_device(self._ptr(med, 0), self._ptr(med, 1), 1, self.frame, s)
            cuda.memcpy_dtod_async(self._ptr(a["buf"], a["i"]), self._ptr(med, 1), h * w, s)
        elif op.kind == "record":
            self._event(a["event"]).record(s)
        elif op.kind == "wait":
            s.wait_for_event(self._event(a["event"]))
        else:
            raise ValueError(f"unknown op {op.kind!r}")

    def host_wait(self, event: str) -> None:
        with self.current():
            self._event(event).synchronize()

    def close(self) -> None:
        with self.current():
            for s in self.streams.values():
                s.synchronize()
            for d in self.dev.values():
                d.free()
            self.dev = {}
            self.events.clear()
        self.ctx.detach()
        if self.median is not None:
            self.median.close()


def streamed_pipeline(pipe: Any, max_batch: int, frame: tuple[int, int]) -> Any:
    """The pipeline's TensorRT engines as one CUDA-stream schedule (see ``inspector.streams``)."""
    from inspector.streams import StreamedPipeline

    plans = pipe.engines["defect"].plans_dir
    median = TensorRTEngine(plans / "median.onnx", "median", plans_dir=plans)
    return StreamedPipeline(pipe, PycudaExecutor(pipe.engines, max_batch, frame, median=median))
