"""Triton backend: a stage's batch sent to a Triton Inference Server over gRPC (``engines.backend = "triton"``).

The shared inference tier of a plant (docs/scale-out.md): line hosts run ingest, the publisher, the
bridges and the archive; the networks run on a Triton server that batches across every daemon that
uses it. The model repository comes from ``inspector triton-repo`` (:mod:`inspector.triton.repo`):
one model per stage, its config carrying the stage file's sha256 and the set's model version.

Failure semantics of a line:

- at connect the engine reads the model's config and refuses (:class:`~inspector.backends.base.EngineError`)
  a model whose ``engine_sha256`` is not this daemon's manifest's (a daemon never talks to a model of
  another engine set), or whose ``max_batch_size`` is below the daemon's batch;
- a server that is not there at start is not fatal where the caller says so (``offline_ok``, the
  daemon): the engine starts unconnected, every batch fails with :class:`RemoteUnavailable`, and
  :meth:`TritonEngine.ready` connects (and checks identity) once the server is up;
- every request carries a deadline: ``triton.timeout_ms``, cut to what is left of the batch's budget
  (:attr:`TritonEngine.deadline`, set by the inference worker so that a batch's remote calls together
  stay inside the supervisor's hang timeout);
- **any** failure of the tier - down, slow, an error status of any kind (INTERNAL, NOT_FOUND, auth),
  a malformed answer - raises :class:`RemoteUnavailable`: the inference worker answers that batch ERROR
  (never a PASS, never a hang) and the daemon is not ready until :meth:`TritonEngine.ready` - a real
  one-frame inference through every stage's model - succeeds again;
- after an outage a fresh gRPC channel is opened and the served model's identity checked again;
- ``triton.shared_memory = on`` (the server on this host, sharing its /dev/shm): frames and outputs go
  through system shared memory regions registered with the server, named with this process's pid and a
  random tag (created exclusively; regions of dead processes are swept); if registration is refused
  (a server in another IPC namespace) the engine falls back to the gRPC messages and says so. Output
  regions are filled with NaN before each request, so an answer the server did not write reads as
  non-finite (an ERROR verdict), never as the previous batch's scores. Off by default: on this project's
  CPU host what it saved was within the round-to-round spread of plain gRPC (docs/scale-out.md).

Needs ``tritonclient[grpc]`` (the ``triton`` extra: ``pip install 'line-inspector[triton]'``).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
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


SHM_PREFIX = "li-triton-"
_GAVE_UP: dict[str, float] = {}  # url -> when a start last gave up waiting for it (monotonic)


def _log() -> Any:
    import structlog

    return structlog.get_logger("inspector.triton")


def _owner_dead(name: str) -> bool:
    """A region named ``li-triton-<pid>-...`` whose process no longer runs (on this host)."""
    from inspector.daemon.ring import pid_alive

    pid = name[len(SHM_PREFIX) :].split("-", 1)[0]
    return name.startswith(SHM_PREFIX) and pid.isdigit() and not pid_alive(int(pid))


def sweep_shm(base: Path = Path("/dev/shm")) -> list[str]:
    """Unlink Triton shared memory regions left by processes that died (``li-triton-<pid>-...``)."""
    removed = []
    for path in base.glob(f"{SHM_PREFIX}*"):
        if _owner_dead(path.name):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path.name)
    return removed


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
        shared_memory: str = "off",
        frame_size: tuple[int, int] | None = None,
        max_batch: int = 8,
        offline_ok: bool = False,
        **_ignored: Any,
    ) -> None:
        grpc = _client_module()
        from tritonclient.utils import InferenceServerException

        if shared_memory not in ("on", "off"):
            raise EngineError(f"triton shared_memory {shared_memory!r}: 'on' or 'off'")
        self.name, self.path, self.url = name, Path(path), url
        self.model = f"{model_prefix}{name}"
        self.version = model_version
        self.timeout_s = timeout_ms / 1000
        self.headers = parse_headers(headers)
        self._grpc = grpc
        self._error = InferenceServerException
        self._channel = {"ssl": ssl, "root_certificates": root_certificates}
        self.client: Any = grpc.InferenceServerClient(url, **self._channel)
        self._sha256, self._set_version = sha256, set_version
        self.frame_size = frame_size
        self.want_batch = max_batch
        self.want_shm = shared_memory == "on"
        self.shm = False  # regions made and registered: the tensors go through shared memory
        self.deadline: float | None = None  # monotonic: this batch's remote time ends here (inference worker)
        self.connected = False
        self._stale = False  # the last call found the server away: the next one opens a fresh channel
        self._verify = False  # set after an outage: the server that comes back is checked again
        self._closed = False
        self._regions: dict[str, Any] = {}
        self._registered = False
        self.max_batch = 0
        # A stage of the same set just waited out connect_timeout_s for this url: the next does not wait again.
        gave_up = _GAVE_UP.get(url, -1e9) > time.monotonic() - connect_timeout_s
        end = time.monotonic() + (0 if gave_up and offline_ok else connect_timeout_s)
        while True:
            try:
                self._connect()
                _GAVE_UP.pop(url, None)
                return
            except RemoteUnavailable as exc:
                if time.monotonic() <= end:
                    time.sleep(0.2)
                    continue
                if not offline_ok:
                    raise
                _GAVE_UP[url] = time.monotonic()
                _log().warning(
                    "inference server not reachable at start; starting not ready", stage=name, error=str(exc)
                )
                self._stale = True
                return

    # -- connect and identity ---------------------------------------------------------------
    def _connect(self) -> None:
        """Read the model's config; it must be this manifest's stage, able to take the daemon's batch."""
        try:
            config = self.client.get_model_config(
                self.model, self.version, headers=self.headers, as_json=True, client_timeout=self._timeout()
            )["config"]
        except self._error as exc:
            self._stale = True
            raise RemoteUnavailable(
                f"Triton at {self.url}: model {self.model!r} for stage {self.name!r} not reachable: "
                f"{self._says(exc)}"
            ) from exc
        self._check_identity(config)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.max_batch = int(config.get("max_batch_size", 0))
        self._out_type = TYPES.get(config["output"][0]["data_type"], np.float32)
        self._out_dims = [int(d) for d in config["output"][0]["dims"]]
        if self.want_shm and not self._regions:
            self._make_regions()
        self.connected = True

    def _check_identity(self, config: dict[str, Any]) -> None:
        """The served model must be this manifest's stage (sha256) of this engine set (model version),
        batching at least the daemon's batch."""
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
        served = int(config.get("max_batch_size", 0))
        if (served or 1) < self.want_batch:  # 0: the model takes no batch dimension, one frame at a time
            raise EngineError(
                f"Triton at {self.url}: model {self.model!r} takes batches of at most {served}, this daemon "
                f"sends up to {self.want_batch} (batching.max_batch): lower it, or write the repository with "
                f"inspector triton-repo --max-batch {self.want_batch}"
            )

    def _ensure(self) -> None:
        """Before a request: a fresh channel after an outage, connected, and the served model checked again
        (a server that comes back may have been restarted with another repository)."""
        self._refresh()
        try:
            if not self.connected:
                self._connect()
            elif self._verify:
                config = self.client.get_model_config(
                    self.model,
                    self.version,
                    headers=self.headers,
                    as_json=True,
                    client_timeout=self._timeout(),
                )["config"]
                self._check_identity(config)
        except self._error as exc:
            self._stale = True
            raise RemoteUnavailable(f"Triton at {self.url}: model {self.model!r}: {self._says(exc)}") from exc
        except RemoteUnavailable:
            raise
        except EngineError as exc:  # another set, or a smaller batch, now: unusable until it is ours again
            self._stale = True
            raise RemoteUnavailable(str(exc)) from exc
        except Exception as exc:  # a config without the fields we read: not a model we can use
            self._stale = True
            raise RemoteUnavailable(
                f"Triton at {self.url}: model {self.model!r}: unusable config: {exc!r}"
            ) from exc
        self._verify = False

    def recheck(self) -> None:
        """Read the served model's config again before the next request (the inference worker asks now and
        then: an operator may load other files under the same name)."""
        if self.connected:
            self._verify = True

    def _timeout(self) -> float:
        """This request's deadline: timeout_ms, cut to what is left of the batch's budget."""
        if self.deadline is None:
            return self.timeout_s
        left = self.deadline - time.monotonic()
        if left <= 0.001:
            self._stale = True
            raise RemoteUnavailable(
                f"Triton at {self.url}: the batch's time for the inference tier is spent before stage "
                f"{self.name!r} (supervisor.hang_timeout_s bounds a batch's remote calls)"
            )
        return min(self.timeout_s, left)

    @staticmethod
    def _says(exc: Any) -> str:
        status = getattr(exc, "status", lambda: None)()
        msg = getattr(exc, "message", lambda: str(exc))()
        return f"{status}: {msg}" if status else str(msg)

    # -- inference ------------------------------------------------------------------------
    def infer(self, frames: np.ndarray) -> np.ndarray:
        if self._closed:
            raise EngineError(f"engine {self.name!r} is closed")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1] != 1:
            raise EngineError(
                f"engine {self.name!r} takes uint8 (N, 1, H, W) frames, got {frames.dtype} {frames.shape}"
            )
        self._ensure()
        try:
            out = self._infer(np.ascontiguousarray(frames))
        except EngineError:
            raise
        except Exception as exc:  # SharedMemoryException, a malformed answer: the tier did not inspect these
            self._stale = True
            raise RemoteUnavailable(f"Triton at {self.url}: stage {self.name!r} failed: {exc!r}") from exc
        if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
            # an output region the server did not write (NaN-filled), or a model gone wrong: never a verdict
            self._stale = True
            raise RemoteUnavailable(f"Triton at {self.url}: stage {self.name!r} answered non-finite outputs")
        return out

    def _infer(self, frames: np.ndarray) -> np.ndarray:
        use_shm = self.shm and frames.nbytes <= self._regions["in"][1]
        try:
            res = self._request(frames, use_shm)
        except self._error as exc:
            if not (use_shm and "shared memory" in self._says(exc).lower()):
                raise self._failure(exc, frames) from exc
            # The server restarted and forgot this client's regions: register them again, once.
            self._registered = False
            try:
                res = self._request(frames, self.shm)
            except self._error as again:
                raise self._failure(again, frames) from again
        try:
            if use_shm and self.shm:
                shape = [int(d) for d in res.get_output(self.output_name).shape]
                out = np.array(
                    self._shm.get_contents_as_numpy(self._regions["out"][0], self._out_type, shape)
                )
            else:
                out = res.as_numpy(self.output_name)
        except Exception as exc:  # an answer without our output: the tier is not serving this stage
            self._stale = True
            raise RemoteUnavailable(
                f"Triton at {self.url}: stage {self.name!r} answered without a readable output: {exc}"
            ) from exc
        if out is None or out.shape[0] != frames.shape[0]:
            self._stale = True
            raise RemoteUnavailable(
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
        if use_shm and self.shm:  # registration may have fallen back to gRPC
            self._shm.set_shared_memory_region(self._regions["in"][0], [frames])
            inp.set_shared_memory(self._regions["in"][2], frames.nbytes)
            if np.issubdtype(self._out_type, np.floating):
                # An output the server does not write reads NaN (-> ERROR), never the last batch's scores.
                n = frames.shape[0] * self._out_items
                self._shm.set_shared_memory_region(
                    self._regions["out"][0], [np.full(n, np.nan, dtype=self._out_type)]
                )
            out.set_shared_memory(self._regions["out"][2], self._regions["out"][1])
        else:
            inp.set_data_from_numpy(frames)
        return self.client.infer(
            self.model,
            [inp],
            model_version=self.version,
            outputs=[out],
            client_timeout=self._timeout(),
            headers=self.headers,
        )

    def _failure(self, exc: Any, frames: np.ndarray) -> EngineError:
        """Any error status from the tier makes it unusable for now: ERROR verdicts and not ready until a
        real inference through it succeeds again (an INTERNAL or NOT_FOUND answer inspects nothing either)."""
        self._stale = True
        return RemoteUnavailable(
            f"Triton at {self.url}: stage {self.name!r} ({frames.shape[0]} frames) failed: {self._says(exc)}"
        )

    # -- shared memory --------------------------------------------------------------------
    def _make_regions(self) -> None:
        """System shared memory for one batch in and one batch out (the client and server share a host)."""
        import tritonclient.utils.shared_memory as shm

        self._shm = shm
        h, w = self.frame_size or (0, 0)
        if not h:
            raise EngineError(f"triton shared memory for stage {self.name!r} needs the set's frame size")
        batch = max(self.want_batch, self.max_batch or 1)
        dims = [
            d if d > 0 else s for d, s in zip(self._out_dims, [1, h, w][-len(self._out_dims) :], strict=False)
        ]
        self._out_items = int(np.prod(dims))
        out_bytes = batch * self._out_items * np.dtype(self._out_type).itemsize
        swept = sweep_shm()
        if swept:
            _log().warning("removed Triton shared memory regions of dead processes", regions=swept)
        tag = f"{SHM_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}-{self.name}"
        try:
            for kind, size in (("in", batch * h * w), ("out", out_bytes)):
                name = f"{tag}-{kind}"
                handle = shm.create_shared_memory_region(name, "/" + name, size, create_only=True)
                self._regions[kind] = (handle, size, name)
        except Exception as exc:  # /dev/shm not writable, full: the gRPC messages carry the tensors
            self._drop_regions()
            self._fall_back(f"could not create shared memory regions: {exc}")
            return
        self.shm = True

    def _register(self) -> None:
        if self._registered or not self.shm:
            return
        try:
            self._unregister_dead()
            for _handle, size, name in self._regions.values():
                with contextlib.suppress(self._error):
                    self.client.unregister_system_shared_memory(
                        name, headers=self.headers, client_timeout=self._timeout()
                    )
                self.client.register_system_shared_memory(
                    name, "/" + name, size, headers=self.headers, client_timeout=self._timeout()
                )
        except self._error as exc:
            status = str(getattr(exc, "status", lambda: "")() or "")
            if any(s in status for s in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")):
                raise  # the server is away, not refusing: an outage like any other
            # The server cannot open our regions (another IPC namespace, a DynamicUser's private /dev/shm)
            self._drop_regions()
            self._fall_back(f"the server refused the shared memory regions: {self._says(exc)}")
            return
        self._registered = True

    def _unregister_dead(self) -> None:
        """Registrations a dead daemon of this host left on the server: their names carry its pid."""
        status = self.client.get_system_shared_memory_status(
            headers=self.headers, as_json=True, client_timeout=self._timeout()
        )
        for region in status.get("regions", {}).values() if isinstance(status.get("regions"), dict) else []:
            name = str(region.get("name", ""))
            if _owner_dead(name):
                with contextlib.suppress(self._error):
                    self.client.unregister_system_shared_memory(
                        name, headers=self.headers, client_timeout=self._timeout()
                    )

    def _fall_back(self, why: str) -> None:
        self.shm = False
        _log().warning(
            "triton shared memory not usable; tensors go in the gRPC messages", stage=self.name, why=why
        )

    def _drop_regions(self, unregister: bool = False) -> None:
        for handle, _size, name in self._regions.values():
            try:
                timeout = min(0.5, self._timeout()) if unregister else 0.0
            except RemoteUnavailable:  # the caller's budget is spent: the server drops them when it restarts
                unregister = False
            if unregister:
                with contextlib.suppress(Exception):  # the server may be gone: the region is ours to free
                    self.client.unregister_system_shared_memory(
                        name, headers=self.headers, client_timeout=timeout
                    )
            with contextlib.suppress(Exception):
                self._shm.destroy_shared_memory_region(handle)
        self._regions.clear()
        self._registered = False

    # -- health -----------------------------------------------------------------------------
    def ready(self) -> bool:
        """Does the tier inspect for this stage again? A real one-frame inference through the served model
        (this manifest's, checked again after an outage) - not only the server's word that it is ready."""
        h, w = self.frame_size or (0, 0)
        try:
            self._ensure()
            if not h:
                return bool(
                    self.client.is_model_ready(
                        self.model, self.version, headers=self.headers, client_timeout=self._timeout()
                    )
                )
            out = self.infer(np.zeros((1, 1, h, w), np.uint8))
            return bool(np.isfinite(out).all())
        except Exception:  # whatever it is, the tier does not inspect for this stage now
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
        """Free the regions (unregistered where the server is known to be up: at most a second per stage)."""
        if not self._closed:
            self._closed = True
            self._drop_regions(unregister=self._registered and not self._stale)
            with contextlib.suppress(Exception):  # closing a channel to a dead server: nothing to release
                self.client.close()
