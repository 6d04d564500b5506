"""Training augmentations: what a real line does to a photograph of a part.

``geometry`` (the synthetic set's): flips and quarter turns. ``line`` (the
photographs'): the part at any angle (it is round and not aligned on a belt),
mirrored, shifted by up to ``max_shift`` px and scaled a little; brightness and
contrast within +-20%; sometimes a slight defocus blur, a JPEG round trip at
quality 40-95, or a 512 px camera frame resized on arrival. Borders are
reflected so no black corners appear that the test photographs never have.
The robustness table of the report (``engines.evaluate.evaluate_robustness``)
measures the same perturbations one at a time on the test photographs.
"""

from __future__ import annotations

import cv2
import numpy as np

AUGMENTATIONS = ("geometry", "line")


def geometry(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips and quarter turns of (N, H, W) frames (the part has no preferred orientation)."""
    out = np.empty_like(batch)
    for i, f in enumerate(batch):
        f = np.rot90(f, int(rng.integers(4)))
        if rng.random() < 0.5:
            f = f[:, ::-1]
        out[i] = f
    return out


def rotate(
    frame: np.ndarray, degrees: float, shift: tuple[float, float] = (0.0, 0.0), scale: float = 1.0
) -> np.ndarray:
    """``frame`` turned by ``degrees`` about its centre, scaled and shifted (px), borders reflected."""
    h, w = frame.shape
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), degrees, scale)
    m[:, 2] += np.asarray(shift, np.float64)
    return cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def brightness(frame: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(frame.astype(np.float32) * factor, 0, 255).round().astype(np.uint8)


def contrast(frame: np.ndarray, factor: float) -> np.ndarray:
    f = frame.astype(np.float32)
    mean = float(f.mean())
    return np.clip((f - mean) * factor + mean, 0, 255).round().astype(np.uint8)


def defocus(frame: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(frame, (0, 0), sigma)


def jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 grey frame
        raise RuntimeError("JPEG encode failed")
    out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    assert out is not None
    return np.asarray(out, np.uint8)


def camera_512(frame: np.ndarray) -> np.ndarray:
    """The frame as a 512x512 camera would deliver it, resized (area) on arrival to the frame size."""
    h, w = frame.shape
    big = cv2.resize(frame, (512, 512), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)


def line(batch: np.ndarray, rng: np.random.Generator, max_shift: float = 20.0) -> np.ndarray:
    """The ``line`` augmentation of a (N, H, W) uint8 batch (see the module's docstring)."""
    out = np.empty_like(batch)
    for i, f in enumerate(batch):
        if rng.random() < 0.5:
            f = f[:, ::-1]
        f = rotate(
            np.ascontiguousarray(f),
            float(rng.uniform(0, 360)),
            (float(rng.uniform(-max_shift, max_shift)), float(rng.uniform(-max_shift, max_shift))),
            float(rng.uniform(0.95, 1.05)),
        )
        g = f.astype(np.float32)
        mean = float(g.mean())
        g = (g - mean) * rng.uniform(0.75, 1.25) + mean
        g = g * rng.uniform(0.75, 1.25)
        f = np.clip(g, 0, 255).round().astype(np.uint8)
        r = rng.random()
        if r < 0.15:
            f = defocus(f, float(rng.uniform(0.5, 1.5)))
        elif r < 0.30:
            f = jpeg(f, int(rng.integers(40, 96)))
        elif r < 0.35:
            f = camera_512(f)
        out[i] = f
    return out


def augment(kind: str, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "geometry":
        return geometry(batch, rng)
    if kind == "line":
        return line(batch, rng)
    raise ValueError(f"unknown augmentation {kind!r}; valid: {', '.join(AUGMENTATIONS)}")
