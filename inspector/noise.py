"""The noise models of EVALUATION.md, seeded, with their training ranges and named report levels.

Noise types (the classes of stage 1, in this order): ``clean``, ``gaussian``,
``salt_pepper``, ``periodic``. Every function takes a ``numpy.random.Generator``
so that a (seed, index) pair always gives the same noisy frame.

| type        | train range                                          | report levels (main)      |
|-------------|------------------------------------------------------|---------------------------|
| gaussian    | sigma 5..50 of 255, zero mean, clipped               | 15, **25**, 50            |
| salt_pepper | density 0.01..0.20, half salt half pepper            | 0.05, **0.10**, 0.20      |
| periodic    | 1..3 sinusoids, amplitude 0.05..0.30 each, 4..60     | one sinusoid, **0.2**,    |
|             | cycles per frame, any orientation and phase          | 20 cycles, random angle   |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NOISE_TYPES = ("clean", "gaussian", "salt_pepper", "periodic")


@dataclass(frozen=True)
class NoiseLevel:
    """A named report level: ``kind`` plus its one parameter (sigma, density or amplitude)."""

    kind: str
    value: float
    main: bool = False

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.value:g}"


REPORT_LEVELS: tuple[NoiseLevel, ...] = (
    NoiseLevel("clean", 0.0, True),
    NoiseLevel("gaussian", 15),
    NoiseLevel("gaussian", 25, True),
    NoiseLevel("gaussian", 50),
    NoiseLevel("salt_pepper", 0.05),
    NoiseLevel("salt_pepper", 0.10, True),
    NoiseLevel("salt_pepper", 0.20),
    NoiseLevel("periodic", 0.2, True),
)


def gaussian(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean Gaussian noise of standard deviation ``sigma`` grey levels, clipped to [0, 255]."""
    noisy = img.astype(np.float32) + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def salt_pepper(img: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """Replace a ``density`` fraction of pixels, half with 255 (salt) and half with 0 (pepper)."""
    u = rng.random(img.shape)
    out = img.copy()
    out[u < density / 2] = 0
    out[(u >= density / 2) & (u < density)] = 255
    return out


@dataclass(frozen=True)
class Sinusoid:
    amplitude: float  # fraction of full scale (255)
    cycles: float  # cycles per frame width
    theta: float  # orientation in radians
    phase: float


def periodic(img: np.ndarray, components: list[Sinusoid]) -> np.ndarray:
    """Add planar sinusoids (amplitude as a fraction of full scale), clipped to [0, 255]."""
    h, w = img.shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    pattern = np.zeros((h, w), np.float32)
    for c in components:
        arg = 2 * math.pi * c.cycles * (xx * math.cos(c.theta) + yy * math.sin(c.theta)) / w + c.phase
        pattern += np.float32(255.0 * c.amplitude) * np.sin(arg)
    return np.clip(np.rint(img.astype(np.float32) + pattern), 0, 255).astype(np.uint8)


def random_sinusoid(
    rng: np.random.Generator, amplitude: float | None = None, cycles: float | None = None
) -> Sinusoid:
    return Sinusoid(
        amplitude=rng.uniform(0.05, 0.30) if amplitude is None else amplitude,
        cycles=rng.uniform(4, 60) if cycles is None else cycles,
        theta=rng.uniform(0, math.pi),
        phase=rng.uniform(0, 2 * math.pi),
    )


def apply_level(img: np.ndarray, level: NoiseLevel, rng: np.random.Generator) -> np.ndarray:
    """Noise at a named report level."""
    if level.kind == "clean":
        return img.copy()
    if level.kind == "gaussian":
        return gaussian(img, level.value, rng)
    if level.kind == "salt_pepper":
        return salt_pepper(img, level.value, rng)
    if level.kind == "periodic":
        return periodic(img, [random_sinusoid(rng, amplitude=level.value, cycles=20.0)])
    raise ValueError(f"unknown noise type {level.kind!r}; expected one of {NOISE_TYPES}")


def apply_random(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Noise of type ``kind`` with its parameters drawn from the training range."""
    if kind == "clean":
        return img.copy()
    if kind == "gaussian":
        return gaussian(img, rng.uniform(5, 50), rng)
    if kind == "salt_pepper":
        return salt_pepper(img, rng.uniform(0.01, 0.20), rng)
    if kind == "periodic":
        n = int(rng.integers(1, 4))
        return periodic(img, [random_sinusoid(rng) for _ in range(n)])
    raise ValueError(f"unknown noise type {kind!r}; expected one of {NOISE_TYPES}")


def parse_mix(spec: str) -> dict[str, float]:
    """Parse a noise mix such as ``clean=0.7,gaussian=0.1,salt_pepper=0.1,periodic=0.1`` into probabilities."""
    mix: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in NOISE_TYPES:
            raise ValueError(f"unknown noise type {name!r} in mix {spec!r}; expected one of {NOISE_TYPES}")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"noise mix weight for {name!r} is not a number: {weight!r}") from None
        if w < 0:
            raise ValueError(f"noise mix weight for {name!r} is negative")
        mix[name] = w
    total = sum(mix.values())
    if total <= 0:
        raise ValueError(f"noise mix {spec!r} has no positive weight")
    return {k: v / total for k, v in mix.items()}
