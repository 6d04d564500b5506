"""Typed configuration: defaults < TOML file < environment (``INSPECTOR_...``, nested with ``__``) < command line.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key is
an error naming its path (``inspector check-config`` prints them all) rather
than a silently ignored setting.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG = Path("config/inspector.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestConfig(_Section):
    endpoint: str = Field(
        default="tcp://127.0.0.1:5555", description="where cameras send frames (loopback by default)"
    )
    socket: Literal["pull", "sub"] = Field(
        default="pull", description="pull: cameras PUSH (back-pressure, no silent loss); sub: cameras PUB"
    )
    bind: bool = Field(default=True, description="bind the endpoint (true) or connect to it (false)")
    rcvhwm: int = Field(default=1000, ge=1, description="ZeroMQ receive high-water mark, in messages")
    max_payload_bytes: int = Field(
        default=4 << 20, ge=1024, description="larger payloads get an ERROR verdict (payload_too_large)"
    )
    min_side: int = Field(default=32, ge=8, description="smallest accepted image side, pixels")
    max_side: int = Field(default=4096, ge=32, description="largest accepted image side, pixels")
    max_age_ms: float | None = Field(
        default=None,
        gt=0,
        description="TIMEOUT a frame older than this by its camera ts_ns (wall clocks, e.g. PTP); "
        "unset = off. Catches frames that waited in a socket or across a restart",
    )
    clock_skew_ms: float = Field(
        default=250.0,
        ge=0,
        description="camera-vs-host clock difference tolerated, either way, where ts_ns is used (deadline_from "
        "= capture, or max_age_ms); a ts_ns further in the future is an ERROR (bad_timestamp)",
    )
    deadline_from: Literal["capture", "receipt"] = Field(
        default="capture",
        description="capture: a frame's batching.deadline_ms counts from its camera ts_ns, so a frame that "
        "waited in a socket queue or across an ingest restart gets no fresh deadline (needs camera and host "
        "clocks in step within clock_skew_ms: PTP or NTP); receipt: from when ingest reads it (free clocks)",
    )


class PublishConfig(_Section):
    endpoint: str = Field(
        default="tcp://127.0.0.1:5556",
        description="where bridges subscribe to verdicts (loopback by default)",
    )
    bind: bool = Field(default=True, description="bind the endpoint (true) or connect to it (false)")
    sndhwm: int = Field(
        default=100_000,
        ge=1,
        description="PUB high-water mark; ZeroMQ PUB drops silently past it, so keep it large",
    )
    heartbeat_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="heartbeat period; bridges fail safe when it goes quiet"
    )
    linger_ms: int = Field(
        default=1000, ge=0, description="how long close() may flush already-decided verdicts at shutdown"
    )


class BatchingConfig(_Section):
    max_batch: int = Field(default=8, ge=1, le=256, description="flush a batch at this many frames")
    max_delay_ms: float = Field(
        default=10.0, ge=0, description="flush when the oldest frame has waited this long"
    )
    deadline_ms: float = Field(
        default=2000.0,
        gt=0,
        description="a frame without a verdict this long after capture (its ts_ns, plus ingest.clock_skew_ms; "
        "deadline_from = receipt: after ingest reads it) gets TIMEOUT",
    )
    admission: bool = Field(
        default=True,
        description="shed a frame on arrival (DROPPED) when the queue ahead of it, at the measured "
        "service time, would not let it finish before its deadline",
    )
    admission_margin: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="admit while the expected finish is within this share of the deadline",
    )
    queue_size: int = Field(
        default=64,
        ge=1,
        description="bound of the ingest -> inference queue; when full, new frames are DROPPED",
    )


class RingConfig(_Section):
    slots: int = Field(
        default=128,
        ge=2,
        description="frames in the shared-memory ring; when none is free, new frames are DROPPED",
    )


class EnginesConfig(_Section):
    path: Path = Field(default=Path("engines/default"), description="engine set folder (with manifest.json)")
    backend: str = Field(
        default="onnxruntime",
        description="engine backend: onnxruntime, openvino (CPU: bf16 / int8 kernels), tensorrt, or triton (a "
        "Triton Inference Server shared by many daemons: [triton]; docs/scale-out.md) "
        "(inspector.backends.BACKENDS; docs/backends.md)",
    )
    precision: Literal["auto", "f32", "bf16", "int8"] = Field(
        default="auto",
        description="openvino backend: f32, bf16 (falls back to f32 on a CPU without bf16), int8 (an INT8 "
        "set's Q/DQ files: engines.path = an INT8 set) or auto (int8 for an INT8 set, else bf16 where the "
        "CPU has it, else f32)",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="openvino backend: compiled-model cache, so a restart does not recompile; unset: "
        "$CACHE_DIRECTORY/openvino under systemd, else ~/.cache/line-inspector/openvino",
    )
    static_shapes: bool = Field(
        default=True,
        description="openvino backend: also compile one static-shape model per batch size 1..batching.max_batch "
        "(at most 8): the pipeline 3-7% faster on partial batches, at ~350 MB more memory; false: one dynamic model",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime / OpenVINO threads per engine; 0 = one per core"
    )
    threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="one defect threshold for every frame, replacing the manifest's calibrated ones (one per noise type)",
    )
    warmup_batches: int = Field(default=2, ge=0, description="batches run at start-up before READY")
    cuda_streams: bool = Field(
        default=True,
        description="tensorrt backend: run the stages as one CUDA-stream schedule (copy and compute streams, "
        "events between stages) instead of one synchronous call per stage",
    )


class TritonConfig(_Section):
    url: str = Field(
        default="127.0.0.1:8001",
        description="triton backend: the Triton server's gRPC address (host:port)",
    )
    model_prefix: str = Field(
        default="",
        description="triton backend: model names are <model_prefix><stage> (as written by inspector triton-repo --prefix)",
    )
    model_version: str = Field(
        default="", description="triton backend: model version; empty: the server's latest"
    )
    timeout_ms: float = Field(
        default=1000.0,
        gt=0,
        description="triton backend: a request without an answer this long is an error: its frames get ERROR and "
        "the daemon turns not ready until the server answers again. A batch's requests together get at most 40% "
        "of supervisor.hang_timeout_s",
    )
    connect_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="triton backend: how long a start waits for the server's models; past it the daemon starts "
        "not ready (every frame ERROR) and becomes ready when the server answers",
    )
    shared_memory: Literal["on", "off"] = Field(
        default="off",
        description="triton backend: frames and outputs through system shared memory registered with the server "
        "(it must run on this host and share its /dev/shm; refused registration falls back to gRPC). Off by "
        "default: what it saved on this project's host was within the spread of the gRPC messages (docs/scale-out.md)",
    )
    ssl: bool = Field(default=False, description="triton backend: gRPC over TLS")
    root_certificates: str | None = Field(
        default=None, description="triton backend: CA bundle (PEM) for TLS; unset: the system's"
    )
    headers: list[str] = Field(
        default_factory=list,
        description='triton backend: extra request headers, "name: value" each (e.g. an authorization header '
        "an authenticating proxy in front of Triton checks)",
    )


class SupervisorConfig(_Section):
    max_restarts: int = Field(
        default=5, ge=0, description="worker restarts allowed per window before the daemon gives up"
    )
    restart_window_s: float = Field(default=60.0, gt=0, description="the window for max_restarts")
    drain_timeout_s: float = Field(
        default=10.0, gt=0, description="on SIGTERM, how long workers may take to drain"
    )
    ready_timeout_s: float = Field(
        default=120.0, gt=0, description="how long engines may take to load and warm up"
    )
    hang_timeout_s: float = Field(
        default=4.0,
        gt=0,
        description="a worker whose loop has not turned for this long is marked not ready, killed and restarted",
    )


class SecurityConfig(_Section):
    curve: bool = Field(
        default=False,
        description="CURVE on the ingest and publish sockets: encrypted, and only clients whose public key is in security.clients",
    )
    server_key: Path | None = Field(
        default=None,
        description="with curve: the daemon's secret key file (inspector keys writes <name>.key_secret)",
    )
    clients: Path | None = Field(
        default=None,
        description="with curve: folder of allowed client public key files (<name>.key): cameras and bridges",
    )

    @model_validator(mode="after")
    def _both(self) -> SecurityConfig:
        if self.curve and (self.server_key is None or self.clients is None):
            raise ValueError("security.curve needs security.server_key and security.clients")
        return self


class HealthConfig(_Section):
    window: int = Field(
        default=500, ge=10, description="camera health: frames per camera in the rolling window"
    )
    min_frames: int = Field(
        default=100, ge=1, description="camera health: judge a camera once its window holds this many"
    )
    max_noisy_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="alarm when more frames than this share are called noisy (any type)",
    )
    max_type_share: float = Field(
        default=0.1, ge=0, le=1, description="alarm when one noise type's share exceeds this"
    )
    brightness_min: float = Field(default=30.0, ge=0, le=255, description="alarm below this mean brightness")
    brightness_max: float = Field(default=225.0, ge=0, le=255, description="alarm above this mean brightness")
    contrast_min: float = Field(
        default=8.0, ge=0, description="alarm below this mean contrast (pixel standard deviation)"
    )


class ArchiveConfig(_Section):
    """The reject archive: a worker off the hot path keeps non-PASS frames (and a sample of PASS ones)."""

    dir: Path | None = Field(
        default=None,
        description="archive folder (SQLite index + PNGs); unset: $STATE_DIRECTORY/archive under systemd, "
        "else no archive",
    )
    pass_sample: float = Field(default=0.01, ge=0, le=1, description="share of PASS frames kept as well")
    max_age_days: float = Field(default=30.0, gt=0, description="entries older than this are pruned")
    max_mb: float = Field(
        default=2048.0, gt=0, description="entries beyond this total size are pruned, oldest first"
    )
    min_free_mb: float = Field(
        default=1024.0, ge=0, description="stop writing (metric + log) while the disk has less free than this"
    )
    queue: int = Field(
        default=256,
        ge=1,
        description="frames waiting for the archive worker (each side of its socket; ~180 KB each at 300x300 "
        "with the denoised frame): a burst of rejects while inference holds the CPU waits here instead of "
        "being skipped; beyond it they are skipped and counted",
    )

    def folder(self) -> Path | None:
        if self.dir is not None:
            return self.dir
        state = os.environ.get("STATE_DIRECTORY")
        return Path(state.split(":")[0]) / "archive" if state else None


class MetricsConfig(_Section):
    enabled: bool = Field(default=True, description="serve /metrics, /healthz and /readyz over HTTP")
    host: str = Field(default="127.0.0.1", description="HTTP listen address")
    port: int = Field(default=9108, ge=0, le=65535, description="HTTP port (0 picks a free one)")


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")
    json_lines: bool = Field(
        default=True, description="JSON lines on stdout (journald); false for a console format"
    )


class Settings(BaseSettings):
    """The daemon's whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="INSPECTOR_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    daemon_id: str = Field(
        default_factory=socket.gethostname, description="this daemon's name in verdicts and heartbeats"
    )
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    ring: RingConfig = Field(default_factory=RingConfig)
    engines: EnginesConfig = Field(default_factory=EnginesConfig)
    triton: TritonConfig = Field(default_factory=TritonConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    _toml_file: ClassVar[Path | None] = None

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.ingest.min_side > self.ingest.max_side:
            raise ValueError("ingest.min_side is larger than ingest.max_side")
        if self.ingest.endpoint == self.publish.endpoint:
            raise ValueError("ingest.endpoint and publish.endpoint must differ")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)


# Settings read once, when a worker starts or a socket is made: a reload (SIGHUP) cannot apply them, and a
# changed value would silently take effect at the next worker restart. A reload that changes one is refused.
RESTART_ONLY = (
    "daemon_id",
    "ingest.endpoint",
    "ingest.socket",
    "ingest.bind",
    "ingest.rcvhwm",
    "publish.endpoint",
    "publish.bind",
    "publish.sndhwm",
    "batching.queue_size",
    "ring.slots",
    "security",
    "archive.dir",
    "archive.queue",
    "metrics",
    "log",
)


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """The :data:`RESTART_ONLY` settings that differ between ``old`` and ``new``."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    out = []
    for key in RESTART_ONLY:
        x, y = a, b
        for part in key.split("."):
            x, y = x[part], y[part]
        if x != y:
            out.append(key)
    return out


class ConfigError(ValueError):
    """Invalid configuration; ``errors`` holds one 'key.path: message' line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(errors))
        self.errors = errors


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["batching.max_batch=16", "engines.path=/x"]`` -> nested dict (values validated by the models)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"--set {item!r}: expected KEY.PATH=VALUE"])
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError([f"--set {item!r}: {p} is not a section"])
        node[parts[-1]] = value
    return out


def load_settings(config: Path | None = None, overrides: list[str] | None = None) -> Settings:
    """Build the settings from all sources; raises :class:`ConfigError` listing every bad key path."""
    path = config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is not None and not Path(path).is_file():
        raise ConfigError([f"config file {str(path)!r} does not exist"])
    init = parse_overrides(overrides or [])
    Settings._toml_file = Path(path) if path is not None else None
    try:
        return Settings(**init)
    except ValidationError as exc:
        errors = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(settings)"
            errors.append(f"{loc}: {e['msg']}")
        raise ConfigError(errors) from None
    except Exception as exc:  # e.g. a TOML syntax error
        raise ConfigError([f"{path}: {exc}"]) from None
    finally:
        Settings._toml_file = None


def env_keys() -> list[str]:
    return sorted(k for k in os.environ if k.startswith("INSPECTOR_"))


def render_defaults() -> str:
    """``config/inspector.toml``: every key with its default and its meaning (a test keeps them equal)."""
    import json

    lines = [
        "# Line Inspector configuration: every key with its default value and meaning.",
        "# Precedence: these defaults < this file (or --config FILE) < INSPECTOR_SECTION__KEY env vars < --set section.key=value.",
        "# `inspector check-config` validates a file and names any bad key.",
        "",
        "# this daemon's name in verdicts and heartbeats (default: the host name)",
        '# daemon_id = "line-3"',
    ]
    for name, fld in Settings.model_fields.items():
        if name == "daemon_id":
            continue
        section = fld.default_factory()  # type: ignore[misc,call-arg]
        lines += ["", f"[{name}]"]
        for key, sub in type(section).model_fields.items():
            lines.append(f"# {sub.description}")
            value = getattr(section, key)
            if value is None:
                lines.append(f"# {key} =   (unset)")
            elif isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, (int, float)):
                lines.append(f"{key} = {value!r}")
            elif isinstance(value, list):
                lines.append(f"{key} = {json.dumps(value)}")
            else:
                lines.append(f"{key} = {json.dumps(str(value))}")
    return "\n".join(lines) + "\n"
