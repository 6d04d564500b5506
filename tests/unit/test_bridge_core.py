"""The PLC bridges' shared logic: when to fail safe, when to clear, lost verdicts, the reject FIFO."""

from __future__ import annotations

import json

import pytest

from inspector.bridges.core import BridgeState, Reject, RejectFifo, check_depth, u32


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


def test_a_fifo_no_plc_reads_overflows_without_latching_fail_safe():
    """A PLC that proves passes from the verdict ring (or an OPC UA client) never writes tail: its FIFO
    fills up on the first 64 rejects; that must not hold the line in fail-safe for good."""
    s = BridgeState(["cam0"], fifo_depth=4)
    s.feed(hb(0), 0.0)
    for i in range(1, 11):
        s.feed(verdict(i, "FAIL"), 0.1)
    f = s.cameras["cam0"].fifo
    assert f.overflow == 6 and f.lost_until is None and not f.acked
    assert not s.failsafe, s.reason
    s.feed(hb(10), 1.0)
    assert not s.failsafe


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
    assert u32(None) == 0xFFFFFFFF and u32(True) == 0xFFFFFFFF  # no id: a value no PLC triggers with


def test_docs_plc_register_tables_are_the_code_s():
    import sys

    from inspector.bridges import modbus

    argv = sys.argv
    sys.argv = ["modbus", "--check"]
    try:
        assert modbus.main() == 0, "docs/plc.md is stale: python -m inspector.bridges.modbus"
    finally:
        sys.argv = argv


# -- issue #27: the fail-open paths ------------------------------------------------------------------


def test_a_heartbeat_ahead_of_the_bridge_proves_lost_verdicts_and_fails_safe():
    s = BridgeState(["cam0"])
    s.feed(hb(0), 0.0)
    s.feed(verdict(1), 0.1)
    s.feed(hb(1), 0.2)
    assert not s.failsafe
    # verdicts 2 and 3 never arrive (a SUB at its high-water mark, say); the heartbeat says 3 were sent
    s.feed(hb(3), 1.2)
    assert s.failsafe and s.reason == "seq_gap" and s.lost == 2 and s.last_seq == 3
    s.feed(verdict(4), 1.3)  # no double count for the same loss
    assert s.lost == 2
    s.feed(hb(4, uptime=11), 2.2)
    assert not s.failsafe


def test_a_reject_no_camera_can_take_fails_safe_and_is_counted():
    for camera in ("cam9", None):
        s = BridgeState(["cam0"])
        s.feed(hb(0), 0.0)
        s.feed(verdict(1, "PASS", camera=camera), 0.1)  # a PASS nobody maps passes nothing: no alarm
        assert not s.failsafe and s.unknown_cameras == 1 and s.unroutable == 0
        s.feed(verdict(2, "ERROR", camera=camera), 0.2)
        assert s.failsafe and s.reason == "unroutable_reject" and s.unroutable == 1
        s.feed(hb(2, uptime=11), 1.0)  # the next consistent heartbeat clears it
        assert not s.failsafe
    # past max_cameras (no --camera list): the first two are mapped, the third is not
    s = BridgeState(max_cameras=2)
    s.feed(hb(0), 0.0)
    for i, cam in enumerate(("a", "b", "c"), 1):
        s.feed(verdict(i, "FAIL", camera=cam), 0.1)
    assert sorted(s.cameras) == ["a", "b"] and s.reason == "unroutable_reject" and s.unroutable == 1


def test_fifo_overflow_fails_safe_until_the_plc_acknowledges_past_the_loss():
    s = BridgeState(["cam0"], fifo_depth=4)
    s.feed(hb(0), 0.0)
    assert s.cameras["cam0"].fifo.ack(0)  # this PLC reads the FIFO (it has acknowledged once)
    for i in range(1, 6):  # five rejects into four entries: the first is overwritten unread
        s.feed(verdict(i, "FAIL"), 0.1)
    f = s.cameras["cam0"].fifo
    assert s.failsafe and s.reason == "fifo_overflow" and f.overflow == 1 and f.lost_until == 5
    s.feed(hb(5, uptime=11), 1.0)
    assert s.failsafe  # a heartbeat cannot clear it: the PLC has not caught up
    assert f.ack(3)  # reading, but not yet past the loss
    s.feed(hb(5, uptime=12), 2.0)
    assert s.failsafe
    assert f.ack(5) and f.lost_until is None
    s.feed(hb(5, uptime=13), 3.0)
    assert not s.failsafe


def test_fifo_and_ring_indices_stay_right_after_the_16_bit_head_wraps():
    """The PLC indexes by its u16 count modulo the depth: only a depth dividing 65536 keeps that right."""
    f = RejectFifo(depth=64)
    for n in range(65536 + 70):
        f.push(Reject(n, "c", n, None, "FAIL", None, None))
        f.ack(f.head % 0x10000)  # a PLC keeping up
    for n in range(f.head - 64, f.head):
        e = f.entries[(n % 0x10000) % 64]
        assert e is not None and e.seq == n
    for bad in (0, 3, 100, 128, -4):
        with pytest.raises(ValueError, match="power of two"):
            check_depth(bad)
    with pytest.raises(ValueError):
        BridgeState(["cam0"], fifo_depth=48)


def test_the_verdict_ring_holds_pass_and_reject_alike_keyed_by_frame():
    s = BridgeState(["cam0"], fifo_depth=4, ring_depth=8)
    s.feed(hb(0), 0.0)
    kinds = ["PASS", "FAIL", "PASS", "ERROR", "PASS"]
    for i, k in enumerate(kinds, 1):
        s.feed(verdict(i, k, frame_id=f"part-{i}"), 0.1)
    ring = s.cameras["cam0"].ring
    assert ring.count == 5
    got = {e.frame_id: e.verdict for e in ring.entries if e is not None}
    assert got == {f"part-{i}": k for i, k in enumerate(kinds, 1)}
    assert [r.camera_seq for r in s.cameras["cam0"].fifo.entries if r is not None] == [1, 2]


def test_malformed_messages_never_change_the_state_or_stop_the_feed():
    s = BridgeState(["cam0"])
    s.feed(hb(0), 0.0)
    s.feed(verdict(1), 0.1)
    before = (s.last_seq, s.failsafe, dict(s.counts), s.heartbeats)
    bad_hb = {"type": "heartbeat", "interval_s": 1.0, "uptime_s": 10.0, "last_seq": 1, "ready": True}
    for parts in (
        [b"heartbeat", json.dumps({**bad_hb, "cameras": []}).encode()],
        [b"heartbeat", json.dumps({**bad_hb, "ready": 1}).encode()],
        [b"heartbeat", json.dumps({**bad_hb, "last_seq": 1.5}).encode()],
        [b"heartbeat", json.dumps({**bad_hb, "interval_s": 0}).encode()],
        [b"heartbeat", json.dumps({**bad_hb, "cameras": {"cam0": "alarm"}}).encode()],
        [b"verdict", b'{"seq": Infinity, "verdict": "PASS"}'],
        [b"verdict", b'{"seq": 2, "verdict": "PASS", "defect_score": NaN}'],
        [b"verdict", json.dumps({"seq": True, "verdict": "PASS"}).encode()],
        [b"verdict", json.dumps({"seq": 2, "verdict": "PASS", "camera_id": ["x"]}).encode()],
        [b"verdict", json.dumps({"seq": 2, "verdict": ["PASS"]}).encode()],
        # a PASS that is also a reject, or says nothing of it: never a PASS in the ring
        [b"verdict", json.dumps({"seq": 2, "verdict": "PASS", "reject": True, "camera_id": "cam0"}).encode()],
        [b"verdict", json.dumps({"seq": 2, "verdict": "PASS", "camera_id": "cam0"}).encode()],
        # an integer too large for a float (math.isfinite raises OverflowError, not ValueError)
        [b"heartbeat", json.dumps({**bad_hb, "interval_s": 10**400}).encode()],
        [
            b"verdict",
            json.dumps({"seq": 2, "verdict": "FAIL", "reject": True, "defect_score": 10**400}).encode(),
        ],
    ):
        s.feed(parts, 0.2)
    assert s.malformed == 14
    assert (s.last_seq, s.failsafe, dict(s.counts), s.heartbeats) == before
    s.feed(verdict(2), 0.3)  # and the feed goes on
    assert s.last_seq == 2 and s.counts["PASS"] == 2


def test_frames_the_daemon_has_not_answered_fail_safe():
    s = BridgeState(["cam0"])
    body = {"type": "heartbeat", "interval_s": 1.0, "uptime_s": 10.0, "last_seq": 0, "ready": True}
    s.feed([b"heartbeat", json.dumps(body).encode()], 0.0)
    assert not s.failsafe
    s.feed([b"heartbeat", json.dumps({**body, "uptime_s": 11.0, "unanswered": 3}).encode()], 1.0)
    assert s.failsafe and s.reason == "frames_unanswered" and s.unanswered == 3
    s.feed([b"heartbeat", json.dumps({**body, "uptime_s": 12.0, "unanswered": 0}).encode()], 2.0)
    assert not s.failsafe


def test_ticks_come_from_the_loop_and_a_bridge_fault_never_clears():
    changes = []
    s = BridgeState(["cam0"], on_failsafe=lambda on, why: changes.append((on, why)))
    assert s.ticks == 0
    for k in range(10):
        s.tick(k * 0.1 + 0.05)
        s.tick(k * 0.1 + 0.07)  # the same 100 ms period: no second count
    assert s.ticks == 10
    s.feed(hb(0), 1.0)
    assert not s.failsafe
    s.failed("RuntimeError: boom")
    assert s.failsafe and s.reason == "bridge_fault"
    s.feed(hb(0, uptime=12), 2.0)
    assert s.failsafe and s.reason == "bridge_fault"
    assert changes[-1] == (True, "bridge_fault")


def test_allow_from_matches_ipv4_peers_seen_on_a_dual_stack_socket():
    from inspector.bridges.modbus import allow_list, allowed

    nets = allow_list(["10.0.5.0/24", "fd00::1"])
    assert allowed("10.0.5.20", nets) and allowed("::ffff:10.0.5.20", nets)  # IPv4-mapped IPv6
    assert not allowed("10.0.6.20", nets) and not allowed("::ffff:10.0.6.20", nets)
    assert allowed("fd00::1", nets) and not allowed("fd00::2", nets)
    assert not allowed("not an address", nets) and not allowed("?", nets)
