"""CURVE on the daemon's sockets: only allowed keys are inspected or hear verdicts (issue 14, item 4)."""

from __future__ import annotations

import contextlib
import time
import urllib.request
from pathlib import Path

import pytest
import zmq

from inspector.daemon.security import client, generate
from inspector.protocol import encode_frame
from inspector.tools.listen import Listener
from inspector.tools.synthetic import ImpellerGenerator
from tests.system.harness import Daemon

pytestmark = pytest.mark.slow


def refused(d: Daemon) -> float:
    body = urllib.request.urlopen(d.metrics_url() + "/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("inspector_auth_refused_total{")
    )


def test_only_allowed_keys_are_inspected_and_hear_verdicts(tmp_path: Path, tiny_engines: Path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    _, daemon_secret = generate(keys, "daemon")
    daemon_public = keys / "daemon.key"
    cam_public, cam_secret = generate(keys, "cam-ok")
    _, stranger_secret = generate(keys, "stranger")
    allowed.mkdir()
    (allowed / "cam-ok.key").write_bytes(cam_public.read_bytes())
    sets = ["security.curve=true", f"security.server_key={daemon_secret}", f"security.clients={allowed}"]
    d = Daemon(tmp_path, tiny_engines, sets, curve=(daemon_public, cam_secret))
    ctx = zmq.Context()
    try:
        d.wait_ready()  # the harness's own listener holds an allowed key: it hears heartbeats
        img = ImpellerGenerator(seed=3).sample(0).image
        for i in range(5):
            d.send_frame(img, f"ok{i}")
        d.wait_verdicts(5, 60)
        assert {v["frame_id"] for v in d.verdicts} == {f"ok{i}" for i in range(5)}
        assert refused(d) == 0
        # A camera with an unknown key, and one with no key at all: nothing of theirs is read.
        stranger = ctx.socket(zmq.PUSH)
        client(stranger, daemon_public, stranger_secret)
        plain = ctx.socket(zmq.PUSH)
        for sock in (stranger, plain):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 10)
            sock.connect(d.ingest)
        for i in range(5):
            for tag, sock in (("stranger", stranger), ("plain", plain)):
                with contextlib.suppress(zmq.Again):  # never connected: exactly the point
                    sock.send_multipart(encode_frame(img, tag, i, time.time_ns()), zmq.NOBLOCK)
        # A listener without keys hears nothing, not even heartbeats.
        deaf = Listener(d.publish, ctx).start()
        end = time.monotonic() + 30
        while refused(d) < 2:
            assert time.monotonic() < end, f"refusals not counted: {refused(d)}"
            time.sleep(0.2)
        time.sleep(1.0)
        assert deaf.verdicts == [] and deaf.heartbeats == []
        deaf.close()
        assert {v["camera_id"] for v in d.verdicts} == {"cam0"}, "a refused camera's frame was answered"
        log = d.log_path.read_text()
        assert log.count("refused a client with an unknown CURVE key") == 1  # once per key, not per attempt
        stranger.close(0)
        plain.close(0)
    finally:
        assert d.stop() == 0
        ctx.term()
