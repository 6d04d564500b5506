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

import contextlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError

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


INT64_MAX = (1 << 63) - 1
MAX_JSON_DEPTH = 3  # object -> "shape" list -> (nothing deeper is valid)
_Int64 = Annotated[StrictInt, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
_CameraId = Annotated[StrictStr, Field(min_length=1, max_length=64)]
_FrameId = Annotated[StrictStr, Field(min_length=1, max_length=128)] | _Int64
_TsNs = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]
_Side = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]


class FrameHeader(BaseModel):
    """Header of a camera frame (JSON). Strict: no coercion (``true`` is not 1, ``"7"`` is not 7,
    ``7.0`` is not 7), integers within int64, unknown keys rejected so typos surface."""

    model_config = ConfigDict(extra="forbid", strict=True)

    v: StrictInt = Field(description="protocol major version; this daemon speaks 1")
    camera_id: _CameraId = Field(description="the camera's name")
    frame_id: _FrameId = Field(description="trigger / part id from the line, echoed in the verdict")
    ts_ns: _TsNs = Field(description="capture time, ns since the Unix epoch")
    encoder: _Int64 | None = Field(
        default=None, description="encoder count at trigger, echoed for the PLC's shift register"
    )
    cam_seq: _TsNs | None = Field(
        default=None,
        description="the camera's own frame counter, +1 per frame sent (as GigE Vision numbers its blocks): "
        "a gap means frames lost before inspection, answered as DROPPED (not_received)",
    )
    encoding: Literal["raw", "png", "jpeg"] = "raw"
    dtype: Literal["uint8"] = "uint8"
    shape: Annotated[list[_Side], Field(min_length=2, max_length=2)] = Field(
        description="(height, width) of the image"
    )


# Each id on its own, so a header that fails elsewhere still echoes the ids that are valid (and only those).
_ID_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "camera_id": TypeAdapter(_CameraId),
    "frame_id": TypeAdapter(_FrameId),
    "encoder": TypeAdapter(_Int64),
    "ts_ns": TypeAdapter(_TsNs),
    "cam_seq": TypeAdapter(_TsNs),
}


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 4 << 20
    min_side: int = 32
    max_side: int = 4096


def _ids(raw: Any) -> dict[str, Any]:
    """The ids of a rejected header that pass validation on their own, for its ERROR verdict."""
    if not isinstance(raw, dict):
        return {}
    out = {}
    for key, adapter in _ID_ADAPTERS.items():
        if key in raw:
            with contextlib.suppress(ValidationError):
                out[key] = adapter.validate_python(raw[key], strict=True)
    return out


def _json_depth(raw: bytes) -> int:
    """Deepest nesting of ``[``/``{`` outside strings, found without recursion (``json`` recurses)."""
    depth = deepest = 0
    in_str = escaped = False
    for b in raw:
        if in_str:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif b in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = val
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number the protocol allows")


def _load_json(raw: bytes) -> Any:
    """UTF-8 JSON with duplicate keys, NaN/Infinity and deep nesting refused, before anything recurses."""
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise ProtocolError("bad_header", f"header nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError("bad_header", f"header is not UTF-8 JSON ({exc.__class__.__name__})") from None
    except ValueError as exc:  # duplicate key, NaN/Infinity, an integer of thousands of digits
        raise ProtocolError("bad_header", f"header JSON refused: {exc}") from None


def parse_header(raw: bytes) -> FrameHeader:
    """Parse and validate a frame header; raises :class:`ProtocolError` with the reason."""
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("header_too_large", f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    obj = _load_json(raw)
    if not isinstance(obj, dict):
        raise ProtocolError("bad_header", "header is not a JSON object")
    v = obj.get("v")
    if "v" not in obj or not isinstance(v, int) or isinstance(v, bool):
        raise ProtocolError("bad_header", "v: the protocol version must be an integer", _ids(obj))
    if v != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {v if abs(v) < 10**6 else '(huge)'}; this daemon speaks {PROTOCOL_VERSION}",
            _ids(obj),
        )
    try:
        return FrameHeader.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        # a union's branch names ("constrained-str", "int") say nothing to a camera vendor
        loc = ".".join(str(p) for i, p in enumerate(first["loc"]) if i == 0 or isinstance(p, int)) or "header"
        msg = first["msg"]
        if loc == "frame_id" and first["type"] not in ("missing",):
            msg = "a string of 1..128 characters or an integer within int64"
        raise ProtocolError("bad_header", f"{loc}: {msg}", _ids(obj)) from None


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and its fixed CRC
JPEG_END = b"\xff\xd9"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); not C4 (DHT), C8, CC (DAC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(payload: bytes, encoding: str) -> tuple[int, int] | None:
    """(height, width) as the PNG / JPEG header states it, read without decoding; None if not found.

    Checked against ``shape`` and the side limits before the decoder allocates anything, so a
    small file that claims 60000x60000 (a decompression bomb) costs nothing.
    """
    if encoding == "png":
        # signature, then the IHDR chunk first: length(4) "IHDR" width(4) height(4), big-endian
        if len(payload) < 24 or payload[12:16] != b"IHDR":
            return None
        return int.from_bytes(payload[20:24], "big"), int.from_bytes(payload[16:20], "big")
    i, n = 2, len(payload)
    while i + 4 <= n:
        if payload[i] != 0xFF:
            return None
        marker = payload[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = int.from_bytes(payload[i + 2 : i + 4], "big")
        if marker in _SOF:
            if i + 9 > n:
                return None
            return int.from_bytes(payload[i + 5 : i + 7], "big"), int.from_bytes(
                payload[i + 7 : i + 9], "big"
            )
        if length < 2:
            return None
        i += 2 + length
    return None


def decode_frame(parts: list[bytes], limits: Limits) -> tuple[FrameHeader, np.ndarray[Any, Any]]:
    """Validate a ``[header, payload]`` message and decode its image to (H, W) uint8.

    Everything a sender controls is checked before it costs memory or time: header size, JSON
    nesting, types, payload size, the image's stated size (against ``shape`` and the limits) and
    its magic bytes (against ``encoding``); only then is the image decoded.
    """
    if len(parts) != 2:
        known: dict[str, Any] = {}
        if parts:
            with contextlib.suppress(ProtocolError):
                if len(parts[0]) <= MAX_HEADER_BYTES:
                    known = _ids(_load_json(parts[0]))
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
        return header, np.frombuffer(payload, np.uint8).reshape(h, w)
    magic = PNG_MAGIC if header.encoding == "png" else JPEG_MAGIC
    if not payload.startswith(magic):
        raise ProtocolError(
            "encoding_mismatch",
            f"payload does not start with the {header.encoding} signature ({len(payload)} bytes)",
            ids,
        )
    stated = image_size(payload, header.encoding)
    if stated is None:
        raise ProtocolError("undecodable_image", f"{header.encoding} payload has no readable image size", ids)
    if stated != (h, w):
        raise ProtocolError(
            "shape_mismatch",
            f"{header.encoding} header states {stated[0]}x{stated[1]}, the frame header says {h}x{w}",
            ids,
        )
    if not payload.rstrip(b"\0").endswith(PNG_END if header.encoding == "png" else JPEG_END):
        # The decoders fill a cut-off file's missing rows (libjpeg with grey) and only warn.
        raise ProtocolError(
            "undecodable_image", f"{header.encoding} payload is truncated (no end-of-image marker)", ids
        )
    try:
        decoded = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error as exc:
        raise ProtocolError(
            "undecodable_image",
            f"{header.encoding} decoder refused the payload ({str(exc).strip()[-80:]})",
            ids,
        ) from None
    if decoded is None or decoded.dtype != np.uint8 or decoded.shape != (h, w):
        raise ProtocolError(
            "undecodable_image",
            f"{header.encoding} payload of {len(payload)} bytes does not decode to {h}x{w}",
            ids,
        )
    return header, decoded


def encode_frame(
    image: np.ndarray,
    camera_id: str,
    frame_id: str | int,
    ts_ns: int,
    encoding: str = "raw",
    encoder: int | None = None,
    cam_seq: int | None = None,
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
    if cam_seq is not None:
        header["cam_seq"] = int(cam_seq)
    return [json.dumps(header, separators=(",", ":"), allow_nan=False).encode(), payload]


def encode_message(topic: bytes, body: dict[str, Any]) -> list[bytes]:
    """``[topic, body]`` as published. NaN and infinities are refused (``ValueError``): they are not JSON,
    and a receiver that parses them reads a PASS where a score was never a number."""
    return [topic, json.dumps(body, separators=(",", ":"), allow_nan=False).encode()]


def decode_message(parts: list[bytes]) -> tuple[str, dict[str, Any]]:
    """A bridge's view: ``[topic, body]`` -> (topic, dict)."""
    if len(parts) != 2:
        raise ProtocolError("bad_framing", f"expected [topic, body], got {len(parts)} parts")
    return parts[0].decode(), json.loads(parts[1].decode("utf-8"), parse_constant=_no_constant)
