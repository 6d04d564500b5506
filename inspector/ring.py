"""The shared-memory slot ring: frames are written once, workers pass slot ids.

The supervisor creates one named segment of ``slots`` frames of a fixed size;
workers attach to it by name. Slot ownership: the ingest worker allocates a
free slot per accepted frame; the publisher gives the slot back once that
frame's verdict is out (whoever decided it), so a slot is never reused while
its frame can still be read.
"""

from __future__ import annotations

import contextlib
import secrets
from multiprocessing import resource_tracker, shared_memory

import numpy as np


class SlotRing:
    def __init__(self, name: str, slots: int, height: int, width: int, create: bool) -> None:
        self.slots, self.height, self.width = slots, height, width
        size = slots * height * width
        self._owner = create
        self.shm = shared_memory.SharedMemory(name=name, create=create, size=size)
        if not create:
            # Python < 3.13 registers attached segments with the resource tracker, which would
            # unlink the creator's segment when this worker exits. The supervisor owns it.
            with contextlib.suppress(Exception):  # best effort: only the tracker's bookkeeping
                resource_tracker.unregister(self.shm._name, "shared_memory")  # type: ignore[attr-defined]
        self.frames = np.ndarray((slots, height, width), np.uint8, buffer=self.shm.buf)
        self.name = self.shm.name

    @classmethod
    def create(cls, slots: int, height: int, width: int) -> SlotRing:
        return cls(f"inspector-{secrets.token_hex(6)}", slots, height, width, create=True)

    @classmethod
    def attach(cls, name: str, slots: int, height: int, width: int) -> SlotRing:
        return cls(name, slots, height, width, create=False)

    def close(self) -> None:
        """Detach; the creator also unlinks the segment (idempotent)."""
        if getattr(self, "frames", None) is None:
            return
        del self.frames
        self.frames = None  # type: ignore[assignment]
        self.shm.close()
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()
