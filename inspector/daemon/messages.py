"""The messages between the daemon's processes: typed, one channel per purpose.

Every message is a msgspec struct, sent as MessagePack over a ZeroMQ ``ipc://``
socket of its own channel, and decoded against that channel's types (a message
of the wrong type is an error, not a silent ``KeyError`` three functions later).
Every message that names a ring slot carries the ingest generation that owns it.

| channel   | from -> to                   | messages                  |
|-----------|------------------------------|---------------------------|
| `jobs`    | ingest -> inference          | :class:`Job`              |
| `results` | ingest, inference -> publisher | :class:`Accepted`, :class:`Outcome` |
| `control` | supervisor -> publisher      | :class:`WorkerDied`, :class:`Reseed`, :class:`Stop` |
| `free`    | publisher -> ingest          | :class:`SeedSlots`, :class:`FreeSlots` |
| `archive` | publisher -> archive         | :class:`ArchiveItem` (sent without blocking; skipped when full) |

A frame's identity (:class:`FrameIds`, what the camera sent) is encoded once,
in its :class:`Accepted` note (or in the :class:`Outcome` that rejects it at
ingest); jobs and inference outcomes carry only the ticket, and the publisher
joins them.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec
import zmq


class FrameIds(msgspec.Struct, frozen=True):
    """The ids a camera sent that passed validation (``None`` for the rest), echoed in the verdict."""

    camera_id: str | None = None
    frame_id: str | int | None = None
    encoder: int | None = None
    ts_ns: int | None = None
    cam_seq: int | None = None  # the camera's own frame counter, where it sends one


class Job(msgspec.Struct, tag="job", frozen=True):
    """A frame waiting in ring slot ``slot`` for inference (ingest -> inference)."""

    ticket: int
    slot: int
    gen: int
    t_recv: int  # monotonic ns at receipt
    deadline: int  # monotonic ns


class Accepted(msgspec.Struct, tag="accepted", frozen=True):
    """Ingest took a frame into the ring; the publisher holds it pending until its verdict."""

    ticket: int
    slot: int
    gen: int
    t_recv: int
    deadline: int
    ids: FrameIds
    # The camera's payload as sent, where the frame was resized on arrival and an archive is kept: the archive
    # stores the frame as received ("png", "jpeg" or "raw:HxW"), not only its resized copy.
    original: bytes | None = None
    original_format: str | None = None


class Inspection(msgspec.Struct, frozen=True):
    """What the pipeline found for one frame (``defect_score`` None: the engines gave no finite score)."""

    defect_score: float | None
    threshold: float
    noise_type: str
    noise_confidence: float
    denoiser: str
    latency_ms: dict[str, float]
    model_version: str
    brightness: float = 0.0  # the frame's mean pixel value, for camera health
    contrast: float = 0.0  # the frame's pixel standard deviation


class Outcome(msgspec.Struct, tag="outcome", frozen=True):
    """One frame's verdict as decided by ingest (rejects) or inference (inspected, or not in time)."""

    ticket: int
    verdict: str
    reason: str | None
    t_recv: int
    slot: int | None = None
    gen: int | None = None
    deadline: int | None = None
    ids: FrameIds | None = None  # set by ingest; inference's outcomes leave it to the Accepted note
    inspection: Inspection | None = None


class WorkerDied(msgspec.Struct, tag="worker_died", frozen=True):
    role: str


class Reseed(msgspec.Struct, tag="reseed", frozen=True):
    """A new ingest worker runs under generation ``gen``: re-count the free slots for it.

    ``first_ticket``: the ticket counter when the old ingest was gone and before the new one started -
    every ticket below it was the dead ingest's, and one it never announced is lost."""

    gen: int
    first_ticket: int = 0


class Stop(msgspec.Struct, tag="stop", frozen=True):
    pass


class SeedSlots(msgspec.Struct, tag="seed", frozen=True):
    """The whole free list for ingest generation ``gen`` (replaces what it had)."""

    gen: int
    slots: list[int]


class FreeSlots(msgspec.Struct, tag="free", frozen=True):
    """Slots given back to ingest generation ``gen``."""

    gen: int
    slots: list[int]


class ArchiveItem(msgspec.Struct, tag="archive", frozen=True):
    """A published verdict for the reject archive, with the pixels where the ring still held them."""

    verdict: bytes  # the verdict message's JSON body, as published
    height: int = 0
    width: int = 0
    frame: bytes | None = None  # the frame as received (uint8, height x width)
    inspected: bytes | None = None  # what the defect classifier saw, where a denoiser changed it
    original: bytes | None = None  # the camera's payload, where the frame was resized on arrival
    original_format: str | None = None  # "png", "jpeg" or "raw:HxW"


M = TypeVar("M")


class Channel(Generic[M]):
    """Encode and decode one channel's messages on a ZeroMQ socket."""

    def __init__(self, name: str, types: Any) -> None:
        self.name = name
        self._enc = msgspec.msgpack.Encoder()
        self._dec: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(types)

    def send(self, sock: zmq.Socket[Any], msg: M, flags: int = 0) -> None:
        sock.send(self._enc.encode(msg), flags)

    def recv(self, sock: zmq.Socket[Any], flags: int = 0) -> M:
        data = sock.recv(flags)
        return self._dec.decode(data)


JOBS: Channel[Job] = Channel("jobs", Job)
RESULTS: Channel[Accepted | Outcome] = Channel("results", Accepted | Outcome)
CONTROL: Channel[WorkerDied | Reseed | Stop] = Channel("control", WorkerDied | Reseed | Stop)
FREE: Channel[SeedSlots | FreeSlots] = Channel("free", SeedSlots | FreeSlots)
ARCHIVE: Channel[ArchiveItem] = Channel("archive", ArchiveItem)
