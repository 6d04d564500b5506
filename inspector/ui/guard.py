"""What stands between the network and the page: connection limits, the Host allow-list, the token, CSRF.

Two layers:

- :class:`GuardedH11`, uvicorn's h11 protocol with a deadline for the request
  head. uvicorn itself times out only an idle keep-alive connection, so a
  client that opens a socket and sends half a request would hold it forever,
  and a few hundred such sockets would fill ``limit_concurrency`` (after which
  every request is a 503). Here a connection waiting for a request head is
  closed after ``header_timeout`` seconds, and at most ``max_waiting`` such
  connections are kept: the oldest waiting one is closed for each newcomer
  beyond that, so whatever a slow client does, a real browser's request (which
  sends its whole head at once) is answered.
- :class:`Guard`, an ASGI middleware run on every request before any route:
  the URL length; the ``Host`` header against the allow-list (a page on
  loopback is otherwise reachable from any web page through DNS rebinding);
  the bearer token when one is set, with failed attempts rate-limited per
  client address; and, for every request that changes something (POST), a
  CSRF token that only the page itself can read (``/api/state`` and the page's
  ``<meta>``), the ``Sec-Fetch-Site`` and ``Origin`` headers. It adds the
  security headers to every response.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import ipaddress
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar
from urllib.parse import parse_qs

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_URL = 2048
MAX_HEAD = 16_384
TOKEN_COOKIE = "inspector_token"
CSRF_HEADER = b"x-csrf-token"
CSP = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # No other site may embed the page's images or data, even as an <img>.
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
SAFE_METHODS = ("GET", "HEAD")


# -- connections ------------------------------------------------------------------------------------


class Waiting:
    """Connections waiting for a request head, oldest first (shared by one server's protocols)."""

    def __init__(self, max_waiting: int, header_timeout: float) -> None:
        self.max_waiting = max_waiting
        self.header_timeout = header_timeout
        self.conns: collections.OrderedDict[GuardedH11, None] = collections.OrderedDict()
        self.dropped = 0


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline and a cap on connections that have not sent a request head."""

    waiting: ClassVar[Waiting]

    @classmethod
    def with_limits(cls, max_waiting: int, header_timeout: float) -> type[GuardedH11]:
        """A subclass with its own limits (uvicorn takes a protocol class, not an instance)."""
        return type("GuardedH11", (cls,), {"waiting": Waiting(max_waiting, header_timeout)})

    def connection_made(self, transport: Any) -> None:
        self._deadline: Any = None
        self._seen_cycle: Any = None
        super().connection_made(transport)
        self._wait()

    def connection_lost(self, exc: Exception | None) -> None:
        self._unwait()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._seen_cycle:  # a request head arrived
            self._seen_cycle = self.cycle
            self._unwait()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._wait()  # before super(): it may start a pipelined request, which unwaits
        super().on_response_complete()

    def _wait(self) -> None:
        w = self.waiting
        w.conns[self] = None
        w.conns.move_to_end(self)
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(w.header_timeout, self._drop)
        while len(w.conns) > w.max_waiting:
            oldest = next(iter(w.conns))
            oldest._drop()

    def _unwait(self) -> None:
        self.waiting.conns.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _drop(self) -> None:
        self._unwait()
        self.waiting.dropped += 1
        if not self.transport.is_closing():
            if self.conn.our_state in (h11.IDLE, h11.DONE):
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
            self.transport.close()


# -- requests ---------------------------------------------------------------------------------------


def host_name(value: str) -> str | None:
    """The host part of a ``Host`` header (``name``, ``name:port``, ``[v6]``, ``[v6]:port``), lower case."""
    v = value.strip().lower()
    if not v or any(c in v for c in " /\\@?#"):
        return None
    if v.startswith("["):
        end = v.find("]")
        if end < 0 or (end + 1 < len(v) and v[end + 1] != ":"):
            return None
        name = v[1:end]
    else:
        name = v.rsplit(":", 1)[0] if v.count(":") == 1 else v
        if v.count(":") > 1:  # a bare IPv6 address is not a valid Host header
            return None
    return name.rstrip(".") or None


def normalise_host(name: str) -> str:
    """An allow-list entry as :func:`host_name` returns it (IPv6 without brackets, lower case)."""
    n = name.strip().lower().rstrip(".")
    if n.startswith("[") and n.endswith("]"):
        n = n[1:-1]
    try:
        return str(ipaddress.ip_address(n))
    except ValueError:
        return n


def _is_ip(name: str) -> str | None:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


class FailedTokens:
    """Failed token attempts per client address: after ``limit`` within ``window_s``, every attempt is refused."""

    def __init__(self, limit: int = 5, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self.failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _recent(self, client: str, now: float) -> collections.deque[float]:
        q = self.failures.get(client)
        if q is None:
            return collections.deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self.failures[client]
        return q

    def retry_after(self, client: str, now: float) -> int | None:
        """Seconds until ``client`` may try a token again, or None when it may now."""
        q = self._recent(client, now)
        if len(q) < self.limit:
            return None
        return max(1, math.ceil(q[-self.limit] + self.window_s - now))

    def fail(self, client: str, now: float) -> None:
        q = self.failures.setdefault(client, collections.deque())
        self.failures.move_to_end(client)
        q.append(now)
        while len(q) > self.limit:
            q.popleft()
        while len(self.failures) > self.max_clients:  # bounded: the least recently failing forgotten
            self.failures.popitem(last=False)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def same_token(got: str, want: str) -> bool:
    """Constant-time comparison (of digests, so the time does not depend on the length either)."""
    return hmac.compare_digest(_digest(got), _digest(want))


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k and k not in out:
            out[k] = v
    return out


async def reply(
    send: Send,
    code: int,
    message: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
) -> None:
    data = body if body is not None else json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", b"application/json" if body is None else b"text/plain; charset=utf-8"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class Guard:
    """The checks every request passes before a route sees it (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str],
        token: str | None,
        csrf: str,
        failures: FailedTokens | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.allowed = {normalise_host(h) for h in allowed_hosts}
        self.token = token
        self.csrf = csrf
        self.failures = failures or FailedTokens()
        self.clock = clock

    def host_allowed(self, scope: Scope, host: str) -> bool:
        name = host_name(host)
        if name is None:
            return False
        if name in self.allowed:
            return True
        # The address this connection arrived on, written as an IP literal, is the page's own origin
        # (DNS rebinding needs a name): so a page bound to 0.0.0.0 answers http://<any of its IPs>:PORT/.
        ip, local = _is_ip(name), (scope.get("server") or (None,))[0]
        return ip is not None and local is not None and ip == _is_ip(str(local))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        raw = scope.get("headers", [])
        headers = {k.lower(): v for k, v in raw}
        if len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) > MAX_URL:
            return await reply(secured, 414, "URL too long")
        # h11 caps a head that arrives in pieces (uvicorn's h11_max_incomplete_event_size); this, one that
        # arrives whole.
        if sum(len(k) + len(v) + 4 for k, v in raw) > MAX_HEAD:
            return await reply(secured, 431, f"request headers larger than {MAX_HEAD} bytes")
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.host_allowed(scope, host):
            return await reply(
                secured,
                400,
                f"Host {host[:80]!r} is not one this page answers to; add it with --allowed-host",
            )
        client = (scope.get("client") or ("?",))[0]
        if self.token is not None:
            denied = await self._authorise(scope, headers, client, secured)
            if denied:
                return
        if scope["method"] not in SAFE_METHODS:
            why = self._csrf_refused(headers)
            if why:
                return await reply(secured, 403, why)
        await self.app(scope, receive, secured)

    async def _authorise(self, scope: Scope, headers: dict[bytes, bytes], client: str, send: Send) -> bool:
        """True when the request was answered here (refused, or the ``/?token=`` login)."""
        assert self.token is not None
        login = None
        if scope["path"] == "/" and scope["method"] == "GET":
            try:
                q = parse_qs(scope.get("query_string", b"").decode("latin-1"), max_num_fields=8)
            except ValueError:
                q = {}
            login = q.get("token", [None])[0]
        got = login
        if got is None:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if auth.startswith("Bearer "):
                got = auth[7:]
            else:
                got = _cookies(headers.get(b"cookie", b"").decode("latin-1")).get(TOKEN_COOKIE)
        if not got:
            await reply(
                send, 401, "a bearer token is required (Authorization: Bearer ..., or open /?token=...)"
            )
            return True
        now = self.clock()
        wait = self.failures.retry_after(client, now)
        if wait is None and not same_token(got, self.token):
            self.failures.fail(client, now)
            wait = self.failures.retry_after(client, now)
            if wait is None:
                await reply(send, 401, "wrong token")
                return True
        if wait is not None:
            await reply(
                send,
                429,
                f"too many wrong tokens from {client}: try again in {wait} s",
                [(b"retry-after", str(wait).encode())],
            )
            return True
        if login is not None:
            cookie = f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [
                        (b"location", b"/"),
                        (b"set-cookie", cookie.encode()),
                        (b"content-length", b"0"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return True
        return False

    def _csrf_refused(self, headers: dict[bytes, bytes]) -> str | None:
        site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
        if site and site not in ("same-origin", "none"):
            return f"refused: a {site} request (Sec-Fetch-Site)"
        origin = headers.get(b"origin")
        if origin is not None:
            o = origin.decode("latin-1")
            want = headers.get(b"host", b"").decode("latin-1")
            if o.partition("://")[2].lower() != want.lower():
                return f"refused: Origin {o[:80]!r} is not this page"
        got = headers.get(CSRF_HEADER, b"").decode("latin-1")
        if not got or not same_token(got, self.csrf):
            return "refused: a missing or wrong CSRF token (X-CSRF-Token, from the page)"
        return None
