"""OpenVINO backend: the same ONNX files compiled for the CPU's AVX-512 / VNNI / AMX kernels.

Selected by ``engines.backend = "openvino"`` (``inspector serve --backend openvino``,
``Pipeline.from_manifest(path, backend="openvino")``). Frames in and outputs out are exactly
ONNX Runtime's: uint8 ``(N, 1, H, W)`` in; logits (float32) or, for the autoencoder, uint8
frames out. Imports cleanly without ``openvino``: the package is imported when an engine is
opened, and a missing one is an :class:`EngineError` that says ``pip install openvino``.

Precision (``engines.precision``):

- ``f32``: OpenVINO's float32 kernels (``INFERENCE_PRECISION_HINT=f32``);
- ``bf16``: the float32 graph run in bfloat16 where the CPU has bf16 instructions
  (AVX512_BF16 or AMX; ``OPTIMIZATION_CAPABILITIES`` lists ``BF16``); on a CPU without them
  it runs float32 and says so (a log line, and :attr:`OpenVinoEngine.fallback`);
- ``int8``: the Q/DQ files of an INT8 engine set (``engines/default-int8``, written by
  ``inspector-build quantize`` or ``inspector rebuild --int8-out``), whose QuantizeLinear /
  DequantizeLinear pairs OpenVINO turns into int8 kernels; the layers the quantizer kept in
  float (the noise classifier's DFT) run float32;
- ``auto`` (the default): ``int8`` for a Q/DQ file, else :data:`AUTO_FLOAT` (bf16 where the
  CPU has it, else f32). The run behind that choice (``engines/default/backends.json``,
  ``docs/backends.md``): on the whole test split bf16 moves none of the report's headline figures
  (0.00 points), calls every noise type as float32 does and keeps every denoised pixel within one
  grey level; its defect scores move by up to 0.031 (2% of frames by more than 0.01), which
  changes 1-3 of 715 decisions in some conditions, either way. It runs the float32 set about
  twice as fast as float32.

OpenVINO runs a Q/DQ file's quantized layers as int8 whatever the hint, so ``f32``/``bf16`` on
an INT8 set, or ``int8`` on a float32 set, is refused with what to set instead: the precision
always names what actually runs.

Static batch shapes: besides one model compiled with a dynamic batch (any ``N``, any frame
size), one model per batch size ``1..static_batches`` (at most :data:`MAX_STATIC_BATCHES`) is
compiled with the whole input shape fixed (``model.reshape``) at the set's frame size; a batch of
such a size runs on its own static model, any other on the dynamic one. No padding to a compiled
size: a frame of padding costs a frame's compute, more than the static shape saves.

Measured on the 2-core AMD EPYC (Zen 4: AVX512_BF16 and VNNI, no AMX) these sessions run on,
shared with other work, 300x300 photographs. The whole pipeline (``Pipeline.run``) on mixed-noise
batches of 1,3,8,2,5,8,1,4,6,8,7,2 frames in turn (a daemon's partial batches), static and dynamic
alternated 12 times (f32: 8), median of the paired ratios: static/dynamic = 0.93 at bf16, 0.94 at
int8, 0.97 at f32. Stage by stage the noise classifier (a small network, where per-call work
dominates) gains 30-45% at every precision, the autoencoder and the defect classifier 0-15%,
within this machine's noise; a dynamic model redoes shape inference whenever the batch size
changes, which partial batches do nearly every call. The cost is memory, a compiled model and its
buffers per size (a pipeline after batches 1..8: f32 481 -> 1009 MB, bf16 308 -> 650 MB, int8 418
-> 665 MB; ONNX Runtime float32 317 MB), and start-up: nine compiles a stage, 1-5 s for a pipeline
the first time, under 1.3 s from the model cache. So static shapes are the default
(``engines.static_shapes``; the daemon compiles ``1..min(batching.max_batch, 8)``);
``engines.static_shapes = false`` keeps the dynamic model alone, for a host short of memory.

Model cache: compiled models go to OpenVINO's ``CACHE_DIR`` (``engines.cache_dir``; default
``$CACHE_DIRECTORY/openvino`` under systemd, else ``$XDG_CACHE_HOME`` or
``~/.cache/line-inspector/openvino``): one blob per model and input shape (nine a stage with
static shapes), so a restart loads blobs instead of compiling (the denoiser: 158 ms to compile,
about 40 ms from its blob). On the CPU a blob holds the model before the precision is applied,
so f32, bf16 and int8 of one file share it and each still runs its own precision. A folder that
cannot be created or written is logged and the engine compiles without a cache.

Two OpenVINO 2026.4 CPU-plugin faults this engine works around, each found by comparing with ONNX
Runtime on the real photographs and pinned by ``tests/integration/test_openvino.py``: a float past
255 cast to uint8 wraps inside a fused kernel (:func:`saturate_uint8_outputs`), and a signed int8
quantizer after a Concat gets an unsigned convolution (:func:`quantize_concat_inputs`).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from inspector.backends.base import EngineError

PRECISIONS = ("auto", "f32", "bf16", "int8")
# What ``auto`` runs on a float32 set (where the CPU has bf16): chosen by the run in
# engines/default/backends.json (no headline figure of the report moves by more than 0.2 points).
AUTO_FLOAT = "bf16"
DEFAULT_STATIC_BATCHES = 8
MAX_STATIC_BATCHES = 8  # batch sizes above it run on the dynamic model (memory grows with every size)
DEVICE = "CPU"

_core: Any = None


def _ov() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise EngineError(
            f"the openvino backend needs the openvino package ({exc}): pip install openvino "
            "(a runtime dependency of line-inspector; reinstall the project to get it)"
        ) from exc
    return openvino


def core() -> Any:
    """The process's one ``openvino.Core`` (loading the CPU plugin once)."""
    global _core
    if _core is None:
        _core = _ov().Core()
    return _core


def cpu_has_bf16() -> bool:
    """The CPU plugin reports bf16 kernels (AVX512_BF16 or AMX)."""
    return "BF16" in list(core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def default_cache_dir() -> Path:
    """``$CACHE_DIRECTORY/openvino`` under systemd (``CacheDirectory=``), else the user's cache folder."""
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0]) / "openvino"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "line-inspector" / "openvino"


def is_qdq(model: Any) -> bool:
    """An ONNX file with QuantizeLinear / DequantizeLinear (OpenVINO reads them as FakeQuantize)."""
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def quantize_concat_inputs(model: Any) -> int:
    """Rewrite ``Concat(a, b, ...) -> FakeQuantize -> Convert(int8)`` as ``Concat(Convert(FakeQuantize(a)), ...)``.

    The same arithmetic (a per-tensor quantizer applied to each input, then the integer tensors
    concatenated), in the form OpenVINO 2026.4's CPU plugin compiles correctly. In the first form its
    low-precision transformations give the convolution after the Concat an unsigned (u8) input
    although the quantizer is signed int8 (zero point 0, negative values), and the convolution
    comes out wrong: on the shipped INT8 set's noise classifier (the spectrum channels are
    concatenated before its first convolution) every Gaussian-noise photograph was called
    "periodic". A minimal Q/DQ graph - two inputs, Concat, QuantizeLinear/DequantizeLinear int8,
    Conv - reproduces it; with the rewrite the first convolution runs i8 and the logits equal
    ONNX Runtime's. Only per-tensor quantizers (scalar ranges) whose Concat feeds nothing else are
    rewritten. Returns how many were.
    """
    ops = importlib.import_module("openvino.opset13")
    done = 0
    for fq in model.get_ordered_ops():
        if fq.get_type_name() != "FakeQuantize":
            continue
        cat = fq.input_value(0).get_node()
        if cat.get_type_name() != "Concat" or cat.get_input_size() < 2:
            continue
        if len(cat.output(0).get_target_inputs()) != 1:
            continue
        users = [t.get_node() for t in fq.output(0).get_target_inputs()]
        if len(users) != 1 or users[0].get_type_name() != "Convert":
            continue
        ranges = [fq.input_value(i) for i in range(1, 5)]
        if not all(
            r.get_node().get_type_name() == "Constant" and int(np.prod(list(r.get_shape()))) == 1
            for r in ranges
        ):
            continue
        to_int = users[0]
        levels = int(fq.get_attributes()["levels"])
        parts = [
            ops.convert(
                ops.fake_quantize(cat.input_value(i), *ranges, levels), to_int.get_output_element_type(0)
            )
            for i in range(cat.get_input_size())
        ]
        joined = ops.concat(parts, int(cat.get_attributes()["axis"]))
        for target in list(to_int.output(0).get_target_inputs()):
            target.replace_source_output(joined.output(0))
        done += 1
    if done:
        model.validate_nodes_and_infer_types()
    return done


def saturate_uint8_outputs(model: Any) -> int:
    """Clamp to [0, 255] ahead of every float -> uint8 Convert that makes an output (the autoencoder's frames).

    OpenVINO 2026.4's CPU plugin converts a float past 255 to uint8 two ways: saturating (255) in its
    Convert node, wrapping (256 -> 0, 400 -> 144) where the Convert is fused into a generated kernel,
    as it is in a static-shape model. The shipped autoencoder clips before its cast, so it never
    gets there; the clamp (fused into the same kernel, free) makes saturation the engine's contract
    for any graph. Returns how many outputs were clamped.
    """
    ov = _ov()
    ops = importlib.import_module("openvino.opset13")
    done = 0
    for result in model.get_results():
        cast = result.input_value(0).get_node()
        if (
            cast.get_type_name() == "Convert"
            and cast.get_output_element_type(0) == ov.Type.u8
            and cast.get_input_element_type(0).is_real()
        ):
            cast.input(0).replace_source_output(ops.clamp(cast.input_value(0), 0.0, 255.0).output(0))
            done += 1
    return done


def resolve_precision(requested: str, qdq: bool, has_bf16: bool, where: str) -> tuple[str, str | None]:
    """The precision that runs and, where it differs from the one asked for, why.

    Raises :class:`EngineError` for a precision that does not fit the file (``int8`` on a float32
    file, ``f32``/``bf16`` on a Q/DQ one).
    """
    if requested not in PRECISIONS:
        raise EngineError(f"unknown OpenVINO precision {requested!r}; valid: {', '.join(PRECISIONS)}")
    if requested == "auto":
        if qdq:
            return "int8", None
        if AUTO_FLOAT == "bf16" and not has_bf16:
            return "f32", "this CPU has no bf16 kernels (no AVX512_BF16 or AMX): running float32"
        return AUTO_FLOAT, None
    if requested == "int8" and not qdq:
        raise EngineError(
            f"precision int8 runs the Q/DQ files of an INT8 engine set, and {where} has none: set "
            "engines.path to an INT8 set (e.g. engines/default-int8; `inspector-build quantize` or "
            "`inspector rebuild --int8-out` writes one), or engines.precision to auto, f32 or bf16"
        )
    if requested in ("f32", "bf16") and qdq:
        raise EngineError(
            f"{where} is an INT8 (Q/DQ) file: OpenVINO runs its quantized layers as int8 whatever the "
            f"precision, so {requested} would not be what runs; set engines.precision to int8 (or auto), "
            "or engines.path to a float32 set"
        )
    if requested == "bf16" and not has_bf16:
        return (
            "f32",
            "precision bf16 asked for, but this CPU has no bf16 kernels (no AVX512_BF16 or AMX): running float32",
        )
    return requested, None


class OpenVinoEngine:
    """An ONNX model compiled by OpenVINO for the CPU.

    ``precision``: auto | f32 | bf16 | int8 (see the module docstring); :attr:`precision` is what
    runs, :attr:`fallback` says why when that differs from what was asked. ``threads``: OpenVINO's
    ``INFERENCE_NUM_THREADS`` (0 = its default, one per core); ``intra_op_threads`` is taken as
    the same thing, so the ONNX Runtime setting carries over. ``static_batches``: compile a
    static-shape model per batch size 1..this at ``frame_size`` (0: the dynamic model only).
    ``cache_dir``: OpenVINO's model cache (None: :func:`default_cache_dir`; ``""``: no cache).
    """

    def __init__(
        self,
        path: Path,
        name: str,
        precision: str = "auto",
        cache_dir: str | Path | None = None,
        threads: int = 0,
        static_batches: int = DEFAULT_STATIC_BATCHES,
        frame_size: tuple[int, int] | int | None = (300, 300),
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
    ) -> None:
        del inter_op_threads  # ONNX Runtime's; OpenVINO's LATENCY hint runs one stream
        self.name = name
        self.path = Path(path)
        if not self.path.is_file():
            raise EngineError(f"engine file {str(self.path)!r} for stage {name!r} does not exist")
        ov = _ov()
        c = core()
        where = f"{str(self.path)!r} (stage {name!r})"
        try:
            model = c.read_model(str(self.path))
        except Exception as exc:
            raise EngineError(f"OpenVINO cannot read {where}: {exc}") from exc
        if len(model.inputs) != 1:
            raise EngineError(
                f"{str(self.path)!r} has {len(model.inputs)} inputs; a stage engine takes one frames tensor"
            )
        self.requested_precision = precision
        qdq = is_qdq(model)
        self.precision, self.fallback = resolve_precision(precision, qdq, cpu_has_bf16(), where)
        self.rewritten = quantize_concat_inputs(model) if qdq else 0
        saturate_uint8_outputs(model)
        if self.fallback:
            import structlog

            structlog.get_logger().warning(
                "openvino_precision_fallback",
                stage=name,
                requested=precision,
                running=self.precision,
                why=self.fallback,
            )
        threads = int(intra_op_threads if intra_op_threads is not None and not threads else threads)
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.cache_dir = self._cache(cache_dir)
        if self.cache_dir is not None:
            config["CACHE_DIR"] = str(self.cache_dir)
        self.config = config
        if isinstance(frame_size, int):
            frame_size = (frame_size, frame_size)
        self.frame_size = tuple(frame_size) if frame_size is not None else None
        self.input_name = model.inputs[0].get_any_name()
        self._requests: dict[int, Any] = {}  # batch size -> request of its static model
        self._dynamic: Any = None
        try:
            self._dynamic = c.compile_model(model, DEVICE, config).create_infer_request()
            if self.frame_size is not None:
                h, w = self.frame_size
                for n in range(1, min(int(static_batches), MAX_STATIC_BATCHES) + 1):
                    m = model.clone()
                    m.reshape({self.input_name: ov.PartialShape([n, 1, h, w])})
                    self._requests[n] = c.compile_model(m, DEVICE, config).create_infer_request()
        except Exception as exc:
            self.close()
            raise EngineError(
                f"OpenVINO cannot compile {where} at precision {self.precision}: {exc}"
            ) from exc

    def _cache(self, cache_dir: str | Path | None) -> Path | None:
        if cache_dir is not None and str(cache_dir) == "":
            return None
        folder: Path | str = "(no home folder)"
        try:
            folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            folder.mkdir(parents=True, exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise PermissionError(f"{folder} is not writable")
        except (OSError, RuntimeError, KeyError) as exc:  # Path.home() raises RuntimeError without one
            import structlog

            structlog.get_logger().warning(
                "openvino_cache_unavailable",
                stage=self.name,
                folder=str(folder),
                error=str(exc),
                effect="compiling without a model cache: every start compiles again",
            )
            return None
        return Path(folder)

    @property
    def static_batches(self) -> tuple[int, ...]:
        return tuple(sorted(self._requests))

    def infer(self, frames: np.ndarray) -> np.ndarray:
        if self._dynamic is None:
            raise EngineError(f"engine {self.name!r} is closed")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1] != 1:
            raise EngineError(
                f"engine {self.name!r} takes uint8 (N, 1, H, W) frames, got {frames.dtype} {frames.shape}"
            )
        n = frames.shape[0]
        request = self._dynamic
        if n in self._requests and self.frame_size is not None and tuple(frames.shape[2:]) == self.frame_size:
            request = self._requests[n]
        try:
            # share_outputs=False (the default): the result is a copy, not the request's buffer that
            # the next batch overwrites.
            out = request.infer({0: np.ascontiguousarray(frames)}, share_inputs=True)[0]
        except Exception as exc:
            raise EngineError(f"engine {self.name!r} failed on a batch of {n}: {exc}") from exc
        return np.asarray(out)

    def close(self) -> None:
        self._dynamic = None
        self._requests = {}
