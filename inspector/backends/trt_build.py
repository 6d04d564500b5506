"""TensorRT plans from an engine set's ONNX files, on the machine that will run them (TensorRT 11 API).

Plans are tied to the TensorRT version and the GPU model, so they are built
offline on the target (``inspector rebuild``, run by the systemd rebuild
unit) and recorded in ``<set>/tensorrt/plans.json`` with the TensorRT version,
GPU name and compute capability; the runtime refuses a plan built elsewhere.

TensorRT 11 networks are always strongly typed: there are no FP16/INT8
builder flags and no calibrators. Precision comes from the ONNX file itself:
the float32 export, or the Q/DQ INT8 model of ``inspector-build quantize``.

One optimization profile per batch range the daemon uses (one execution
context per profile); a timing cache is kept beside the plans so rebuilds are
fast. Not run in this project's sessions (no GPU was lent): see docs/gpu.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inspector.backends.tensorrt import (
    TensorRTUnavailable,
    gpu_identity,
    plan_profiles_for,
    require_strongly_typed,
)
from inspector.manifest import load_manifest, sha256_file

WORKSPACE_BYTES = 1 << 30


@dataclass(frozen=True)
class PlanRecord:
    stage: str
    file: str
    sha256: str
    onnx_sha256: str
    profiles: list[tuple[int, int, int]]
    frame: tuple[int, int]


def _trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "tensorrt is not importable: install the gpu extra (pip install '.[gpu]') on the GPU host"
        ) from exc
    require_strongly_typed(trt.__version__)
    return trt


def uint8_only_through_casts(onnx_bytes: bytes) -> bytes:
    """The model with every UINT8 tensor consumed only by Cast nodes, which is how TensorRT takes UINT8
    (network I/O through a cast). The exported denoise graph reads its UINT8 input's shape with ``Shape``
    nodes; those read the shape of the input's float Cast instead (the same shape). Outputs unchanged."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load_from_string(onnx_bytes)
    g = m.graph
    u8 = {i.name for i in g.input if i.type.tensor_type.elem_type == TensorProto.UINT8}
    for name in u8:
        float_of = None
        for k, n in enumerate(g.node):  # an existing float Cast of the input (moved first), else a new one
            if (
                n.op_type == "Cast"
                and list(n.input) == [name]
                and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)
            ):
                float_of = n.output[0]
                cast = onnx.NodeProto()
                cast.CopyFrom(n)
                del g.node[k]
                g.node.insert(0, cast)
                break
        if float_of is None:
            float_of = f"{name}__as_float"
            g.node.insert(0, helper.make_node("Cast", [name], [float_of], to=TensorProto.FLOAT))
        for n in g.node:
            if n.op_type != "Cast":
                for k, inp in enumerate(n.input):
                    if inp == name:
                        if n.op_type != "Shape":
                            raise ValueError(
                                f"{n.op_type} node {n.name!r} reads UINT8 {name!r}: not rewritable"
                            )
                        n.input[k] = float_of
    onnx.checker.check_model(m)
    return m.SerializeToString()


def build_plan(
    onnx: Path, plan: Path, profiles: list[tuple[int, int, int]], frame: tuple[int, int], cache: Path
) -> None:
    """ONNX -> serialized TensorRT plan with one optimization profile per (min, opt, max) batch."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network()  # strongly typed: precision comes from the ONNX file
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(uint8_only_through_casts(onnx.read_bytes())):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    timing = config.create_timing_cache(cache.read_bytes() if cache.is_file() else b"")
    # A cache from another TensorRT version or GPU is refused (False): start a fresh one (saved below).
    if not config.set_timing_cache(timing, ignore_mismatch=False) and not config.set_timing_cache(
        config.create_timing_cache(b""), ignore_mismatch=False
    ):
        raise RuntimeError(f"TensorRT refused even an empty timing cache while building {onnx}")
    h, w = frame
    for lo, opt, hi in profiles:
        prof = builder.create_optimization_profile()
        # The Python binding raises on its own when setDimensions refuses a shape (no bool comes back).
        prof.set_shape("frames", (lo, 1, h, w), (opt, 1, h, w), (hi, 1, h, w))
        if config.add_optimization_profile(prof) < 0:
            raise RuntimeError(
                f"TensorRT refused the optimization profile for input 'frames' min {(lo, 1, h, w)}, opt "
                f"{(opt, 1, h, w)}, max {(hi, 1, h, w)} of {onnx}: it needs min <= opt <= max and the "
                "network's input named 'frames'"
            )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a plan for {onnx} (see the log above)")
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(bytes(serialized))
    cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def build_set(engines: Path, max_batch: int = 8) -> dict[str, Any]:
    """Plans for every stage of an engine set, into ``<engines>/tensorrt/``; raises TensorRTUnavailable without a GPU."""
    trt = _trt()
    ident = gpu_identity()  # raises TensorRTUnavailable without pycuda or a GPU
    manifest = load_manifest(engines)
    out = engines / "tensorrt"
    frame = (manifest.frame_size, manifest.frame_size)
    profiles = plan_profiles_for(max_batch)
    records = []
    for stage, entry in manifest.stages.items():
        plan = out / f"{stage}.plan"
        build_plan(engines / entry.file, plan, profiles, frame, out / "timing.cache")
        records.append(PlanRecord(stage, plan.name, sha256_file(plan), entry.sha256, profiles, frame))
    # The impulse median as a plan too (inspector.backends.median_graph): no CUDA toolkit at run time,
    # and the same graph ONNX Runtime checks against the CPU function in CI.
    from inspector.backends.median_graph import median_model

    out.mkdir(parents=True, exist_ok=True)
    median_onnx = out / "median.onnx"
    median_onnx.write_bytes(median_model(*frame).SerializeToString())
    plan = out / "median.plan"
    build_plan(median_onnx, plan, profiles, frame, out / "timing.cache")
    records.append(
        PlanRecord("median", plan.name, sha256_file(plan), sha256_file(median_onnx), profiles, frame)
    )
    meta = {
        "tensorrt": trt.__version__,
        **ident,
        "precision": manifest.precision,
        "plans": [asdict(r) for r in records],
    }
    (out / "plans.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
