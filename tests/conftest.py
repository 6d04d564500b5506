"""Shared fixtures: a deterministic synthetic-frame source and one tiny engine set built per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspector.tools.synthetic import ImpellerGenerator

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "engines" / "default"  # trained on the real photographs
SYNTHETIC = (
    REPO / "engines" / "synthetic"
)  # trained on generated impellers: tests and machines without the data
CASTING = (
    REPO.parent / "shared" / "data" / "casting"
)  # the study's photographs, never copied into the repository


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


@pytest.fixture(scope="session")
def casting() -> Path:
    """The casting photographs' folder; skips without it (fails instead where CI demands it)."""
    import os

    if not ((CASTING / "train").is_dir() and (CASTING / "test").is_dir()):
        msg = f"the casting photographs are not at {CASTING} (see its README for where they are published)"
        if os.environ.get("INSPECTOR_REQUIRE_DATA"):
            pytest.fail(msg + "; INSPECTOR_REQUIRE_DATA is set")
        pytest.skip(msg)
    return CASTING
