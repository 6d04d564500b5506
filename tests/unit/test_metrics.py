import numpy as np
import pytest

from calibration.metrics import binary_metrics, roc_auc
from calibration.threshold import calibrate, threshold_for_escape


def _auc_brute(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.3 * labels, 1)  # rounding makes ties
    assert roc_auc(labels, scores) == pytest.approx(_auc_brute(labels, scores))


def test_binary_metrics_counts():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.4, 0.2, 0.1, 0.6, 0.3, 0.2])
    m = binary_metrics(labels, scores, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 2, 1, 3)
    assert m["sensitivity"] == 0.5 and m["specificity"] == 0.75
    assert m["escape_rate"] == 0.5 and m["false_reject_rate"] == 0.25
    assert m["accuracy"] == 5 / 8


@pytest.mark.parametrize("target", [0.0, 0.005, 0.05, 0.2])
def test_threshold_meets_escape_target(target):
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(1000, int), np.zeros(1000, int)]
    scores = np.r_[rng.beta(5, 2, 1000), rng.beta(2, 5, 1000)]
    t = threshold_for_escape(labels, scores, target)
    m = binary_metrics(labels, scores, t)
    assert m["escape_rate"] <= target + 1e-12
    # and it is the tightest such threshold: one notch higher escapes more than allowed
    higher = np.sort(scores[labels == 1])
    nxt = higher[higher > t]
    if len(nxt):
        assert binary_metrics(labels, scores, float(nxt[0]))["escape_rate"] > target


def test_calibrate_reports_false_reject_rate_and_rejects_bad_targets():
    labels = np.array([1, 1, 0, 0])
    out = calibrate(labels, np.array([0.9, 0.7, 0.8, 0.1]), 0.0)
    assert out["threshold"] == 0.7
    assert out["calibration_metrics"]["false_reject_rate"] == 0.5
    with pytest.raises(ValueError):
        threshold_for_escape(labels, np.zeros(4), 1.5)
    with pytest.raises(ValueError, match="no defective"):
        threshold_for_escape(np.zeros(4, int), np.zeros(4), 0.01)


def test_calibrate_per_group_holds_the_target_in_every_group_and_rejects_fewer_good_parts():
    # Group "hard": its defectives score low (as Gaussian-noised ones do after denoising); "easy": high.
    rng = np.random.default_rng(2)
    n = 800
    groups = np.array(["easy"] * n + ["hard"] * n + ["no_defects"] * 50)
    labels = np.r_[rng.integers(0, 2, n), rng.integers(0, 2, n), np.zeros(50, int)]
    scores = np.r_[
        np.where(labels[:n] == 1, rng.beta(8, 1, n), rng.beta(1, 8, n)),
        np.where(labels[n : 2 * n] == 1, rng.beta(2, 2, n), rng.beta(1, 4, n)),
        rng.beta(1, 8, 50),
    ]
    out = calibrate(labels, scores, 0.01, groups=groups)
    assert set(out["thresholds"]) == {"easy", "hard"}  # no defective: no threshold of its own
    assert out["thresholds"]["easy"] > out["thresholds"]["hard"]
    for g, t in out["thresholds"].items():
        sel = groups == g
        assert binary_metrics(labels[sel], scores[sel], t)["escape_rate"] <= 0.01
        assert out["threshold_metrics"][g]["escape_rate"] <= 0.01
    single, per = out["calibration_metrics"], out["calibration_metrics_per_group"]
    assert per["escape_rate"] <= 0.01
    assert per["false_reject_rate"] < single["false_reject_rate"]
    # Frames of the group without a threshold are decided at the single one.
    frame_t = np.array([out["thresholds"].get(g, out["threshold"]) for g in groups])
    assert per == binary_metrics(labels, scores, frame_t)


def test_binary_metrics_takes_a_threshold_per_frame():
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.3, 0.6, 0.3, 0.6])
    m = binary_metrics(labels, scores, np.array([0.2, 0.7, 0.2, 0.7]))
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (1, 1, 1, 1)


def test_paired_bootstrap_separates_noise_from_a_real_difference():
    from calibration.threshold import paired_bootstrap

    rng = np.random.default_rng(3)
    n = 1200
    groups = np.array(["clean", "gaussian"] * (n // 2))
    labels = rng.integers(0, 2, n)
    a = np.where(labels == 1, rng.beta(6, 1.5, n), rng.beta(1.5, 6, n))
    same = paired_bootstrap(labels, groups, a, a.copy(), 0.01, resamples=200)
    assert same["point"]["frr_delta"] == 0.0 and same["interval_95"]["frr_delta"] == [0.0, 0.0]
    lo, hi = same["interval_95"]["frr_a"]
    assert lo < same["point"]["frr_a"] < hi  # one set's own operating point moves between samples
    # b: the good parts score much higher - clearly more false rejects at any escape target.
    b = np.where(labels == 1, a, np.clip(a + 0.3, 0, 1))
    worse = paired_bootstrap(labels, groups, a, b, 0.01, resamples=200)
    assert worse["interval_95"]["frr_delta"][0] > 0
    assert worse["interval_95"]["accuracy_delta"][1] < 0
