"""Binary classification metrics with *defective* as the positive class.

Escape rate: defective parts passed (false negatives / defective parts).
False reject rate: good parts rejected (false positives / good parts).
"""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order), np.float64)
    allscores = np.concatenate([pos, neg])[order]
    # average ranks over ties
    i = 0
    r = np.arange(1, len(order) + 1, dtype=np.float64)
    while i < len(order):
        j = i
        while j + 1 < len(order) and allscores[j + 1] == allscores[i]:
            j += 1
        r[i : j + 1] = (i + j + 2) / 2.0
        i = j + 1
    ranks[order] = r
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def binary_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray, auc: bool = True
) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, F1, AUC, escape and false-reject rates at ``threshold``.

    ``threshold`` is one number, or one per frame (each frame decided at its noise type's threshold).
    ``auc=False`` skips the AUC (NaN in its place): it does not depend on the threshold, and a bootstrap
    that calls this thousands of times need not pay for it.
    """
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp = int(np.sum(pred & labels))
    tn = int(np.sum(~pred & ~labels))
    fp = int(np.sum(pred & ~labels))
    fn = int(np.sum(~pred & labels))
    n_pos, n_neg = tp + fn, tn + fp
    sens = tp / n_pos if n_pos else float("nan")
    spec = tn / n_neg if n_neg else float("nan")
    prec = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * prec * sens / (prec + sens) if prec + sens else 0.0
    return {
        "n": len(labels),
        "accuracy": (tp + tn) / max(len(labels), 1),
        "sensitivity": sens,
        "specificity": spec,
        "f1": f1,
        "auc": roc_auc(labels, np.asarray(scores, np.float64)) if auc else float("nan"),
        "escape_rate": fn / n_pos if n_pos else float("nan"),
        "false_reject_rate": fp / n_neg if n_neg else float("nan"),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }
