"""A property-based fuzzer over frame messages, against the real daemon process (issue 13).

Hypothesis builds batches of camera messages: valid frames (raw, PNG, JPEG) mixed with messages
broken in one way that ``docs/protocol.md`` forbids - a wrong type, a missing or unknown key, an
out-of-range integer, deep nesting, duplicate keys, NaN, bad framing, a truncated or mislabelled
payload, a size that does not match, a decompression bomb. Each batch ends with a valid sentinel
frame. For every batch: exactly one verdict per message (``seq`` without gaps), a PASS or FAIL only
for the valid frames, an ERROR for every broken message, the sentinel inspected (the daemon still
serves), and the daemon's memory bounded. The budget is bounded for CI (``FUZZ_EXAMPLES``, default
150 batches, a fixed seed so CI runs are reproducible; ``FUZZ_RANDOM=1`` explores new ones).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import cv2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspector.protocol import encode_frame
from inspector.tools.synthetic import ImpellerGenerator
from tests.system.harness import Daemon, rss_mb

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
IMG = ImpellerGenerator(seed=8).sample(0).image
PNG = cv2.imencode(".png", IMG)[1].tobytes()
JPG = cv2.imencode(".jpg", IMG)[1].tobytes()
_ids = itertools.count()
VALID_HEADERS: set[bytes] = set()  # the headers valid() built, so a batch knows which messages are valid


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_engines: Path):
    d = Daemon(tmp_path_factory.mktemp("fuzz"), tiny_engines, ["ingest.max_payload_bytes=1000000"])
    d.wait_ready()
    yield d
    assert d.stop() == 0


def base_header(frame_id: str, encoding: str = "raw") -> dict[str, Any]:
    return {
        "v": 1,
        "camera_id": "fz",
        "frame_id": frame_id,
        "ts_ns": time.time_ns(),
        "encoding": encoding,
        "dtype": "uint8",
        "shape": [300, 300],
    }


def payload_for(encoding: str) -> bytes:
    return {"raw": IMG.tobytes(), "png": PNG, "jpeg": JPG}[encoding]


# Values that break each key, by the protocol's text (not by the daemon's code).
json_scalars = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False), st.integers(), st.text(max_size=20)
)
json_any = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
not_int = json_any.filter(lambda x: not (isinstance(x, int) and not isinstance(x, bool)))
big = st.one_of(st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1))
# What a lax parser would coerce into a valid value: true -> 1, 7.0 -> 7, "7" -> 7.
coercible = st.one_of(
    st.booleans(), st.integers(0, 10**6).map(float), st.integers(0, 10**6).map(str), st.just("300")
)
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "v": st.one_of(
        st.sampled_from([True, 1.0, "1", [1]]), json_any.filter(lambda x: not (type(x) is int and x == 1))
    ),
    "camera_id": st.one_of(
        st.integers(),
        json_any.filter(lambda x: not isinstance(x, str)),
        st.just(""),
        st.text(min_size=65, max_size=80),
    ),
    "frame_id": st.one_of(
        st.booleans(),
        st.integers(-(10**6), 10**6).map(float),
        json_any.filter(lambda x: not isinstance(x, (str, int)) or isinstance(x, bool)),
        st.just(""),
        st.text(min_size=129, max_size=140),
        big,
    ),
    "ts_ns": st.one_of(coercible, not_int, st.integers(max_value=-1), st.integers(min_value=2**63)),
    "encoder": st.one_of(coercible, not_int.filter(lambda x: x is not None), big),
    "encoding": json_any.filter(lambda x: x not in ("raw", "png", "jpeg")),
    "dtype": json_any.filter(lambda x: x != "uint8"),
    "shape": st.one_of(
        st.lists(st.sampled_from(["300", 300.0, True, "0x12c"]), min_size=1, max_size=2).map(
            lambda x: [*x, 300][:2]
        ),
        json_any.filter(lambda x: not (isinstance(x, list) and len(x) == 2)),
        st.lists(st.integers(0, 31) | st.integers(4097, 2**40), min_size=2, max_size=2),
        st.lists(st.floats(1, 500) | st.text(max_size=3) | st.booleans(), min_size=2, max_size=2),
    ),
}


def claiming(encoding: str, h: int, w: int) -> bytes:
    buf = bytearray(PNG if encoding == "png" else JPG)
    if encoding == "png":
        buf[16:24] = struct.pack(">II", w, h)
    else:
        k = buf.find(b"\xff\xc0")
        buf[k + 5 : k + 9] = struct.pack(">HH", h, w)
    return bytes(buf)


@st.composite
def broken(draw: st.DrawFn) -> list[bytes]:
    """One message that the protocol says must be an ERROR."""
    fid = f"bad-{next(_ids)}"
    enc = draw(st.sampled_from(["raw", "png", "jpeg"]))
    h = base_header(fid, enc)
    payload = payload_for(enc)
    kind = draw(
        st.sampled_from(
            [
                *["wrong_value"] * 6,  # the way a lax parser fails silently: weighted up
                "missing",
                "unknown_key",
                "nesting",
                "duplicate",
                "constant",
                "not_json",
                "not_object",
                "framing",
                "truncated",
                "garbage_payload",
                "wrong_magic",
                "raw_size",
                "bomb",
                "too_large",
            ]
        )
    )
    if kind == "wrong_value":
        key = draw(st.sampled_from(sorted(WRONG)))
        h[key] = draw(WRONG[key])
    elif kind == "missing":
        del h[draw(st.sampled_from(["v", "camera_id", "frame_id", "ts_ns", "shape"]))]
    elif kind == "unknown_key":
        h[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in h and k != "encoder"))] = draw(
            json_any
        )
    elif kind == "nesting":
        n = draw(st.integers(3, 5000))
        h["shape"] = "@@"
        text = json.dumps(h).replace('"@@"', "[" * n + "300" + "]" * n)
        return [text.encode(), payload]
    elif kind == "duplicate":
        key = draw(st.sampled_from(sorted(h)))
        text = json.dumps(h)
        return [text[:-1].encode() + b", " + json.dumps({key: h[key]})[1:].encode(), payload]
    elif kind == "constant":
        key = draw(st.sampled_from(["frame_id", "ts_ns", "encoder", "v"]))
        h[key] = "@@"
        const = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        return [json.dumps(h).replace('"@@"', const).encode(), payload]
    elif kind == "not_json":
        return [draw(st.binary(max_size=200).filter(lambda b: not b.strip().startswith(b"{"))), payload]
    elif kind == "not_object":
        return [json.dumps(draw(json_any.filter(lambda x: not isinstance(x, dict)))).encode(), payload]
    elif kind == "framing":
        parts = draw(st.sampled_from([[json.dumps(h).encode()], [json.dumps(h).encode(), payload, b"x"]]))
        return parts
    elif kind == "truncated":
        payload = payload[: draw(st.integers(0, len(payload) - 1))]
    elif kind == "garbage_payload":
        h["encoding"] = enc = draw(st.sampled_from(["png", "jpeg"]))
        payload = draw(st.binary(max_size=500))
    elif kind == "wrong_magic":
        h["encoding"] = draw(st.sampled_from(["png", "jpeg"]))
        payload = JPG if h["encoding"] == "png" else PNG
    elif kind == "raw_size":
        h["encoding"] = "raw"
        payload = bytes(draw(st.integers(0, 200_000).filter(lambda n: n != 90_000)))
    elif kind == "bomb":
        h["encoding"] = enc = draw(st.sampled_from(["png", "jpeg"]))
        side = draw(st.integers(4097, 65535))
        payload = claiming(enc, side, side)
        if draw(st.booleans()):
            h["shape"] = [side, side]
    elif kind == "too_large":
        h["encoding"] = "raw"
        payload = bytes(1_000_001)
    return [json.dumps(h).encode(), payload]


@st.composite
def valid(draw: st.DrawFn) -> list[bytes]:
    enc = draw(st.sampled_from(["raw", "png", "jpeg"]))
    encoder = draw(st.none() | st.integers(-(2**63), 2**63 - 1))
    parts = encode_frame(IMG, "fz", f"ok-{next(_ids)}", time.time_ns(), enc, encoder=encoder)
    VALID_HEADERS.add(parts[0])
    return parts


def frame_id_of(parts: list[bytes]) -> Any:
    return json.loads(parts[0])["frame_id"]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("FUZZ_RANDOM") != "1",
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(batch=st.lists(st.one_of(broken(), valid()), min_size=1, max_size=6))
def test_every_message_gets_one_verdict_and_nothing_broken_passes(daemon: Daemon, batch: list[list[bytes]]):
    start = len(daemon.verdicts)
    sentinel = encode_frame(IMG, "fz", f"sentinel-{next(_ids)}", time.time_ns(), "raw")
    messages = [*batch, sentinel]
    good_ids = {frame_id_of(m) for m in messages if m is sentinel or m[0] in VALID_HEADERS}
    n_broken = len(messages) - len(good_ids)
    for m in messages:
        daemon.send(m)
    daemon.wait_verdicts(start + len(messages), timeout=60)
    time.sleep(0.05)
    daemon.listener.poll(10)
    new = daemon.verdicts[start:]
    assert len(new) == len(messages), f"{len(new)} verdicts for {len(messages)} messages"
    seqs = [v["seq"] for v in daemon.verdicts]
    assert seqs == list(range(1, len(seqs) + 1)), "a gap or a duplicate in seq"
    by_id: dict[Any, list[dict[str, Any]]] = {}
    for v in new:
        by_id.setdefault(v["frame_id"], []).append(v)
    for fid in good_ids:
        assert len(by_id.get(fid, [])) == 1, (fid, by_id.get(fid))
    for v in new:
        if v["frame_id"] in good_ids:
            continue
        # a broken message: always ERROR, and it never echoes a value that failed validation
        assert v["verdict"] == "ERROR", v
        assert v["frame_id"] is None or str(v["frame_id"]).startswith("bad-"), v
    assert sum(v["verdict"] == "ERROR" for v in new if v["frame_id"] not in good_ids) == n_broken
    sentinel_verdict = by_id[frame_id_of(sentinel)][0]
    assert sentinel_verdict["verdict"] in ("PASS", "FAIL"), sentinel_verdict
    pids = [daemon.proc.pid, *daemon.worker_pids().values()]
    assert len(pids) == 4, "a worker is missing"
    assert sum(rss_mb(p) for p in pids) < 2000
