"""The wire protocol, implemented once: camera frames in, verdicts and heartbeats out.

``docs/protocol.md`` is the specification; this module is its only
implementation in the project (the daemon, the simulated camera, the listener
and the tests all use it).

Camera -> daemon: a two-part ZeroMQ message ``[header, payload]``; the header
is a UTF-8 JSON object (see :class:`FrameHeader`), the payload the image
(raw 8-bit pixels, PNG or JPEG).

Daemon -> bridges: two-part messages ``[topic, body]`` on a PUB socket, topic
``b"verdict"`` or ``b"heartbeat"``, body a UTF-8 JSON object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROTOCOL_VERSION = 1
TOPIC_VERDICT = b"verdict"
TOPIC_HEARTBEAT = b"heartbeat"
MAX_HEADER_BYTES = 4096


class Verdict(StrEnum):
    """PASS only for a frame fully inspected and found good; everything else rejects the part."""

    PASS = "PASS"
    FAIL = "FAIL"  # inspected, defective
    ERROR = "ERROR"  # bad input or engine failure
    TIMEOUT = "TIMEOUT"  # deadline passed before a verdict
    DROPPED = "DROPPED"  # overload: shed under the stated drop policy

    @property
    def reject(self) -> bool:
        return self is not Verdict.PASS


class ProtocolError(ValueError):
    """A frame message the daemon cannot accept; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str, header: dict[str, Any] | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.header = header or {}


class FrameHeader(BaseModel):
    """Header of a camera frame (JSON). Unknown keys are rejected so typos surface."""

    model_config = ConfigDict(extra="forbid")

    v: int = Field(description="protocol major version; this daemon speaks 1")
    camera_id: str = Field(min_length=1, max_length=64, description="the camera's name")
    frame_id: str | int = Field(description="trigger / part id from the line, echoed in the verdict")
    ts_ns: int = Field(ge=0, description="capture time, ns since the Unix epoch")
    encoder: int | None = Field(
        default=None, description="encoder count at trigger, echoed for the PLC's shift register"
    )
    encoding: Literal["raw", "png", "jpeg"] = "raw"
    dtype: Literal["uint8"] = "uint8"
    shape: tuple[int, int] = Field(description="(height, width) of the image")

    @field_validator("frame_id")
    @classmethod
    def _frame_id_len(cls, v: str | int) -> str | int:
        if isinstance(v, str) and not 1 <= len(v) <= 128:
            raise ValueError("frame_id string must be 1..128 characters")
        return v


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 4 << 20
    min_side: int = 32
    max_side: int = 4096


def _ids(raw: Any) -> dict[str, Any]:
    """Whatever ids a broken header still carries, for the ERROR verdict."""
    if not isinstance(raw, dict):
        return {}
    out = {}
    for key in ("camera_id", "frame_id", "encoder", "ts_ns"):
        val = raw.get(key)
        if isinstance(val, (str, int)) and not isinstance(val, bool) and len(str(val)) <= 128:
            out[key] = val
    return out


def parse_header(raw: bytes) -> FrameHeader:
    """Parse and validate a frame header; raises :class:`ProtocolError` with the reason."""
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("header_too_large", f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError("bad_header", f"header is not UTF-8 JSON ({exc.__class__.__name__})") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_header", "header is not a JSON object")
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {obj.get('v')!r}; this daemon speaks {PROTOCOL_VERSION}",
            _ids(obj),
        )
    try:
        return FrameHeader.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "header"
        raise ProtocolError("bad_header", f"{loc}: {first['msg']}", _ids(obj)) from None


def decode_frame(parts: list[bytes], limits: Limits) -> tuple[FrameHeader, np.ndarray[Any, Any]]:
    """Validate a ``[header, payload]`` message and decode its image to (H, W) uint8."""
    if len(parts) != 2:
        known: dict[str, Any] = {}
        if parts:
            try:
                known = _ids(json.loads(parts[0].decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError):
                known = {}
        raise ProtocolError(
            "bad_framing", f"expected 2 message parts [header, payload], got {len(parts)}", known
        )
    header = parse_header(parts[0])
    ids = header.model_dump(include={"camera_id", "frame_id", "encoder", "ts_ns"})
    payload = parts[1]
    if len(payload) > limits.max_payload_bytes:
        raise ProtocolError(
            "payload_too_large", f"payload of {len(payload)} bytes exceeds {limits.max_payload_bytes}", ids
        )
    h, w = header.shape
    if not (limits.min_side <= h <= limits.max_side and limits.min_side <= w <= limits.max_side):
        raise ProtocolError(
            "bad_shape", f"shape {h}x{w} outside {limits.min_side}..{limits.max_side} per side", ids
        )
    if header.encoding == "raw":
        if len(payload) != h * w:
            raise ProtocolError(
                "shape_mismatch",
                f"raw payload of {len(payload)} bytes does not match shape {h}x{w} uint8",
                ids,
            )
        img: np.ndarray[Any, Any] = np.frombuffer(payload, np.uint8).reshape(h, w)
    else:
        buf = np.frombuffer(payload, np.uint8)
        decoded = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if len(buf) else None
        if decoded is None or decoded.dtype != np.uint8:
            raise ProtocolError(
                "undecodable_image", f"{header.encoding} payload of {len(payload)} bytes does not decode", ids
            )
        if decoded.shape != (h, w):
            raise ProtocolError(
                "shape_mismatch",
                f"decoded image is {decoded.shape[0]}x{decoded.shape[1]}, header says {h}x{w}",
                ids,
            )
        img = decoded
    return header, img


def encode_frame(
    image: np.ndarray,
    camera_id: str,
    frame_id: str | int,
    ts_ns: int,
    encoding: str = "raw",
    encoder: int | None = None,
) -> list[bytes]:
    """Build a ``[header, payload]`` message for a (H, W) uint8 image (what a camera sends)."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"a frame is a (H, W) uint8 image, got {image.dtype} {image.shape}")
    if encoding == "raw":
        payload = np.ascontiguousarray(image).tobytes()
    elif encoding in ("png", "jpeg"):
        ok, buf = cv2.imencode(".png" if encoding == "png" else ".jpg", image)
        if not ok:
            raise ValueError(f"cannot encode image as {encoding}")
        payload = buf.tobytes()
    else:
        raise ValueError(f"unknown encoding {encoding!r}; use raw, png or jpeg")
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "camera_id": camera_id,
        "frame_id": frame_id,
        "ts_ns": int(ts_ns),
        "encoding": encoding,
        "dtype": "uint8",
        "shape": [int(image.shape[0]), int(image.shape[1])],
    }
    if encoder is not None:
        header["encoder"] = int(encoder)
    return [json.dumps(header, separators=(",", ":")).encode(), payload]


def encode_message(topic: bytes, body: dict[str, Any]) -> list[bytes]:
    return [topic, json.dumps(body, separators=(",", ":")).encode()]


def decode_message(parts: list[bytes]) -> tuple[str, dict[str, Any]]:
    """A bridge's view: ``[topic, body]`` -> (topic, dict)."""
    if len(parts) != 2:
        raise ProtocolError("bad_framing", f"expected [topic, body], got {len(parts)} parts")
    return parts[0].decode(), json.loads(parts[1].decode("utf-8"))
