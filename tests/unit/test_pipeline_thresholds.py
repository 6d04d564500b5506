"""Per-noise-type decision thresholds in the pipeline (no engines needed: decisions only)."""

import numpy as np
import pytest

from inspector.noise import NOISE_TYPES
from inspector.pipeline import Pipeline


def _decide(pipe: Pipeline, kinds: list[str], scores: list[float]):
    idx = np.array([NOISE_TYPES.index(k) for k in kinds])
    return pipe.results(idx, np.ones(len(kinds)), ["none"] * len(kinds), np.array(scores), {})


def test_each_frame_is_decided_at_its_noise_types_threshold():
    pipe = Pipeline({}, threshold=0.05, thresholds={"clean": 0.4, "gaussian": 0.02})
    res = _decide(pipe, ["clean", "clean", "gaussian", "periodic", "periodic"], [0.3, 0.5, 0.03, 0.04, 0.06])
    assert [r.defective for r in res] == [False, True, True, False, True]
    # periodic has no threshold of its own: the single one
    assert [r.threshold for r in res] == [0.4, 0.4, 0.02, 0.05, 0.05]
    assert pipe.threshold_for("salt_pepper") == 0.05


def test_single_threshold_without_per_type_ones():
    pipe = Pipeline({}, threshold=0.5)
    res = _decide(pipe, list(NOISE_TYPES), [0.49, 0.5, 0.51, 0.1])
    assert [r.defective for r in res] == [False, True, True, False]
    assert {r.threshold for r in res} == {0.5}


def test_unknown_noise_type_in_thresholds_is_refused():
    with pytest.raises(ValueError, match="unknown noise type"):
        Pipeline({}, threshold=0.5, thresholds={"speckle": 0.1})


def test_onnx_runtime_sessions_do_not_spin():
    """Three stage sessions in one process, each with its own thread pool: spinning threads of one stage
    would steal the cores of the next (and of the sinusoid fit, ingest, the publisher). bench/profile.json
    has the measurement; here the setting itself, on the daemon's own loader path."""
    from pathlib import Path

    from inspector.pipeline import Pipeline

    repo = Path(__file__).resolve().parents[2]
    pipe = Pipeline.from_manifest(repo / "engines" / "synthetic")
    for engine in pipe.engines.values():
        opts = engine._session.get_session_options()  # type: ignore[attr-defined]
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    pipe.close()
