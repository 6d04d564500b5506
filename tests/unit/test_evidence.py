"""The occlusion map points where the classifier's evidence is."""

from __future__ import annotations

import numpy as np

from inspector.archive.evidence import occlusion_map, overlay


def test_the_map_peaks_on_the_region_the_score_depends_on():
    # A stand-in classifier (no GPU or training needed for the method itself): "defective" logit
    # grows with the brightness of a 30x30 patch at rows 200-230, cols 60-90.
    def infer(batch: np.ndarray) -> np.ndarray:
        spot = batch[:, 0, 200:230, 60:90].astype(np.float64).mean(axis=(1, 2))
        return np.stack([np.zeros(len(batch)), (spot - 100) / 20], axis=1)

    frame = np.full((300, 300), 90, np.uint8)
    frame[200:230, 60:90] = 250  # the "defect"
    heat, score = occlusion_map(infer, frame)
    assert score > 0.99 and heat.shape == frame.shape and heat.max() == 1.0
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 190 <= y <= 240 and 50 <= x <= 100, (y, x)
    assert heat[:100, 180:].max() < 0.05  # far from it: no evidence
    img = overlay(frame, heat)
    assert img.shape == (300, 300, 3) and img.dtype == np.uint8
