"""The pycuda executor's context and event lifetimes, against a fake pycuda (no GPU here; it says so).

A fake stands in for ``pycuda.driver`` and ``pycuda.compiler`` only to record *which thread* pushes and
pops the CUDA context and how many events live: the defects these catch (a context pushed on a reload's
loader thread and popped on the serving thread; an event made per batch and never destroyed) are about
lifetimes, not arithmetic. The arithmetic of the schedule is tested with the simulated executor.
"""

from __future__ import annotations

import sys
import threading
import types

import numpy as np
import pytest

from inspector.streams import Op


class Recorder:
    def __init__(self) -> None:
        self.stacks: dict[int, int] = {}  # thread -> context push depth
        self.log: list[tuple[str, int]] = []
        self.events_live = 0
        self.events_made = 0

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

    class Stream:
        synchronize = needs_context(lambda self: None)
        wait_for_event = needs_context(lambda self, ev: None)

    class Mem:
        def __int__(self) -> int:
            return 4096

        free = needs_context(lambda self: None)

    driver = types.ModuleType("pycuda.driver")
    driver.init = lambda: None
    driver.Device = Device
    driver.Event = Event
    driver.Stream = Stream
    driver.pagelocked_empty = needs_context(lambda shape, dtype: np.zeros(shape, dtype))
    driver.mem_alloc = needs_context(lambda n: Mem())
    for name in ("memcpy_htod_async", "memcpy_dtoh_async", "memcpy_dtod_async"):
        setattr(driver, name, needs_context(lambda *a, **kw: None))

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
        "tensorrt": types.ModuleType("tensorrt"),
    }


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
