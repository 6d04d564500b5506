"""A simulated camera: synthetic impellers (or a folder of images) sent over the real protocol at a set rate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from inspector import noise as nz
from inspector.protocol import encode_frame
from inspector.tools.folder import IMAGE_SUFFIXES, class_of, read_gray
from inspector.tools.synthetic import ImpellerGenerator


@dataclass(frozen=True)
class Shot:
    """One frame to send, with the ground truth the simulator knows."""

    frame_id: int
    image: np.ndarray
    defective: bool | None
    noise: str
    # The file's own bytes and their encoding ("jpeg" / "png"), sent as they are when the camera's
    # encoding matches: a photograph goes out as the camera wrote it, without a second compression.
    payload: bytes | None = None
    payload_encoding: str | None = None


@dataclass
class CameraReport:
    sent: int = 0
    blocked: int = 0
    seconds: float = 0.0
    truth: dict[int, Shot] = field(default_factory=dict)


def synthetic_shots(seed: int, defect_rate: float, mix: dict[str, float], start: int = 0) -> Iterator[Shot]:
    """Endless synthetic frames: each with a noise type drawn from ``mix`` at a training-range level."""
    gen = ImpellerGenerator(seed=seed, defect_rate=defect_rate)
    kinds = list(mix)
    probs = np.array([mix[k] for k in kinds])
    i = start
    while True:
        s = gen.sample(i)
        rng = np.random.default_rng([seed, 77, i])
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        yield Shot(i, nz.apply_random(s.image, kind, rng), s.defective, kind)
        i += 1


def folder_shots(root: Path, seed: int = 0, shuffle: bool = True) -> Iterator[Shot]:
    """Every image under ``root`` (recursively), labelled by its class folder name where it has one.

    Shuffled with ``seed`` (a line does not deliver all defective parts first); each shot keeps the
    file's bytes so a JPEG or PNG photograph can be sent as it is. Noise ``clean``: a photograph as
    the camera took it.
    """
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}")
    if shuffle:
        files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    for i, f in enumerate(files):
        try:
            label: bool | None = bool(class_of(f.parent.name))
        except ValueError:
            label = None
        suffix = f.suffix.lower()
        kind = "jpeg" if suffix in (".jpg", ".jpeg") else "png" if suffix == ".png" else None
        yield Shot(i, read_gray(f), label, "clean", f.read_bytes() if kind else None, kind)


def run_camera(
    endpoint: str,
    shots: Iterator[Shot],
    count: int,
    rate: float,
    camera_id: str = "cam0",
    encoding: str = "raw",
    bind: bool = False,
    keep_truth: bool = True,
    curve: tuple[Path, Path] | None = None,
) -> CameraReport:
    """Send ``count`` shots at ``rate`` frames/s (0 = as fast as the socket takes them) over PUSH."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.LINGER, 5000)
    if curve is not None:  # (the daemon's public key file, this camera's secret key file)
        from inspector.daemon.security import client

        client(sock, *curve)
    if bind:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    report = CameraReport()
    t0 = time.perf_counter()
    period = 1.0 / rate if rate > 0 else 0.0
    try:
        for n, shot in zip(range(count), shots, strict=False):
            if period:
                wait = t0 + n * period - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            msg = encode_frame(
                shot.image, camera_id, shot.frame_id, time.time_ns(), encoding, encoder=shot.frame_id * 10
            )
            if shot.payload is not None and shot.payload_encoding == encoding:
                msg[1] = shot.payload  # the file's bytes (its decoded size is the header's shape)
            sock.send_multipart(msg)
            report.sent += 1
            if keep_truth:
                report.truth[shot.frame_id] = Shot(
                    shot.frame_id, np.empty(0, np.uint8), shot.defective, shot.noise
                )
    finally:
        report.seconds = time.perf_counter() - t0
        sock.close(5000)
    return report
