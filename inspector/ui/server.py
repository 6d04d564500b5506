"""``inspector ui``: the operator page, a process of its own beside the daemon.

It subscribes to the daemon's verdicts and heartbeats like any PLC bridge and
reads the reject archive read-only, so a page that hangs or crashes can never
touch a verdict. Everything it serves comes from this package (no CDN, no web
font: a plant network has no internet). It runs on Starlette under uvicorn
(h11, no websockets), behind :mod:`inspector.ui.guard`:

- a ``Host`` allow-list on every request (``--allowed-host``; loopback names,
  the bind address and the IP a connection arrived on are always allowed);
- bound wider than loopback, a bearer token (``--token``/``INSPECTOR_UI_TOKEN``;
  ``Authorization: Bearer ...`` or ``/?token=...`` once, which sets a cookie),
  compared in constant time, with failed attempts limited per client address
  (5 a minute, then 429 with ``Retry-After``);
- a CSRF token on every POST (evidence, review marks, export);
- limits: ``timeout_keep_alive`` 5 s, a 10 s deadline for a request head and at
  most 64 connections waiting for one (the oldest is closed first), request
  heads of at most 16 kB, ``limit_concurrency`` 256, JSON bodies of at
  most 16 kB within 10 s.

Review marks live in ``reviews.sqlite`` in ``--state-dir`` (default: the folder
``operator-page`` beside the archive folder, when it can be written), never in
the archive. Routes: :mod:`inspector.ui.app`; what it hears: :mod:`inspector.ui.live`.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import secrets
import signal
import socket
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

import uvicorn

from inspector.ui.app import Page, build
from inspector.ui.guard import MAX_HEAD, FailedTokens, GuardedH11
from inspector.ui.live import MAX_CAMERAS, LiveState, subscribe
from inspector.ui.reviews import Reviews

STATE_DIR_NAME = "operator-page"
KEEP_ALIVE_S = 5
HEADER_TIMEOUT_S = 10.0
MAX_WAITING = 64
LIMIT_CONCURRENCY = 256
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def default_state_dir(archive: Path | None) -> Path | None:
    """``operator-page`` beside the archive folder (``$STATE_DIRECTORY/operator-page`` under systemd)."""
    return None if archive is None else archive.resolve().parent / STATE_DIR_NAME


class UiServer:
    """The page's process: the subscriber thread and the HTTP server, started by :meth:`serve_forever`."""

    def __init__(
        self,
        host: str,
        port: int,
        publish: str,
        archive: Path | None,
        engines: Path | None,
        token: str | None,
        curve: tuple[Path, Path] | None = None,
        allowed_hosts: list[str] | None = None,
        state_dir: Path | None = None,
        state_dir_required: bool = False,
    ) -> None:
        if token is None and not _loopback(host):
            raise ValueError(
                f"refusing to serve the operator page on {host} without a token: give --token (or "
                "INSPECTOR_UI_TOKEN), or bind 127.0.0.1"
            )
        self.notes: list[str] = []
        self.reviews: Reviews | None = None
        if state_dir is not None:
            try:
                self.reviews = Reviews(state_dir)
            except (OSError, sqlite3.Error) as exc:
                if state_dir_required:
                    raise ValueError(
                        f"--state-dir {state_dir}: cannot keep review marks there: {exc}"
                    ) from None
                self.notes.append(f"review marks off: cannot write {state_dir} ({exc}); give --state-dir")
        else:
            self.notes.append("review marks off: no archive folder and no --state-dir")
        self.state = LiveState(MAX_CAMERAS)
        self.stop_event = threading.Event()
        self.sub = threading.Thread(
            target=subscribe, args=(publish, self.state, self.stop_event, curve), name="ui-sub", daemon=True
        )
        self.page = Page(self.state, archive, engines, self.reviews, secrets.token_urlsafe(32))
        allowed = [*LOOPBACK_NAMES, *(allowed_hosts or [])]
        if not _wildcard(host):
            allowed.append(host)
        self.allowed_hosts = allowed
        app = build(self.page, allowed_hosts=allowed, token=token, failures=FailedTokens(5, 60.0))
        # Our own socket, bound and listening before the URL is printed: port 0 resolves here, and a
        # client that connects as soon as it reads the URL waits in the backlog instead of being refused.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
            self.sock.listen(2048)
        except OSError:
            self.sock.close()
            raise
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{self.port}/"
        self.config = uvicorn.Config(
            app,
            http=GuardedH11.with_limits(MAX_WAITING, HEADER_TIMEOUT_S),
            ws="none",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # the client address is the socket's: rate limits must not trust a header
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE_S,
            limit_concurrency=LIMIT_CONCURRENCY,
            h11_max_incomplete_event_size=MAX_HEAD,
            timeout_graceful_shutdown=3,
        )
        self.server = uvicorn.Server(self.config)

    def serve_forever(self) -> None:
        self.sub.start()
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.stop_event.set()
            self.sub.join(5)
            self.sock.close()
            if self.reviews is not None:
                self.reviews.close()

    def shutdown(self) -> None:
        self.server.should_exit = True


def add_parser(sub: Any, config_args: Any) -> None:
    p = sub.add_parser(
        "ui",
        help="the operator page (shift totals, rejects and errors, archive, review marks) on http://127.0.0.1:8090/",
        description="Serves the operator page: the shift's totals from the daemon's own counters, rates per verdict "
        "and camera, the latest defect rejects and, apart from them, the latest errors (received and denoised "
        "side by side, score, threshold, noise type, reason; where the classifier looked on request), the "
        "archive by camera, verdict, time and review mark with paging and export as a zip, review marks with "
        "who and when, heartbeat and camera health, and the reject rate over the last hour. It listens to the "
        "daemon's verdicts (publish.endpoint) and reads the archive (archive.dir) read-only. See "
        "docs/operator-page.md.",
        epilog="Bound to anything but loopback it needs a token: --token or INSPECTOR_UI_TOKEN; open "
        "http://HOST:PORT/?token=TOKEN once in the browser. Names the page is reached by (other than loopback "
        "and an IP address of this machine) must be allowed: --allowed-host line3-inspect.plant.example",
    )
    config_args(p)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8090, help="port, 0 picks a free one (default: %(default)s)")
    p.add_argument("--token", default=None, help="bearer token (default: $INSPECTOR_UI_TOKEN)")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name (or address) the page may be reached by, checked against every request's Host "
        "header; repeatable. Always allowed: localhost, 127.0.0.1, ::1, the --host address, and the IP "
        "address a connection arrived on",
    )
    p.add_argument("--archive", type=Path, default=None, help="archive folder (default: archive.dir)")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"the page's own folder, for reviews.sqlite (default: {STATE_DIR_NAME}/ beside the archive folder, "
        "when it can be written; without either, review marks are off)",
    )
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

    from inspector.config import ConfigError, load_settings

    try:
        s = load_settings(a.config, a.overrides)
        if (a.curve_server_key is None) != (a.curve_key is None):
            raise ValueError("give both --curve-server-key and --curve-key, or neither")
        archive = a.archive or s.archive.folder()
        ui = UiServer(
            a.host,
            a.port,
            a.publish or s.publish.endpoint,
            archive,
            a.engines or s.engines.path,
            a.token or os.environ.get("INSPECTOR_UI_TOKEN") or None,
            None if a.curve_key is None else (a.curve_server_key, a.curve_key),
            allowed_hosts=a.allowed_host,
            state_dir=a.state_dir or default_state_dir(archive),
            state_dir_required=a.state_dir is not None,
        )
    except (ConfigError, ValueError, OSError) as exc:
        print(f"inspector ui: {exc}", file=sys.stderr)
        return 2
    # uvicorn takes SIGINT/SIGTERM while it serves and re-raises them afterwards: ours ends it quietly.
    signal.signal(signal.SIGTERM, lambda *_: ui.shutdown())
    print(f"operator page: {ui.url}", flush=True)
    for note in ui.notes:
        print(f"inspector ui: {note}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        ui.serve_forever()
    return 0
