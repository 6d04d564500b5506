"""The OPC UA bridge: the daemon's verdicts as an address space and events (``inspector bridge opcua``).

Address space (namespace ``urn:line-inspector``), under ``Objects/LineInspector``:

- ``Daemon``: ``HeartbeatCount``, ``Ready``, ``FailSafe``, ``FailSafeReason``,
  ``LastSeq``, ``LostVerdicts``, ``ModelVersion``, ``Malformed``, ``UnknownCameras``,
  ``UnroutableRejects``, ``Unanswered``, ``BridgeTick`` and one ``Count<VERDICT>`` per verdict kind;
- ``Cameras/<camera_id>``: ``LastVerdict``, ``LastFrameId``, ``LastEncoder``,
  ``LastScore``, ``NoiseType``, ``PassCount``, ``RejectCount``, ``Health``,
  ``HealthReason``.

Events, emitted by the ``LineInspector`` object: ``VerdictEventType`` for every verdict of a mapped
camera, PASS included (``CameraId``, ``FrameId``, ``Encoder``, ``Verdict``, ``Seq``, ``CameraSeq``: the
camera's verdict count - the positive PASS per part, a gap in ``CameraSeq`` a lost event);
``RejectEventType`` for every
verdict with ``reject: true`` (``CameraId``, ``FrameId``, ``Encoder``,
``Verdict``, ``Score``, ``Seq``, ``Reason``, ``CameraSeq``: the camera's reject count, so
a gap shows a lost event), and ``FailSafeEventType`` on every
fail-safe change (``FailSafe``, ``FailSafeReason``, ``LostVerdicts``).

Security: with ``--cert`` and ``--key`` the server offers only
Basic256Sha256 (sign and encrypt); without them it serves anonymous
NoSecurity, which it refuses unless bound to loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from inspector.bridges.core import VERDICT_CODES, BridgeState, Reject

NAMESPACE = "urn:line-inspector"


def _loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    try:
        return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


class AddressSpace:
    """The nodes, refreshed from :class:`BridgeState`, and the two event generators."""

    def __init__(self, server: Any, state: BridgeState) -> None:
        self.server, self.state = server, state
        self.vars: dict[str, Any] = {}
        self.cams: dict[str, dict[str, Any]] = {}
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=10_000)
        self.events_dropped = 0

    async def build(self) -> None:
        from asyncua import ua

        s = self.server
        idx = self.idx = await s.register_namespace(NAMESPACE)
        root = self.root = await s.nodes.objects.add_object(idx, "LineInspector")
        daemon = await root.add_object(idx, "Daemon")
        initial: dict[str, Any] = {
            "HeartbeatCount": ua.Variant(0, ua.VariantType.UInt32),
            "Ready": False,
            "FailSafe": True,
            "FailSafeReason": "starting",
            "LastSeq": ua.Variant(0, ua.VariantType.UInt64),
            "LostVerdicts": ua.Variant(0, ua.VariantType.UInt64),
            "ModelVersion": "",
            "Malformed": ua.Variant(0, ua.VariantType.UInt64),
            "UnknownCameras": ua.Variant(0, ua.VariantType.UInt64),
            "UnroutableRejects": ua.Variant(0, ua.VariantType.UInt64),
            "Unanswered": ua.Variant(0, ua.VariantType.UInt64),
            "BridgeTick": ua.Variant(0, ua.VariantType.UInt32),
            **{f"Count{k}": ua.Variant(0, ua.VariantType.UInt64) for k in VERDICT_CODES},
        }
        for name, value in initial.items():
            self.vars[name] = await daemon.add_variable(idx, name, value)
        self.cameras_node = await root.add_object(idx, "Cameras")
        # fields both verdict events carry: the part, the verdict, the daemon's seq and the camera's own count
        ids = [
            ("CameraId", ua.VariantType.String),
            ("FrameId", ua.VariantType.String),
            ("Encoder", ua.VariantType.Int64),
            ("Verdict", ua.VariantType.String),
            ("Seq", ua.VariantType.UInt64),
            ("CameraSeq", ua.VariantType.UInt64),
        ]
        self.reject_type = await s.create_custom_event_type(
            idx,
            "RejectEventType",
            ua.ObjectIds.BaseEventType,
            [*ids, ("Score", ua.VariantType.Double), ("Reason", ua.VariantType.String)],
        )
        self.verdict_type = await s.create_custom_event_type(
            idx,
            "VerdictEventType",
            ua.ObjectIds.BaseEventType,
            ids,
        )
        self.failsafe_type = await s.create_custom_event_type(
            idx,
            "FailSafeEventType",
            ua.ObjectIds.BaseEventType,
            [
                ("FailSafe", ua.VariantType.Boolean),
                ("FailSafeReason", ua.VariantType.String),
                ("LostVerdicts", ua.VariantType.UInt64),
            ],
        )
        self.reject_gen = await s.get_event_generator(self.reject_type, root)
        self.verdict_gen = await s.get_event_generator(self.verdict_type, root)
        self.failsafe_gen = await s.get_event_generator(self.failsafe_type, root)

    async def camera(self, camera_id: str) -> dict[str, Any]:
        from asyncua import ua

        if camera_id not in self.cams:
            node = await self.cameras_node.add_object(self.idx, camera_id)
            init: dict[str, Any] = {
                "LastVerdict": "",
                "LastFrameId": "",
                "LastEncoder": ua.Variant(0, ua.VariantType.Int64),
                "LastScore": 0.0,
                "NoiseType": "",
                "PassCount": ua.Variant(0, ua.VariantType.UInt64),
                "RejectCount": ua.Variant(0, ua.VariantType.UInt64),
                "Health": "ok",
                "HealthReason": "",
            }
            self.cams[camera_id] = {n: await node.add_variable(self.idx, n, v) for n, v in init.items()}
        return self.cams[camera_id]

    async def refresh(self) -> None:
        from asyncua import ua

        s = self.state
        values: dict[str, Any] = {
            "HeartbeatCount": ua.Variant(s.heartbeats % (1 << 32), ua.VariantType.UInt32),
            "Ready": s.ready,
            "FailSafe": s.failsafe,
            "FailSafeReason": s.reason or "",
            "LastSeq": ua.Variant(s.last_seq or 0, ua.VariantType.UInt64),
            "LostVerdicts": ua.Variant(s.lost, ua.VariantType.UInt64),
            "ModelVersion": s.model_version or "",
            "Malformed": ua.Variant(s.malformed, ua.VariantType.UInt64),
            "UnknownCameras": ua.Variant(s.unknown_cameras, ua.VariantType.UInt64),
            "UnroutableRejects": ua.Variant(s.unroutable, ua.VariantType.UInt64),
            "Unanswered": ua.Variant(s.unanswered, ua.VariantType.UInt64),
            "BridgeTick": ua.Variant(s.ticks % (1 << 32), ua.VariantType.UInt32),
            **{f"Count{k}": ua.Variant(s.counts[k], ua.VariantType.UInt64) for k in VERDICT_CODES},
        }
        for name, value in values.items():
            await self.vars[name].write_value(value)
        for cid, cam in list(s.cameras.items()):
            nodes = await self.camera(cid)
            last = cam.last
            enc = last.get("encoder")
            score = last.get("defect_score")
            cvals: dict[str, Any] = {
                "LastVerdict": str(last.get("verdict", "")),
                "LastFrameId": "" if last.get("frame_id") is None else str(last.get("frame_id")),
                "LastEncoder": ua.Variant(enc if isinstance(enc, int) else 0, ua.VariantType.Int64),
                "LastScore": float(score) if isinstance(score, (int, float)) else 0.0,
                "NoiseType": str(last.get("noise_type") or ""),
                "PassCount": ua.Variant(cam.counts["PASS"], ua.VariantType.UInt64),
                "RejectCount": ua.Variant(
                    sum(v for k, v in cam.counts.items() if k != "PASS"), ua.VariantType.UInt64
                ),
                "Health": cam.health,
                "HealthReason": cam.health_reason or "",
            }
            for name, value in cvals.items():
                await nodes[name].write_value(value)

    async def emit(self) -> None:
        """Fire the queued events (the state's callbacks are synchronous; OPC UA's are not)."""
        from asyncua import ua

        while not self.events.empty():
            kind, item = self.events.get_nowait()
            if kind == "verdict":
                v, n = item
                ev = self.verdict_gen.event
                ev.CameraId, ev.Verdict = v.camera_id, v.verdict
                ev.FrameId = "" if v.frame_id is None else str(v.frame_id)
                ev.Encoder = ua.Variant(v.encoder if v.encoder is not None else 0, ua.VariantType.Int64)
                ev.Seq = ua.Variant(v.seq, ua.VariantType.UInt64)
                ev.CameraSeq = ua.Variant(n, ua.VariantType.UInt64)
                ev.Severity = 100 if v.verdict == "PASS" else 500
                await self.verdict_gen.trigger(message=f"{v.verdict} {v.camera_id} frame {v.frame_id}")
            elif kind == "reject":
                r: Reject = item
                ev = self.reject_gen.event
                ev.CameraId, ev.Verdict, ev.Reason = r.camera_id, r.verdict, r.reason or ""
                ev.FrameId = "" if r.frame_id is None else str(r.frame_id)
                ev.Encoder = ua.Variant(r.encoder if r.encoder is not None else 0, ua.VariantType.Int64)
                ev.Score = r.score if r.score is not None else -1.0
                ev.Seq = ua.Variant(r.seq, ua.VariantType.UInt64)
                ev.CameraSeq = ua.Variant(r.camera_seq, ua.VariantType.UInt64)
                ev.Severity = 500
                await self.reject_gen.trigger(message=f"{r.verdict} {r.camera_id} frame {r.frame_id}")
            else:
                on, why = item
                ev = self.failsafe_gen.event
                ev.FailSafe, ev.FailSafeReason = on, why or ""
                ev.LostVerdicts = ua.Variant(self.state.lost, ua.VariantType.UInt64)
                ev.Severity = 900 if on else 100
                await self.failsafe_gen.trigger(
                    message=f"fail-safe {'ON' if on else 'off'}: {why or 'clear'}"
                )


async def serve(
    daemon: str,
    url: str,
    cameras: list[str],
    max_cameras: int,
    misses: int,
    log: Any,
    cert: Path | None = None,
    key: Path | None = None,
    zmq_options: Any = None,
    stop: asyncio.Event | None = None,
    fifo_depth: int = 64,
    ring_depth: int | None = None,
) -> None:
    from asyncua import Server, ua

    from inspector.bridges.run import Subscription, watch

    if (cert is None) != (key is None):
        raise SystemExit("inspector bridge opcua: give both --cert and --key, or neither")
    if cert is None and not _loopback(url):
        raise SystemExit(
            f"inspector bridge opcua: refusing anonymous, unencrypted OPC UA on {url}: bind to loopback "
            "or give --cert and --key (Basic256Sha256)"
        )
    state = BridgeState(
        cameras,
        max_cameras=len(cameras) or max_cameras,
        heartbeat_misses=misses,
        fifo_depth=fifo_depth,
        ring_depth=ring_depth,
    )
    server = Server()
    await server.init()
    server.set_endpoint(url)
    server.set_server_name("Line Inspector bridge")
    if cert is not None and key is not None:
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    space = AddressSpace(server, state)
    await space.build()

    def queue(kind: str, item: Any) -> None:
        try:
            space.events.put_nowait((kind, item))
        except asyncio.QueueFull:  # the variables still carry every count; a burst of events may be cut
            space.events_dropped += 1

    state.on_reject = lambda r: queue("reject", r)
    state.on_each = lambda r, n: queue("verdict", (r, n))

    def failsafe(on: bool, why: str | None) -> None:
        log.warning("fail-safe", failsafe=on, reason=why, lost=state.lost)
        queue("failsafe", (on, why))

    state.on_failsafe = failsafe
    sub = Subscription(daemon, state, zmq_options)
    stop = stop or asyncio.Event()
    log.info("opcua bridge", daemon=daemon, endpoint=url, secure=cert is not None)

    async def publish() -> None:
        while not stop.is_set():
            await space.emit()
            await space.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    async with server:
        tasks = [
            asyncio.create_task(sub.run(stop), name="subscription"),
            asyncio.create_task(publish(), name="address-space"),
        ]
        try:
            await watch(tasks, stop, state, log)
            await space.emit()  # the last fail-safe event, if any
            await space.refresh()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sub.close()
