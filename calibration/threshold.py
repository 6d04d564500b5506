"""Decision-threshold calibration: pick the operating point for a target escape rate.

On a held-out calibration split scored through the full pipeline, the
threshold is the highest score that lets at most ``escape_target`` of the
defective parts through (score below threshold = pass). The false reject
rate that this costs is reported, and the ROC curve and score histograms are
drawn as PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from calibration.metrics import binary_metrics


def threshold_for_escape(labels: np.ndarray, scores: np.ndarray, escape_target: float) -> float:
    """Largest threshold with (defective scores below it) / (defective parts) <= ``escape_target``."""
    if not 0.0 <= escape_target < 1.0:
        raise ValueError(f"escape rate target must be in [0, 1), got {escape_target}")
    pos = np.sort(np.asarray(scores, np.float64)[np.asarray(labels).astype(bool)])
    if len(pos) == 0:
        raise ValueError(
            "calibration split has no defective parts: cannot set a threshold for an escape rate"
        )
    k = math.floor(escape_target * len(pos) + 1e-9)  # this many defective parts may score below
    t = float(pos[k])
    # Ties at pos[k] all pass the check (>=); nothing below pos[k] except the k allowed escapes.
    return t


def calibrate(labels: np.ndarray, scores: np.ndarray, escape_target: float) -> dict[str, Any]:
    t = threshold_for_escape(labels, scores, escape_target)
    m = binary_metrics(labels, scores, t)
    return {"threshold": t, "escape_target": escape_target, "calibration_metrics": m}


def plot_calibration(labels: np.ndarray, scores: np.ndarray, threshold: float, out: Path) -> list[Path]:
    """ROC curve with the operating point, and score histograms per class; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    out.mkdir(parents=True, exist_ok=True)
    thr = np.unique(np.concatenate([[-np.inf], scores, [np.inf]]))[::-1]
    tpr = np.array([(scores[labels] >= t).mean() for t in thr])
    fpr = np.array([(scores[~labels] >= t).mean() for t in thr])
    m = binary_metrics(labels, scores, threshold)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, lw=1.5)
    ax.plot([m["false_reject_rate"]], [1 - m["escape_rate"]], "ro", label=f"threshold {threshold:.4f}")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("false reject rate (good parts rejected)")
    ax.set_ylabel("1 - escape rate (defective parts caught)")
    ax.set_title(f"ROC on the calibration split (AUC {m['auc']:.4f})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    roc = out / "calibration_roc.png"
    fig.tight_layout()
    fig.savefig(roc, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 51).tolist()
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label=f"ok (n={int((~labels).sum())})")
    ax.hist(scores[labels], bins=bins, alpha=0.6, label=f"defective (n={int(labels.sum())})")
    ax.axvline(threshold, color="r", ls="--", label=f"threshold {threshold:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("defect score")
    ax.set_ylabel("frames")
    ax.set_title("Defect scores on the calibration split")
    ax.legend()
    hist = out / "calibration_scores.png"
    fig.tight_layout()
    fig.savefig(hist, dpi=110)
    plt.close(fig)
    return [roc, hist]
