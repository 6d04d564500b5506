"""The Modbus TCP bridge: the daemon's verdicts as a register map a PLC polls (``inspector bridge modbus``).

The register map is in ``docs/plc.md`` (generated from :data:`STATUS` and
:data:`CAMERA` below, so the two cannot drift). Every register is readable
with function 3 (holding) or 4 (input): the map is one shared block. Only the
per-camera ``tail`` register is writable (functions 6 and 16); a write to any
other register, or a read or write outside the map, gets a Modbus exception
(02, illegal data address), never a crash. 32-bit values take two registers,
high word first.

pymodbus 3.x serves the map as one :class:`~pymodbus.simulator.SimDevice`
whose ``action`` hook fills the requested registers from the bridge state at
each request, so a read always sees the state at that instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inspector.bridges.core import (
    FAILSAFE_CODES,
    VERDICT_CODES,
    BridgeState,
    CameraState,
    Reject,
    check_depth,
    u32,
)

MAP_VERSION = 2  # 2: verdict rings (the positive PASS per part), fail-safe reasons 6-9, status 24-29
CAMERA_BASE, CAMERA_STRIDE, ENTRY_BASE, ENTRY_WORDS = 1000, 1000, 16, 8
RING_BASE = 20000  # verdict ring of camera c at RING_BASE + CAMERA_STRIDE * c
MAX_CAMERAS = 16  # camera blocks 1000..16999, rings 20000..35999; alarm bits fit one register
NONE16 = 0xFFFF


@dataclass(frozen=True)
class Reg:
    offset: int
    words: int
    name: str
    meaning: str
    writable: bool = False


STATUS = [
    Reg(0, 1, "map_version", f"register map version ({MAP_VERSION})"),
    Reg(1, 1, "heartbeat_count", "daemon heartbeats received, modulo 65536: must change every interval"),
    Reg(2, 1, "daemon_ready", "1 when the daemon's last heartbeat said ready"),
    Reg(
        3,
        1,
        "failsafe",
        "1 = REJECT EVERY PART (no heartbeat, daemon not ready, lost verdicts, restart, ...)",
    ),
    Reg(
        4,
        1,
        "failsafe_reason",
        "0 none, 1 starting, 2 no heartbeat, 3 not ready, 4 lost verdicts (seq gap), 5 daemon restarted, "
        "6 unroutable reject, 7 FIFO overflow (until tail is written past it), 8 frames unanswered, "
        "9 bridge fault",
    ),
    Reg(5, 2, "last_seq", "seq of the last verdict received (u32)"),
    Reg(7, 2, "lost_verdicts", "frames whose verdict never reached the bridge (seq gaps, u32)"),
    Reg(9, 2, "count_pass", "PASS verdicts since the bridge started (u32)"),
    Reg(11, 2, "count_fail", "FAIL verdicts (u32)"),
    Reg(13, 2, "count_error", "ERROR verdicts (u32)"),
    Reg(15, 2, "count_timeout", "TIMEOUT verdicts (u32)"),
    Reg(17, 2, "count_dropped", "DROPPED verdicts (u32)"),
    Reg(19, 1, "cameras", "cameras mapped (their order is the bridge's --camera list)"),
    Reg(20, 1, "camera_alarm_bits", "bit i set: camera i's health alarm (maintenance, not a verdict)"),
    Reg(21, 1, "fifo_depth", "entries per camera reject FIFO"),
    Reg(22, 1, "malformed", "malformed messages from the daemon, modulo 65536"),
    Reg(
        23,
        1,
        "bridge_tick",
        "+1 every 100 ms while the bridge's subscription loop runs: a frozen value means a hung bridge",
    ),
    Reg(24, 2, "unknown_cameras", "verdicts for a camera this bridge does not map (u32)"),
    Reg(26, 2, "unroutable_rejects", "of those, rejects: no FIFO could take them, fail-safe 6 (u32)"),
    Reg(28, 1, "ring_depth", "entries per camera verdict ring"),
    Reg(29, 1, "unanswered", "frames the daemon took in and has not answered (its last heartbeat)"),
]
STATUS_WORDS = 32
CAMERA = [
    Reg(0, 1, "head", "rejects written to this camera's FIFO, modulo 65536"),
    Reg(1, 1, "tail", "WRITE: rejects the PLC has consumed, modulo 65536 (write head after reading)", True),
    Reg(2, 1, "overflow", "rejects overwritten before the PLC read them, modulo 65536 (then fail safe)"),
    Reg(3, 1, "health_alarm", "1 while the camera's noise mix or brightness is past its health limits"),
    Reg(4, 1, "last_verdict", "code of the last verdict: 1 PASS, 2 FAIL, 3 ERROR, 4 TIMEOUT, 5 DROPPED"),
    Reg(5, 2, "last_frame_id", "frame id of the last verdict (u32; string ids as their CRC-32)"),
    Reg(7, 2, "last_encoder", "encoder count of the last verdict, low 32 bits"),
    Reg(9, 2, "count_pass", "PASS verdicts for this camera (u32)"),
    Reg(11, 2, "count_reject", "verdicts with reject = true for this camera (u32)"),
    Reg(13, 2, "verdict_count", "verdicts written to this camera's verdict ring (u32; same as ring `count`)"),
]
RING = [
    Reg(0, 2, "count", "verdicts for this camera, PASS and reject alike (u32): entry n at index n mod depth"),
    Reg(2, 1, "depth", "entries in the ring"),
    Reg(
        3,
        2,
        "camera_crc",
        "CRC-32 of the camera id this block serves (0 while none): check it is your camera before "
        "trusting a PASS",
    ),
]
ENTRY = [
    Reg(0, 2, "seq", "the verdict's seq (u32)"),
    Reg(2, 2, "frame_id", "frame id (u32; string ids as their CRC-32)"),
    Reg(4, 2, "encoder", "encoder count, low 32 bits (0xFFFFFFFF when the camera sent none)"),
    Reg(6, 1, "verdict", "1 PASS (verdict ring only), 2 FAIL, 3 ERROR, 4 TIMEOUT, 5 DROPPED"),
    Reg(7, 1, "score", "defect score x 1000 (0xFFFF when not inspected)"),
]


def words32(v: int) -> list[int]:
    v %= 1 << 32
    return [v >> 16, v & 0xFFFF]


class RegisterMap:
    """Renders :class:`BridgeState` into 16-bit registers and applies the PLC's writes."""

    def __init__(self, state: BridgeState, cameras: int, depth: int) -> None:
        check_depth(depth)
        check_depth(state.ring_depth)
        if not 1 <= cameras <= MAX_CAMERAS:
            raise ValueError(f"{cameras} cameras: the register map holds 1 to {MAX_CAMERAS}")
        self.state, self.n_cameras, self.depth = state, cameras, depth
        self.ring_depth = state.ring_depth
        self.size = CAMERA_BASE + cameras * CAMERA_STRIDE

    def camera_at(self, index: int) -> CameraState | None:
        for cam in self.state.cameras.values():
            if cam.index == index:
                return cam
        return None

    def camera_id(self, index: int) -> str | None:
        for cid, cam in self.state.cameras.items():
            if cam.index == index:
                return cid
        return None

    def status(self) -> list[int]:
        s = self.state
        alarm = sum(1 << c.index for c in s.cameras.values() if c.health == "alarm" and c.index < 16)
        out = [
            MAP_VERSION,
            s.heartbeats % 0x10000,
            int(s.ready),
            int(s.failsafe),
            FAILSAFE_CODES.get(s.reason, 0),
            *words32(s.last_seq or 0),
            *words32(s.lost),
            *words32(s.counts["PASS"]),
            *words32(s.counts["FAIL"]),
            *words32(s.counts["ERROR"]),
            *words32(s.counts["TIMEOUT"]),
            *words32(s.counts["DROPPED"]),
            self.n_cameras,
            alarm,
            self.depth,
            s.malformed % 0x10000,
            s.ticks % 0x10000,
            *words32(s.unknown_cameras),
            *words32(s.unroutable),
            self.ring_depth,
            min(s.unanswered, 0xFFFF),
        ]
        return out + [0] * (STATUS_WORDS - len(out))

    @staticmethod
    def entry(e: Reject | None) -> list[int]:
        if e is None:
            return [0] * ENTRY_WORDS
        return [
            *words32(e.seq),
            *words32(u32(e.frame_id)),
            *words32(u32(e.encoder)),
            VERDICT_CODES[e.verdict],
            NONE16 if e.score is None else min(max(round(e.score * 1000), 0), 1000),
        ]

    def camera(self, index: int) -> list[int]:
        cam = self.camera_at(index)
        if cam is None:
            return [0] * (ENTRY_BASE + self.depth * ENTRY_WORDS)
        f = cam.fifo
        last = cam.last
        enc = last.get("encoder")
        rejects = sum(v for k, v in cam.counts.items() if k != "PASS")
        head = [
            f.head % 0x10000,
            f.tail % 0x10000,
            f.overflow % 0x10000,
            int(cam.health == "alarm"),
            VERDICT_CODES.get(last.get("verdict", ""), 0),
            *words32(u32(last.get("frame_id"))),
            *words32(u32(enc if isinstance(enc, int) else None)),
            *words32(cam.counts["PASS"]),
            *words32(rejects),
            *words32(cam.ring.count),
        ]
        head += [0] * (ENTRY_BASE - len(head))
        for e in f.entries:
            head += self.entry(e)
        return head

    def ring(self, index: int) -> list[int]:
        cam = self.camera_at(index)
        crc = u32(cam_id) if (cam_id := self.camera_id(index)) is not None else 0
        out = [*words32(cam.ring.count if cam else 0), self.ring_depth, *words32(crc)]
        out += [0] * (ENTRY_BASE - len(out))
        for e in cam.ring.entries if cam else [None] * self.ring_depth:
            out += self.entry(e)
        return out

    def fill(self, registers: list[int], start: int, address: int, count: int) -> None:
        """Write the current values of ``address .. address+count-1`` into ``registers``."""
        end = address + count
        if address < STATUS_WORDS:
            vals = self.status()
            for a in range(address, min(end, STATUS_WORDS)):
                registers[a - start] = vals[a]
        for c in range(self.n_cameras):
            for base, words, render in (
                (CAMERA_BASE + c * CAMERA_STRIDE, self.depth, self.camera),
                (RING_BASE + c * CAMERA_STRIDE, self.ring_depth, self.ring),
            ):
                top = base + ENTRY_BASE + words * ENTRY_WORDS
                if end <= base or address >= top:
                    continue
                vals = render(c)
                for a in range(max(address, base), min(end, top)):
                    registers[a - start] = vals[a - base]

    def write(self, address: int, values: list[int]) -> bool:
        """A PLC write; only the ``tail`` registers are writable (the rest are read-only in the map)."""
        for i, v in enumerate(values):
            rel = address + i - CAMERA_BASE
            c, off = divmod(rel, CAMERA_STRIDE)
            cam = self.camera_at(c) if rel >= 0 and off == 1 and c < self.n_cameras else None
            if cam is None or not cam.fifo.ack(int(v)):
                return False
        return True

    def simdevice(self) -> Any:
        """The map as one pymodbus SimDevice: read-only blocks, the tail registers writable, gaps invalid."""
        from pymodbus.constants import ExcCodes
        from pymodbus.simulator import DataType, SimData, SimDevice

        blocks = [SimData(0, count=STATUS_WORDS, values=0, datatype=DataType.REGISTERS, readonly=True)]
        for c in range(self.n_cameras):
            base = CAMERA_BASE + c * CAMERA_STRIDE
            blocks += [
                SimData(base, count=1, values=0, datatype=DataType.REGISTERS, readonly=True),
                SimData(base + 1, count=1, values=0, datatype=DataType.REGISTERS),
                SimData(
                    base + 2,
                    count=ENTRY_BASE - 2 + self.depth * ENTRY_WORDS,
                    values=0,
                    datatype=DataType.REGISTERS,
                    readonly=True,
                ),
            ]
        blocks += [
            SimData(
                RING_BASE + c * CAMERA_STRIDE,
                count=ENTRY_BASE + self.ring_depth * ENTRY_WORDS,
                values=0,
                datatype=DataType.REGISTERS,
                readonly=True,
            )
            for c in range(self.n_cameras)
        ]

        async def action(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            current_registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> Any:
            if set_values:
                if not self.write(address, [int(v) for v in set_values]):
                    return ExcCodes.ILLEGAL_VALUE
                return None
            self.fill(current_registers, start_address, address, count)
            return None

        return SimDevice(0, simdata=blocks, action=action)  # 0: answer any unit id


GATE_MODES = ("permit", "reject")


class GateWriter:
    """Optional: the bridge drives a diverter itself, as a Modbus client writing a coil on the PLC.

    For lines whose gate is timed by the bridge rather than by the PLC's own shift register. The coil
    means "divert" (on = the part goes to the reject bin). Two modes:

    - ``permit`` (the default, fail-closed): the coil rests **on**; every PASS of a mapped camera,
      while the bridge is not in fail-safe, drops it off for ``pulse_ms`` - a pass permit. A part
      with no verdict, a lost verdict, a dead daemon: no permit, diverted. The resting state is
      rewritten every half second, so a PLC that restarted sees it again.
    - ``reject``: the coil rests off and is pulsed on for every reject. Not fail-closed on its own: a
      frame that never reached the daemon gets no pulse, so its part passes. Use it only beside the
      verdict ring, as a reject list.

    In both modes the coil is held on (divert everything) while the bridge is in fail-safe, from the
    moment it starts. Write failures are counted and logged; the client reconnects by itself.
    """

    def __init__(
        self, state: BridgeState, target: str, coil: int, pulse_ms: float, log: Any, mode: str = "permit"
    ) -> None:
        if mode not in GATE_MODES:
            raise ValueError(f"gate mode {mode!r}: one of {', '.join(GATE_MODES)}")
        host, _, port = target.rpartition(":")
        self.host, self.port, self.coil, self.pulse = host or "127.0.0.1", int(port), coil, pulse_ms / 1000
        self.state, self.log, self.mode = state, log, mode
        self.pending: asyncio.Queue[None] = asyncio.Queue(maxsize=1000)
        self.pulses = self.failures = 0

    def verdict(self, r: Reject) -> None:
        """Every verdict of a mapped camera: queue a pulse if this mode pulses for it."""
        if (r.verdict == "PASS") == (self.mode == "permit"):
            with contextlib.suppress(asyncio.QueueFull):
                self.pending.put_nowait(None)

    async def run(self, stop: asyncio.Event) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=1, retries=0)
        rest = self.mode == "permit"  # the coil between pulses: on (divert) in permit mode
        held: bool | None = None  # what the coil was last set to outside a pulse
        last_write = 0.0
        try:
            while not stop.is_set():
                if not client.connected:
                    await client.connect()
                now = time.monotonic()
                if self.state.failsafe:
                    if held is not True or now - last_write > 0.5:
                        await self._write(client, True)
                        held, last_write = True, now
                    while not self.pending.empty():
                        self.pending.get_nowait()  # divert everything: no permit counts now
                    await asyncio.sleep(0.02)
                    continue
                if held is not rest or now - last_write > 0.5:
                    await self._write(client, rest)  # fail-safe cleared, or the half-second refresh
                    held, last_write = rest, now
                try:
                    await asyncio.wait_for(self.pending.get(), 0.05)
                except TimeoutError:
                    continue
                if self.state.failsafe:
                    continue  # fail-safe came while it waited: no pulse
                self.pulses += 1
                await self._write(client, not rest)
                await asyncio.sleep(self.pulse)
                await self._write(client, rest)
                last_write = time.monotonic()
        finally:
            client.close()

    async def _write(self, client: Any, on: bool) -> None:
        try:
            r = await client.write_coil(self.coil, on, device_id=1)
            if r.isError():
                raise RuntimeError(str(r))
        except Exception as exc:  # the PLC is away or refuses: count, log, go on
            self.failures += 1
            if self.failures % 100 == 1:
                self.log.error(
                    "gate coil write failed", coil=self.coil, error=str(exc)[:200], failures=self.failures
                )


def allow_list(nets: list[str]) -> list[Any]:
    """``--allow-from`` values (addresses or CIDR networks) parsed; a bad one is a ValueError naming it."""
    import ipaddress

    out = []
    for n in nets:
        try:
            out.append(ipaddress.ip_network(n, strict=False))
        except ValueError:
            raise ValueError(
                f"--allow-from {n!r} is not an IP address or network (e.g. 10.0.5.20, 10.0.5.0/24)"
            ) from None
    return out


def allowed(peer: str, allow: list[Any]) -> bool:
    """Is ``peer`` in one of the ``allow`` networks? An IPv4 peer on a dual-stack socket shows as
    ``::ffff:a.b.c.d``: it is matched as the IPv4 address it is."""
    import ipaddress

    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return any(
        a in net for net in allow for a in (addr, mapped) if a is not None and a.version == net.version
    )


def guarded_server(device: Any, host: str, port: int, allow: list[Any], log: Any) -> Any:
    """A pymodbus TCP server that closes connections from addresses outside ``allow`` (empty: any) at once,
    before they can read or write a register: only the PLC may acknowledge (``tail``) its rejects."""
    from pymodbus.server import ModbusTcpServer

    class Guarded(ModbusTcpServer):
        refused = 0

        def callback_new_connection(self) -> Any:
            handler = super().callback_new_connection()
            if not allow:
                return handler
            admit = handler.connection_made

            def connection_made(transport: Any) -> None:
                peer = transport.get_extra_info("peername") or ("?", 0)
                ok = allowed(str(peer[0]), allow)
                if not ok:
                    Guarded.refused += 1
                    if Guarded.refused % 100 == 1:
                        log.warning("modbus connection refused: not in --allow-from", peer=str(peer[0]),
                                    refused=Guarded.refused)  # fmt: skip
                    transport.close()
                    return
                admit(transport)

            handler.connection_made = connection_made
            return handler

    return Guarded(device, address=(host, port))


async def serve(
    daemon: str,
    host: str,
    port: int,
    cameras: list[str],
    max_cameras: int,
    depth: int,
    misses: int,
    log: Any,
    zmq_options: Callable[[Any], None] | None = None,
    stop: asyncio.Event | None = None,
    gate: tuple[str, int, float, str] | None = None,
    ring_depth: int | None = None,
    allow_from: list[str] | None = None,
) -> None:
    """Subscribe to the daemon at ``daemon`` and serve the register map on ``host:port`` until ``stop``.

    ``gate``: (PLC host:port, coil address, pulse ms, mode) to also drive a diverter coil on the PLC. If any
    of the bridge's tasks dies, the map says fail-safe 9 (bridge fault) and the process exits 1.
    """
    from inspector.bridges.run import Subscription, watch

    n = len(cameras) or max_cameras
    state = BridgeState(
        cameras, max_cameras=n, fifo_depth=depth, heartbeat_misses=misses, ring_depth=ring_depth
    )
    state.on_failsafe = lambda on, why: log.warning(
        "fail-safe", failsafe=on, reason=why, lost=state.lost, unroutable=state.unroutable
    )
    regs = RegisterMap(state, n, depth)
    server = guarded_server(regs.simdevice(), host, port, allow_list(allow_from or []), log)
    sub = Subscription(daemon, state, zmq_options)
    stop = stop or asyncio.Event()
    log.info(
        "modbus bridge",
        daemon=daemon,
        listen=f"{host}:{port}",
        cameras=cameras,
        fifo_depth=depth,
        ring_depth=state.ring_depth,
        allow_from=allow_from or "any",
    )
    tasks = [
        asyncio.create_task(server.serve_forever(), name="modbus-server"),
        asyncio.create_task(sub.run(stop), name="subscription"),
    ]
    if gate is not None:
        writer = GateWriter(state, *gate[:3], log, mode=gate[3])
        state.on_each = lambda r, _n: writer.verdict(r)
        tasks.append(asyncio.create_task(writer.run(stop), name="gate-writer"))
        log.info("gate coil", plc=gate[0], coil=gate[1], pulse_ms=gate[2], mode=gate[3])
        if gate[3] == "reject":
            log.warning(
                "gate mode reject is not fail-closed on its own: a frame that never reached the daemon "
                "gets no pulse and its part passes; prove passes from the verdict ring, or use --gate-mode permit"
            )
    try:
        await watch(tasks, stop, state, log)
    finally:
        await server.shutdown()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sub.close()


DOC_BEGIN = "<!-- register map begin - generated by `python -m inspector.bridges.modbus` from inspector/bridges/modbus.py -->"
DOC_END = "<!-- register map end -->"


def register_tables(depth: int = 64) -> str:
    """The register map as Markdown tables for docs/plc.md (a test keeps the document in step)."""

    def rows(regs: list[Reg], base: str) -> list[str]:
        out = []
        for r in regs:
            addr = f"{base}{r.offset}" if r.words == 1 else f"{base}{r.offset}-{base}{r.offset + 1}"
            kind = "u16" if r.words == 1 else "u32 (high word first)"
            access = "read/write" if r.writable else "read"
            out.append(f"| {addr} | `{r.name}` | {kind} | {access} | {r.meaning} |")
        return out

    lines = [
        f"Status block, addresses 0-{STATUS_WORDS - 1} (unused ones read 0):",
        "",
        "| address | name | type | access | meaning |",
        "|---|---|---|---|---|",
        *rows(STATUS, ""),
        "",
        f"Camera block for camera *c* (0, 1, ... in the bridge's `--camera` order) at base B = {CAMERA_BASE} + {CAMERA_STRIDE} x c:",
        "",
        "| address | name | type | access | meaning |",
        "|---|---|---|---|---|",
        *rows(CAMERA, "B+"),
        f"| B+{ENTRY_BASE}.. | entries | {ENTRY_WORDS} words each | read | the reject FIFO: entry *n* (n = 0 .. depth-1) at B+{ENTRY_BASE}+{ENTRY_WORDS}n |",
        "",
        f"Verdict ring for camera *c* at base R = {RING_BASE} + {CAMERA_STRIDE} x c (the last `--ring-depth` verdicts, "
        f"default {depth}, PASS and reject alike):",
        "",
        "| address | name | type | access | meaning |",
        "|---|---|---|---|---|",
        *rows(RING, "R+"),
        f"| R+{ENTRY_BASE}.. | entries | {ENTRY_WORDS} words each | read | verdict *n* (n = 0 .. depth-1) at R+{ENTRY_BASE}+{ENTRY_WORDS}n |",
        "",
        f"FIFO and ring entry *n*, at E = B + {ENTRY_BASE} + {ENTRY_WORDS} x n or R + {ENTRY_BASE} + {ENTRY_WORDS} x n "
        f"(depths are powers of two up to {depth}: `--fifo-depth`, `--ring-depth`):",
        "",
        "| address | name | type | access | meaning |",
        "|---|---|---|---|---|",
        *rows(ENTRY, "E+"),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Rewrite the register map tables in docs/plc.md (``--check``: exit 1 if they are stale)."""
    import sys
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "plc.md"
    text = doc.read_text()
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    new = f"{head}{DOC_BEGIN}\n{register_tables()}{DOC_END}{tail}"
    if "--check" in sys.argv:
        return 0 if new == text else 1
    doc.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
