"""The three-stage inspection pipeline over a batch of frames.

noise type (stage 1, whole batch) -> denoiser routed per frame (impulse median
for salt-and-pepper, the autoencoder for Gaussian, the sinusoid fit - or, in
older engine sets, the autoencoder - for periodic, pass-through for clean) -> defect classifier (stage 3, whole batch) -> decision at the
threshold - one per noise type where the engine set calibrated them (a frame's
threshold is its route's), else the set's single threshold. The daemon and the
build step's evaluation both run this code, so what is measured is what is served.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from inspector.backends import Engine, open_engine
from inspector.denoise import AUTOENCODER, CLASSICAL_FILTERS, route_frames, routes
from inspector.manifest import Manifest, ManifestError, check_own_thresholds, load_manifest
from inspector.noise import NOISE_TYPES


@dataclass
class FrameResult:
    """What the pipeline found for one frame."""

    noise_type: str
    noise_confidence: float
    denoiser: str
    score: float
    defective: bool
    threshold: float
    stage_ms: dict[str, float] = field(default_factory=dict)
    # The frame the defect classifier saw, for frames a denoiser changed (None: the frame as received,
    # or a backend that keeps it on the device). For the reject archive; a view into the batch.
    inspected: np.ndarray | None = field(default=None, repr=False, compare=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def check_frames(frames: np.ndarray) -> None:
    """The pipeline's input contract: a (N, H, W) uint8 batch."""
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f"pipeline takes (N, H, W) uint8 frames, got {frames.dtype} {frames.shape}")


def _set_identity(root: Path) -> tuple[tuple[int, int] | None, ...]:
    """The set folder's and its plans folder's (device, inode): a rename over either changes it."""
    out: list[tuple[int, int] | None] = []
    for path in (root, root / "tensorrt"):
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_dev, st.st_ino))
    return tuple(out)


class Pipeline:
    """Runs the three stages on ``(N, H, W)`` uint8 frames; engines map stage name -> :class:`Engine`."""

    def __init__(
        self,
        engines: dict[str, Engine],
        threshold: float,
        salt_pepper_filter: str = "adaptive_median",
        periodic_filter: str = "sinusoid_fit",
        manifest: Manifest | None = None,
        thresholds: dict[str, float] | None = None,
    ) -> None:
        self.engines = engines
        self.threshold = float(threshold)
        unknown = set(thresholds or {}) - set(NOISE_TYPES)
        if unknown:
            raise ValueError(f"thresholds for unknown noise type(s) {sorted(unknown)}; valid: {NOISE_TYPES}")
        # Per noise type (route); a type without one falls back to ``threshold``.
        self.thresholds = {k: float(v) for k, v in (thresholds or {}).items()}
        self.routes = routes(salt_pepper_filter, periodic_filter)
        self.manifest = manifest

    @classmethod
    def from_manifest(
        cls,
        root: str | Path,
        backend: str = "onnxruntime",
        threshold: float | None = None,
        verify: bool = True,
        **engine_options: Any,
    ) -> Pipeline:
        """The engine set at ``root``; ``threshold`` overrides its calibrated threshold(s) with one.

        An INT8 set that kept the float32 set's thresholds (quantized where its labelled data was not)
        is refused unless ``threshold`` is given (:func:`inspector.manifest.check_own_thresholds`).
        ``inspector rebuild`` swaps a set (or its ``tensorrt/`` plans) in by renaming a complete folder
        over the live one; a load that straddled such a swap is done again on the new set, so the
        manifest and the files it loads are always one set's.
        """
        root = Path(root)
        for attempt in range(3):
            before = _set_identity(root)
            try:
                manifest = load_manifest(root, verify=verify)
                if threshold is None:
                    check_own_thresholds(root, manifest)
                engines: dict[str, Engine] = {}
                try:
                    for s in manifest.stages:
                        options = dict(engine_options)
                        if backend == "openvino":  # its static-shape models are compiled at the set's size
                            options.setdefault("frame_size", tuple(manifest.stages[s].input.frame_size))
                        if backend == "triton":  # the server's model must be this manifest's stage
                            options.update(
                                sha256=manifest.stages[s].sha256, set_version=manifest.model_version
                            )
                            options.setdefault("frame_size", tuple(manifest.stages[s].input.frame_size))
                        engines[s] = open_engine(backend, manifest.stage_path(root, s), s, **options)
                except BaseException:
                    for e in engines.values():
                        e.close()
                    raise
            except Exception:
                if attempt < 2 and _set_identity(root) != before:
                    continue  # swapped while it was read: read the new set
                raise
            if _set_identity(root) == before:
                break
            for e in engines.values():
                e.close()
        else:
            raise ManifestError(
                f"the engine set {str(root)!r} kept being replaced while it was loaded: load it again"
            )
        return cls(
            engines,
            manifest.threshold if threshold is None else threshold,
            manifest.salt_pepper_filter,
            manifest.periodic_filter,
            manifest=manifest,
            thresholds=manifest.thresholds if threshold is None else None,
        )

    def threshold_for(self, noise_type: str) -> float:
        """The decision threshold for a frame the noise classifier called ``noise_type``."""
        return self.thresholds.get(noise_type, self.threshold)

    def classify_noise(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Noise class index and confidence per frame."""
        probs = softmax(self.engines["noise"].infer(frames[:, None]))
        return probs.argmax(axis=1), probs.max(axis=1)

    def denoise(self, frames: np.ndarray, noise_idx: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Route each frame to its denoiser; returns the frames to inspect and the denoiser names."""
        out = frames.copy()
        names = route_frames(self.routes, noise_idx)
        ae_idx = [i for i, name in enumerate(names) if name == AUTOENCODER]
        for i, name in enumerate(names):
            if name in CLASSICAL_FILTERS:
                out[i] = CLASSICAL_FILTERS[name](frames[i])
        if ae_idx:
            out[ae_idx] = self.engines["denoise"].infer(frames[ae_idx][:, None])[:, 0]
        return out, names

    def score(self, frames: np.ndarray) -> np.ndarray:
        """Defect score (probability of 'defective') per frame."""
        return softmax(self.engines["defect"].infer(frames[:, None]))[:, 1]

    def run(self, frames: np.ndarray) -> list[FrameResult]:
        check_frames(frames)
        t0 = time.perf_counter()
        noise_idx, noise_conf = self.classify_noise(frames)
        t1 = time.perf_counter()
        clean, names = self.denoise(frames, noise_idx)
        t2 = time.perf_counter()
        scores = self.score(clean)
        t3 = time.perf_counter()
        ms = {
            "noise": (t1 - t0) * 1e3,
            "denoise": (t2 - t1) * 1e3,
            "defect": (t3 - t2) * 1e3,
        }
        return self.results(noise_idx, noise_conf, names, scores, ms, inspected=clean)

    def results(
        self,
        noise_idx: np.ndarray,
        noise_conf: np.ndarray,
        names: list[str],
        scores: np.ndarray,
        ms: dict[str, float],
        inspected: np.ndarray | None = None,
    ) -> list[FrameResult]:
        """One :class:`FrameResult` per frame, each decided at its noise type's threshold."""
        out = []
        for i in range(len(names)):
            kind = NOISE_TYPES[int(noise_idx[i])]
            t = self.threshold_for(kind)
            out.append(
                FrameResult(
                    noise_type=kind,
                    noise_confidence=float(noise_conf[i]),
                    denoiser=names[i],
                    score=float(scores[i]),
                    # not "score >= t": a NaN score is not below the threshold either, and must never PASS
                    defective=not bool(scores[i] < t),
                    threshold=t,
                    stage_ms=ms,
                    inspected=inspected[i] if inspected is not None and names[i] != "none" else None,
                )
            )
        return out

    def close(self) -> None:
        for e in self.engines.values():
            e.close()


P = TypeVar("P")


class BatchRunner(Generic[P]):
    """Runs batches through a pipeline, one in flight where the pipeline uploads asynchronously.

    ``step(frames, payload)`` hands in a batch (or ``None``) and returns the
    batches that finished, each as ``(payload, results or the exception it
    raised)``, in the order they were handed in. A plain :class:`Pipeline`
    runs the batch at once. A pipeline with ``submit``/``collect`` (the CUDA
    stream schedule) gets batch N+1 submitted - its upload enqueued - before
    batch N is collected, so the upload overlaps N's compute; the caller
    hands in ``None`` when no next batch is waiting, which collects the one in
    flight without delay. Every batch handed in comes back exactly once.
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.inflight: tuple[Any, P] | None = None

    @property
    def overlaps(self) -> bool:
        return hasattr(self.pipe, "submit") and hasattr(self.pipe, "collect")

    @property
    def busy(self) -> bool:
        """A batch is in flight: collect it (``step(None, ...)``) before swapping the pipeline."""
        return self.inflight is not None

    def step(self, frames: np.ndarray | None, payload: P | None = None) -> list[tuple[P, Any]]:
        done: list[tuple[P, Any]] = []
        if not self.overlaps:
            if frames is not None:
                done.append((payload, _attempt(self.pipe.run, frames)))  # type: ignore[arg-type]
            return done
        submitted = None
        if frames is not None:
            ticket = _attempt(self.pipe.submit, frames)
            if isinstance(ticket, Exception):
                done.append((payload, ticket))  # type: ignore[arg-type]
            else:
                submitted = (ticket, payload)
        if self.inflight is not None:
            ticket, earlier = self.inflight
            done.insert(0, (earlier, _attempt(self.pipe.collect, ticket)))
        self.inflight = submitted  # type: ignore[assignment]
        return done


def _attempt(fn: Any, arg: Any) -> Any:
    try:
        return fn(arg)
    except Exception as exc:  # the caller turns it into ERROR verdicts for that batch
        return exc
