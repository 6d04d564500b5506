"""engines.unseen's arithmetic: group bootstrap intervals and issue #26's target checks (no data needed)."""

from __future__ import annotations

import numpy as np

from engines.unseen import TARGETS, group_bootstrap, targets


def test_bootstrap_resamples_whole_groups_within_each_class():
    # Two good groups: one always right, one always wrong. Resampling photographs would give a narrow
    # interval around 50%; resampling the two groups gives 0%, 50% or 100% wrong.
    labels = np.array([0] * 100 + [0] * 100 + [1] * 50)
    groups = np.array([1] * 100 + [2] * 100 + [3] * 50)
    wrong = np.array([False] * 100 + [True] * 100 + [False] * 50)

    def fr(idx: np.ndarray) -> float:
        good = idx[labels[idx] == 0]
        return float(wrong[good].mean())

    lo, hi = group_bootstrap(labels, groups, fr, seed=0, n=400)
    assert lo == 0.0 and hi == 1.0
    # every resample keeps both classes: the defective group is always drawn
    seen = []
    group_bootstrap(labels, groups, lambda i: seen.append(int((labels[i] == 1).sum())) or 0.0, seed=0, n=20)
    assert all(s == 50 for s in seen)


def test_targets_compare_each_figure_with_its_bound():
    rows = {}
    for _, cond, which, metric, _bound in TARGETS:
        rows.setdefault(cond, {"at_0.5": {}, "calibrated": {}})[which][metric] = 0.0
    rows["clean"]["at_0.5"]["accuracy"] = 0.996  # >= 99.5%: met
    rows["gaussian@25"]["calibrated"]["false_reject_rate"] = 0.031  # > 3%: missed
    rows["periodic@0.2"]["calibrated"]["false_reject_rate"] = 0.03  # exactly the bound: met
    val = {
        "rows": rows,
        "ssim": {
            "gaussian@25": {"routed": 0.9, "bm3d_sample": {"frames": 3, "bm3d": 0.93, "routed": 0.91}},
            "periodic@0.2": {"routed": 0.975},
        },
    }
    got = {t["target"]: t for t in targets(val)}
    assert got["clean defect accuracy at 0.5 >= 99.5%"]["met"]
    assert not got["gaussian@25 false rejects at the calibrated point <= 3%"]["met"]
    assert got["periodic@0.2 false rejects at the calibrated point <= 3%"]["met"]
    assert not got["gaussian@25 through the pipeline at 0.5 >= 99%"]["met"]  # accuracy 0
    assert got["clean escapes at the calibrated point <= 0.5%"]["met"]  # rate 0
    assert got["routed SSIM periodic@0.2 >= 0.97"]["met"]
    bm = got["routed SSIM gaussian@25 >= BM3D's on the same photographs (3)"]
    assert not bm["met"] and bm["bm3d"] == 0.93 and bm["value"] == 0.91
