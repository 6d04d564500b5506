"""The pycuda executor and the TensorRT engine against a fake pycuda and a fake TensorRT (no GPU here).

The fake ``pycuda.driver`` records *which thread* pushes and pops the CUDA context and how many events
live (a context pushed on a reload's loader thread and popped on the serving thread; an event made per
batch and never destroyed), and keeps device memory as bytes, so copies really move frames and an
access outside every allocation is an error. The fake ``tensorrt`` checks what the real one checks
when tensors are bound: ``set_tensor_address`` returns False for an address off a 256-byte boundary
(TensorRT: "The pointer must have at least 256-byte alignment") and keeps the previous binding, as
TensorRT does; ``set_input_shape`` returns False for a shape outside the context's optimization
profile; ``execute_async_v3`` returns False without a shape and both addresses. Its plans compute
stand-in stages (every pixel counts) and the impulse median itself, so results compare exactly with
the CPU pipeline. Stream interleavings are tested with the simulated executor (tests/integration).
"""

from __future__ import annotations

import json
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from inspector import noise as nz
from inspector.backends import EngineError
from inspector.backends.tensorrt import aligned, plan_profiles_for
from inspector.denoise import adaptive_median
from inspector.pipeline import BatchRunner, Pipeline
from inspector.streams import Op, StreamedPipeline
from inspector.tools.synthetic import ImpellerGenerator

FAKE_TRT = "11.0.0"
FAKE_GPU = ("NVIDIA Fake", (9, 0))
FRAME = (300, 300)  # 90000 bytes a frame: slot i of a batch tensor is 256-byte aligned only when 16 | i


class DeviceMemory:
    """Device memory as bytes. Allocations are 512-byte aligned (cudaMalloc gives at least 256) with a gap
    after each, so a copy or a plan writing past an allocation fails instead of landing in a neighbour."""

    def __init__(self) -> None:
        self.allocs: dict[int, bytearray] = {}
        self.next = 0x7F00_0000_0000

    def alloc(self, nbytes: int) -> int:
        base = self.next
        self.allocs[base] = bytearray(nbytes)
        self.next += aligned(nbytes, 512) + 512
        return base

    def free(self, base: int) -> None:
        del self.allocs[base]

    def _at(self, addr: int, nbytes: int) -> tuple[bytearray, int]:
        for base, buf in self.allocs.items():
            if base <= addr and addr + nbytes <= base + len(buf):
                return buf, addr - base
        raise AssertionError(f"{nbytes} bytes at {addr:#x}: outside every live device allocation")

    def read(self, addr: int, nbytes: int) -> bytes:
        buf, off = self._at(int(addr), nbytes)
        return bytes(buf[off : off + nbytes])

    def write(self, addr: int, data: bytes) -> None:
        buf, off = self._at(int(addr), len(data))
        buf[off : off + len(data)] = data


class Recorder:
    def __init__(self) -> None:
        self.stacks: dict[int, int] = {}  # thread -> context push depth
        self.log: list[tuple[str, int]] = []
        self.events_live = 0
        self.events_made = 0
        self.memory = DeviceMemory()
        self.bound: list[tuple[str, str, int, bool]] = []  # (plan, tensor, address, accepted)
        self.shapes: list[tuple[str, tuple[int, ...], bool]] = []  # (plan, shape, accepted)
        self.enqueued: list[str] = []
        self.enforce_alignment = True  # False: a TensorRT that would take any address
        self.fail_execute = False

    def current(self) -> bool:
        return self.stacks.get(threading.get_ident(), 0) > 0


def fake_pycuda(rec: Recorder) -> dict[str, types.ModuleType]:
    class Ctx:
        def push(self) -> None:
            t = threading.get_ident()
            rec.stacks[t] = rec.stacks.get(t, 0) + 1
            rec.log.append(("push", t))

        def pop(self) -> None:
            t = threading.get_ident()
            assert rec.stacks.get(t, 0) > 0, "pop on a thread that has no context pushed"
            rec.stacks[t] -= 1
            rec.log.append(("pop", t))

        def detach(self) -> None:
            rec.log.append(("detach", threading.get_ident()))

    ctx = Ctx()

    class Device:
        def __init__(self, _i: int) -> None:
            pass

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return FAKE_GPU[0]

        def compute_capability(self) -> tuple[int, int]:
            return FAKE_GPU[1]

        def retain_primary_context(self) -> Ctx:
            return ctx

    def needs_context(fn):
        def wrapped(*a, **kw):
            assert rec.current(), f"{fn.__name__} called with no current context on this thread"
            return fn(*a, **kw)

        return wrapped

    class Event:
        def __init__(self) -> None:
            assert rec.current()
            rec.events_live += 1
            rec.events_made += 1

        def __del__(self) -> None:
            rec.events_live -= 1

        record = needs_context(lambda self, stream=None: None)
        synchronize = needs_context(lambda self: None)

    class Stream:  # work runs when it is enqueued: the fake has one order, the order of submission
        handle = 0x5EA
        synchronize = needs_context(lambda self: None)
        wait_for_event = needs_context(lambda self, ev: None)

    class Mem:
        def __init__(self, nbytes: int) -> None:
            self.ptr = rec.memory.alloc(nbytes)

        def __int__(self) -> int:
            return self.ptr

        @needs_context
        def free(self) -> None:
            rec.memory.free(self.ptr)

    def htod(dst, src, stream=None) -> None:
        rec.memory.write(int(dst), np.ascontiguousarray(src).tobytes())

    def dtoh(dst, src, stream=None) -> None:
        dst[...] = np.frombuffer(rec.memory.read(int(src), dst.nbytes), dst.dtype).reshape(dst.shape)

    def dtod(dst, src, nbytes, stream=None) -> None:
        rec.memory.write(int(dst), rec.memory.read(int(src), nbytes))

    driver = types.ModuleType("pycuda.driver")
    driver.init = lambda: None
    driver.Error = type("Error", (Exception,), {})
    driver.Device = Device
    driver.Event = Event
    driver.Stream = Stream
    driver.pagelocked_empty = needs_context(lambda shape, dtype: np.zeros(shape, dtype))
    driver.mem_alloc = needs_context(Mem)
    driver.memcpy_htod_async = needs_context(htod)
    driver.memcpy_dtoh_async = needs_context(dtoh)
    driver.memcpy_dtod_async = needs_context(dtod)

    class SourceModule:  # the executor must no longer compile CUDA C at all (no toolkit at run time)
        def __init__(self, *_a, **_kw) -> None:
            raise AssertionError("SourceModule used: the line host would need nvcc")

    compiler = types.ModuleType("pycuda.compiler")
    compiler.SourceModule = SourceModule
    pycuda = types.ModuleType("pycuda")
    pycuda.driver, pycuda.compiler = driver, compiler
    return {
        "pycuda": pycuda,
        "pycuda.driver": driver,
        "pycuda.compiler": compiler,
        "tensorrt": fake_tensorrt(rec),
    }


def stand_in(stage: str, x: np.ndarray) -> np.ndarray:
    """What a stage's plan computes in the fakes, from ``(N, 1, H, W)`` uint8: the noise class is written in
    each frame's corner pixel; the defect logit is a positional checksum of every pixel (a stale, shifted or
    half-copied frame changes the score); the median plan is the impulse median itself."""
    if stage == "noise":
        out = np.zeros((len(x), 4), np.float32)
        out[np.arange(len(x)), x[:, 0, 0, 0].astype(int) % 4] = 5.0
        return out
    if stage == "denoise":
        return np.clip(x.astype(int) + 1, 0, 255).astype(np.uint8)
    if stage == "median":
        return np.stack([adaptive_median(f[0]) for f in x])[:, None]
    flat = x.reshape(len(x), -1).astype(np.int64)
    check = (flat * (np.arange(flat.shape[1]) % 251 + 1)).sum(axis=1) % 1009
    return np.stack([np.zeros(len(x)), check / 100.0 - 5.0], axis=1).astype(np.float32)


class StandIn:
    """The stand-in stages as CPU engines: the reference the fake GPU runs are compared with."""

    def __init__(self, name: str) -> None:
        self.name = name

    def infer(self, frames: np.ndarray) -> np.ndarray:
        return stand_in(self.name, frames)

    def close(self) -> None:
        pass


def fake_tensorrt(rec: Recorder) -> types.ModuleType:
    class Engine:
        def __init__(self, plan: dict) -> None:
            self.stage, self.frame = plan["stage"], tuple(plan["frame"])
            self.profiles = [tuple(p) for p in plan["profiles"]]
            self.num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ("frames", "out")[i]

        def get_tensor_mode(self, name: str) -> str:
            return "input" if name == "frames" else "output"

        def get_tensor_dtype(self, name: str) -> type:
            return np.float32 if name == "out" and self.stage in ("noise", "defect") else np.uint8

        def create_execution_context(self) -> Context:
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.profile = engine, 0
            self.shape: tuple[int, ...] | None = None
            self.address: dict[str, int] = {}

        def set_optimization_profile_async(self, index: int, stream: int) -> bool:
            if not 0 <= index < len(self.engine.profiles):
                return False
            self.profile = index
            return True

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            lo, _opt, hi = self.engine.profiles[self.profile]
            shape = tuple(int(d) for d in shape)
            ok = name == "frames" and len(shape) == 4 and lo <= shape[0] <= hi
            ok = ok and shape[1:] == (1, *self.engine.frame)
            rec.shapes.append((self.engine.stage, shape, ok))
            if ok:
                self.shape = shape
            return ok

        def set_tensor_address(self, name: str, address: int) -> bool:
            ok = name in ("frames", "out") and (int(address) % 256 == 0 or not rec.enforce_alignment)
            rec.bound.append((self.engine.stage, name, int(address), ok))
            if ok:  # refused: the previous binding stays, as in TensorRT
                self.address[name] = int(address)
            return ok

        def execute_async_v3(self, stream_handle: int) -> bool:
            if rec.fail_execute or self.shape is None or set(self.address) != {"frames", "out"}:
                return False
            n, _c, h, w = self.shape
            x = np.frombuffer(rec.memory.read(self.address["frames"], n * h * w), np.uint8)
            y = stand_in(self.engine.stage, x.reshape(self.shape))
            rec.memory.write(self.address["out"], np.ascontiguousarray(y).tobytes())
            rec.enqueued.append(self.engine.stage)
            return True

    class Runtime:
        def __init__(self, logger: object) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine:
            return Engine(json.loads(data))

    trt = types.ModuleType("tensorrt")
    trt.__version__ = FAKE_TRT
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda dtype: dtype
    trt.Runtime = Runtime
    return trt


def plan_set(root: Path, max_batch: int = 8, listed_profiles: list | None = None) -> Path:
    """An engine set's ``tensorrt/`` folder as ``inspector rebuild`` leaves it, with the fake's plans."""
    from inspector.manifest import sha256_file

    plans = root / "tensorrt"
    plans.mkdir(parents=True)
    profiles = plan_profiles_for(max_batch)
    records = []
    for stage in ("noise", "denoise", "defect", "median"):
        onnx = (plans if stage == "median" else root) / f"{stage}.onnx"
        onnx.write_bytes(f"{stage} graph".encode())
        plan = plans / f"{stage}.plan"
        plan.write_text(json.dumps({"stage": stage, "profiles": profiles, "frame": FRAME}))
        records.append(
            {
                "stage": stage,
                "file": plan.name,
                "sha256": sha256_file(plan),
                "onnx_sha256": sha256_file(onnx),
                "profiles": listed_profiles or profiles,
                "frame": list(FRAME),
            }
        )
    meta = {"tensorrt": FAKE_TRT, "gpu": FAKE_GPU[0], "compute_capability": "9.0", "plans": records}
    (plans / "plans.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def fakes(monkeypatch) -> Recorder:
    rec = Recorder()
    for name, mod in fake_pycuda(rec).items():
        monkeypatch.setitem(sys.modules, name, mod)
    return rec


def test_context_is_pushed_and_popped_on_each_calling_thread_and_events_are_released(monkeypatch):
    from inspector.backends.tensorrt import PycudaExecutor

    rec = Recorder()
    for name, mod in fake_pycuda(rec).items():
        monkeypatch.setitem(sys.modules, name, mod)
    box: dict[str, PycudaExecutor] = {}
    # Built on a loader thread, as a SIGHUP reload does...
    loader = threading.Thread(target=lambda: box.setdefault("x", PycudaExecutor({}, 4, (8, 8))))
    loader.start()
    loader.join()
    x = box["x"]
    assert all(depth == 0 for depth in rec.stacks.values()), "the loader thread kept the context pushed"
    # ...then used and closed on the serving thread (this one).
    for n in range(50):
        for kind in ("uploaded", "noise", "consumed", "done"):
            x.submit(Op("compute", "record", {"event": f"{kind}{n}"}))
        if n >= 2:
            x.submit(Op("copy", "wait", {"event": f"consumed{n - 2}"}))
        x.host_wait(f"done{n}")
    assert rec.events_made == 200 and rec.events_live <= 4 * 4, rec.events_live
    x.close()
    assert rec.events_live == 0
    assert all(depth == 0 for depth in rec.stacks.values())
    me = threading.get_ident()
    assert rec.log[-1] == ("detach", me)
    pushes = [t for op, t in rec.log if op == "push"]
    assert loader.ident in pushes and me in pushes


def test_the_fake_catches_a_context_left_on_the_loader_thread(monkeypatch):
    """The check above can fail: an executor that pushes in __init__ and pops in close() (the old code)."""
    from inspector.backends import tensorrt as trt_mod

    rec = Recorder()
    for name, mod in fake_pycuda(rec).items():
        monkeypatch.setitem(sys.modules, name, mod)

    class Old(trt_mod.PycudaExecutor):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self.ctx.push()  # what the old constructor left behind

        def submit(self, op):  # the old submit: no push of its own
            self._submit(op)

    box = {}
    t = threading.Thread(target=lambda: box.setdefault("x", Old({}, 4, (8, 8))))
    t.start()
    t.join()
    assert rec.stacks[t.ident] == 1  # left pushed on a thread that is gone
    with pytest.raises(AssertionError, match="current"):
        box["x"].submit(Op("compute", "record", {"event": "done0"}))


def routed_batches() -> list[np.ndarray]:
    """Frames that take every route, their noise type written in the corner pixel for the stand-in
    classifier. Salt-and-pepper frames sit at slots 2 and 6, 0 and 2, 1 and 5: 180000 and 90000 bytes
    into the batch tensor, off a 256-byte boundary. Sizes 8, 3, 1, 8 use both optimization profiles."""
    clean = ImpellerGenerator(seed=11).batch(0, 8)[0]
    assert clean.shape[1:] == FRAME
    rng = np.random.default_rng(4)
    kinds = [
        [nz.NOISE_TYPES[i % 4] for i in range(8)],
        ["salt_pepper", "periodic", "salt_pepper"],
        ["gaussian"],
        [nz.NOISE_TYPES[(i + 1) % 4] for i in range(8)],
    ]
    out = []
    for ks in kinds:
        frames = np.stack([nz.apply_random(clean[i], k, rng) for i, k in enumerate(ks)])
        frames[:, 0, 0] = [nz.NOISE_TYPES.index(k) for k in ks]
        out.append(frames)
    return out


def assert_same(got, want) -> None:
    assert [(r.noise_type, r.denoiser, r.defective) for r in got] == [
        (r.noise_type, r.denoiser, r.defective) for r in want
    ]
    np.testing.assert_array_equal([r.score for r in got], [r.score for r in want])


def fake_gpu_pipeline(root: Path) -> Pipeline:
    from inspector.backends.tensorrt import TensorRTEngine

    return Pipeline({s: TensorRTEngine(root / f"{s}.onnx", s) for s in ("noise", "denoise", "defect")}, 0.5)


def cpu_pipeline() -> Pipeline:
    return Pipeline({s: StandIn(s) for s in ("noise", "denoise", "defect")}, 0.5)


def run_overlapped(pipe, batches: list[np.ndarray]) -> list:
    """Batches through the worker's BatchRunner: batch N+1 submitted before batch N is collected."""
    runner = BatchRunner(pipe)
    done = []
    for i, frames in enumerate(batches):
        done += runner.step(frames, i)
    done += runner.step(None)
    assert [i for i, _ in done] == list(range(len(batches)))
    return [outcome for _, outcome in done]


def test_every_route_runs_through_the_fake_tensorrt_with_aligned_bindings(fakes, tmp_path):
    from inspector.backends.tensorrt import streamed_pipeline

    root = plan_set(tmp_path)
    gpu, cpu, batches = fake_gpu_pipeline(root), cpu_pipeline(), routed_batches()
    for frames in batches:  # the synchronous path: TensorRTEngine.infer
        assert_same(gpu.run(frames), cpu.run(frames))
    streamed = streamed_pipeline(gpu, 8, FRAME)  # the stream schedule, as the worker serves it
    outcomes = run_overlapped(streamed, batches)
    for frames, got in zip(batches, outcomes, strict=True):
        assert not isinstance(got, Exception), got
        assert_same(got, cpu.run(frames))
    assert {"autoencoder", "adaptive_median", "sinusoid_fit", "none"} <= {
        r.denoiser for g in outcomes for r in g
    }
    assert set(fakes.enqueued) == {"noise", "denoise", "defect", "median"}
    assert [b for b in fakes.bound if not b[3] or b[2] % 256] == [], "a binding off 256 bytes, or refused"
    assert all(ok for *_, ok in fakes.shapes) and {s[0] for _, s, _ in fakes.shapes} >= {1, 3, 8}
    median_addresses = {(t, a) for s, t, a, _ in fakes.bound if s == "median"}
    assert len(median_addresses) == 4, median_addresses  # scratch slots 0 -> 1, in each buffer set
    streamed.close()
    assert fakes.memory.allocs == {}, "device buffers left allocated"


class OldMedianLayout:
    """The median as it was before issue 27: the plan's output bound at the frame's slot, base + 90000 * i."""

    @staticmethod
    def executor(gpu: Pipeline, root: Path):
        from inspector.backends.tensorrt import PycudaExecutor, TensorRTEngine

        class Old(PycudaExecutor):
            def _submit(self, op):
                if op.kind != "median":
                    return super()._submit(op)
                a, s = op.args, self.streams[op.stream]
                scratch = f"d_med{a['buf'][-1]}"
                self.cuda.memcpy_dtod_async(self._ptr(scratch), self._ptr(a["buf"], a["i"]), 90000, s)
                self.median.run_on_device(self._ptr(scratch), self._ptr(a["buf"], a["i"]), 1, self.frame, s)

        plans = root / "tensorrt"
        median = TensorRTEngine(plans / "median.onnx", "median", plans_dir=plans)
        return Old(gpu.engines, 8, FRAME, median=median)


def test_a_misaligned_binding_is_refused_and_becomes_that_batchs_error(fakes, tmp_path):
    """The old layout through the fake: TensorRT refuses the median's output at d_in + 180000, and the
    refusal is an exception naming the tensor, the address and the alignment, which the worker's
    BatchRunner makes that batch's outcome (ERROR verdicts) - the next batch is served correctly.
    Before the fix the False was ignored and no such error came (see the test below for what did)."""
    root = plan_set(tmp_path)
    gpu, cpu, batches = fake_gpu_pipeline(root), cpu_pipeline(), routed_batches()
    streamed = StreamedPipeline(gpu, OldMedianLayout.executor(gpu, root))
    bad, good = run_overlapped(streamed, [batches[0], batches[2]])  # median at slot 2; no median
    assert isinstance(bad, EngineError) and isinstance(bad, RuntimeError)
    d_in0 = int(streamed.executor.dev["d_in0"])
    msg = str(bad)
    assert f"{d_in0 + 180000:#x}" in msg and "'out' of the 'median' plan" in msg, msg
    assert "32 bytes past a 256-byte boundary" in msg and "aligned to 256 bytes" in msg, msg
    assert [(s, t, a) for s, t, a, ok in fakes.bound if not ok] == [("median", "out", d_in0 + 180000)]
    assert_same(good, cpu.run(batches[2]))
    streamed.close()


def test_unchecked_setters_served_a_silently_wrong_median(fakes, tmp_path, monkeypatch):
    """Why every setter's result is checked: the old run_on_device ignored them, a refused address kept the
    previous binding, and a batch came back without any error - with wrong scores."""
    from inspector.backends.tensorrt import TensorRTEngine, select_profile

    def unchecked(self, d_in, d_out, batch, frame, stream):  # the code before issue 27
        ctx = self.contexts[select_profile(self.profiles, batch)]
        ctx.set_input_shape(self.input, (batch, 1, *frame))
        ctx.set_tensor_address(self.input, int(d_in))
        ctx.set_tensor_address(self.output, int(d_out))
        if not ctx.execute_async_v3(stream.handle):
            raise EngineError(f"TensorRT execution of {self.name!r} failed to enqueue")

    monkeypatch.setattr(TensorRTEngine, "run_on_device", unchecked)
    root = plan_set(tmp_path)
    gpu, cpu = fake_gpu_pipeline(root), cpu_pipeline()
    frames = routed_batches()[1]  # salt-and-pepper at slots 0 (aligned) and 2 (90000 * 2: not)
    streamed = StreamedPipeline(gpu, OldMedianLayout.executor(gpu, root))
    got, want = streamed.run(frames), cpu.run(frames)  # no exception
    assert got[1].score == want[1].score
    assert got[0].score != want[0].score and got[2].score != want[2].score  # slot 2's median went to slot 0
    streamed.close()


def test_the_alignment_is_checked_even_where_tensorrt_would_take_the_address(fakes, tmp_path):
    fakes.enforce_alignment = False
    root = plan_set(tmp_path)
    gpu = fake_gpu_pipeline(root)
    streamed = StreamedPipeline(gpu, OldMedianLayout.executor(gpu, root))
    with pytest.raises(EngineError, match="32 bytes past a 256-byte boundary"):
        streamed.run(routed_batches()[0])
    assert "median" not in fakes.enqueued
    streamed.close()


def test_a_refused_shape_profile_or_enqueue_is_an_error_naming_it(fakes, tmp_path):
    from inspector.backends.tensorrt import TensorRTEngine

    root = plan_set(tmp_path)
    noise = TensorRTEngine(root / "noise.onnx", "noise")
    with pytest.raises(
        EngineError, match=r"input shape \(2, 1, 299, 300\) for tensor 'frames' of the 'noise'"
    ):
        noise.run_on_device(int(noise.d_in), int(noise.d_out), 2, (299, 300), noise.stream)
    assert fakes.shapes[-1] == ("noise", (2, 1, 299, 300), False) and fakes.enqueued == []
    fakes.fail_execute = True
    with pytest.raises(
        EngineError, match=r"could not enqueue the 'noise' plan \(input 'frames' of shape \(1, 1"
    ):
        noise.infer(routed_batches()[2][:, None])
    noise.close()
    other = plan_set(tmp_path / "other", listed_profiles=[[1, 1, 2], [3, 4, 4], [5, 8, 8]])
    with pytest.raises(EngineError, match=r"refused optimization profile 2 of noise\.plan"):
        TensorRTEngine(other / "noise.onnx", "noise")
