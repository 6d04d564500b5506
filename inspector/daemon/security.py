"""CURVE on the daemon's ZeroMQ sockets: encryption, and an allow-list of client keys (ZAP).

With ``security.curve = true`` the ingest and publish sockets are CURVE
servers with the daemon's key pair (``security.server_key``, the secret key
file ``inspector keys`` writes), and a ZAP handler admits only clients whose
public key file lies in ``security.clients``. A camera or bridge with another
key, or with none, never completes the handshake: its frames are never read,
let alone inspected, and it receives no verdicts. Each refusal is counted in
``inspector_auth_refused_total{socket,why}`` and logged once per unknown key.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import zmq

HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def generate(folder: Path, name: str) -> tuple[Path, Path]:
    """A key pair as ``name.key`` (public: give it to the other side) and ``name.key_secret`` (keep it)."""
    import zmq.auth

    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def client(sock: zmq.Socket[Any], server_public: Path, own_secret: Path) -> None:
    """Make ``sock`` a CURVE client of a daemon (call before connect)."""
    import zmq.auth

    server_key, _ = zmq.auth.load_certificate(str(server_public))
    public, secret = zmq.auth.load_certificate(str(own_secret))
    if secret is None:
        raise ValueError(f"{own_secret} holds no secret key (give the .key_secret file)")
    sock.curve_serverkey = server_key
    sock.curve_publickey = public
    sock.curve_secretkey = secret


class CurveGuard:
    """One per daemon process that binds a socket: the ZAP allow-list and the refusal counts."""

    def __init__(
        self, ctx: zmq.Context[Any], server_key: Path, clients: Path, log: Any, counter: Any
    ) -> None:
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        self.public, self.secret = zmq.auth.load_certificate(str(server_key))
        if self.secret is None:
            raise ValueError(f"security.server_key {server_key} holds no secret key")
        self.allowed = set(zmq.auth.load_certificates(str(clients)))
        if not self.allowed:
            raise ValueError(f"security.clients {clients} holds no public key files (*.key)")
        self.log, self.counter = log, counter
        self.refused: set[bytes] = set()
        self.lock = threading.Lock()
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve_callback("*", credentials_provider=self)
        self.monitors: list[tuple[str, zmq.Socket[Any]]] = []

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        self.counter.labels("zap", "unknown_key").inc()
        with self.lock:
            first = key not in self.refused
            self.refused.add(key)
        if first:
            self.log.warning(
                "refused a client with an unknown CURVE key", client_key=key.decode(errors="replace")
            )
        return False

    def serve(self, sock: zmq.Socket[Any], name: str) -> None:
        """Make ``sock`` a CURVE server (before bind) and watch its failed handshakes."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = b"*"
        self.monitors.append((name, sock.get_monitor_socket(HANDSHAKE_FAILURES)))

    def poll(self) -> None:
        """Count failed handshakes (no key, wrong server key, refused key) seen on the watched sockets."""
        from zmq.utils.monitor import recv_monitor_message

        for name, mon in self.monitors:
            while True:
                try:
                    ev = recv_monitor_message(mon, zmq.NOBLOCK)
                except zmq.Again:
                    break
                if ev["event"] != zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # those were counted by the callback
                    self.counter.labels(name, "handshake").inc()

    def close(self) -> None:
        for _, mon in self.monitors:
            mon.close(0)
        self.auth.stop()
