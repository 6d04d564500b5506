"""``inspector ui``: the operator page, a process of its own beside the daemon.

It subscribes to the daemon's verdicts and heartbeats like any PLC bridge and
reads the reject archive read-only, so a page that hangs or crashes can never
touch a verdict. Everything it serves comes from this package (no CDN, no web
font: a plant network has no internet). Loopback by default; bound wider it
requires a bearer token (``Authorization: Bearer ...``, or open
``/?token=...`` once, which sets a cookie).

Endpoints: ``/`` (the page), ``/static/<asset>``, ``/api/state`` (counts,
rates, heartbeat, camera health, reject rate per minute over the last hour),
``/api/rejects?limit=&camera=`` (latest archived rejects), and
``/api/image/<id>/<received|inspected|evidence>`` (PNG; evidence is computed on
first request with the engine set). Anything else, a malformed parameter or a
path outside the archive is a 4xx.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hmac
import ipaddress
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import zmq

from inspector.archive.store import VERDICTS

ASSETS = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "index.html": "text/html",
    "icon.svg": "image/svg+xml",
}
MAX_URL = 2048
CSP = "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"


class LiveState:
    """What the subscriber thread has heard since the page started (guarded by a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.time()
        self.kinds: collections.Counter[str] = collections.Counter()
        self.cameras: dict[str, collections.Counter[str]] = {}
        self.minutes: collections.OrderedDict[int, list[int]] = (
            collections.OrderedDict()
        )  # minute -> [all, rejects]
        self.recent: collections.deque[float] = collections.deque()
        self.heartbeat: dict[str, Any] | None = None
        self.heartbeat_at = 0.0
        self.last_seq = 0

    def verdict(self, v: dict[str, Any], now: float) -> None:
        kind = str(v.get("verdict"))
        with self.lock:
            self.kinds[kind] += 1
            self.cameras.setdefault(str(v.get("camera_id")), collections.Counter())[kind] += 1
            minute = int(now // 60)
            b = self.minutes.setdefault(minute, [0, 0])
            b[0] += 1
            b[1] += int(bool(v.get("reject")))
            while self.minutes and next(iter(self.minutes)) < minute - 60:
                self.minutes.popitem(last=False)
            self.recent.append(now)
            self.last_seq = max(self.last_seq, int(v.get("seq") or 0))

    def beat(self, h: dict[str, Any], now: float) -> None:
        with self.lock:
            self.heartbeat, self.heartbeat_at = h, now

    def snapshot(self, now: float) -> dict[str, Any]:
        with self.lock:
            while self.recent and self.recent[0] < now - 10:
                self.recent.popleft()
            hb = self.heartbeat or {}
            interval = float(hb.get("interval_s") or 1.0)
            age = now - self.heartbeat_at if self.heartbeat else None
            minute = int(now // 60)
            return {
                "since": self.started,
                "now": now,
                "counts": {k: self.kinds.get(k, 0) for k in VERDICTS},
                "total": sum(self.kinds.values()),
                "rate_per_s": round(len(self.recent) / 10.0, 2),
                "cameras": {c: {k: n.get(k, 0) for k in VERDICTS} for c, n in sorted(self.cameras.items())},
                "camera_health": hb.get("cameras", {}),
                "daemon": {
                    "heard": self.heartbeat is not None,
                    "ready": bool(hb.get("ready")) and age is not None and age < 3 * interval,
                    "heartbeat_age_s": None if age is None else round(age, 2),
                    "daemon_id": hb.get("daemon_id"),
                    "model_version": hb.get("model_version"),
                    "uptime_s": hb.get("uptime_s"),
                    "last_seq": hb.get("last_seq"),
                },
                "last_seq": self.last_seq,
                "reject_rate": [
                    {"minute_ago": minute - m, "frames": b[0], "rejects": b[1]}
                    for m, b in self.minutes.items()
                    if minute - m <= 60
                ],
            }


def subscribe(
    endpoint: str, state: LiveState, stop: threading.Event, curve: tuple[Path, Path] | None
) -> None:
    """The subscriber thread: owns its socket; malformed messages are skipped."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    if curve is not None:
        from inspector.daemon.security import client

        client(sock, *curve)
    for topic in (b"verdict", b"heartbeat"):
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(endpoint)
    try:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    body = json.loads(parts[1])
                    if not isinstance(body, dict):
                        continue
                except (IndexError, ValueError):
                    continue
                if parts[0] == b"verdict":
                    state.verdict(body, time.time())
                elif parts[0] == b"heartbeat":
                    state.beat(body, time.time())
    finally:
        sock.close(0)
        ctx.term()


class UiServer:
    def __init__(
        self,
        host: str,
        port: int,
        publish: str,
        archive: Path | None,
        engines: Path | None,
        token: str | None,
        curve: tuple[Path, Path] | None = None,
    ) -> None:
        if token is None and not _loopback(host):
            raise ValueError(
                f"refusing to serve the operator page on {host} without a token: give --token (or "
                "INSPECTOR_UI_TOKEN), or bind 127.0.0.1"
            )
        self.state = LiveState()
        self.archive_dir = archive
        self.engines = engines
        self.token = token
        self._archive: Any = None
        self.evidence_lock = threading.Lock()
        self.stop_event = threading.Event()
        self.sub = threading.Thread(
            target=subscribe, args=(publish, self.state, self.stop_event, curve), name="ui-sub", daemon=True
        )
        handler = type("Handler", (_Handler,), {"ui": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}/"

    def archive(self) -> Any:
        """The archive, opened read-only on first need (it may not exist until the first reject)."""
        if self._archive is None and self.archive_dir is not None:
            from inspector.archive.store import Archive

            try:
                self._archive = Archive(self.archive_dir, readonly=True)
            except FileNotFoundError:
                return None
        return self._archive

    def serve_forever(self) -> None:
        self.sub.start()
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self.stop_event.set()
            self.httpd.server_close()

    def shutdown(self) -> None:
        self.httpd.shutdown()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _int_param(q: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    vals = q.get(name)
    if not vals:
        return default
    if len(vals) > 1 or not re.fullmatch(r"\d{1,6}", vals[0]) or not lo <= int(vals[0]) <= hi:
        raise HttpError(400, f"{name} must be one integer in [{lo}, {hi}]")
    return int(vals[0])


class _Handler(BaseHTTPRequestHandler):
    ui: UiServer
    server_version = "line-inspector-ui"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # access logs would flood the journal at a 1 s poll

    def do_GET(self) -> None:
        try:
            if len(self.path) > MAX_URL:
                raise HttpError(414, "URL too long")
            url = urlsplit(self.path)
            q = parse_qs(url.query, keep_blank_values=True, max_num_fields=8, strict_parsing=False)
            if self._token_login(url.path, q):
                return
            self._authorise()
            self._route(url.path, q)
        except HttpError as exc:
            self._send(exc.code, json.dumps({"error": str(exc)}).encode(), "application/json")
        except ValueError as exc:  # e.g. too many query fields
            self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _token_login(self, path: str, q: dict[str, list[str]]) -> bool:
        tok = self.ui.token
        if tok is None or path != "/" or "token" not in q:
            return False
        if not hmac.compare_digest(q["token"][0].encode(), tok.encode()):
            raise HttpError(401, "wrong token")
        self.send_response(303)
        self.send_header("Location", "/")
        self.send_header("Set-Cookie", f"inspector_token={tok}; HttpOnly; SameSite=Strict; Path=/")
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def _authorise(self) -> None:
        tok = self.ui.token
        if tok is None:
            return
        got = ""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            got = auth[7:]
        else:
            for part in self.headers.get("Cookie", "").split(";"):
                k, _, v = part.strip().partition("=")
                if k == "inspector_token":
                    got = v
        if not hmac.compare_digest(got.encode(), tok.encode()):
            raise HttpError(
                401, "a bearer token is required (Authorization: Bearer ..., or open /?token=...)"
            )

    def _route(self, path: str, q: dict[str, list[str]]) -> None:
        if path in ("/", "/index.html"):
            return self._asset("index.html")
        if path == "/favicon.ico":
            return self._asset("icon.svg")
        m = re.fullmatch(r"/static/([a-z]+\.(?:js|css|svg))", path)
        if m:
            return self._asset(m.group(1))
        if path == "/api/state":
            return self._json(self.ui.state.snapshot(time.time()))
        if path == "/api/rejects":
            return self._rejects(q)
        m = re.fullmatch(r"/api/image/(\d{1,12})/(received|inspected|evidence)", path)
        if m:
            return self._image(int(m.group(1)), m.group(2))
        raise HttpError(404, "not found")

    def _asset(self, name: str) -> None:
        if name not in ASSETS:
            raise HttpError(404, "not found")
        data = resources.files("inspector.ui").joinpath("static", name).read_bytes()
        self._send(200, data, ASSETS[name] + "; charset=utf-8")

    def _json(self, obj: Any) -> None:
        self._send(200, json.dumps(obj).encode(), "application/json")

    def _rejects(self, q: dict[str, list[str]]) -> None:
        limit = _int_param(q, "limit", 12, 1, 100)
        cams = q.get("camera", [])
        if len(cams) > 1 or (cams and not re.fullmatch(r"[\w.:-]{1,64}", cams[0])):
            raise HttpError(400, "camera must be one id of at most 64 characters [A-Za-z0-9_.:-]")
        store = self.ui.archive()
        if store is None:
            return self._json({"archive": False, "entries": []})
        from inspector.archive.store import Filters

        f = Filters(camera=cams[0] if cams else None, verdicts=("FAIL", "ERROR", "TIMEOUT"), limit=limit)
        out = [store.summary(e) for e in store.query(f)]
        self._json({"archive": True, "entries": out})

    def _image(self, entry_id: int, kind: str) -> None:
        store = self.ui.archive()
        entry = store.get(entry_id) if store is not None else None
        if entry is None:
            raise HttpError(404, "no such entry")
        try:
            path = store.path(entry, kind)
        except ValueError as exc:
            raise HttpError(403, str(exc)) from None
        if kind == "evidence" and path is not None and not path.is_file():
            self._make_evidence(store, entry, path)
        if path is None or not path.is_file():
            raise HttpError(404, f"no {kind} image for entry {entry_id}")
        self._send(200, path.read_bytes(), "image/png", cache=True)

    def _make_evidence(self, store: Any, entry: dict[str, Any], out: Path) -> None:
        if self.ui.engines is None:
            raise HttpError(404, "evidence needs the engine set (--engines)")
        from inspector.archive.evidence import evidence_png

        src = store.path(entry, "inspected") or store.path(entry, "received")
        with self.ui.evidence_lock:  # one at a time: it is a few hundred inferences
            if not out.is_file():
                evidence_png(self.ui.engines, src, out)

    def _send(self, code: int, data: bytes, ctype: str, cache: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        self.wfile.write(data)


def add_parser(sub: Any, config_args: Any) -> None:
    p = sub.add_parser(
        "ui",
        help="the operator page (live counts, rejects gallery, health) on http://127.0.0.1:8090/",
        description="Serves the operator page: live counts and rates per verdict and camera, the latest rejects "
        "(received and denoised side by side, score, threshold, noise type, reason; a click shows where the "
        "classifier looked), heartbeat and camera health, and the reject rate over the last hour. It listens "
        "to the daemon's verdicts (publish.endpoint) and reads the archive (archive.dir) read-only.",
        epilog="Bound to anything but loopback it needs a token: --token or INSPECTOR_UI_TOKEN; open "
        "http://HOST:PORT/?token=TOKEN once in the browser.",
    )
    config_args(p)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8090, help="port, 0 picks a free one (default: %(default)s)")
    p.add_argument("--token", default=None, help="bearer token (default: $INSPECTOR_UI_TOKEN)")
    p.add_argument("--archive", type=Path, default=None, help="archive folder (default: archive.dir)")
    p.add_argument(
        "--publish", default=None, help="the daemon's verdict endpoint (default: publish.endpoint)"
    )
    p.add_argument(
        "--engines", type=Path, default=None, help="engine set for evidence maps (default: engines.path)"
    )
    p.add_argument("--curve-server-key", type=Path, default=None, help="CURVE: the daemon's public key file")
    p.add_argument("--curve-key", type=Path, default=None, help="CURVE: this client's secret key file")


def run(a: argparse.Namespace) -> int:
    import os
    import signal

    from inspector.config import ConfigError, load_settings

    try:
        s = load_settings(a.config, a.overrides)
        if (a.curve_server_key is None) != (a.curve_key is None):
            raise ValueError("give both --curve-server-key and --curve-key, or neither")
        ui = UiServer(
            a.host,
            a.port,
            a.publish or s.publish.endpoint,
            a.archive or s.archive.folder(),
            a.engines or s.engines.path,
            a.token or os.environ.get("INSPECTOR_UI_TOKEN") or None,
            None if a.curve_key is None else (a.curve_server_key, a.curve_key),
        )
    except (ConfigError, ValueError, OSError) as exc:
        print(f"inspector ui: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=ui.shutdown, daemon=True).start())
    print(f"operator page: {ui.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        ui.serve_forever()
    return 0
