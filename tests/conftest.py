"""Shared fixtures: a deterministic synthetic-frame source and one tiny engine set built per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspector.synthetic import ImpellerGenerator

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "engines" / "default"


@pytest.fixture(scope="session")
def frames() -> tuple[np.ndarray, np.ndarray]:
    """Sixteen deterministic frames (seed 1234) and their ok/defective labels."""
    return ImpellerGenerator(seed=1234).batch(0, 16)


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete engine set from the `tiny` profile: real training for a few steps, real export, real report."""
    from engines.cli import main

    root = tmp_path_factory.mktemp("tiny")
    out = root / "engines"
    rc = main(
        [
            "all",
            "--profile",
            "tiny",
            "--seed",
            "3",
            "--checkpoints",
            str(root / "ck"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    return out
