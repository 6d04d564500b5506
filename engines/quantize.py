"""``inspector-build quantize``: an INT8 (Q/DQ) engine set beside a float32 one, evaluated against it.

The INT8 set is a complete engine set (ONNX files + manifest) that the daemon
runs unchanged (``engines.path``). Its report compares every metric of the
build step's evaluation with the float32 set's, on the same test frames, and
the CPU speed of both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from calibration.threshold import paired_bootstrap
from engines import evaluate as ev
from engines.data import load_split
from engines.package import calibration_scores, evaluate_set, library_versions
from engines.profiles import get_profile
from inspector.manifest import load_manifest
from inspector.pipeline import Pipeline
from inspector.rebuild import int8_set


def quantize_set(args: argparse.Namespace, command: str) -> dict[str, Any]:
    src: Path = args.engines
    out: Path = args.out
    fp32 = load_manifest(src)
    progress = not args.quiet
    manifest, found = int8_set(
        src, out, args.calib_data, args.calib_frames, command, progress, library_versions()
    )
    if found is None:
        raise ValueError(
            f"the set's data {fp32.data!r} is not here: inspector-build quantize evaluates the INT8 set on it "
            "(inspector rebuild --int8-out quantizes without it)"
        )
    cal, labels, s8 = found["cal"], found["labels"], found["scores"]
    profile = get_profile(fp32.profile, test_frames=args.test_frames)
    t0 = time.time()
    p8 = Pipeline.from_manifest(out)
    # The same split through float32: how far apart the two operating points are, beside how far one
    # set's own operating point moves between samples of the split.
    p32 = Pipeline.from_manifest(src)
    _, s32, kinds32 = calibration_scores(p32, fp32.data, profile, fp32.seed, progress)
    boot = paired_bootstrap(labels, kinds32, s32, s8, fp32.escape_target)
    rep8 = evaluate_set(p8, fp32.data, profile, fp32.seed, out / "figures", progress)
    test = load_split(fp32.data, "test", 64, fp32.seed, progress=False)
    speed = {
        "float32": ev.stage_latency(p32, test.frames, repeats=20),
        "int8": ev.stage_latency(p8, test.frames, repeats=20),
    }
    p32.close()
    p8.close()
    ref = json.loads((src / "report.json").read_text())
    comparison = compare(ref, rep8)
    report = {
        **rep8,
        "threshold": {
            "int8": cal["threshold"],
            "float32": fp32.threshold,
            "int8_per_noise_type": cal["thresholds"],
            "float32_per_noise_type": fp32.thresholds,
            "escape_target": fp32.escape_target,
        },
        "comparison_with_float32": comparison,
        "operating_point_bootstrap": boot,
        "cpu_ms_per_frame_batch8": speed,
        "elapsed_seconds": round(time.time() - t0, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "report.md").write_text(
        render(
            comparison,
            speed,
            manifest.model_version,
            command,
            (fp32.threshold, cal["threshold"]),
            boot,
            (fp32.thresholds, cal["thresholds"]),
        )
    )
    return report


def compare(ref: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Every headline metric of the float32 report beside the INT8 one."""
    rows: dict[str, Any] = {}
    for name, lv in new["noise_type"]["levels"].items():
        rows[f"noise type accuracy {name}"] = (ref["noise_type"]["levels"][name]["accuracy"], lv["accuracy"])
    for name, lv in new["denoising"].items():
        ours = lv["ours"]
        rows[f"denoise SSIM {name}"] = (
            ref["denoising"][name]["methods"][ours]["ssim_mean"],
            lv["methods"][ours]["ssim_mean"],
        )
        rows[f"denoise PSNR {name}"] = (
            ref["denoising"][name]["methods"][ours]["psnr_mean"],
            lv["methods"][ours]["psnr_mean"],
        )
    # At the calibrated threshold (what the line runs) and at 0.5 (the study's rule).
    for table, tag in (("rows", ""), ("rows_at_0.5", " @0.5")):
        for cond, m in new["defect"].get(table, {}).items():
            if cond not in ref["defect"].get(table, {}):
                continue
            for k in (
                "accuracy",
                "sensitivity",
                "specificity",
                "f1",
                "auc",
                "escape_rate",
                "false_reject_rate",
            ):
                rows[f"defect {k}{tag} - {cond}"] = (ref["defect"][table][cond][k], m[k])
    main_noise = [
        k
        for k in rows
        if k.startswith("noise type accuracy") and new["noise_type"]["levels"][k.split()[-1]]["main"]
    ]
    return {
        "rows": {k: {"float32": a, "int8": b, "delta": b - a} for k, (a, b) in rows.items()},
        "defect_accuracy_clean_delta": rows["defect accuracy - clean (classifier only)"][1]
        - rows["defect accuracy - clean (classifier only)"][0],
        "noise_accuracy_main_min_delta": min(rows[k][1] - rows[k][0] for k in main_noise),
        "defect_accuracy_deltas_at_0.5": {
            cond: rows[k][1] - rows[k][0]
            for cond in ("clean (classifier only)", "mixed noise full pipeline")
            if (k := f"defect accuracy @0.5 - {cond}") in rows
        },
    }


def render(
    c: dict[str, Any],
    speed: dict[str, dict[str, float]],
    version: str,
    command: str,
    thresholds: tuple[float, float] | None = None,
    boot: dict[str, Any] | None = None,
    per_type: tuple[dict[str, float], dict[str, float]] | None = None,
) -> str:
    lines = [f"# INT8 (Q/DQ) engine set `{version}` against float32\n", f"Made with `{command}`.\n"]
    if thresholds is not None:
        lines.append(
            f"Each set at its own calibrated thresholds (same calibration split and escape target): single "
            f"float32 {thresholds[0]:.5f}, INT8 {thresholds[1]:.5f}"
            + (
                "; per noise type "
                + ", ".join(
                    f"{k} {per_type[0].get(k, float('nan')):.5f} / {v:.5f}" for k, v in per_type[1].items()
                )
                + " (float32 / INT8)"
                if per_type
                else ""
            )
            + ". Rows marked @0.5 compare both at 0.5.\n"
        )
    if boot is not None:
        p, ci = boot["point"], boot["interval_95"]

        def _pt(k: str) -> str:
            return f"{p[k] * 100:.1f}% (95% interval {ci[k][0] * 100:.1f} to {ci[k][1] * 100:.1f})"

        lines.append(
            f"How noisy the operating point is ({boot['resamples']} bootstrap resamples of the calibration split, "
            f"each set's per-type thresholds recalibrated for {boot['escape_target']:.1%} escapes in every resample): "
            f"false reject rate float32 {_pt('frr_a')}, INT8 {_pt('frr_b')}; difference INT8 - float32 "
            f"{p['frr_delta'] * 100:+.1f} points (95% interval {ci['frr_delta'][0] * 100:+.1f} to "
            f"{ci['frr_delta'][1] * 100:+.1f}); accuracy difference {p['accuracy_delta'] * 100:+.2f} points "
            f"({ci['accuracy_delta'][0] * 100:+.2f} to {ci['accuracy_delta'][1] * 100:+.2f}).\n"
        )
    lines.append(
        f"Defect accuracy on clean frames, each at its calibrated threshold: {c['defect_accuracy_clean_delta'] * 100:+.2f} points; "
        f"noise-type accuracy at the main levels: worst {c['noise_accuracy_main_min_delta'] * 100:+.2f} points.\n"
    )
    half = c.get("defect_accuracy_deltas_at_0.5", {})
    if half:
        lines.append(
            "At threshold 0.5: "
            + "; ".join(f"defect accuracy {cond}: {d * 100:+.2f} points" for cond, d in half.items())
            + ".\n"
        )
    lines.append("## CPU speed (ONNX Runtime, ms per frame at batch 8, this machine)\n")
    lines.append("| stage | float32 | int8 | speed-up |\n|---|---|---|---|")
    for stage in speed["float32"]:
        a, b = speed["float32"][stage], speed["int8"][stage]
        lines.append(f"| {stage} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    lines.append("\n## Every metric\n")
    lines.append("| metric | float32 | int8 | delta |\n|---|---|---|---|")
    for k, r in c["rows"].items():
        lines.append(f"| {k} | {r['float32']:.4f} | {r['int8']:.4f} | {r['delta']:+.4f} |")
    return "\n".join(lines) + "\n"
