"""Fixtures shared by the system tests."""

from __future__ import annotations

import numpy as np
import pytest

from inspector import noise as nz
from inspector.tools.synthetic import ImpellerGenerator


@pytest.fixture(scope="module")
def pool() -> list[np.ndarray]:
    """24 generated impellers, the four noise types in turn."""
    g = ImpellerGenerator(seed=5)
    rng = np.random.default_rng(1)
    return [nz.apply_random(g.sample(i).image, nz.NOISE_TYPES[i % 4], rng) for i in range(24)]
