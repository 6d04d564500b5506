import json

import cv2
import numpy as np
import pytest

from inspector.protocol import (
    PROTOCOL_VERSION,
    Limits,
    ProtocolError,
    Verdict,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
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
    ([_hdr(v="1"), IMG.tobytes()], "unsupported_version", True),
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
    ([_hdr(encoding="png"), b"garbage"], "undecodable_image", True),
    ([_hdr(encoding="jpeg"), b""], "undecodable_image", True),
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
