"""Prometheus metrics across the daemon's processes, and the HTTP endpoints.

The workers are separate processes, so prometheus-client runs in its
multiprocess mode: each process writes its samples to files under a private
directory that the supervisor creates (``PROMETHEUS_MULTIPROC_DIR`` must be set
before prometheus_client is imported, hence :func:`use_directory` and the
lazy :func:`get`). The supervisor serves ``/metrics``, and separately
``/healthz`` (liveness: the supervisor loop is running) and ``/readyz``
(readiness: engines loaded, warm, and every worker alive).

Latency buckets are in milliseconds; no label carries a per-frame value.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

MS_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000)
_metrics: SimpleNamespace | None = None


def use_directory(path: Path) -> None:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def get() -> SimpleNamespace:
    """The metric objects of this process (created on first use)."""
    global _metrics
    if _metrics is None:
        from prometheus_client import Counter, Gauge, Histogram

        _metrics = SimpleNamespace(
            frames=Counter("inspector_frames_received_total", "Frame messages received from cameras"),
            verdicts=Counter("inspector_verdicts_total", "Verdicts published, by kind", ["verdict"]),
            input_errors=Counter(
                "inspector_input_errors_total", "Frames rejected as bad input, by reason", ["reason"]
            ),
            drops=Counter(
                "inspector_frames_dropped_total", "Frames shed under overload, by reason", ["reason"]
            ),
            timeouts=Counter("inspector_timeouts_total", "Frames whose deadline passed, by where", ["where"]),
            stage_ms=Histogram(
                "inspector_stage_latency_ms",
                "Per-stage compute time per batch, ms",
                ["stage"],
                buckets=MS_BUCKETS,
            ),
            e2e_ms=Histogram(
                "inspector_end_to_end_latency_ms", "Receipt to verdict publication, ms", buckets=MS_BUCKETS
            ),
            batch=Histogram(
                "inspector_batch_size",
                "Frames per inference batch",
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            ),
            queue=Gauge(
                "inspector_queue_depth",
                "Items waiting in an internal queue",
                ["queue"],
                multiprocess_mode="livemax",
            ),
            ring_free=Gauge(
                "inspector_ring_free_slots",
                "Free slots in the shared-memory frame ring",
                multiprocess_mode="livemax",
            ),
            model=Gauge(
                "inspector_model_info",
                "The engine set in use (value 1)",
                ["model_version", "backend"],
                multiprocess_mode="livemax",
            ),
            restarts=Counter(
                "inspector_worker_restarts_total", "Worker processes restarted by the supervisor", ["role"]
            ),
            ready=Gauge(
                "inspector_ready",
                "1 when engines are loaded and warm and every worker is alive and making progress",
                multiprocess_mode="livemax",
            ),
            hung=Counter(
                "inspector_worker_hung_total",
                "Workers that stopped making progress and were killed by the supervisor",
                ["role"],
            ),
            reloads=Counter("inspector_reloads_total", "SIGHUP reloads, by outcome", ["result"]),
            auth_refused=Counter(
                "inspector_auth_refused_total",
                "Clients refused by CURVE (unknown key, no key, wrong server key), by socket and why",
                ["socket", "why"],
            ),
            camera_alarm=Gauge(
                "inspector_camera_health_alarm",
                "1 while a camera's noise mix or brightness is past the health limits (maintenance, not a verdict)",
                ["camera_id"],
                multiprocess_mode="livemax",
            ),
            archive_written=Counter("inspector_archive_written_total", "Frames stored in the reject archive"),
            archive_skipped=Counter(
                "inspector_archive_skipped_total",
                "Frames the archive did not store: behind (queue full or worker stopped), disk_floor, error",
                ["reason"],
            ),
            archive_disk_low=Gauge(
                "inspector_archive_disk_low",
                "1 while the archive stopped writing because free disk is below archive.min_free_mb",
                multiprocess_mode="livemax",
            ),
            archive_bytes=Gauge(
                "inspector_archive_bytes", "Bytes of images the archive holds", multiprocess_mode="livemax"
            ),
            service_ms=Gauge(
                "inspector_service_time_per_frame_ms",
                "Measured inference time per frame (moving average) used for admission",
                multiprocess_mode="livemax",
            ),
        )
    return _metrics


# Every label a counter can take, exported at zero from the start so a dashboard's rate() has a series.
LABELS = {
    "verdicts": ["PASS", "FAIL", "ERROR", "TIMEOUT", "DROPPED"],
    "input_errors": [
        "bad_framing",
        "header_too_large",
        "bad_header",
        "unsupported_version",
        "payload_too_large",
        "bad_shape",
        "shape_mismatch",
        "encoding_mismatch",
        "undecodable_image",
        "bad_timestamp",
        "internal_error",
        "non_finite_score",
        "lost_in_ingest",
    ],
    "drops": ["ring_full", "queue_full", "admission", "not_received"],
    "timeouts": ["stale", "queue", "predicted", "inference", "late", "publisher"],
    "restarts": ["ingest", "inference", "archive"],
    "hung": ["ingest", "inference", "publisher", "archive"],
    "archive_skipped": ["behind", "disk_floor", "error"],
    "reloads": ["ok", "refused", "failed"],
}


def prime() -> None:
    """Create every labelled counter child at zero (called once by the supervisor)."""
    m = get()
    for name, labels in LABELS.items():
        for label in labels:
            getattr(m, name).labels(label)


def render() -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


class HealthServer:
    """``/metrics``, ``/healthz``, ``/readyz`` on one port, in a daemon thread."""

    def __init__(self, host: str, port: int, live: Callable[[], bool], ready: Callable[[], bool]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, render(), "text/plain; version=0.0.4; charset=utf-8")
                elif self.path == "/healthz":
                    ok = outer.live()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"not live\n")
                elif self.path == "/readyz":
                    ok = outer.ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"try /metrics, /healthz or /readyz\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.live = live
        self.ready = ready
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="inspector-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
