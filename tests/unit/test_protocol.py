import json
import struct

import cv2
import numpy as np
import pytest

from inspector.protocol import (
    PNG_MAGIC,
    PROTOCOL_VERSION,
    Limits,
    ProtocolError,
    Verdict,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
    image_size,
    parse_header,
)

IMG = (np.arange(300 * 300) % 251).astype(np.uint8).reshape(300, 300)
LIMITS = Limits(max_payload_bytes=200_000)


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_round_trip_is_lossless(encoding):
    parts = encode_frame(IMG, "cam1", "part-42", 123, encoding, encoder=99)
    header, img = decode_frame(parts, LIMITS)
    np.testing.assert_array_equal(img, IMG)
    assert (header.camera_id, header.frame_id, header.encoder, header.ts_ns) == ("cam1", "part-42", 99, 123)
    assert header.v == PROTOCOL_VERSION


def test_jpeg_round_trip_is_close():
    _, img = decode_frame(encode_frame(IMG, "c", 1, 0, "jpeg"), LIMITS)
    assert img.shape == IMG.shape and np.abs(img.astype(int) - IMG.astype(int)).mean() < 8


def _hdr(**kw):
    h = {
        "v": 1,
        "camera_id": "c",
        "frame_id": 5,
        "ts_ns": 1,
        "encoding": "raw",
        "dtype": "uint8",
        "shape": [300, 300],
    }
    h.update(kw)
    return json.dumps({k: v for k, v in h.items() if v is not None}).encode()


CASES = [
    ([_hdr(v=2), IMG.tobytes()], "unsupported_version", True),
    ([_hdr(v="1"), IMG.tobytes()], "bad_header", True),
    ([_hdr(v=True), IMG.tobytes()], "bad_header", True),
    ([_hdr(v=10**30), IMG.tobytes()], "unsupported_version", True),
    ([b"{}", IMG.tobytes()], "bad_header", False),
    ([_hdr(frame_id=None), IMG.tobytes()], "bad_header", False),
    ([b"{not json", IMG.tobytes()], "bad_header", False),
    ([b"[]", IMG.tobytes()], "bad_header", False),
    ([_hdr(camera_id=""), IMG.tobytes()], "bad_header", True),
    ([_hdr(shape=None), IMG.tobytes()], "bad_header", True),
    ([_hdr(dtype="uint16"), IMG.tobytes()], "bad_header", True),
    ([_hdr(extra=1), IMG.tobytes()], "bad_header", True),
    ([_hdr(shape=[300, 301]), IMG.tobytes()], "shape_mismatch", True),
    ([_hdr(shape=[10, 10]), bytes(100)], "bad_shape", True),
    ([_hdr(shape=[9000, 10]), bytes(100)], "bad_shape", True),
    ([_hdr(shape=[600, 600]), bytes(360_000)], "payload_too_large", True),
    ([_hdr(encoding="png"), b"garbage"], "encoding_mismatch", True),
    ([_hdr(encoding="jpeg"), cv2.imencode(".png", IMG)[1].tobytes()], "encoding_mismatch", True),
    ([_hdr(encoding="png"), PNG_MAGIC + b"\0" * 30], "undecodable_image", True),
    ([_hdr(encoding="jpeg"), b""], "encoding_mismatch", True),
    (
        [_hdr(encoding="png", shape=[100, 100]), cv2.imencode(".png", IMG)[1].tobytes()],
        "shape_mismatch",
        True,
    ),
    ([_hdr()], "bad_framing", True),
    ([_hdr(), IMG.tobytes(), b"x"], "bad_framing", True),
    ([], "bad_framing", False),
    ([b"x" * 5000, b""], "header_too_large", False),
]


@pytest.mark.parametrize(("parts", "reason", "has_ids"), CASES)
def test_bad_input_is_a_protocol_error_with_a_reason(parts, reason, has_ids):
    with pytest.raises(ProtocolError) as err:
        decode_frame(parts, LIMITS)
    assert err.value.reason == reason
    # Whatever ids the message carried come back, so the ERROR verdict can name the frame.
    assert (err.value.header.get("frame_id") == 5) == has_ids


def test_verdicts_fail_closed():
    assert not Verdict.PASS.reject
    assert all(v.reject for v in Verdict if v is not Verdict.PASS)


def test_message_round_trip():
    topic, body = decode_message(encode_message(b"verdict", {"seq": 1}))
    assert topic == "verdict" and body == {"seq": 1}


def test_encode_frame_rejects_wrong_images():
    with pytest.raises(ValueError):
        encode_frame(IMG.astype(np.float32), "c", 1, 0)
    with pytest.raises(ValueError):
        encode_frame(IMG, "c", 1, 0, "bmp")


# -- hostile input (issue 13): the exact reproductions, each a clean ProtocolError, never another exception
def _bad(raw: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        parse_header(raw)
    return err.value


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 1000 + b"]" * 1000,
        b'{"v":1,"camera_id":"c","frame_id":1,"ts_ns":1,"shape":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"v":1,"x":"'
        + b"[" * 3000
        + b'"}',  # brackets inside a string are not nesting: refused as unknown key
    ],
)
def test_deep_nesting_is_refused_without_recursion(raw):
    assert _bad(raw).reason == "bad_header"


def test_wrong_types_are_never_coerced_and_never_echoed():
    raw = json.dumps(
        {
            "v": True,
            "camera_id": "c",
            "frame_id": True,
            "ts_ns": "7",
            "encoder": True,
            "shape": ["300", 300.0],
        }
    ).encode()
    err = _bad(raw)
    assert err.reason == "bad_header"
    assert err.header == {"camera_id": "c"}  # only what passed validation is echoed
    for key, val in [
        ("frame_id", 7.0),
        ("frame_id", True),
        ("ts_ns", "7"),
        ("encoder", 1.5),
        ("shape", [300.0, 300]),
    ]:
        h = {"v": 1, "camera_id": "c", "frame_id": 7, "ts_ns": 7, "shape": [300, 300], key: val}
        err = _bad(json.dumps(h).encode())
        assert err.reason == "bad_header" and key in err.detail
        assert key not in err.header


@pytest.mark.parametrize(
    "raw",
    [
        b'{"v":1,"v":1,"camera_id":"c","frame_id":1,"ts_ns":1,"shape":[300,300]}',
        b'{"v":1,"camera_id":"c","frame_id":NaN,"ts_ns":1,"shape":[300,300]}',
        b'{"v":1,"camera_id":"c","frame_id":1,"ts_ns":Infinity,"shape":[300,300]}',
        json.dumps({"v": 1, "camera_id": "c", "frame_id": 2**63, "ts_ns": 1, "shape": [300, 300]}).encode(),
        json.dumps({"v": 1, "camera_id": "c", "frame_id": 1, "ts_ns": -1, "shape": [300, 300]}).encode(),
        json.dumps(
            {"v": 1, "camera_id": "c", "frame_id": "x" * 129, "ts_ns": 1, "shape": [300, 300]}
        ).encode(),
        json.dumps({"v": 1, "camera_id": "c", "frame_id": 1, "ts_ns": 1, "shape": [300, 300, 1]}).encode(),
        b'{"v":1,"camera_id":"c","frame_id":' + b"9" * 4000 + b',"ts_ns":1,"shape":[300,300]}',
    ],
)
def test_duplicates_constants_and_out_of_range_integers_are_bad_headers(raw):
    assert _bad(raw).reason == "bad_header"


def test_int64_bounds_are_accepted():
    h = {
        "v": 1,
        "camera_id": "c",
        "frame_id": -(2**63),
        "ts_ns": 2**63 - 1,
        "encoder": 2**63 - 1,
        "shape": [300, 300],
    }
    header = parse_header(json.dumps(h).encode())
    assert header.frame_id == -(2**63) and header.ts_ns == 2**63 - 1


def _claiming(encoding: str, h: int, w: int) -> bytes:
    """A small real image whose header is patched to claim h x w (a decompression bomb's trick)."""
    buf = bytearray(cv2.imencode(".png" if encoding == "png" else ".jpg", IMG[:32, :32])[1].tobytes())
    if encoding == "png":
        buf[16:24] = struct.pack(">II", w, h)
    else:
        k = buf.find(b"\xff\xc0")
        buf[k + 5 : k + 9] = struct.pack(">HH", h, w)
    return bytes(buf)


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_image_size_is_read_from_the_file_header_before_decoding(encoding):
    payload = _claiming(encoding, 60000, 60000)
    assert len(payload) < 2000 and image_size(payload, encoding) == (60000, 60000)
    for shape, reason in [([300, 300], "shape_mismatch"), ([60000, 60000], "bad_shape")]:
        with pytest.raises(ProtocolError) as err:
            decode_frame([_hdr(encoding=encoding, shape=shape), payload], LIMITS)
        assert err.value.reason == reason


def test_a_truncated_jpeg_is_refused_not_judged_half_grey():
    # libjpeg fills a cut-off scan with grey and only warns; the missing end-of-image marker is the tell.
    payload = cv2.imencode(".jpg", IMG)[1].tobytes()
    for cut in (payload[: len(payload) // 2], payload[:-2]):
        with pytest.raises(ProtocolError) as err:
            decode_frame([_hdr(encoding="jpeg"), cut], LIMITS)
        assert err.value.reason == "undecodable_image"
    with pytest.raises(ProtocolError) as err:
        decode_frame([_hdr(encoding="png"), cv2.imencode(".png", IMG)[1].tobytes()[:-200]], LIMITS)
    assert err.value.reason == "undecodable_image"
