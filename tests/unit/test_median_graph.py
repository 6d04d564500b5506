"""The GPU path's impulse median as an ONNX graph equals the CPU function, pixel for pixel."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from inspector import noise as nz
from inspector.backends.median_graph import median_model
from inspector.denoise import adaptive_median
from inspector.tools.synthetic import ImpellerGenerator

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(
        median_model(300, 300).SerializeToString(), providers=["CPUExecutionProvider"]
    )


def run(session: ort.InferenceSession, frames: np.ndarray) -> np.ndarray:
    return session.run(None, {"frames": frames[:, None]})[0][:, 0]


@pytest.mark.parametrize("density", [0.02, 0.1, 0.3, 0.6, 0.9])
def test_graph_equals_adaptive_median_at_every_density(session, density):
    # Dense noise is where the GPU kernel disagreed: its 5x5 step had no further fallback.
    rng = np.random.default_rng(int(density * 100))
    clean = ImpellerGenerator(seed=4).batch(0, 4)[0]
    frames = clean.copy()
    for f in frames:
        mask = rng.random(f.shape) < density
        f[mask] = rng.choice(np.array([0, 255], np.uint8), mask.sum())
    got = run(session, frames)
    for g, f in zip(got, frames, strict=True):
        want = adaptive_median(f)
        assert np.array_equal(g, want), f"{np.count_nonzero(g != want)} pixels differ"
    # Frames with no impulse come back unchanged; the noise model's own salt-and-pepper too.
    assert np.array_equal(run(session, np.clip(clean, 1, 254)), np.clip(clean, 1, 254))
    noisy = np.stack([nz.apply_random(c, "salt_pepper", rng) for c in clean])
    assert np.array_equal(run(session, noisy), np.stack([adaptive_median(f) for f in noisy]))


def test_edge_cases_all_black_all_white_and_a_small_frame():
    s = ort.InferenceSession(median_model(7, 9).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    frames = np.stack(
        [
            np.zeros((7, 9), np.uint8),
            np.full((7, 9), 255, np.uint8),
            rng.choice(np.array([0, 255, 128], np.uint8), (7, 9)),
            rng.integers(0, 256, (7, 9), dtype=np.uint8),
        ]
    )
    got = run(s, frames)
    for g, f in zip(got, frames, strict=True):
        assert np.array_equal(g, adaptive_median(f))
