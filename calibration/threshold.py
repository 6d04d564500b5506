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


def calibrate(
    labels: np.ndarray, scores: np.ndarray, escape_target: float, groups: np.ndarray | None = None
) -> dict[str, Any]:
    """The single threshold for ``escape_target``; with ``groups`` (each frame's noise type), one per group too.

    A threshold per group holds the escape target within every group, so it
    holds for any mix of groups on the line; a single threshold is set by the
    hardest group (Gaussian-noised defectives score lowest after denoising) and
    rejects good parts of every other group for it. A group without a
    defective part gets no threshold of its own (it falls back to the single one).
    """
    t = threshold_for_escape(labels, scores, escape_target)
    out: dict[str, Any] = {
        "threshold": t,
        "escape_target": escape_target,
        "calibration_metrics": binary_metrics(labels, scores, t),
    }
    if groups is None:
        return out
    groups, labels = np.asarray(groups), np.asarray(labels)
    per = group_thresholds(labels, scores, groups, escape_target)
    out["thresholds"] = per
    out["threshold_metrics"] = {
        g: binary_metrics(labels[groups == g], scores[groups == g], t) for g, t in per.items()
    }
    out["calibration_metrics_per_group"] = binary_metrics(labels, scores, frame_thresholds(groups, per, t))
    return out


def group_thresholds(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, escape_target: float
) -> dict[str, float]:
    """The threshold of every group that has a defective part, calibrated on that group's frames."""
    per: dict[str, float] = {}
    for g in sorted(set(groups.tolist())):
        sel = groups == g
        if labels[sel].any():
            per[g] = threshold_for_escape(labels[sel], scores[sel], escape_target)
    return per


def frame_thresholds(groups: np.ndarray, per: dict[str, float], fallback: float) -> np.ndarray:
    """Per frame, its group's threshold, ``fallback`` for a group without one."""
    return np.array([per.get(g, fallback) for g in groups.tolist()], np.float64)


def paired_bootstrap(
    labels: np.ndarray,
    groups: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    escape_target: float,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """How much of a difference between two score sets at their operating points is sampling noise.

    Both sets score the same frames. Each resample (frames drawn with
    replacement) recalibrates both sets' per-group thresholds for
    ``escape_target`` and measures each one's accuracy and false reject rate
    there; returns the point values, and the 2.5 / 97.5 percentiles of each
    set's values and of the difference b - a. The threshold for a 0.5% escape
    rate is set by the few lowest-scoring defective parts of each group, so it
    moves a lot between samples: a difference inside the interval is not
    evidence that one set is worse.
    """
    labels = np.asarray(labels).astype(bool)
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)

    def measure(idx: np.ndarray) -> dict[str, float]:
        lab, grp = labels[idx], groups[idx]
        out = {}
        for name, sc in (("a", scores_a[idx]), ("b", scores_b[idx])):
            per = group_thresholds(lab, sc, grp, escape_target)
            m = binary_metrics(lab, sc, frame_thresholds(grp, per, 0.5))
            out[f"accuracy_{name}"], out[f"frr_{name}"] = m["accuracy"], m["false_reject_rate"]
        out["accuracy_delta"] = out["accuracy_b"] - out["accuracy_a"]
        out["frr_delta"] = out["frr_b"] - out["frr_a"]
        return out

    point = measure(np.arange(len(labels)))
    draws = [measure(rng.integers(0, len(labels), len(labels))) for _ in range(resamples)]
    return {
        "point": point,
        "interval_95": {
            k: [
                float(np.percentile([d[k] for d in draws], 2.5)),
                float(np.percentile([d[k] for d in draws], 97.5)),
            ]
            for k in point
        },
        "resamples": resamples,
        "escape_target": escape_target,
    }


def plot_calibration(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    out: Path,
    groups: np.ndarray | None = None,
    thresholds: dict[str, float] | None = None,
) -> list[Path]:
    """ROC curve with the operating point(s), and score histograms per class; returns the PNG paths.

    With ``groups`` and ``thresholds`` (per noise type), the ROC has one curve per group with its
    own operating point beside the whole split's, and the histograms mark every group's threshold.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    out.mkdir(parents=True, exist_ok=True)
    per = thresholds or {}
    sets: list[tuple[str, np.ndarray, float]] = [("all frames", np.ones(len(labels), bool), threshold)]
    if groups is not None:
        g_arr = np.asarray(groups)
        sets += [(g, g_arr == g, t) for g, t in sorted(per.items())]

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for i, (name, sel, t) in enumerate(sets):
        lab, sc = labels[sel], scores[sel]
        thr = np.unique(np.concatenate([[-np.inf], sc, [np.inf]]))[::-1]
        tpr = np.array([(sc[lab] >= x).mean() for x in thr])
        fpr = np.array([(sc[~lab] >= x).mean() for x in thr])
        m = binary_metrics(lab, sc, t)
        (line,) = ax.plot(fpr, tpr, lw=2.0 if i == 0 else 1.2, label=f"{name} (AUC {m['auc']:.3f})")
        ax.plot([m["false_reject_rate"]], [1 - m["escape_rate"]], "o", color=line.get_color(), ms=6)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("false reject rate (good parts rejected)")
    ax.set_ylabel("1 - escape rate (defective parts caught)")
    ax.set_title("ROC on the calibration split (dots: operating points)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    roc = out / "calibration_roc.png"
    fig.tight_layout()
    fig.savefig(roc, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    bins = np.linspace(0, 1, 51).tolist()
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label=f"ok (n={int((~labels).sum())})")
    ax.hist(scores[labels], bins=bins, alpha=0.6, label=f"defective (n={int(labels.sum())})")
    ax.axvline(threshold, color="r", ls="--", label=f"single threshold {threshold:.4f}")
    for (name, _, t), ls in zip(sets[1:], (":", "-.", (0, (1, 3)), (0, (5, 2))), strict=False):
        ax.axvline(t, color="k", ls=ls, lw=1, label=f"{name} {t:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("defect score")
    ax.set_ylabel("frames")
    ax.set_title("Defect scores on the calibration split")
    ax.legend(fontsize=8)
    hist = out / "calibration_scores.png"
    fig.tight_layout()
    fig.savefig(hist, dpi=110)
    plt.close(fig)
    return [roc, hist]
