"""Ring slot ownership across ingest restarts: no slot is ever handed out twice (issue 13, item 4).

The publisher's :class:`SlotLedger` decides which slots go back to ingest. These tests drive it the
way the daemon does, including the sequence that broke the old code (a reseed, then a verdict of
the previous ingest generation for a slot the reseed already listed), and then a random
simulation of every interleaving the sockets allow, checking the invariant after every step.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from inspector.daemon.workers.publisher import SlotLedger


def test_reseed_then_stale_free_does_not_list_a_slot_twice():
    ledger = SlotLedger(8, gen=0)
    # gen 0: frame 1 in slot 5 is pending at the publisher; frame 2 in slot 7 was handed to
    # inference, but its "accepted" note was still in flight when ingest died.
    free = ledger.reseed(1, {1: (5, 0)})
    assert 5 not in free and 7 in free and len(free) == 7
    # Both old frames are answered ERROR by inference (stale generation).
    assert ledger.release(5, 1, 0) is True  # held at the reseed: freed, once
    assert ledger.release(7, 2, 0) is False  # already in the reseed's list: not listed again
    assert ledger.release(5, 1, 0) is False  # a second verdict for the same frame frees nothing
    free.append(5)
    assert sorted(free) == list(range(8))


def test_current_generation_frees_normally_and_old_holder_only_once():
    ledger = SlotLedger(4, gen=0)
    free = ledger.reseed(1, {10: (2, 0)})
    assert free == [0, 1, 3]
    assert ledger.release(0, 11, 1)  # a frame of the new ingest
    assert not ledger.release(2, 99, 0)  # another old frame naming slot 2: not its holder
    assert ledger.release(2, 10, 0)


@pytest.mark.parametrize("seed", range(40))
def test_random_interleavings_never_hand_out_a_slot_twice(seed):
    """Ingest, inference and the supervisor send to the publisher over separate pipes (FIFO each,
    interleaved at random); ingest dies at random, losing what it had not yet sent. After every
    step: ingest's free list plus the slots of live frames of ingest's generation hold no slot
    twice; an old-generation frame may share a slot only with a frame inference will refuse
    (its generation is stale, and the ring's owner word no longer names it)."""
    rng = random.Random(seed)
    n_slots = 6
    gen = 0
    ledger = SlotLedger(n_slots, gen)
    free_pipe: deque = deque([("reseed", 0, list(range(n_slots)))])  # publisher -> ingest
    ingest_pipe: deque = deque()  # ingest -> publisher (accepted notes)
    infer_pipe: deque = deque()  # inference -> publisher (verdicts)
    ctl_pipe: deque = deque()  # supervisor -> publisher (reseed)
    jobs: deque = deque()  # ingest -> inference
    ingest = {"gen": 0, "free": [], "seeded": False}
    pending: dict[int, tuple[int, int]] = {}
    answered: set[int] = set()
    live: dict[int, tuple[int, int]] = {}  # ticket -> (slot, gen): accepted, not yet answered
    owner = [-1] * n_slots
    ticket = 0

    def check() -> None:
        cur = [s for s, g in live.values() if g == ingest["gen"]]
        held = ingest["free"] + cur
        assert len(held) == len(set(held)), (ingest["free"], cur)

    def publish(t: int, slot: int, g: int) -> None:
        if t in answered:
            return
        answered.add(t)
        pending.pop(t, None)
        live.pop(t, None)
        if ledger.release(slot, t, g):
            free_pipe.append(("free", ledger.gen, [slot]))

    for _ in range(400):
        step = rng.choice(["accept", "accept", "infer", "deliver", "deliver", "deliver", "free", "die"])
        if step == "accept" and ingest["seeded"] and ingest["free"]:
            ticket += 1
            slot = ingest["free"].pop()
            owner[slot] = ticket
            live[ticket] = (slot, ingest["gen"])
            jobs.append((ticket, slot, ingest["gen"]))
            ingest_pipe.append(("accepted", ticket, slot, ingest["gen"]))
        elif step == "infer" and jobs:
            t, slot, g = jobs.popleft()
            # Inference refuses a stale generation, and checks the owner word after its copy.
            intact = g == gen and owner[slot] == t
            infer_pipe.append((t, slot, g, intact))
        elif step == "deliver":
            pipes = [p for p in (ingest_pipe, infer_pipe, ctl_pipe) if p]
            if not pipes:
                continue
            pipe = rng.choice(pipes)
            msg = pipe.popleft()
            if pipe is ingest_pipe:
                _, t, slot, g = msg
                if t not in answered:
                    pending[t] = (slot, g)
            elif pipe is infer_pipe:
                t, slot, g, intact = msg
                if g == gen:
                    assert intact, "a current-generation frame read another frame's pixels"
                publish(t, slot, g)
            else:
                _, g = msg
                free = ledger.reseed(g, dict(pending))
                free_pipe.clear()
                free_pipe.append(("reseed", g, free))
        elif step == "free" and free_pipe:
            kind, g, slots = free_pipe.popleft()
            if g == ingest["gen"]:
                if kind == "reseed":
                    ingest["free"], ingest["seeded"] = list(slots), True
                elif ingest["seeded"]:
                    ingest["free"] += slots
        elif step == "die" and rng.random() < 0.3:
            # Ingest dies: notes it had not yet sent are lost (keep a random prefix).
            keep = rng.randint(0, len(ingest_pipe))
            while len(ingest_pipe) > keep:
                ingest_pipe.pop()
            gen += 1
            ingest = {"gen": gen, "free": [], "seeded": False}
            ctl_pipe.append(("reseed", gen))
        check()
