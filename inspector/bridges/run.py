"""The bridges' side of the daemon's PUB socket: subscribe, feed the state, tick the clock."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from inspector.bridges.core import BridgeState


class Subscription:
    """Verdicts and heartbeats from ``endpoint`` into ``state``; the state's clock ticks every 20 ms."""

    def __init__(
        self, endpoint: str, state: BridgeState, zmq_options: Callable[[Any], None] | None = None
    ) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)  # a verdict is a few hundred bytes
        if zmq_options is not None:
            zmq_options(self.sock)  # e.g. CURVE keys
        for topic in (b"verdict", b"heartbeat"):
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(endpoint)
        self.state = state

    async def run(self, stop: asyncio.Event) -> None:
        """Receive until ``stop``; the state's clock (and its ``ticks``) advances from this loop only, so
        a hung loop shows as a frozen ``bridge_tick``. An exception here ends the task: the caller's
        :func:`watch` then fails safe and exits."""
        while not stop.is_set():
            if await self.sock.poll(20):
                for i in range(1000):
                    try:
                        parts = await self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.state.feed(parts, time.monotonic())
                    if i % 100 == 99:
                        self.state.tick(time.monotonic())
            self.state.tick(time.monotonic())

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


async def watch(tasks: list[asyncio.Task[Any]], stop: asyncio.Event, state: BridgeState, log: Any) -> None:
    """Wait for ``stop``; if any of the bridge's own tasks ends first (an exception, or returning while it
    should run), fail safe (``bridge_fault``), give the PLC a moment to read it, and exit with status 1
    so that systemd restarts the bridge. A bridge never keeps serving a frozen state."""
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if stopper in done:
        return
    stopper.cancel()
    task = next(iter(done - {stopper}))
    exc = task.exception() if not task.cancelled() else None
    why = f"{type(exc).__name__}: {str(exc)[:200]}" if exc else "a bridge task ended"
    state.failed(why)
    log.error("bridge fault: failing safe and exiting for a restart", error=why, task=task.get_name())
    await asyncio.sleep(1.0)  # the protocol server still answers: fail-safe 9 is visible before exit
    raise BridgeFault(why)


class BridgeFault(RuntimeError):
    """The bridge cannot go on (one of its tasks died); ``run_until_signal`` exits with status 1."""


def run_until_signal(main: Callable[[asyncio.Event], Any]) -> int:
    """Run ``main(stop)`` in an event loop; SIGTERM / SIGINT set ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        asyncio.run(runner())
    except BridgeFault:
        return 1
    return 0
