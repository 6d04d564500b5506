"""``inspector record``: save what a camera sends, as PNG files, for INT8 calibration or retraining.

Binds a PULL socket (point a camera at it, or a spare PUSH output of the line);
every valid frame is written to ``<out>/<camera_id>/<frame_id>.png``; bad
messages are counted and skipped with their reason.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import zmq

from inspector.protocol import Limits, ProtocolError, decode_frame

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def record(endpoint: str, out: Path, count: int, timeout_s: float = 0.0, bind: bool = True) -> dict[str, Any]:
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    if bind:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    out.mkdir(parents=True, exist_ok=True)
    saved = 0
    errors: Counter[str] = Counter()
    t_end = time.monotonic() + timeout_s if timeout_s > 0 else float("inf")
    try:
        while saved < count and time.monotonic() < t_end:
            if not sock.poll(100):
                continue
            parts = sock.recv_multipart()
            try:
                header, img = decode_frame(parts, Limits())
            except ProtocolError as exc:
                errors[exc.reason] += 1
                continue
            folder = out / _SAFE.sub("_", header.camera_id)
            folder.mkdir(exist_ok=True)
            cv2.imwrite(str(folder / f"{_SAFE.sub('_', str(header.frame_id))}.png"), img)
            saved += 1
    finally:
        sock.close(0)
    return {"saved": saved, "errors": dict(errors), "out": str(out)}
