"""The shared-memory slot ring: frames are written once, workers pass slot ids.

The supervisor creates one named segment of ``slots`` frames of a fixed size;
workers attach to it by name. Slot ownership: the ingest worker allocates a
free slot per accepted frame; the publisher gives the slot back once that
frame's verdict is out (whoever decided it), so a slot is never reused while
its frame can still be read.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

PREFIX = "inspector-"
EMPTY = -1


def unlink_segment(name: str) -> None:
    """Remove a segment by name (idempotent); what a dead supervisor's workers call on their way out."""
    with contextlib.suppress(FileNotFoundError):
        shm = shared_memory.SharedMemory(name=name, create=False)
        shm.close()
        shm.unlink()  # also unregisters it from this process's resource tracker


def sweep_dead(base: Path = Path("/dev/shm")) -> list[str]:
    """Unlink ring segments left by daemons that died (their supervisor pid is in the name)."""
    removed = []
    for path in base.glob(f"{PREFIX}*"):
        parts = path.name.split("-")
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        if not pid_alive(int(parts[1])):
            unlink_segment(path.name)
            removed.append(path.name)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SlotRing:
    """``frames[slot]`` holds a frame; ``owner[slot]`` the ticket of the frame written there.

    The owner word proves whose pixels a slot holds: ingest sets it to EMPTY, writes the pixels,
    then sets it to the frame's ticket; inference copies the pixels out and then checks the word
    still names its frame. A slot handed out twice (which the publisher's ledger rules out) would
    show as a mismatch and an ERROR verdict, never as a verdict on another frame's pixels.
    """

    def __init__(self, name: str, slots: int, height: int, width: int, create: bool) -> None:
        self.slots, self.height, self.width = slots, height, width
        size = 2 * slots * height * width + 2 * slots * 8
        self._owner = create
        # Workers are spawned by the supervisor and share its resource tracker, so attaching (which
        # registers the name again on Python < 3.13) is a no-op there; unregistering here would drop
        # the supervisor's own registration and make its unlink print a KeyError traceback. If every
        # process dies without unlinking, that shared tracker unlinks the segment as it exits.
        self.shm = shared_memory.SharedMemory(name=name, create=create, size=size)
        self.owner = np.ndarray((slots,), np.int64, buffer=self.shm.buf, offset=0)
        self.frames = np.ndarray((slots, height, width), np.uint8, buffer=self.shm.buf, offset=slots * 8)
        # The frame the defect classifier saw (after denoising), written by inference for routed frames;
        # ``inspected_owner[slot]`` names the ticket it belongs to. Read by the publisher for the archive.
        off = slots * 8 + slots * height * width
        self.inspected_owner = np.ndarray((slots,), np.int64, buffer=self.shm.buf, offset=off)
        self.inspected = np.ndarray(
            (slots, height, width), np.uint8, buffer=self.shm.buf, offset=off + slots * 8
        )
        if create:
            self.owner[:] = EMPTY
            self.inspected_owner[:] = EMPTY
        self.name = self.shm.name

    @classmethod
    def create(cls, slots: int, height: int, width: int) -> SlotRing:
        # The creator's pid in the name lets the next start sweep what a SIGKILLed daemon left.
        return cls(f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}", slots, height, width, create=True)

    def write(self, slot: int, ticket: int, image: np.ndarray) -> None:
        self.owner[slot] = EMPTY
        self.frames[slot] = image
        self.owner[slot] = ticket

    def read(self, slots: list[int], tickets: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the frames, and per frame whether its slot still held it after the copy."""
        frames = self.frames[slots]  # fancy indexing copies
        intact = self.owner[slots] == np.asarray(tickets, np.int64)
        return frames, intact

    def write_inspected(self, slot: int, ticket: int, image: np.ndarray) -> None:
        self.inspected_owner[slot] = EMPTY
        self.inspected[slot] = image
        self.inspected_owner[slot] = ticket

    def snapshot(self, slot: int, ticket: int) -> tuple[bytes | None, bytes | None]:
        """The bytes of the frame in ``slot`` and of what the classifier saw, each only if it is ``ticket``'s
        (one copy each, straight out of shared memory)."""
        frame = self.frames[slot].tobytes()
        inspected = self.inspected[slot].tobytes() if self.inspected_owner[slot] == ticket else None
        if self.owner[slot] != ticket:
            return None, None
        return frame, inspected

    @classmethod
    def attach(cls, name: str, slots: int, height: int, width: int) -> SlotRing:
        return cls(name, slots, height, width, create=False)

    def close(self) -> None:
        """Detach; the creator also unlinks the segment (idempotent)."""
        if getattr(self, "frames", None) is None:
            return
        del self.frames, self.owner, self.inspected, self.inspected_owner
        self.frames = None  # type: ignore[assignment]
        self.shm.close()
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                self.shm.unlink()
