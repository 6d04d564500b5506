"""Where the defect classifier looked: an occlusion map computed offline with the ONNX engine.

A grey square (the frame's mean) slides over the frame the classifier saw;
each position's drop in the defect score is how much that region supported
"defective". Model-agnostic (any ``defect.onnx``), needs no gradients and no
torch: about ``(size / stride)^2`` extra inferences per frame, batched (a
second or two on a 2-core CPU), done on demand for one archived frame.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from inspector.backends import open_engine
from inspector.manifest import load_manifest
from inspector.pipeline import softmax


def occlusion_map(
    infer: object, frame: np.ndarray, patch: int = 40, stride: int = 20, batch: int = 32
) -> tuple[np.ndarray, float]:
    """(H, W) float map of score drops in [0, 1], and the frame's own score. ``infer``: (N,1,H,W) -> logits."""
    h, w = frame.shape
    fill = float(frame.mean())
    ys = list(range(0, max(h - patch, 0) + 1, stride))
    xs = list(range(0, max(w - patch, 0) + 1, stride))
    boxes = [(y, x) for y in ys for x in xs]
    base = float(softmax(infer(frame[None, None]))[0, 1])  # type: ignore[operator]
    heat = np.zeros((h, w), np.float64)
    hits = np.zeros((h, w), np.float64)
    for i in range(0, len(boxes), batch):
        chunk = boxes[i : i + batch]
        imgs = np.repeat(frame[None], len(chunk), axis=0)
        for k, (y, x) in enumerate(chunk):
            imgs[k, y : y + patch, x : x + patch] = fill
        scores = softmax(infer(imgs[:, None]))[:, 1]  # type: ignore[operator]
        for (y, x), s in zip(chunk, scores, strict=True):
            heat[y : y + patch, x : x + patch] += max(base - float(s), 0.0)
            hits[y : y + patch, x : x + patch] += 1
    heat = heat / np.maximum(hits, 1)
    heat = np.asarray(
        cv2.GaussianBlur(heat, (0, 0), stride / 2), np.float64
    )  # the squares' edges are the method's, not the part's
    peak = heat.max()
    return (heat / peak if peak > 0 else heat), base


def overlay(frame: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The frame in grey with the map in colour on top (BGR, for PNG)."""
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    grey = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    alpha = (0.15 + 0.5 * heat)[..., None]
    return (grey * (1 - alpha) + colour * alpha).astype(np.uint8)


def evidence_png(engines: Path, source: Path, out: Path) -> float:
    """Write the overlay for the image at ``source`` (what the classifier saw) to ``out``; returns its score."""
    frame = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    if frame is None:
        raise ValueError(f"cannot read {source}")
    m = load_manifest(engines)
    eng = open_engine("onnxruntime", m.stage_path(Path(engines), "defect"), "defect")
    try:
        heat, score = occlusion_map(eng.infer, frame)
    finally:
        eng.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    ok, data = cv2.imencode(".png", overlay(frame, heat))
    if not ok:
        raise ValueError("could not encode the evidence map")
    tmp.write_bytes(data.tobytes())
    tmp.replace(out)
    return score
