"""systemd's notify protocol over the real ``NOTIFY_SOCKET`` datagram socket (no libsystemd needed).

``READY=1`` once engines are loaded and warm, ``WATCHDOG=1`` only while the
pipeline makes progress, ``STATUS=...`` with throughput, ``STOPPING=1`` and
``RELOADING=1`` around shutdown and SIGHUP reloads. Outside systemd
(no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if addr:
            # A leading '@' names a socket in the abstract namespace (a NUL byte on the wire).
            self.address = b"\0" + addr[1:].encode() if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog_s: float | None = None
        if usec and usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; returns whether it was sent."""
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        # Type=notify-reload wants MONOTONIC_USEC with RELOADING=1.
        return self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
