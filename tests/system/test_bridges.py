"""The PLC bridges as processes, against the real daemon and real clients (pymodbus, asyncua), on loopback.

A PLC is played by a pymodbus client that polls the register map the way
docs/plc.md tells a PLC programmer to (read head, read the entries, write tail),
and by an asyncua client subscribed to the reject events.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from inspector import noise as nz
from inspector.bridges.modbus import CAMERA_BASE
from inspector.tools.synthetic import ImpellerGenerator
from tests.system.harness import Bridge, Daemon, Plc, free_port, wait_for

pytestmark = pytest.mark.slow
CODES = {1: "PASS", 2: "FAIL", 3: "ERROR", 4: "TIMEOUT", 5: "DROPPED"}


@pytest.fixture(scope="module")
def pool() -> list[np.ndarray]:
    g = ImpellerGenerator(seed=11)
    rng = np.random.default_rng(2)
    return [nz.apply_random(g.sample(i).image, nz.NOISE_TYPES[i % 4], rng) for i in range(24)]


def test_modbus_every_reject_reaches_the_plc_and_counts_match(tmp_path: Path, tiny_engines: Path, pool):
    d = Daemon(tmp_path, tiny_engines)
    b = Bridge(tmp_path, "modbus", d.publish, ["--camera", "cam0", "--fifo-depth", "32"])
    plc = None
    try:
        d.wait_ready()
        plc = Plc(b.port)
        wait_for(lambda: plc.status()["failsafe"] == 0, 30, "the bridge to clear fail-safe")
        n = 120
        for i in range(n):
            d.send_frame(pool[i % len(pool)], i)
            if i % 10 == 9:
                plc.poll_fifo()
                time.sleep(0.05)
        d.wait_verdicts(n, 60)
        wait_for(lambda: plc.status()["last_seq"] == n, 10, "the bridge to see every verdict")
        plc.poll_fifo()
        published = [v for v in d.verdicts if v["reject"]]
        assert sorted((v["seq"], v["frame_id"], v["encoder"], v["verdict"]) for v in published) == sorted(
            (r["seq"], r["frame_id"], r["encoder"], r["verdict"]) for r in plc.rejects
        )
        st = plc.status()
        for kind in CODES.values():
            assert st[kind] == sum(v["verdict"] == kind for v in d.verdicts), kind
        assert st["lost"] == 0 and st["failsafe"] == 0 and st["malformed"] == 0
        # Bad requests get Modbus exceptions; the bridge keeps serving.
        r = plc.c.write_register(3, 0, device_id=1)  # the fail-safe flag is read-only
        assert r.isError() and r.exception_code == 2
        r = plc.c.read_holding_registers(CAMERA_BASE + 1000, count=4, device_id=1)  # no second camera
        assert r.isError() and r.exception_code == 2
        r = plc.c.write_register(CAMERA_BASE + 1, 40000, device_id=1)  # a tail beyond the head
        assert r.isError()
        assert plc.status()["failsafe"] == 0
    finally:
        if plc:
            plc.close()
        assert b.stop() == 0
        assert d.stop() == 0


def test_failsafe_when_the_daemon_dies_and_after_a_bridge_restart(tmp_path: Path, tiny_engines: Path, pool):
    interval = 0.5
    sets = [f"publish.heartbeat_interval_s={interval}", "supervisor.hang_timeout_s=60"]
    d = Daemon(tmp_path, tiny_engines, sets)
    b = Bridge(tmp_path, "modbus", d.publish, ["--camera", "cam0", "--heartbeat-misses", "3"])
    b2 = None
    plc = None
    try:
        d.wait_ready()
        plc = Plc(b.port)
        wait_for(lambda: plc.status()["failsafe"] == 0, 30, "the bridge to clear fail-safe")
        for i in range(10):
            d.send_frame(pool[i], i)
        d.wait_verdicts(10, 60)
        # SIGKILL the daemon: fail safe within 3 heartbeat intervals of the last heartbeat.
        d.proc.kill()
        d.proc.wait(10)
        last_hb = time.monotonic()  # the listener's view: no heartbeat can come after the kill
        took = wait_for(lambda: plc.status()["failsafe"] == 1, 10, "fail-safe after the kill")
        # no heartbeat, or "not ready": the orphaned publisher's last heartbeat on its way out says so
        assert plc.status()["reason"] in (2, 3)
        print(f"\nfail-safe {took:.2f} s after the kill (limit {3 * interval:.1f} s + polling)")
        assert took <= 3 * interval + 0.5, took
        # A new daemon on the same endpoints: the bridge clears.
        d.stop()
        d = Daemon(tmp_path, tiny_engines, sets)
        d.wait_ready()
        wait_for(lambda: plc.status()["failsafe"] == 0, 30, "the bridge to clear after the restart")
        # SIGKILL the bridge mid-stream; the new one starts in fail-safe ("starting") until a heartbeat.
        publisher = d.worker_pids()["publisher"]
        for i in range(20):
            d.send_frame(pool[i % len(pool)], 100 + i)
        b.stop(signal.SIGKILL)
        plc.close()
        plc = None
        os.kill(publisher, signal.SIGSTOP)  # no heartbeat reaches the new bridge until we say so
        try:
            b2 = Bridge(tmp_path, "modbus", d.publish, ["--camera", "cam0"])
            plc = Plc(b2.port)
            st = plc.status()
            assert (st["failsafe"], st["reason"]) == (1, 1), st
        finally:
            os.kill(publisher, signal.SIGCONT)
        wait_for(lambda: plc.status()["failsafe"] == 0, 30, "the new bridge to clear")
        del last_hb
    finally:
        if plc:
            plc.close()
        if b2:
            b2.stop()
        b.stop()
        d.stop()


def test_malformed_messages_on_the_bridge_socket_are_counted_and_ignored(tmp_path: Path):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    endpoint = f"ipc://{tmp_path}/fake.sock"
    pub.bind(endpoint)
    b = Bridge(tmp_path, "modbus", endpoint, ["--camera", "cam0"])
    plc = Plc(b.port)
    try:
        time.sleep(0.5)  # the bridge's SUB connects
        hb = {"type": "heartbeat", "interval_s": 0.5, "uptime_s": 1.0, "last_seq": 0, "ready": True}
        for body in (b"{not json", b"[]", json.dumps({"seq": "x"}).encode(), b"[" * 50_000):
            pub.send_multipart([b"verdict", body])
        pub.send_multipart([b"heartbeat", json.dumps(hb).encode()])
        wait_for(lambda: plc.status()["malformed"] == 4, 10, "the malformed count")
        wait_for(lambda: plc.status()["failsafe"] == 0, 10, "the good heartbeat to count")
        assert b.proc.poll() is None
    finally:
        plc.close()
        assert b.stop() == 0
        pub.close(0)
        ctx.term()


def test_opcua_events_for_every_reject_and_camera_health(tmp_path: Path, tiny_engines: Path, pool):
    from asyncua import Client

    health = ["health.window=20", "health.min_frames=10", "health.brightness_min=40"]
    health += ["health.max_noisy_share=1", "health.max_type_share=1"]  # the tiny engines call noise at random
    d = Daemon(tmp_path, tiny_engines, health)
    b = Bridge(tmp_path, "opcua", d.publish, ["--camera", "cam0"])
    events: list[Any] = []
    every: list[Any] = []  # VerdictEventType: every verdict, PASS included

    class Handler:
        def __init__(self, into: list[Any]) -> None:
            self.into = into

        def event_notification(self, ev: Any) -> None:
            self.into.append(ev)

    async def run() -> dict[str, Any]:
        end = time.monotonic() + 30
        while True:
            try:
                client = Client(b.url)
                await client.connect()
                break
            except (TimeoutError, OSError):
                assert time.monotonic() < end, "the OPC UA bridge did not come up"
                await asyncio.sleep(0.2)
        try:
            idx = await client.get_namespace_index("urn:line-inspector")
            root = await client.nodes.objects.get_child([f"{idx}:LineInspector"])
            etype = await client.nodes.root.get_child(
                ["0:Types", "0:EventTypes", "0:BaseEventType", f"{idx}:RejectEventType"]
            )
            sub = await client.create_subscription(20, Handler(events))
            await sub.subscribe_events(root, etype)
            vtype = await client.nodes.root.get_child(
                ["0:Types", "0:EventTypes", "0:BaseEventType", f"{idx}:VerdictEventType"]
            )
            sub2 = await client.create_subscription(20, Handler(every))
            await sub2.subscribe_events(root, vtype)
            failsafe = await root.get_child([f"{idx}:Daemon", f"{idx}:FailSafe"])
            end = time.monotonic() + 30
            while await failsafe.read_value():
                assert time.monotonic() < end, "the OPC UA bridge stayed in fail-safe"
                await asyncio.sleep(0.05)
            n = 40
            for i in range(n):
                d.send_frame(pool[i % len(pool)], i)
            await asyncio.to_thread(d.wait_verdicts, n, 60)
            rejects = sum(v["reject"] for v in d.verdicts)
            end = time.monotonic() + 20
            while len(events) < rejects or len(every) < n:
                assert time.monotonic() < end, (
                    f"{len(events)} of {rejects} reject events, {len(every)} of {n}"
                )
                await asyncio.sleep(0.05)
            count = await root.get_child([f"{idx}:Cameras", f"{idx}:cam0", f"{idx}:RejectCount"])
            cam_health = await root.get_child([f"{idx}:Cameras", f"{idx}:cam0", f"{idx}:Health"])
            reason = await root.get_child([f"{idx}:Cameras", f"{idx}:cam0", f"{idx}:HealthReason"])
            out = {"reject_count": await count.read_value(), "health_before": await cam_health.read_value()}
            # The light fails: dark frames raise the camera's health alarm (and the frames are still inspected).
            for i in range(30):
                d.send_frame((pool[i % len(pool)] // 8).astype(np.uint8), 1000 + i)
            end = time.monotonic() + 30
            while await cam_health.read_value() != "alarm":
                assert time.monotonic() < end, "no health alarm in the OPC UA bridge"
                await asyncio.sleep(0.05)
            out["reason"] = await reason.read_value()
            for i in range(30):
                d.send_frame(pool[i % len(pool)], 2000 + i)
            end = time.monotonic() + 30
            while await cam_health.read_value() != "ok":
                assert time.monotonic() < end, "the health alarm did not clear"
                await asyncio.sleep(0.05)
            return out
        finally:
            await client.disconnect()

    try:
        d.wait_ready()
        out = asyncio.run(run())
        published = {(str(v["frame_id"]), v["encoder"], v["verdict"]) for v in d.verdicts[:40] if v["reject"]}
        got = {(e.FrameId, e.Encoder, e.Verdict) for e in events}
        assert published <= got and len(events) >= len(published)
        # every reject event carries the camera's reject count: consecutive, so a lost event would show
        assert [e.CameraSeq for e in events][: len(published)] == list(range(1, len(published) + 1))
        # the positive answer per part: one VerdictEventType per verdict, PASS included, numbered per camera
        first = [(str(v["frame_id"]), v["verdict"]) for v in d.verdicts[:40]]
        assert [(e.FrameId, e.Verdict) for e in every[:40]] == first
        assert [e.CameraSeq for e in every[:40]] == list(range(1, 41))
        assert out["reject_count"] == len(published) and out["health_before"] == "ok"
        assert "mean brightness" in out["reason"], out
        hbs = [
            h for h in d.listener.heartbeats if h.get("cameras", {}).get("cam0", {}).get("state") == "alarm"
        ]
        assert hbs, "the alarm never showed in a heartbeat"
        import urllib.request

        body = urllib.request.urlopen(d.metrics_url() + "/metrics", timeout=5).read().decode()
        assert 'inspector_camera_health_alarm{camera_id="cam0"} 0.0' in body  # cleared again
    finally:
        assert b.stop() == 0
        assert d.stop() == 0


@pytest.mark.parametrize("mode", ["permit", "reject"])
def test_the_bridge_can_drive_a_diverter_coil_on_the_plc(tmp_path: Path, mode: str):
    """--gate-plc: permit (default): the coil rests on (divert) and drops off per PASS; reject: a pulse per
    reject; both held on in fail-safe. The 'PLC' is a real pymodbus server."""
    import threading

    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    writes: list[tuple[float, bool]] = []

    async def action(fc, start, address, count, regs, values):
        if values is not None and fc == 5 and address == 7:
            writes.append((time.monotonic(), bool(values[0])))

    bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
    words = [SimData(0, count=4, values=0, datatype=DataType.REGISTERS)]
    plc_port = free_port()
    loop = asyncio.new_event_loop()
    holder: dict[str, Any] = {}

    async def run_plc() -> None:
        device = SimDevice(0, simdata=(bits, bits, words, words), action=action)
        holder["server"] = ModbusTcpServer(device, address=("127.0.0.1", plc_port))
        await holder["server"].serve_forever()

    thread = threading.Thread(target=loop.run_until_complete, args=(run_plc(),), daemon=True)
    thread.start()
    wait_for(lambda: "server" in holder, 10, "the fake PLC")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    endpoint = f"ipc://{tmp_path}/fake.sock"
    pub.bind(endpoint)
    gate = ["--gate-plc", f"127.0.0.1:{plc_port}", "--gate-coil", "7", "--gate-pulse-ms", "100"]
    gate += [] if mode == "permit" else ["--gate-mode", mode]
    b = Bridge(tmp_path, "modbus", endpoint, ["--camera", "cam0", "--heartbeat-misses", "3", *gate])
    beating = threading.Event()
    beating.set()
    seq = [0]

    def heartbeats() -> None:
        t0 = time.monotonic()
        while beating.is_set():
            body = {
                "interval_s": 0.1,
                "uptime_s": time.monotonic() - t0 + 1,
                "last_seq": seq[0],
                "ready": True,
            }
            pub.send_multipart([b"heartbeat", json.dumps(body).encode()])
            time.sleep(0.1)

    beater = threading.Thread(target=heartbeats, daemon=True)
    plc = Plc(b.port)
    try:
        beater.start()
        wait_for(lambda: plc.status()["failsafe"] == 0, 20, "the bridge to clear fail-safe")
        rest = mode == "permit"  # the coil between pulses
        wait_for(lambda: writes and writes[-1][1] is rest, 10, "the start-up hold to be released")
        start = len(writes)
        for kind in ("FAIL", "PASS", "TIMEOUT", "PASS", "ERROR"):
            seq[0] += 1
            v = {
                "seq": seq[0],
                "verdict": kind,
                "reject": kind != "PASS",
                "camera_id": "cam0",
                "frame_id": seq[0],
            }
            pub.send_multipart([b"verdict", json.dumps(v).encode()])
            time.sleep(0.4)
        seen = [on for _, on in writes[start:]]
        # the resting state is rewritten every 0.5 s; count the pulses: writes of the other state, each
        # followed by the resting state again
        pulses = [i for i, on in enumerate(seen) if on is not rest]
        assert all(i + 1 < len(seen) and seen[i + 1] is rest for i in pulses), seen
        # permit: one drop per PASS (2), none for a reject; reject: one pulse per reject (3), none per PASS
        assert len(pulses) == (2 if mode == "permit" else 3), seen
        beating.clear()  # the daemon falls silent: the coil is held on
        wait_for(lambda: plc.status()["failsafe"] == 1, 5, "fail-safe")
        time.sleep(1.2)
        held = [on for t, on in writes if t > time.monotonic() - 1.0]
        assert held and all(held), held
    finally:
        beating.clear()
        plc.close()
        assert b.stop() == 0
        pub.close(0)
        ctx.term()
        asyncio.run_coroutine_threadsafe(holder["server"].shutdown(), loop).result(5)
