"""Classical denoisers that run in the daemon (no learned weights).

Salt-and-pepper noise is routed here. :func:`median3` is the study's filter;
:func:`adaptive_median` is the default route: it only replaces pixels that are
impulses (exactly 0 or 255), taking the 3x3 median, or the 5x5 median where
the 3x3 one is itself an impulse. Unlike a plain median it leaves every
uncorrupted pixel as it was, so fine detail (and defects) survive.

Periodic noise is routed to :func:`sinusoid_fit` by default: interference is a
sum of planar sinusoids, each a sharp pair of peaks in the spectrum. The filter
finds the peaks, refines each frequency to a fraction of a bin, fits every
component's amplitude and phase jointly by least squares (imputing the pixels
that the noise drove into clipping, so clipping does not bias the fit),
subtracts the fitted pattern and inpaints the clipped pixels. Unlike a notch
filter it removes nothing else from the spectrum; unlike the autoencoder it
keeps every defect edge (why it replaced the autoencoder on this route:
``docs/design-notes.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import cv2
import numpy as np


def median3(frame: np.ndarray) -> np.ndarray:
    """3x3 median filter of a (H, W) uint8 frame."""
    return cv2.medianBlur(frame, 3)


def adaptive_median(frame: np.ndarray) -> np.ndarray:
    """Impulse-only median: (H, W) uint8 -> (H, W) uint8."""
    impulse = (frame == 0) | (frame == 255)
    if not impulse.any():
        return frame.copy()
    m3 = cv2.medianBlur(frame, 3)
    m5 = cv2.medianBlur(frame, 5)
    fill = np.where((m3 == 0) | (m3 == 255), m5, m3)
    # Where even the 5x5 median is an impulse, fall back to a blur of the 5x5 median.
    bad = (fill == 0) | (fill == 255)
    if bad.any():
        fill = np.where(bad, cv2.blur(m5, (5, 5)), fill)
    return np.where(impulse, fill, frame).astype(np.uint8)


# --- periodic interference -------------------------------------------------------------------------------

MAX_SINUSOIDS = 3  # the noise model's upper bound; more components are left for the classifier to judge
MIN_CYCLES = 3.0  # lower spatial frequencies belong to the part (hub, rim, lighting), not to interference
MAX_STEP = 0.5  # cycles per frame: the frequency step's bound (steps measured: up to 0.3)
PEAK_PROMINENCE = 8.0  # a peak must stand this far above its spectral neighbourhood (clean frames: none do)


@lru_cache(maxsize=4)
def _spectral_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Hann window, and the mask of candidate peaks: one half-plane, radius >= MIN_CYCLES."""
    win = np.outer(np.hanning(h), np.hanning(w))
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h // 2, w // 2
    half = (yy > cy) | ((yy == cy) & (xx > cx))
    return win, half & (np.hypot(yy - cy, xx - cx) >= MIN_CYCLES)


def _dft_at(img: np.ndarray, us: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """DFT of ``img`` at fractional frequencies (cycles per frame): ``(len(vs), len(us))`` complex."""
    h, w = img.shape
    ax = (-2 * np.pi / w) * np.outer(np.arange(w), us)
    ay = (-2 * np.pi / h) * np.outer(vs, np.arange(h))
    rows = img @ np.cos(ax) + 1j * (img @ np.sin(ax))  # real matmuls: the frame is never made complex
    return np.asarray((np.cos(ay) + 1j * np.sin(ay)) @ rows)


def find_sinusoids(frame: np.ndarray, max_components: int = MAX_SINUSOIDS) -> list[tuple[float, float]]:
    """Frequencies ``(u, v)`` in cycles per frame (x, y) of the planar sinusoids in a (H, W) frame."""
    h, w = frame.shape
    win, candidates = _spectral_grid(h, w)
    g = (frame - frame.mean()) * win
    spec = cv2.dft(g.astype(np.float32), flags=cv2.DFT_COMPLEX_OUTPUT)  # float32: 3x numpy's fft2 here
    mag = np.fft.fftshift(cv2.magnitude(spec[..., 0], spec[..., 1])).astype(np.float64)
    cand = np.where(candidates, mag, 0.0)
    cy, cx = h // 2, w // 2
    found: list[tuple[float, float]] = []
    for _ in range(max_components):
        py, px = (int(i) for i in np.unravel_index(int(np.argmax(cand)), cand.shape))
        y0, x0 = max(py - 6, 0), max(px - 6, 0)
        hood = mag[y0 : py + 7, x0 : px + 7]
        core = np.zeros(hood.shape, bool)
        core[max(py - y0 - 2, 0) : py - y0 + 3, max(px - x0 - 2, 0) : px - x0 + 3] = True
        if mag[py, px] < PEAK_PROMINENCE * (float(np.median(hood[~core])) + 1e-9):
            break
        cand[max(py - 1, 0) : py + 2, max(px - 1, 0) : px + 2] = 0.0
        # Refine to a fraction of a bin: the interference need not have a whole number of cycles per frame.
        u, v, step = float(px - cx), float(py - cy), 0.5
        for _ in range(4):
            us, vs = u + step * np.arange(-2, 3), v + step * np.arange(-2, 3)
            j, i = np.unravel_index(int(np.argmax(np.abs(_dft_at(g, us, vs)))), (5, 5))
            u, v, step = float(us[i]), float(vs[j]), step / 4
        if all(abs(u - fu) + abs(v - fv) > 0.5 for fu, fv in found):  # a neighbour of a peak already found
            found.append((u, v))
    return found


def _fill_from_valid(
    img: np.ndarray, valid: np.ndarray, k: int = 9, den: np.ndarray | None = None
) -> np.ndarray:
    """Normalised box blur of ``img`` over ``valid`` pixels only (a cheap local estimate where invalid).

    ``den``: the blurred mask, when the caller fills over the same mask again (computed once)."""
    if den is None:
        den = cv2.blur(valid.astype(np.float32), (k, k))
    num = cv2.blur((img * valid).astype(np.float32), (k, k))
    return np.where(den > 1e-3, num / np.maximum(den, 1e-3), img)


def _planar_basis(freqs: list[tuple[float, float]], h: int, w: int) -> np.ndarray:
    """(H*W, 2k+1): sin and cos of each planar wave, and a constant."""
    y, x = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    basis = np.empty((h * w, 2 * len(freqs) + 1))
    for c, (u, v) in enumerate(freqs):
        # sin(a + b) and cos(a + b) of a planar wave from its row and column factors: outer products of
        # two short vectors instead of a sine and a cosine per pixel (same values to ~1e-15)
        a, b = 2 * np.pi * v * y / h, 2 * np.pi * u * x / w
        sa, ca, sb, cb = np.sin(a), np.cos(a), np.sin(b), np.cos(b)
        basis[:, 2 * c] = (np.outer(sa, cb) + np.outer(ca, sb)).ravel()
        basis[:, 2 * c + 1] = (np.outer(ca, cb) - np.outer(sa, sb)).ravel()
    basis[:, -1] = 1.0
    return basis


@lru_cache(maxsize=4)
def _phase_coordinates(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """2 pi x / w and 2 pi y / h of every third pixel (row-major), for the frequency step."""
    xs = np.tile(np.arange(w, dtype=np.float64) * (2 * np.pi / w), h)[::3]
    ys = np.repeat(np.arange(h, dtype=np.float64) * (2 * np.pi / h), w)[::3]
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def _refine_frequencies(
    freqs: list[tuple[float, float]],
    basis: np.ndarray,
    coef: np.ndarray,
    observed: np.ndarray,
    h: int,
    w: int,
) -> list[tuple[float, float]]:
    """One Gauss-Newton step on the frequencies, from the fitted amplitudes.

    The spectral peak leaves each frequency 0.03-0.09 cycles per frame off on real photographs (the part's
    own spectrum and the clipping pull it): a phase drift of up to half a radian across the frame, which
    left stripes of up to a sixth of the amplitude at the frame's edges. The derivative of a*sin(phi) +
    b*cos(phi) in u is (2 pi x / w)(a cos(phi) - b sin(phi)) (y and v likewise); least squares on every
    third pixel (enough for two unknowns per wave) gives the correction."""
    xs, ys = _phase_coordinates(h, w)
    sub = basis[::3]
    cols = [sub]
    for c in range(len(freqs)):
        d = coef[2 * c] * sub[:, 2 * c + 1] - coef[2 * c + 1] * sub[:, 2 * c]
        cols += [(xs * d)[:, None], (ys * d)[:, None]]
    jac = np.hstack(cols)
    # normal equations: a (2k+1+2k)-square system instead of an SVD of the (H*W/3)-row Jacobian
    step = (np.linalg.pinv(jac.T @ jac) @ (observed.ravel()[::3] @ jac))[basis.shape[1] :]
    # A linearised step is only trusted near the peak it starts from: never more than MAX_STEP cycles.
    step = np.clip(step, -MAX_STEP, MAX_STEP)
    return [(u + step[2 * c], v + step[2 * c + 1]) for c, (u, v) in enumerate(freqs)]


def sinusoid_fit(
    frame: np.ndarray, iterations: int = 2, inpaint: tuple[int, int] | None = None
) -> np.ndarray:
    """Remove periodic interference from a (H, W) uint8 frame; frames without any come back unchanged.

    Frequencies from the spectrum's peaks, refined once by Gauss-Newton on the fit; amplitudes and phases
    by least squares, with the clipped pixels imputed (the pattern pushed them past 0 or 255); clipped
    pixels inpainted from their neighbours and then held to what clipping proves of them: a pixel clipped
    at 255 by a pattern value p was at least 255 - p, one clipped at 0 at most -p. ``iterations``: rounds
    of imputation after the frequency step (2 gave the same SSIM as 4 on the calibration groups, 2 ms a
    frame sooner); ``inpaint``: see :func:`remove_pattern`."""
    n = frame.astype(np.float64)
    freqs = find_sinusoids(n)
    if not freqs:
        return frame.copy()
    h, w = frame.shape
    lo, hi = frame == 0, frame == 255
    clipped = lo | hi
    any_clipped = bool(clipped.any())
    valid = ~clipped
    den = cv2.blur(valid.astype(np.float32), (9, 9)) if any_clipped else None
    observed = n
    for refined in (False, True):
        basis = _planar_basis(freqs, h, w)
        gram = np.linalg.pinv(basis.T @ basis)  # least squares for a fixed basis: gram @ basis.T @ y
        # before the frequency step one imputation round is enough; after it, the full fit
        rounds = (iterations if refined else 1) if any_clipped else 1
        for r in range(rounds):
            coef = gram @ (observed.ravel() @ basis)
            pattern = (basis[:, :-1] @ coef[:-1]).reshape(h, w)
            if not any_clipped or (refined and r == rounds - 1):  # the last refit's imputation is unused
                break
            # Clipped pixels hide how far the pattern pushed them: impute the part from its unclipped
            # neighbours, add the pattern back, keep it on the clipped side, and refit.
            guess = _fill_from_valid(n - pattern, valid, den=den) + pattern
            observed = np.where(lo, np.minimum(guess, 0), np.where(hi, np.maximum(guess, 255), n))
        if not refined:
            freqs = _refine_frequencies(freqs, basis, coef, observed, h, w)
    if not any_clipped:
        return np.clip(np.rint(n - pattern), 0, 255).astype(np.uint8)
    return remove_pattern(frame, pattern, inpaint)


# How clipped pixels are filled: Navier-Stokes, radius 1. Chosen on the calibration groups' photographs among
# Telea and Navier-Stokes at radius 1-3 and confirmed on the validation groups' (engines/periodic_route.py
# writes the comparison): at periodic@0.2 SSIM 0.978 -> 0.983 over Telea radius 3, and 3 ms a frame less.
INPAINT = (cv2.INPAINT_NS, 1)


def remove_pattern(
    frame: np.ndarray, pattern: np.ndarray, inpaint: tuple[int, int] | None = None
) -> np.ndarray:
    """``frame - pattern`` as uint8, its clipped pixels inpainted from their neighbours and held to what
    clipping proves: a pixel clipped at 255 by a pattern value p was at least 255 - p, one at 0 at most -p.

    ``inpaint``: (OpenCV inpainting method, radius), :data:`INPAINT` by default."""
    method, radius = inpaint or INPAINT
    lo, hi = frame == 0, frame == 255
    out = np.clip(np.rint(frame - pattern), 0, 255).astype(np.uint8)
    filled = cv2.inpaint(out, (lo | hi).astype(np.uint8), radius, method).astype(np.float64)
    filled = np.where(lo, np.minimum(filled, np.maximum(-pattern, 0)), filled)
    filled = np.where(hi, np.maximum(filled, np.minimum(255 - pattern, 255)), filled)
    return np.clip(np.rint(filled), 0, 255).astype(np.uint8)


Filter = Callable[[np.ndarray], np.ndarray]
SALT_PEPPER_FILTERS: dict[str, Filter] = {"median3": median3, "adaptive_median": adaptive_median}
PERIODIC_FILTERS: dict[str, Filter] = {"sinusoid_fit": sinusoid_fit}
CLASSICAL_FILTERS: dict[str, Filter] = {**SALT_PEPPER_FILTERS, **PERIODIC_FILTERS}
AUTOENCODER = "autoencoder"


def routes(salt_pepper: str, periodic: str) -> dict[str, str]:
    """Denoiser name per noise type (clean frames pass through): checks that every name exists."""
    if salt_pepper not in SALT_PEPPER_FILTERS:
        raise ValueError(
            f"unknown salt-and-pepper filter {salt_pepper!r}; valid: {sorted(SALT_PEPPER_FILTERS)}"
        )
    if periodic != AUTOENCODER and periodic not in PERIODIC_FILTERS:
        raise ValueError(
            f"unknown periodic filter {periodic!r}; valid: {sorted([AUTOENCODER, *PERIODIC_FILTERS])}"
        )
    return {"gaussian": AUTOENCODER, "salt_pepper": salt_pepper, "periodic": periodic}


def route_frames(table: dict[str, str], noise_idx: Any) -> list[str]:
    """The one place a frame's route is decided: its denoiser's name from its noise class index.

    The CPU pipeline and the CUDA-stream schedule both call this, so they cannot disagree.
    """
    from inspector.noise import NOISE_TYPES

    return [table.get(NOISE_TYPES[int(i)], "none") for i in noise_idx]
