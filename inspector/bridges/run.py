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
        ticker = asyncio.create_task(self._tick(stop))
        try:
            while not stop.is_set():
                if await self.sock.poll(20):
                    for _ in range(1000):
                        try:
                            parts = await self.sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.state.feed(parts, time.monotonic())
                self.state.tick(time.monotonic())
        finally:
            ticker.cancel()

    async def _tick(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.state.tick(time.monotonic())
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def run_until_signal(main: Callable[[asyncio.Event], Any]) -> int:
    """Run ``main(stop)`` in an event loop; SIGTERM / SIGINT set ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())
    return 0
