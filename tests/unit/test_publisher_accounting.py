"""The publisher's accounting for frames it never heard of (issue #27): tickets lost inside a dead ingest,
and frames a camera numbered with ``cam_seq`` that never reached the daemon.

The publisher's bookkeeping methods run here on a publisher object without its sockets: ``publish`` is
replaced by a list, time by a controllable clock. The end-to-end path (a hung ingest killed with frames in
its queue) runs in tests/system/test_fail_closed.py.
"""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace
from typing import Any

import pytest

from inspector import logs
from inspector.daemon import metrics
from inspector.daemon.messages import FrameIds, Outcome
from inspector.daemon.workers import publisher as pubmod
from inspector.daemon.workers.publisher import PublisherWorker


@pytest.fixture
def pub(monkeypatch) -> Any:
    clock = SimpleNamespace(t=100.0)
    monkeypatch.setattr(pubmod.time, "monotonic", lambda: clock.t)
    p = PublisherWorker.__new__(PublisherWorker)
    p.shared = SimpleNamespace(next_ticket=SimpleNamespace(value=10))
    p.m = metrics.get()
    p.log = logs.configure("error", True, role="test")
    p.ticket_base = p.ticket_top = 10
    p.missing = {}
    p.reseeded_at = None
    p.dead_below = 0
    p.cam_seqs = OrderedDict()
    p.synthetic = 0
    p.out = []
    p.publish = lambda msg: p.out.append(msg)
    p.clock = clock
    return p


def test_a_ticket_ingest_issued_but_never_announced_is_answered_error_after_its_ingest_is_replaced(pub):
    for t in (10, 11, 13):  # ingest announced these; 12 was taken in and never announced
        pub._saw(t)
    pub.shared.next_ticket.value = 15  # and 14 was issued too
    pub._lost_tickets()
    assert sorted(pub.missing) == [12, 14] and pub.out == []  # no verdict while that ingest may still send
    pub.clock.t += 5
    pub._lost_tickets()
    assert pub.out == []  # no ingest restart yet, and not yet the fallback
    # the ingest died and a new one started; it had issued tickets up to 15 (the supervisor read the
    # counter before the new one started)
    pub.reseeded_at, pub.dead_below = pub.clock.t, 15
    pub._saw(14)  # the old ingest's last message arrives after all
    pub.clock.t += pubmod.LOST_SETTLE_S + 0.1
    pub._lost_tickets()
    assert [(o.ticket, o.verdict) for o in pub.out] == [(12, "ERROR")]
    assert pub.out[0].reason.startswith("lost_in_ingest") and pub.out[0].ids is None
    assert pub.missing == {}


def test_tickets_of_a_dead_ingest_first_noticed_after_the_restart_are_answered_when_it_settles(pub):
    """The race the review found: the ingest dies, the publisher first notices its last tickets only after
    the restart (they were issued but the counter was read later). They are the dead ingest's - below the
    Reseed's first_ticket - and are answered once the restart settles, not after the 30 s fallback."""
    pub.reseeded_at, pub.dead_below = pub.clock.t, 13  # the dead ingest issued 10, 11, 12
    pub.clock.t += 0.05
    pub.shared.next_ticket.value = 14  # 13 is the new ingest's, taken in but not yet announced
    pub._saw(10)
    pub._lost_tickets()  # 11, 12, 13 noticed now, after the restart
    assert pub.out == []
    pub.clock.t += pubmod.LOST_SETTLE_S + 0.1
    pub._lost_tickets()
    assert [o.ticket for o in pub.out] == [11, 12]  # the dead ingest's; 13 may still be announced
    assert sorted(pub.missing) == [13]


def test_a_missing_ticket_is_answered_after_the_fallback_whatever_happened(pub):
    pub._saw(11)  # 10 never came
    pub.clock.t += pubmod.LOST_FALLBACK_S + 1
    pub._lost_tickets()
    assert [o.ticket for o in pub.out] == [10]


def test_a_gap_in_cam_seq_answers_each_missing_frame_dropped(pub):
    ids = lambda k: FrameIds(camera_id="cam0", frame_id=k, cam_seq=k)  # noqa: E731
    for k in (0, 1, 2, 6, 7):
        pub._cam_seq(ids(k))
    assert [(o.verdict, o.ids.cam_seq, o.ids.camera_id, o.ids.frame_id) for o in pub.out] == [
        ("DROPPED", k, "cam0", None) for k in (3, 4, 5)
    ]
    assert all(isinstance(o, Outcome) and o.reason.startswith("not_received") for o in pub.out)
    assert len({o.ticket for o in pub.out}) == 3 and all(o.ticket < 0 for o in pub.out)
    # a camera that restarts its counter, or jumps absurdly far, is logged, not answered frame by frame
    pub.out.clear()
    pub._cam_seq(ids(0))
    pub._cam_seq(ids(1 + pubmod.MAX_CAM_SEQ_GAP + 5))
    assert pub.out == []
    # a frame sent again (or overtaken) does not move the count back: no spurious DROPPED after it
    pub.out.clear()
    for k in (20, 21, 22, 19, 23, 24, 26):
        pub._cam_seq(FrameIds(camera_id="cam2", cam_seq=k))
    assert [o.ids.cam_seq for o in pub.out] == [25]  # only the real gap
    pub.out.clear()
    # other cameras keep their own counters; frames without cam_seq are not counted
    pub._cam_seq(FrameIds(camera_id="cam1", cam_seq=5))
    pub._cam_seq(FrameIds(camera_id="cam1", cam_seq=None))
    pub._cam_seq(FrameIds(camera_id="cam1", cam_seq=6))
    assert pub.out == []


def test_non_finite_values_never_leave_as_numbers():
    assert pubmod.finite(float("nan")) is None and pubmod.finite(float("inf")) is None
    assert pubmod.finite(None) is None and pubmod.finite(0.25) == 0.25
    from inspector.protocol import encode_message

    with pytest.raises(ValueError):
        encode_message(b"verdict", {"defect_score": float("nan")})
