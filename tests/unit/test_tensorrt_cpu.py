"""What of the TensorRT path can be checked without a GPU: profiles, plan checks, clean import and errors."""

from __future__ import annotations

import importlib.util

import pytest

from inspector.backends import EngineError, open_engine
from inspector.backends.tensorrt import TensorRTUnavailable, check_plans, plan_profiles_for, select_profile

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None


def test_profiles_cover_every_batch_up_to_the_max():
    for max_batch in (1, 2, 3, 8, 16, 64):
        profiles = plan_profiles_for(max_batch)
        for b in range(1, max_batch + 1):
            lo, opt, hi = profiles[select_profile(profiles, b)]
            assert lo <= b <= hi and lo <= opt <= hi
        covered = sorted(b for lo, _o, hi in profiles for b in range(lo, hi + 1))
        assert covered == list(range(1, max_batch + 1)), "profiles must neither overlap nor leave gaps"


def test_batch_beyond_the_profiles_is_refused():
    with pytest.raises(EngineError, match="rebuild with a larger max_batch"):
        select_profile(plan_profiles_for(8), 9)


def test_plans_from_another_machine_are_refused():
    meta = {"tensorrt": "11.2.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    check_plans(meta, "11.2.0", {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    with pytest.raises(EngineError, match="rebuild them here"):
        check_plans(meta, "11.3.0", {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    with pytest.raises(EngineError, match="NVIDIA L4"):
        check_plans(meta, "11.2.0", {"gpu": "NVIDIA L4", "compute_capability": "8.9"})


def test_a_stale_or_damaged_plan_is_refused(tmp_path):
    from inspector.backends.tensorrt import check_plan_record
    from inspector.manifest import sha256_file

    onnx, plan = tmp_path / "defect.onnx", tmp_path / "defect.plan"
    onnx.write_bytes(b"onnx v1")
    plan.write_bytes(b"plan bytes")
    rec = {"onnx_sha256": sha256_file(onnx), "sha256": sha256_file(plan)}
    check_plan_record(rec, onnx, plan)
    onnx.write_bytes(b"onnx v2")  # the set was updated, the plans were not rebuilt
    with pytest.raises(EngineError, match="stale"):
        check_plan_record(rec, onnx, plan)
    onnx.write_bytes(b"onnx v1")
    plan.write_bytes(b"plan bytes, truncated")
    with pytest.raises(EngineError, match="does not match its sha256"):
        check_plan_record(rec, onnx, plan)


def test_tensorrt_older_than_11_is_refused_for_building():
    from inspector.backends.tensorrt import require_strongly_typed

    require_strongly_typed("11.0.0.1")
    require_strongly_typed("12.1")
    with pytest.raises(TensorRTUnavailable, match="TensorRT 11 or newer"):
        require_strongly_typed("10.13.0")


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt and pycuda are installed here")
def test_without_the_gpu_extra_the_backend_says_what_to_install(tmp_path):
    with pytest.raises(TensorRTUnavailable, match=r"install the gpu extra"):
        open_engine("tensorrt", tmp_path / "noise.onnx", "noise")


def test_unknown_backend_lists_the_valid_ones(tmp_path):
    with pytest.raises(EngineError, match="onnxruntime, openvino, tensorrt"):
        open_engine("nonesuch", tmp_path / "x.onnx", "noise")


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs tensorrt, pycuda and an NVIDIA GPU")
def test_tensorrt_plans_match_onnxruntime(tiny_engines):  # pragma: no cover - GPU only
    import numpy as np

    from inspector.backends.trt_build import build_set
    from inspector.pipeline import Pipeline
    from inspector.tools.synthetic import ImpellerGenerator

    build_set(tiny_engines, max_batch=8)
    frames = ImpellerGenerator(seed=2).batch(0, 8)[0]
    cpu = Pipeline.from_manifest(tiny_engines).run(frames)
    gpu = Pipeline.from_manifest(tiny_engines, backend="tensorrt").run(frames)
    np.testing.assert_allclose([r.score for r in gpu], [r.score for r in cpu], atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs tensorrt, pycuda and an NVIDIA GPU")
def test_streamed_path_on_the_gpu_matches_the_cpu_pipeline(tmp_path):  # pragma: no cover - GPU only
    """The CUDA-stream schedule on a real GPU, every route included (the set trained on generated
    impellers routes each noise type), batches overlapped as the worker runs them; and the median plan
    equal to the CPU function."""
    import shutil

    import numpy as np

    from inspector import noise as nz
    from inspector.backends.tensorrt import TensorRTEngine, streamed_pipeline
    from inspector.backends.trt_build import build_set
    from inspector.denoise import adaptive_median
    from inspector.pipeline import BatchRunner, Pipeline
    from inspector.tools.synthetic import ImpellerGenerator
    from tests.conftest import SYNTHETIC

    engines = tmp_path / "set"
    shutil.copytree(SYNTHETIC, engines)
    build_set(engines, max_batch=8)
    rng = np.random.default_rng(5)
    clean = ImpellerGenerator(seed=2).batch(0, 8)[0]
    batches = [
        np.stack([nz.apply_random(f, nz.NOISE_TYPES[(b + i) % 4], rng) for i, f in enumerate(clean)])
        for b in range(4)
    ]
    cpu = Pipeline.from_manifest(engines)
    runner = BatchRunner(
        streamed_pipeline(Pipeline.from_manifest(engines, backend="tensorrt"), 8, (300, 300))
    )
    done = []
    for i, b in enumerate(batches):
        done += runner.step(b, i)
    done += runner.step(None)
    assert [p for p, _ in done] == [0, 1, 2, 3]
    for (_i, got), b in zip(done, batches, strict=True):
        want = cpu.run(b)
        assert [r.noise_type for r in got] == [r.noise_type for r in want]
        np.testing.assert_allclose([r.score for r in got], [r.score for r in want], atol=2e-3)
    median = TensorRTEngine(engines / "tensorrt" / "median.onnx", "median", plans_dir=engines / "tensorrt")
    noisy = np.stack([nz.apply_random(f, "salt_pepper", rng) for f in clean])
    np.testing.assert_array_equal(
        median.infer(noisy[:, None])[:, 0], np.stack([adaptive_median(f) for f in noisy])
    )
    median.close()
    runner.pipe.close()
    cpu.close()


def test_bound_regions_are_strided_to_tensorrts_256_byte_alignment():
    from inspector.backends.tensorrt import TRT_ALIGNMENT, aligned

    assert TRT_ALIGNMENT == 256
    assert [aligned(n) for n in (0, 1, 255, 256, 257, 90000)] == [0, 256, 256, 256, 512, 90112]
    assert 90000 % 256 != 0 and all(aligned(90000) * i % 256 == 0 for i in range(64))
    assert aligned(100, 512) == 512


def test_build_plan_checks_what_the_builder_refuses(tmp_path, monkeypatch):
    """``add_optimization_profile`` answers -1 for a profile it refuses and ``set_timing_cache`` False for a
    cache from another TensorRT or GPU (a fake TensorRT builder; ``set_shape`` raises on its own)."""
    import sys
    import types

    pytest.importorskip("onnx")
    from inspector.backends.median_graph import median_model
    from inspector.backends.trt_build import build_plan

    calls: list = []

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = (name, lo, opt, hi)

    class Config:
        def set_memory_pool_limit(self, pool, size):
            pass

        def create_timing_cache(self, data):
            return bytes(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("cache", cache))
            return cache in (b"", b"built here")

        def add_optimization_profile(self, prof):
            calls.append(("profile", prof.shapes))
            _name, lo, opt, hi = prof.shapes
            return len(calls) if lo[0] <= opt[0] <= hi[0] else -1

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"built here")

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self):
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"plan"

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.0.0"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Builder = Builder
    trt.OnnxParser = lambda network, logger: types.SimpleNamespace(parse=lambda data: True, num_errors=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    onnx = tmp_path / "median.onnx"
    onnx.write_bytes(median_model(8, 8).SerializeToString())
    plan, cache = tmp_path / "median.plan", tmp_path / "timing.cache"
    cache.write_bytes(b"from another GPU")
    build_plan(onnx, plan, [(1, 1, 4), (5, 8, 8)], (8, 8), cache)
    assert plan.read_bytes() == b"plan" and cache.read_bytes() == b"built here"
    assert calls[:2] == [("cache", b"from another GPU"), ("cache", b"")]  # refused, so a fresh cache
    assert [c[1] for c in calls[2:]] == [
        ("frames", (1, 1, 8, 8), (1, 1, 8, 8), (4, 1, 8, 8)),
        ("frames", (5, 1, 8, 8), (8, 1, 8, 8), (8, 1, 8, 8)),
    ]
    with pytest.raises(
        RuntimeError, match=r"refused the optimization profile for input 'frames' min \(5, 1, 8, 8\)"
    ):
        build_plan(onnx, plan, [(5, 8, 4)], (8, 8), cache)
