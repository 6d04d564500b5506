"""The OpenVINO backend with real compiled models: every stage against ONNX Runtime on the real photographs.

Per precision - f32 and bf16 on the shipped float32 set against ONNX Runtime float32, int8 on the
shipped INT8 set against ONNX Runtime running that same set - on a few dozen of the study's test
photographs, clean and at each main noise level: noise-type calls identical, denoised frames within
one grey level (int8: all but a few pixels), defect scores within 0.01 (f32; bf16 and int8 within
their measured bounds, below). Each comparison runs twice, in batches of 8 (the static
shape models) and in one batch (the dynamic model). Also: the uint8 output saturates, the model cache
fills and is reused, the precision refusals, the pipeline and the daemon's loader end to end.

Needs the photographs (``../shared/data/casting``): skipped with a message without them, a failure
where INSPECTOR_REQUIRE_DATA is set. The figures over the whole test split are in
``engines/default/backends.json`` (``python -m engines.backends_report``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inspector import noise as nz
from inspector.backends import EngineError, open_engine
from inspector.backends.openvino import OpenVinoEngine, resolve_precision
from inspector.pipeline import Pipeline, softmax
from inspector.tools.folder import FolderDataset, read_gray
from tests.conftest import SHIPPED

INT8 = SHIPPED.parent / "default-int8"
MAIN = [lv for lv in nz.REPORT_LEVELS if lv.main]
GAUSSIAN = next(lv for lv in MAIN if lv.kind == "gaussian")
# precision -> (set, the set's ONNX Runtime reference)
CASES = {"f32": SHIPPED, "bf16": SHIPPED, "int8": INT8}
# Defect-score tolerances, measured over the whole test split (clean, Gaussian, denoised Gaussian;
# engines/default/backends.json and docs/backends.md). f32 meets the 0.01 (its largest
# difference is 1e-6). bf16 does not everywhere: 2% of frames move by more than 0.01, the largest by
# 0.031, where the score is mid-range; no headline figure of the report moves. The INT8 set against
# ONNX Runtime's INT8: two int8 implementations, each rounding its requantization steps its own way
# (largest 0.022). On the autoencoder ONNX Runtime itself departs from the Q/DQ arithmetic (the graph
# run in float, its optimizations off) by up to 7 grey levels on 0.07% of pixels; OpenVINO departs from
# ONNX Runtime by up to 8 on 0.013%.
SCORE_TOLERANCE = {"f32": 0.01, "bf16": 0.035, "int8": 0.03}
INT8_DENOISE_SHARE_ABOVE_1 = 0.005


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the module: each model compiles once."""
    return tmp_path_factory.mktemp("ov-cache")


@pytest.fixture(scope="module")
def photos(casting: Path) -> dict[str, np.ndarray]:
    """32 test photographs (16 defective, 16 ok), clean and at each main noise level (seeded)."""
    test = FolderDataset.scan(casting, "test")
    labels = np.array(test.labels)
    pick = np.concatenate([np.flatnonzero(labels == c)[::23][:16] for c in (1, 0)])
    clean = np.stack([read_gray(test.files[i]) for i in pick])
    out = {}
    for li, lv in enumerate(MAIN):
        out[lv.name] = (
            clean
            if lv.kind == "clean"
            else np.stack(
                [nz.apply_level(f, lv, np.random.default_rng([7, li, i])) for i, f in enumerate(clean)]
            )
        )
    return out


@pytest.fixture(scope="module")
def engines(cache: Path) -> dict[str, dict[str, object]]:
    """precision -> stage -> (OpenVINO engine, ONNX Runtime engine on the same file)."""
    out: dict[str, dict[str, object]] = {}
    for precision, root in CASES.items():
        out[precision] = {
            stage: (
                open_engine(
                    "openvino",
                    root / f"{stage}.onnx",
                    stage,
                    precision=precision,
                    cache_dir=cache,
                    static_batches=8,
                ),
                open_engine("onnxruntime", root / f"{stage}.onnx", stage),
            )
            for stage in ("noise", "denoise", "defect")
        }
    return out


def both_ways(engine: OpenVinoEngine, frames: np.ndarray) -> list[np.ndarray]:
    """The engine's output in batches of 8 (its static models) and in one batch (its dynamic model)."""
    x = frames[:, None]
    assert 8 in engine.static_batches and len(x) not in engine.static_batches
    return [np.concatenate([engine.infer(x[i : i + 8]) for i in range(0, len(x), 8)]), engine.infer(x)]


@pytest.mark.parametrize("precision", list(CASES))
def test_noise_type_calls_are_onnxruntimes(precision: str, engines, photos):
    ov, ref = engines[precision]["noise"]
    assert ov.precision == precision
    for name, frames in photos.items():
        want = softmax(ref.infer(frames[:, None]))
        for got in both_ways(ov, frames):
            assert got.dtype == np.float32 and got.shape == want.shape
            assert np.array_equal(softmax(got).argmax(1), want.argmax(1)), (precision, name)
            assert np.abs(softmax(got) - want).max() < 0.05, (precision, name)


@pytest.mark.parametrize("precision", list(CASES))
def test_denoised_frames_are_within_one_grey_level(precision: str, engines, photos):
    ov, ref = engines[precision]["denoise"]
    frames = photos[GAUSSIAN.name]  # the frames the autoencoder is routed
    want = ref.infer(frames[:, None]).astype(np.int16)
    for got in both_ways(ov, frames):
        assert got.dtype == np.uint8 and got.shape == want.shape
        diff = np.abs(got.astype(np.int16) - want)
        if precision == "int8":
            assert (diff > 1).mean() < INT8_DENOISE_SHARE_ABOVE_1, np.bincount(diff.ravel())
            assert diff.mean() < 0.05
        else:
            assert diff.max() <= 1, (precision, np.bincount(diff.ravel()))


@pytest.mark.parametrize("precision", list(CASES))
def test_defect_scores_agree(precision: str, engines, photos):
    ov, ref = engines[precision]["defect"]
    tol = SCORE_TOLERANCE[precision]
    for name in ("clean@0", GAUSSIAN.name):
        frames = photos[name]
        want = softmax(ref.infer(frames[:, None]))[:, 1]
        for got in both_ways(ov, frames):
            assert np.abs(softmax(got)[:, 1] - want).max() <= tol, (precision, name)


def test_the_autoencoders_uint8_output_saturates(engines, cache: Path, tmp_path: Path):
    """A float -> uint8 cast past 255 gives 255 on OpenVINO (saturates), never a wrapped value."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # frames * 2, rounded, cast to uint8: 128..255 go past 255 (ONNX Runtime's cast wraps them).
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["frames"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["f", "two"], ["m"]),
            helper.make_node("Round", ["m"], ["r"]),
            helper.make_node("Cast", ["r"], ["out"], to=TensorProto.UINT8),
        ],
        "double",
        [helper.make_tensor_value_info("frames", TensorProto.UINT8, ["n", 1, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.UINT8, ["n", 1, "h", "w"])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "double.onnx")
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    for precision in ("f32", "bf16"):
        e = OpenVinoEngine(
            tmp_path / "double.onnx", "double", precision=precision, cache_dir=cache, frame_size=16
        )
        out = e.infer(x).ravel().astype(int)
        assert np.array_equal(out, np.minimum(2 * np.arange(256), 255)), precision
    # The shipped autoencoder on frames driven past white: 255 stays 255 (within a level of ONNX Runtime).
    white = np.full((4, 1, 300, 300), 255, np.uint8)
    white[1:, 0] = np.clip(255 + np.random.default_rng(3).normal(0, 40, (3, 300, 300)) - 20, 0, 255).astype(
        np.uint8
    )
    for precision in ("f32", "bf16"):
        ov, ref = engines[precision]["denoise"]
        got, want = ov.infer(white).astype(int), ref.infer(white).astype(int)
        assert got.max() == 255 and (got[want >= 254] >= 253).all()
        assert np.abs(got - want).max() <= 1, precision


def test_model_cache_fills_and_a_second_open_hits_it(tmp_path: Path):
    folder = tmp_path / "cache"
    first = OpenVinoEngine(
        SHIPPED / "noise.onnx", "noise", precision="f32", cache_dir=folder, static_batches=2
    )
    blobs = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert first.cache_dir == folder and len(blobs) == 3  # the dynamic model and batches 1 and 2
    first.close()
    again = OpenVinoEngine(
        SHIPPED / "noise.onnx", "noise", precision="f32", cache_dir=folder, static_batches=2
    )
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == blobs  # loaded, not compiled again
    assert again.infer(np.zeros((2, 1, 300, 300), np.uint8)).shape == (2, 4)
    # The CPU plugin's blob holds the model before its precision is applied: bf16 opens from the same
    # blobs (nothing compiled or written again) and still runs bf16 - its logits are not float32's.
    bf16 = OpenVinoEngine(
        SHIPPED / "noise.onnx", "noise", precision="bf16", cache_dir=folder, static_batches=2
    )
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == blobs
    x = np.random.default_rng(0).integers(0, 256, (2, 1, 300, 300), dtype=np.uint8)
    assert np.abs(bf16.infer(x) - again.infer(x)).max() > 1e-4


def test_precision_must_fit_the_set(cache: Path):
    with pytest.raises(EngineError, match="INT8 engine set"):
        OpenVinoEngine(SHIPPED / "defect.onnx", "defect", precision="int8", cache_dir=cache)
    with pytest.raises(EngineError, match=r"INT8 \(Q/DQ\) file"):
        OpenVinoEngine(INT8 / "defect.onnx", "defect", precision="bf16", cache_dir=cache)
    with pytest.raises(EngineError, match="unknown OpenVINO precision"):
        OpenVinoEngine(SHIPPED / "defect.onnx", "defect", precision="fp16", cache_dir=cache)
    # auto: the INT8 set's Q/DQ runs int8; where a CPU lacks bf16, bf16 runs float32 and says so.
    assert resolve_precision("auto", True, True, "x") == ("int8", None)
    running, why = resolve_precision("bf16", False, False, "x")
    assert running == "f32" and why is not None and "no bf16" in why


def test_missing_openvino_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(EngineError, match="pip install openvino"):
        open_engine("openvino", SHIPPED / "noise.onnx", "noise")


def test_pipeline_and_daemon_loader_run_on_openvino(photos, cache: Path):
    """``Pipeline.from_manifest(..., backend="openvino")`` end to end on mixed noise, beside ONNX Runtime;
    and the daemon's loader builds it from the configuration (backend, precision, cache, max_batch)."""
    from inspector.config import load_settings
    from inspector.daemon.workers.inference import load_pipeline

    frames = np.stack([photos[lv.name][i] for i, lv in zip(range(24), MAIN * 6, strict=False)])
    ref = Pipeline.from_manifest(SHIPPED)
    pipe = Pipeline.from_manifest(SHIPPED, backend="openvino", cache_dir=cache)
    want = [r for i in range(0, 24, 8) for r in ref.run(frames[i : i + 8])]
    got = [r for i in range(0, 24, 8) for r in pipe.run(frames[i : i + 8])]
    for a, b in zip(got, want, strict=True):
        assert a.noise_type == b.noise_type and a.denoiser == b.denoiser and a.threshold == b.threshold
        # Two bf16 stages in a row (a denoised frame a grey level off, then the classifier): the stage
        # tolerances compound where the score is steepest (measured up to 0.016 here).
        assert abs(a.score - b.score) <= 0.05
        if abs(b.score - b.threshold) > 0.05:
            assert a.defective == b.defective
    pipe.close()
    ref.close()
    s = load_settings(
        None,
        [
            f"engines.path={INT8}",
            "engines.backend=openvino",
            "engines.precision=auto",
            f"engines.cache_dir={cache}",
            "batching.max_batch=4",
        ],
    )
    live = load_pipeline(s, (300, 300))
    for stage, e in live.engines.items():
        assert isinstance(e, OpenVinoEngine) and e.precision == "int8", stage
        assert e.static_batches == (1, 2, 3, 4) and e.cache_dir == cache
    assert len(live.run(frames[:3])) == 3
    live.close()


def test_serve_flags_become_overrides(monkeypatch: pytest.MonkeyPatch):
    """``inspector serve --backend openvino --precision bf16`` is the same as the two --set overrides."""
    from inspector import cli

    seen = {}

    def fake_serve(settings, config, overrides):  # the daemon itself is not started here
        seen.update(settings=settings, overrides=overrides)
        return 0

    import inspector.daemon.supervisor as sup

    monkeypatch.setattr(sup, "serve", fake_serve)
    args = cli.build_parser().parse_args(["serve", "--backend", "openvino", "--precision", "bf16"])
    assert cli.cmd_serve(args) == 0
    assert seen["settings"].engines.backend == "openvino" and seen["settings"].engines.precision == "bf16"
    assert seen["overrides"][:2] == ["engines.backend=openvino", "engines.precision=bf16"]
