"""Triton backend: a stage's batch sent to a Triton Inference Server over gRPC (``engines.backend = "triton"``).

The shared inference tier of a plant (docs/scale-out.md): line hosts run ingest, the publisher, the
bridges and the archive; the networks run on a Triton server that batches across every daemon that
uses it. The model repository comes from ``inspector triton-repo`` (:mod:`inspector.triton.repo`):
one model per stage, its config carrying the stage file's sha256 and the set's model version.

Failure semantics of a line:

- at connect the engine reads the model's config and refuses (:class:`~inspector.backends.base.EngineError`)
  a model whose ``engine_sha256`` is not this daemon's manifest's: a daemon never talks to a model of
  another engine set;
- every request carries a deadline (``triton.timeout_ms``); a server that is down, slow, or answers
  with an error raises :class:`RemoteUnavailable` / :class:`~inspector.backends.base.EngineError`, which the
  inference worker turns into ERROR verdicts for that batch (never a PASS, never a hang) and, for
  ``RemoteUnavailable``, into a not-ready daemon until the server answers again (:meth:`TritonEngine.ready`);
- the gRPC channel reconnects by itself: the same client works again once the server is back;
- where client and server share a host (``triton.shared_memory = auto`` and a loopback URL, or ``on``),
  frames and outputs go through system shared memory regions registered with the server, not the
  gRPC message (re-registered after the server restarts).

Needs ``tritonclient[grpc]`` (the ``triton`` extra: ``pip install 'line-inspector[triton]'``).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from inspector.backends.base import EngineError

TYPES = {"TYPE_FP32": np.float32, "TYPE_UINT8": np.uint8, "TYPE_FP16": np.float16}


class RemoteUnavailable(EngineError):
    """The Triton server did not answer in time (down, restarting, overloaded): the daemon is not ready."""

    unavailable = True


def _client_module() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as exc:
        raise EngineError(
            "engine backend 'triton' needs the Triton gRPC client: pip install 'line-inspector[triton]' "
            f"(tritonclient[grpc]) ({exc})"
        ) from exc
    return grpcclient


def parse_headers(pairs: list[str] | None) -> dict[str, str]:
    """``["authorization: Bearer x", ...]`` -> headers (gRPC metadata keys are lower case)."""
    out = {}
    for p in pairs or []:
        key, sep, value = p.partition(":")
        if not sep or not key.strip():
            raise EngineError(f"triton header {p!r} is not 'name: value'")
        out[key.strip().lower()] = value.strip()
    return out


class TritonEngine:
    """One stage served by a Triton model named ``<model_prefix><stage>``."""

    def __init__(
        self,
        path: Path,
        name: str,
        url: str = "127.0.0.1:8001",
        model_prefix: str = "",
        model_version: str = "",
        timeout_ms: float = 1000.0,
        ssl: bool = False,
        root_certificates: str | None = None,
        headers: list[str] | None = None,
        sha256: str | None = None,
        set_version: str | None = None,
        connect_timeout_s: float = 10.0,
        shared_memory: str = "auto",
        frame_size: tuple[int, int] | None = None,
        max_batch: int = 8,
        **_ignored: Any,
    ) -> None:
        grpc = _client_module()
        self.name, self.path, self.url = name, Path(path), url
        self.model = f"{model_prefix}{name}"
        self.version = model_version
        self.timeout_s = timeout_ms / 1000
        self.headers = parse_headers(headers)
        self._grpc = grpc
        from tritonclient.utils import InferenceServerException

        self._error = InferenceServerException
        self._channel = {"ssl": ssl, "root_certificates": root_certificates}
        self.client: Any = grpc.InferenceServerClient(url, **self._channel)
        self._stale = False  # the last call found the server away: the next one opens a fresh channel
        # Connect: the model must be ready and must be this manifest's stage (sha256, set version).
        end = time.monotonic() + connect_timeout_s
        while True:
            try:
                config = self.client.get_model_config(
                    self.model,
                    self.version,
                    headers=self.headers,
                    as_json=True,
                    client_timeout=self.timeout_s,
                )["config"]
                break
            except self._error as exc:
                if time.monotonic() > end:
                    raise RemoteUnavailable(
                        f"Triton at {url}: model {self.model!r} for stage {name!r} not reachable: "
                        f"{self._says(exc)}"
                    ) from exc
                time.sleep(0.2)
        self._sha256, self._set_version = sha256, set_version
        self._check_identity(config)
        self._verify = False  # set after an outage: the server that comes back is checked again
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.max_batch = int(config.get("max_batch_size", 0))
        self._closed = False
        self._out_type = TYPES.get(config["output"][0]["data_type"], np.float32)
        self._out_dims = [int(d) for d in config["output"][0]["dims"]]
        host = url.rsplit(":", 1)[0].strip("[]")
        self.shm = shared_memory == "on" or (
            shared_memory == "auto" and host in ("127.0.0.1", "localhost", "::1")
        )
        self._regions: dict[str, Any] = {}
        self._registered = False
        if self.shm:
            self._make_regions(frame_size, max(max_batch, self.max_batch or 1))

    @staticmethod
    def _says(exc: Any) -> str:
        status = getattr(exc, "status", lambda: None)()
        msg = getattr(exc, "message", lambda: str(exc))()
        return f"{status}: {msg}" if status else str(msg)

    def infer(self, frames: np.ndarray) -> np.ndarray:
        if self._closed:
            raise EngineError(f"engine {self.name!r} is closed")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1] != 1:
            raise EngineError(
                f"engine {self.name!r} takes uint8 (N, 1, H, W) frames, got {frames.dtype} {frames.shape}"
            )
        self._refresh()
        self._reverify()
        frames = np.ascontiguousarray(frames)
        use_shm = self.shm and frames.nbytes <= self._regions["in"][1]
        try:
            res = self._request(frames, use_shm)
        except self._error as exc:
            if not (use_shm and "shared memory" in self._says(exc).lower()):
                raise self._failure(exc, frames) from exc
            # The server restarted and forgot this client's regions: register them again, once.
            self._registered = False
            try:
                res = self._request(frames, use_shm)
            except self._error as again:
                raise self._failure(again, frames) from again
        if use_shm:
            shape = [int(d) for d in res.get_output(self.output_name).shape]
            out = np.array(self._shm.get_contents_as_numpy(self._regions["out"][0], self._out_type, shape))
        else:
            out = res.as_numpy(self.output_name)
        if out is None or out.shape[0] != frames.shape[0]:
            raise EngineError(
                f"Triton at {self.url}: stage {self.name!r} returned "
                f"{None if out is None else out.shape} for {frames.shape[0]} frames"
            )
        return np.asarray(out)

    def _request(self, frames: np.ndarray, use_shm: bool) -> Any:
        grpc = self._grpc
        inp = grpc.InferInput(self.input_name, list(frames.shape), "UINT8")
        out = grpc.InferRequestedOutput(self.output_name)
        if use_shm:
            self._register()
            self._shm.set_shared_memory_region(self._regions["in"][0], [frames])
            inp.set_shared_memory(self._regions["in"][2], frames.nbytes)
            out.set_shared_memory(self._regions["out"][2], self._regions["out"][1])
        else:
            inp.set_data_from_numpy(frames)
        return self.client.infer(
            self.model,
            [inp],
            model_version=self.version,
            outputs=[out],
            client_timeout=self.timeout_s,
            headers=self.headers,
        )

    def _failure(self, exc: Any, frames: np.ndarray) -> EngineError:
        status = str(getattr(exc, "status", lambda: "")() or "")
        if any(s in status for s in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")):
            self._stale = True
            return RemoteUnavailable(
                f"Triton at {self.url} did not answer stage {self.name!r} ({frames.shape[0]} frames): "
                f"{self._says(exc)}"
            )
        return EngineError(f"Triton at {self.url}: stage {self.name!r} failed: {self._says(exc)}")

    def _make_regions(self, frame_size: tuple[int, int] | None, batch: int) -> None:
        """System shared memory for one batch in and one batch out (the client and server share a host)."""
        import tritonclient.utils.shared_memory as shm

        self._shm = shm
        h, w = frame_size or (0, 0)
        if not h:
            raise EngineError(f"triton shared memory for stage {self.name!r} needs the set's frame size")
        dims = [
            d if d > 0 else s for d, s in zip(self._out_dims, [1, h, w][-len(self._out_dims) :], strict=False)
        ]
        out_bytes = batch * int(np.prod(dims)) * np.dtype(self._out_type).itemsize
        tag = f"li-{os.getpid()}-{id(self):x}-{self.name}"
        for kind, size in (("in", batch * h * w), ("out", out_bytes)):
            name = f"{tag}-{kind}"
            self._regions[kind] = (shm.create_shared_memory_region(name, "/" + name, size), size, name)

    def _register(self) -> None:
        if self._registered:
            return
        for _handle, size, name in self._regions.values():
            with contextlib.suppress(self._error):
                self.client.unregister_system_shared_memory(
                    name, headers=self.headers, client_timeout=self.timeout_s
                )
            self.client.register_system_shared_memory(
                name, "/" + name, size, headers=self.headers, client_timeout=self.timeout_s
            )
        self._registered = True

    def _check_identity(self, config: dict[str, Any]) -> None:
        """The served model must be this manifest's stage (sha256) of this engine set (model version)."""
        params = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
        if self._sha256 is not None and params.get("engine_sha256") != self._sha256:
            raise EngineError(
                f"Triton at {self.url}: model {self.model!r} serves engine sha256 {params.get('engine_sha256')!r}, "
                f"but this daemon's manifest says {self._sha256!r} for stage {self.name!r}: another engine set. "
                "Write the server's repository from this set (inspector triton-repo) or point the daemon at its set"
            )
        if self._set_version is not None and params.get("model_version") not in (None, self._set_version):
            raise EngineError(
                f"Triton at {self.url}: model {self.model!r} is from engine set {params.get('model_version')!r}, "
                f"this daemon runs {self._set_version!r}"
            )

    def _reverify(self) -> None:
        """After an outage, before the first request: the server that answers may have been restarted with
        another repository; it must still serve this manifest's stage, else it stays unusable (not ready)."""
        if not self._verify:
            return
        try:
            config = self.client.get_model_config(
                self.model, self.version, headers=self.headers, as_json=True, client_timeout=self.timeout_s
            )["config"]
            self._check_identity(config)
        except self._error as exc:
            self._stale = True
            raise RemoteUnavailable(f"Triton at {self.url}: model {self.model!r}: {self._says(exc)}") from exc
        except EngineError as exc:
            raise RemoteUnavailable(str(exc)) from exc
        self._verify = False

    def ready(self) -> bool:
        """Is the server up with this stage's model - this manifest's - ready? (asked while not ready)"""
        self._refresh()
        try:
            self._reverify()
            return bool(
                self.client.is_model_ready(
                    self.model, self.version, headers=self.headers, client_timeout=self.timeout_s
                )
            )
        except (self._error, RemoteUnavailable):
            self._stale = True
            return False

    def _refresh(self) -> None:
        """A fresh gRPC channel after the server was away: a channel that failed to connect waits out an
        exponential reconnect backoff (seconds to minutes) before it tries again; a new one tries at once."""
        if self._stale:
            self._stale = False
            self._verify = True
            self._registered = False  # a server that was away may have restarted without our regions
            old, self.client = self.client, self._grpc.InferenceServerClient(self.url, **self._channel)
            with contextlib.suppress(Exception):  # a channel to a dead server: nothing to release
                old.close()

    def statistics(self) -> dict[str, Any]:
        """The server's inference statistics for this stage's model (as JSON)."""
        stats: dict[str, Any] = self.client.get_inference_statistics(
            self.model, self.version, headers=self.headers, as_json=True
        )
        return stats

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for handle, _size, name in self._regions.values():
                with contextlib.suppress(Exception):  # the server may be gone: the region is ours to free
                    self.client.unregister_system_shared_memory(name, headers=self.headers, client_timeout=1)
                with contextlib.suppress(Exception):
                    self._shm.destroy_shared_memory_region(handle)
            self._regions.clear()
            with contextlib.suppress(Exception):  # closing a channel to a dead server: nothing to release
                self.client.close()
