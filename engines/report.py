"""Render an evaluation report (the dict of :mod:`engines.package`) as Markdown a person can read."""

from __future__ import annotations

from typing import Any

STUDY_SSIM = {"salt_pepper": 0.880, "gaussian": 0.640, "periodic": 0.817}
STUDY_PSNR = {"salt_pepper": 34.7, "gaussian": 23.7, "periodic": 22.8}


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x * 100:.2f}%"


def render_markdown(r: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    m = r.get("manifest", {})
    add("# Engine set evaluation report\n")
    if m:
        add(f"Model version `{m.get('model_version')}`, seed {m.get('seed')}.\n")
        add(f"Built with:\n\n```\n{m.get('command')}\n```\n")
    ts = r["test_split"]
    add(
        f"Test split: {ts['frames']} frames ({ts['defective']} defective) from "
        + (
            f"generator seed {ts['generator_seed']} (never used in training)"
            if ts.get("generator_seed") is not None
            else f"`{ts['data']}`"
        )
        + ". Every number below was measured on the exported ONNX engines through the runtime's own pipeline "
        "(ONNX Runtime, CPU). Noisy frames are seeded: rerunning gives the same table.\n"
    )
    if "leakage" in ts:
        lk = ts["leakage"]
        add(
            f"Leakage from `train`: {lk['byte_identical_in_train']} test photographs are byte-identical to a "
            f"training photograph and {lk['copies_in_train']} more are augmented copies of one (turned, mirrored, "
            f"shifted or zoomed: after alignment the texture of the part's face correlates at "
            f"{lk['copy_min_score']} or more, `engines/dedup.py`; another photograph of a part from the same mould "
            f"stays below). The **deduplicated** test split keeps the other {lk['deduplicated_frames']}; "
            "the defect tables are repeated on it below.\n"
        )
    if "budget_gflop" in r:
        b = r["budget_gflop"]
        add(
            f"Compute budget: {b['clean_frame']:.3f} GFLOP per clean frame (limit {b['limit_clean_frame']}), "
            f"{b['noisy_frame']:.3f} GFLOP per noisy frame (limit {b['limit_noisy_frame']}).\n"
        )

    add("## Noise type (stage 1)\n")
    add("| level | accuracy | n |\n|---|---|---|")
    for name, lv in r["noise_type"]["levels"].items():
        add(f"| {name}{' **(main)**' if lv['main'] else ''} | {_pct(lv['accuracy'])} | {lv['n']} |")
    add(
        "\nConfusion matrices for every level: `figures/noise_confusion.png`. Study: 97.6% (3 classes, notebook).\n"
    )

    add("## Denoising (stage 2)\n")
    add(
        "PSNR (dB) and SSIM (scikit-image, data_range 1.0) against the clean frame, mean ± std. "
        "Baselines have their strength tuned per level on 20 held-out frames (BM3D on 4, and scored on "
        "fewer frames, with ours beside it on the same frames); ours is fixed.\n"
    )
    for name, lv in r["denoising"].items():
        study = ""
        if lv["main"]:
            study = f" — study: SSIM {STUDY_SSIM[lv['kind']]:.3f}, PSNR {STUDY_PSNR[lv['kind']]} dB"
        add(f"### {name}{' (main level)' if lv['main'] else ''}{study}\n")
        add("| method | PSNR | SSIM |\n|---|---|---|")
        for meth, q in lv["methods"].items():
            bold = "**" if meth == lv["ours"] else ""
            same = (
                f" (ours on the same {q['n']} frames: {q['ours_ssim_mean_same_frames']:.4f})"
                if "n" in q
                else ""
            )
            add(
                f"| {bold}{meth}{bold} | {q['psnr_mean']:.2f} ± {q['psnr_std']:.2f} | {q['ssim_mean']:.4f} ± {q['ssim_std']:.4f}{same} |"
            )
        add(
            f"\nOurs {'beats' if lv['ours_beats_best_baseline_ssim'] else 'does NOT beat'} the best baseline ({lv['best_baseline']}) on SSIM; n = {lv['n']}.\n"
        )
    add("Examples (clean / noisy / ours / median 3x3): `figures/denoise_examples.png`.\n")

    d = r["defect"]
    add("## Defect detection (stage 3) - the study's table, rerun\n")
    add(
        "Defective is the positive class. Each table twice: at the calibrated threshold (what the daemon runs, "
        "chosen for the escape-rate target, below) and at 0.5 (the classifier's own decision, the study's rule).\n"
    )
    for key, rec_key, title in (
        (
            "rows",
            "gap_recovery",
            "At the calibrated thresholds (per noise type the pipeline called: "
            + ", ".join(f"{k} {v:.5f}" for k, v in d["thresholds"].items())
            + ")"
            if d.get("thresholds")
            else f"At the calibrated threshold {d['threshold']:.5f}",
        ),
        ("rows_at_0.5", "gap_recovery_at_0.5", "At threshold 0.5"),
    ):
        if key not in d:
            continue
        add(f"### {title}\n")
        add(
            "| condition | accuracy | sensitivity | specificity | F1 | AUC | escape rate | false reject rate |"
        )
        add("|---|---|---|---|---|---|---|---|")
        for name, x in d[key].items():
            add(
                f"| {name} | {_pct(x['accuracy'])} | {_pct(x['sensitivity'])} | {_pct(x['specificity'])} | "
                f"{x['f1']:.4f} | {x['auc']:.4f} | {_pct(x['escape_rate'])} | {_pct(x['false_reject_rate'])} |"
            )
        add(
            "\nShare of the accuracy gap (clean minus noisy-without-denoising) that the full pipeline recovers:\n"
        )
        for name, v in d[rec_key].items():
            add(f"- {name}: {'n/a (no gap)' if v != v else f'{v * 100:.1f}%'}")
        add("")
    add(
        "Study (VGG16): 94.6% on noisy frames -> 97.0% after denoising. Figure: `figures/defect_accuracy.png`.\n"
    )
    for sub_name, sub in d.get("subsets", {}).items():
        add(f"### The {sub_name} test split ({sub['n']} photographs, {sub['defective']} defective)\n")
        add(
            "| condition | accuracy at 0.5 | AUC | accuracy calibrated | escape rate calibrated | false reject rate calibrated |"
        )
        add("|---|---|---|---|---|---|")
        for name, x in sub["rows_at_0.5"].items():
            c = sub["rows"][name]
            add(
                f"| {name} | {_pct(x['accuracy'])} | {x['auc']:.4f} | {_pct(c['accuracy'])} | "
                f"{_pct(c['escape_rate'])} | {_pct(c['false_reject_rate'])} |"
            )
        rec = sub["gap_recovery_at_0.5"].get("mixed noise", float("nan"))
        add(
            f"\nAccuracy gap recovered on mixed noise at 0.5: {'n/a' if rec != rec else f'{rec * 100:.1f}%'}.\n"
        )

    if "robustness" in r:
        rb = r["robustness"]
        add("## Robustness: what a real line does to a photograph\n")
        add(
            f"The {rb['n']} clean test photographs, one perturbation at a time, through the full pipeline "
            "(`engines/evaluate.py: perturbations`). 'called clean': the share the noise classifier still calls "
            "clean (a frame called noisy is denoised and decided at that type's threshold).\n"
        )
        add(
            "| perturbation | accuracy at 0.5 | AUC | accuracy calibrated | escapes calibrated | false rejects calibrated | called clean |"
        )
        add("|---|---|---|---|---|---|---|")
        for name, x in rb["rows"].items():
            add(
                f"| {name} | {_pct(x['accuracy_at_0.5'])} | {x['auc']:.4f} | {_pct(x['accuracy_calibrated'])} | "
                f"{_pct(x['escape_rate_calibrated'])} | {_pct(x['false_reject_rate_calibrated'])} | "
                f"{_pct(x['called_clean'])} |"
            )
        add("")

    if "calibration" in r:
        c = r["calibration"]
        cm = c["calibration_metrics"]
        add("## Threshold calibration\n")
        add(
            f"Calibration split: {c['n']} frames ({c['split']}); {c['mix']}. Target escape rate {c['escape_target']}: "
            f"threshold {c['threshold']:.5f}, giving escape rate {_pct(cm['escape_rate'])} and false reject rate "
            f"{_pct(cm['false_reject_rate'])} on the calibration split. "
            "ROC and score histograms: `figures/calibration_roc.png`, `figures/calibration_scores.png`.\n"
        )
        if c.get("thresholds"):
            pg = c["calibration_metrics_per_group"]
            add(
                "The daemon decides each frame at the threshold of the noise type it called (the escape target "
                "holds per type, so for any mix on the line); the single threshold above is the fallback for "
                "a type without its own. Per noise type on the calibration split:\n"
            )
            add("| noise type | frames | defective | threshold | escape rate | false reject rate |")
            add("|---|---|---|---|---|---|")
            for k, t in c["thresholds"].items():
                m = c["threshold_metrics"][k]
                add(
                    f"| {k} | {m['n']} | {m['tp'] + m['fn']} | {t:.5f} | {_pct(m['escape_rate'])} | "
                    f"{_pct(m['false_reject_rate'])} |"
                )
            add(
                f"| all, each at its type's threshold | {pg['n']} | {pg['tp'] + pg['fn']} | - | "
                f"{_pct(pg['escape_rate'])} | {_pct(pg['false_reject_rate'])} |\n"
            )
    if "latency_ms_per_frame_batch8" in r:
        add("## CPU latency per frame (ONNX Runtime, batch 8, this build machine)\n")
        add("| stage | ms/frame |\n|---|---|")
        for k, v in r["latency_ms_per_frame_batch8"].items():
            add(f"| {k} | {v:.2f} |")
        add("")
    return "\n".join(lines) + "\n"
