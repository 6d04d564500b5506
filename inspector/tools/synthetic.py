"""Seeded procedural generator of impeller-like casting frames.

This module owns the synthetic data that the demo, the tests, the camera
simulator and the shipped default models are built from. It is torch-free so
that the runtime (the simulated camera) and the build step share one source.

A frame is a 300x300 grayscale ``uint8`` top view of a cast pump impeller in
the spirit of the public casting dataset: a dark background, a disc with a
brighter rim, curved vanes, a hub with a bore, a cast surface texture, and
lighting and pose variation. Defective frames carry one to three defects drawn
from four kinds (blowholes and pinholes, cracks, burrs and flash on the rim,
missing material), each with a size and contrast drawn from a range that runs
from subtle to obvious.

Determinism: frame ``index`` of ``seed`` is drawn from
``numpy.random.default_rng([seed, index])`` (PCG64, platform independent) and
drawn with OpenCV's integer rasteriser, so the same seed gives the same frames
on every machine, independently of how many frames were drawn before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

FRAME_SIZE = 300
DEFECT_KINDS = ("blowhole", "crack", "burr", "missing")
CLASSES = ("ok", "defective")


@dataclass(frozen=True)
class Defect:
    """One drawn defect: its kind, centre (x, y) in pixels, size in pixels and contrast in grey levels.

    ``visible_px`` counts the pixels the drawing changed by at least 8 grey levels (before surface
    texture and blur): a crack whose random walk left the part can end up with few.
    """

    kind: str
    x: float
    y: float
    size: float
    contrast: float
    visible_px: int = -1


@dataclass
class Sample:
    """A generated frame with its ground truth."""

    image: np.ndarray  # (H, W) uint8
    defective: bool
    defects: list[Defect] = field(default_factory=list)

    @property
    def label(self) -> int:
        return int(self.defective)


@dataclass(frozen=True)
class ImpellerGenerator:
    """Draws impeller frames; ``defect_rate`` is the probability that a frame is defective.

    ``subtlety`` in [0, 1] moves every defect's size and contrast ranges toward
    their subtle end (0 draws the whole range uniformly).
    """

    seed: int = 0
    size: int = FRAME_SIZE
    defect_rate: float = 0.5

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def sample(self, index: int, defective: bool | None = None) -> Sample:
        rng = self.rng(index)
        if defective is None:
            defective = bool(rng.random() < self.defect_rate)
        else:
            rng.random()  # keep the stream aligned whether or not the label is forced
        image, geom = _draw_part(rng, self.size)
        defects: list[Defect] = []
        if defective:
            n = int(rng.choice([1, 1, 1, 2, 2, 3]))
            for _ in range(n):
                kind = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
                before = image.copy()
                drawn = _DRAWERS[kind](image, geom, rng)
                changed = int(np.count_nonzero(np.abs(image.astype(np.float32) - before) >= 8))
                defects.append(replace(drawn, visible_px=changed))
        image = _finish(image, geom, rng)
        return Sample(image=image, defective=defective, defects=defects)

    def batch(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``start .. start+count-1`` as an (N, H, W) uint8 array and (N,) int64 labels."""
        samples = [self.sample(start + i) for i in range(count)]
        return (
            np.stack([s.image for s in samples]),
            np.array([s.label for s in samples], dtype=np.int64),
        )


@dataclass(frozen=True)
class _Geometry:
    cx: float
    cy: float
    radius: float
    hub: float
    bore: float
    part_level: float
    background: float
    mask: np.ndarray  # float32 part mask, 1 on the casting


def _draw_part(rng: np.random.Generator, size: int) -> tuple[np.ndarray, _Geometry]:
    s = size / FRAME_SIZE
    cx = size / 2 + rng.uniform(-8, 8) * s
    cy = size / 2 + rng.uniform(-8, 8) * s
    radius = rng.uniform(118, 132) * s
    hub = radius * rng.uniform(0.24, 0.30)
    bore = hub * rng.uniform(0.35, 0.5)
    background = rng.uniform(35, 60)
    part = rng.uniform(120, 150)

    img = np.full((size, size), background, np.float32)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, _pt(cx, cy), _r(radius), 255, -1, cv2.LINE_AA)
    maskf = mask.astype(np.float32) / 255.0
    img = img * (1 - maskf) + part * maskf

    # Rim: a brighter band, lit from one side.
    rim_w = rng.uniform(7, 11) * s
    cv2.circle(
        img, _pt(cx, cy), _r(radius - rim_w / 2), float(part + rng.uniform(18, 30)), _r(rim_w), cv2.LINE_AA
    )

    # Vanes: curved spirals from the hub to the rim, each a thick polyline with a shaded edge.
    n_vanes = int(rng.integers(6, 10))
    phase = rng.uniform(0, 2 * math.pi)
    sweep = rng.uniform(0.6, 1.1) * rng.choice([-1, 1])
    vane_w = rng.uniform(5, 8) * s
    vane_level = part + rng.uniform(20, 35)
    for k in range(n_vanes):
        a0 = phase + 2 * math.pi * k / n_vanes
        pts = []
        for t in np.linspace(0.0, 1.0, 24):
            r = hub + 4 * s + t * (radius - rim_w - hub - 8 * s)
            a = a0 + sweep * t
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        poly = np.array([_pt(x, y) for x, y in pts], np.int32)
        shadow = np.array([_pt(x + 2.0 * s, y + 2.0 * s) for x, y in pts], np.int32)
        cv2.polylines(img, [shadow], False, float(part - 25), _r(vane_w), cv2.LINE_AA)
        cv2.polylines(img, [poly], False, float(vane_level), _r(vane_w), cv2.LINE_AA)

    # Hub and bore.
    cv2.circle(img, _pt(cx, cy), _r(hub), float(part + rng.uniform(10, 25)), -1, cv2.LINE_AA)
    cv2.circle(img, _pt(cx, cy), _r(hub * 0.8), float(part + rng.uniform(-5, 10)), 2, cv2.LINE_AA)
    cv2.circle(img, _pt(cx, cy), _r(bore), float(background * rng.uniform(0.5, 0.9)), -1, cv2.LINE_AA)
    return img, _Geometry(cx, cy, radius, hub, bore, part, background, maskf)


def _surface_point(
    geom: _Geometry, rng: np.random.Generator, inner: float, outer: float
) -> tuple[float, float]:
    r = rng.uniform(geom.hub + inner, geom.radius - outer)
    a = rng.uniform(0, 2 * math.pi)
    return geom.cx + r * math.cos(a), geom.cy + r * math.sin(a)


def _blowhole(img: np.ndarray, geom: _Geometry, rng: np.random.Generator) -> Defect:
    # Pinholes (small) to blowholes (large): a dark pit with a faint bright lip on the lit side.
    radius = rng.uniform(2.8, 8.0)
    contrast = rng.uniform(40, 95)
    x, y = _surface_point(geom, rng, 6, 14)
    ax = (_r(radius), _r(radius * rng.uniform(0.7, 1.0)))
    angle = float(rng.uniform(0, 180))
    local = float(img[int(y), int(x)])
    cv2.ellipse(img, (_pt(x + 1, y + 1), ax, angle), float(min(local + 25, 235)), 1, cv2.LINE_AA)
    cv2.ellipse(img, (_pt(x, y), ax, angle), float(max(local - contrast, 5)), -1, cv2.LINE_AA)
    return Defect("blowhole", x, y, radius, contrast)


def _crack(img: np.ndarray, geom: _Geometry, rng: np.random.Generator) -> Defect:
    # A jagged dark line, from the rim inward or across the surface.
    length = rng.uniform(25, 75)
    contrast = rng.uniform(45, 95)
    thickness = 2 if rng.random() < 0.7 else 3
    x, y = _surface_point(geom, rng, 8, 4)
    heading = rng.uniform(0, 2 * math.pi)
    pts = [(x, y)]
    steps = max(int(length / 4), 4)
    for _ in range(steps):
        heading += rng.normal(0, 0.45)
        x += 4 * math.cos(heading)
        y += 4 * math.sin(heading)
        pts.append((x, y))
    local = float(img[int(pts[0][1]), int(pts[0][0])])
    poly = np.array([_pt(px, py) for px, py in pts], np.int32)
    cracked = img.copy()
    cv2.polylines(cracked, [poly], False, float(max(local - contrast, 5)), thickness, cv2.LINE_AA)
    # A crack lives in the casting: where the walk leaves the part, nothing is drawn.
    img[...] = np.where(geom.mask > 0.5, cracked, img)
    mx = float(np.mean([p[0] for p in pts]))
    my = float(np.mean([p[1] for p in pts]))
    return Defect("crack", mx, my, length, contrast)


def _burr(img: np.ndarray, geom: _Geometry, rng: np.random.Generator) -> Defect:
    # Flash or a burr: irregular extra material standing out beyond the rim.
    extent = rng.uniform(5, 16)
    arc = math.radians(rng.uniform(4, 20))
    a0 = rng.uniform(0, 2 * math.pi)
    level = geom.part_level + rng.uniform(5, 35)
    pts = []
    for t in np.linspace(0, 1, 9):
        a = a0 + arc * t
        bump = extent * math.sin(math.pi * t) ** 0.7 * rng.uniform(0.6, 1.0)
        r = geom.radius - 2 + bump
        pts.append(_pt(geom.cx + r * math.cos(a), geom.cy + r * math.sin(a)))
    for t in np.linspace(1, 0, 5):
        a = a0 + arc * t
        r = geom.radius - 4
        pts.append(_pt(geom.cx + r * math.cos(a), geom.cy + r * math.sin(a)))
    cv2.fillPoly(img, [np.array(pts, np.int32)], float(level), cv2.LINE_AA)
    am = a0 + arc / 2
    x = geom.cx + (geom.radius + extent / 2) * math.cos(am)
    y = geom.cy + (geom.radius + extent / 2) * math.sin(am)
    return Defect("burr", x, y, extent, level - geom.background)


def _missing(img: np.ndarray, geom: _Geometry, rng: np.random.Generator) -> Defect:
    # Missing material: a chunk of the rim (and what lies behind it) absent, showing background.
    depth = rng.uniform(6, 20)
    a = rng.uniform(0, 2 * math.pi)
    r_out = geom.radius + 2
    x = geom.cx + r_out * math.cos(a)
    y = geom.cy + r_out * math.sin(a)
    ax = (_r(depth * rng.uniform(1.2, 2.2)), _r(depth))
    angle = math.degrees(a) + 90
    cv2.ellipse(img, (_pt(x, y), ax, angle), float(geom.background), -1, cv2.LINE_AA)
    return Defect("missing", x, y, depth, geom.part_level - geom.background)


_DRAWERS = {"blowhole": _blowhole, "crack": _crack, "burr": _burr, "missing": _missing}


def _finish(img: np.ndarray, geom: _Geometry, rng: np.random.Generator) -> np.ndarray:
    """Cast surface texture, lighting, optics blur and sensor quantisation."""
    size = img.shape[0]
    # Cast texture: smooth random field at two scales, only on the part.
    coarse = cv2.resize(
        rng.normal(0, 1, (12, 12)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    fine = cv2.resize(
        rng.normal(0, 1, (75, 75)).astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR
    )
    texture = rng.uniform(3, 6) * coarse + rng.uniform(1.5, 3.5) * fine
    img = img + texture * geom.mask
    # Lighting: a linear gradient over the frame and a mild vignette, then a global gain.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    grad = ((xx - size / 2) * math.cos(a) + (yy - size / 2) * math.sin(a)) / size
    vign = ((xx - geom.cx) ** 2 + (yy - geom.cy) ** 2) / (size * size)
    img = img * (1 + rng.uniform(0.0, 0.25) * grad - rng.uniform(0.0, 0.3) * vign) * rng.uniform(0.9, 1.1)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 0.9))
    # Keep clear of the sensor's ends: a saturated pixel is a property of the noise, not the part.
    return np.clip(np.rint(img), 8, 245).astype(np.uint8)


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x), round(y)


def _r(v: float) -> int:
    return max(round(v), 1)
