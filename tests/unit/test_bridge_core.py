"""The PLC bridges' shared logic: when to fail safe, when to clear, lost verdicts, the reject FIFO."""

from __future__ import annotations

import json

from inspector.bridges.core import BridgeState, Reject, RejectFifo, u32


def hb(last_seq: int, ready: bool = True, uptime: float = 10.0, interval: float = 1.0) -> list[bytes]:
    body = {
        "type": "heartbeat",
        "interval_s": interval,
        "uptime_s": uptime,
        "last_seq": last_seq,
        "ready": ready,
    }
    return [b"heartbeat", json.dumps(body).encode()]


def verdict(seq: int, kind: str = "PASS", camera: str = "cam0", frame_id=None, encoder=7) -> list[bytes]:
    body = {
        "seq": seq,
        "verdict": kind,
        "reject": kind != "PASS",
        "camera_id": camera,
        "frame_id": seq if frame_id is None else frame_id,
        "encoder": encoder,
        "defect_score": 0.7 if kind in ("PASS", "FAIL") else None,
    }
    return [b"verdict", json.dumps(body).encode()]


def test_starts_in_failsafe_and_clears_only_on_a_ready_consistent_heartbeat():
    s = BridgeState(["cam0"])
    assert s.failsafe and s.reason == "starting"
    s.feed(verdict(5), 0.0)  # verdicts alone do not clear it
    assert s.failsafe
    s.feed(hb(5, ready=False), 0.1)
    assert s.failsafe and s.reason == "not_ready"
    s.feed(hb(5, ready=True), 0.2)
    assert not s.failsafe and s.reason is None


def test_silence_fails_safe_after_the_configured_heartbeat_intervals():
    s = BridgeState(["cam0"], heartbeat_misses=3)
    s.feed(hb(0, interval=0.5), 0.0)
    assert not s.failsafe
    s.tick(1.3)
    assert not s.failsafe
    s.tick(1.4)
    assert s.failsafe and s.reason == "no_heartbeat"
    s.feed(hb(0, interval=0.5, uptime=11.0), 2.0)
    assert not s.failsafe


def test_a_seq_gap_counts_the_lost_frames_and_latches_until_the_heartbeat_agrees():
    changes = []
    s = BridgeState(["cam0"], on_failsafe=lambda on, why: changes.append((on, why)))
    s.feed(hb(0), 0.0)
    for seq in (1, 2, 6):
        s.feed(verdict(seq), 0.1)
    assert s.failsafe and s.reason == "seq_gap" and s.lost == 3
    s.feed(verdict(7), 0.2)
    assert s.failsafe  # verdicts flowing again is not enough
    s.feed(hb(8), 0.3)  # the daemon published 8; the bridge saw 7: still missing one
    assert s.failsafe
    s.feed(verdict(8), 0.35)
    s.feed(hb(8, uptime=11), 0.4)
    assert not s.failsafe
    assert changes == [(False, None), (True, "seq_gap"), (False, None)]


def test_a_daemon_restart_fails_safe_then_clears():
    s = BridgeState(["cam0"])
    s.feed(hb(0, uptime=100), 0.0)
    for seq in (1, 2, 3):
        s.feed(verdict(seq), 0.1)
    s.feed(hb(3, uptime=101), 0.2)
    assert not s.failsafe
    s.feed(hb(0, uptime=0.5), 0.3)  # a new daemon: uptime went down
    assert s.failsafe and s.reason == "daemon_restarted"
    s.feed(verdict(1), 0.4)
    s.feed(hb(1, uptime=1.5), 0.5)
    assert not s.failsafe and s.lost == 0


def test_every_reject_reaches_the_fifo_with_its_ids_and_pass_does_not():
    got: list[Reject] = []
    s = BridgeState(["cam0", "cam1"], fifo_depth=4, on_reject=got.append)
    s.feed(hb(0), 0.0)
    kinds = ["PASS", "FAIL", "ERROR", "TIMEOUT", "DROPPED", "PASS"]
    for i, k in enumerate(kinds, 1):
        s.feed(verdict(i, k, camera="cam1", frame_id=f"part-{i}", encoder=1000 + i), 0.1)
    assert [r.verdict for r in got] == ["FAIL", "ERROR", "TIMEOUT", "DROPPED"]
    f = s.cameras["cam1"].fifo
    assert f.head == 4 and f.tail == 0 and s.cameras["cam0"].fifo.head == 0
    assert [e.encoder for e in f.entries] == [1002, 1003, 1004, 1005]
    assert s.counts["PASS"] == 2 and s.cameras["cam1"].counts["FAIL"] == 1


def test_fifo_ack_and_overflow():
    f = RejectFifo(depth=3)
    r = Reject(1, "c", 1, 1, "FAIL", 0.9, None)
    for _ in range(2):
        f.push(r)
    assert f.ack(1) and f.tail == 1 and f.unread == 1
    assert not f.ack(5)  # beyond what was written: refused
    assert not f.ack(0)  # going back: refused
    for _ in range(4):
        f.push(r)
    assert f.overflow == 2 and f.unread == 3  # the two oldest were overwritten unread
    assert f.ack(f.head % 0x10000) and f.unread == 0


def test_malformed_messages_are_counted_and_ignored():
    s = BridgeState(["cam0"])
    for parts in (
        [b"verdict", b"{not json"],
        [b"verdict", b"[1, 2]"],
        [b"verdict", json.dumps({"seq": "x"}).encode()],
        [b"verdict", json.dumps({"seq": 1, "verdict": "MAYBE"}).encode()],
        [b"heartbeat", json.dumps({"ready": True}).encode()],
        [b"other", b"{}"],
        [b"verdict"],
        [b"verdict", b"[" * 100_000 + b"]" * 100_000],
    ):
        s.feed(parts, 0.0)
    assert s.malformed == 8 and s.last_seq is None and s.failsafe


def test_ids_as_32_bit_numbers():
    assert u32(5) == 5 and u32(-1) == 2**32 - 1 and u32(2**40 + 3) == 3
    assert u32("part-7") == u32("part-7") != u32("part-8")
    assert u32(None) == 0 and u32(True) == 0


def test_docs_plc_register_tables_are_the_code_s():
    import sys

    from inspector.bridges import modbus

    argv = sys.argv
    sys.argv = ["modbus", "--check"]
    try:
        assert modbus.main() == 0, "docs/plc.md is stale: python -m inspector.bridges.modbus"
    finally:
        sys.argv = argv
