"""Turn trained checkpoints into a shipped engine set.

export (ONNX + parity) -> calibrate the threshold on the calibration split
(through the full pipeline, on a mix of clean and noisy frames) -> evaluate
on the test split -> manifest.json, report.json, report.md, figures/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from calibration import operating_point
from calibration.threshold import calibrate, plot_calibration
from engines import evaluate as ev
from engines.data import load_split, synthetic_seed
from engines.export import export_onnx, parity
from engines.models import count_flops, gflop, param_count
from engines.profiles import Profile, get_profile
from engines.report import render_markdown
from engines.train import STAGE_ARCH, load_checkpoint
from inspector import noise as nz
from inspector.backends import open_engine
from inspector.manifest import InputSpec, Manifest, StageEntry, load_manifest, sha256_file, write_manifest
from inspector.pipeline import Pipeline

OUTPUT_DESC = {
    "noise": "logits (N, 4) over classes",
    "denoise": "denoised frames, uint8 (N, 1, H, W)",
    "defect": "logits (N, 2) over classes; score = softmax[:, 1]",
}
CLASSES = {"noise": list(nz.NOISE_TYPES), "denoise": [], "defect": ["ok", "defective"]}


def library_versions() -> dict[str, str]:
    from inspector.rebuild import versions

    return versions(
        ("torch", "onnx", "onnxruntime", "numpy", "opencv-python-headless", "scikit-image", "line-inspector")
    )


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _stage_entries(ckdir: Path, out: Path, profile: Profile) -> dict[str, StageEntry]:
    import torch

    entries = {}
    example = torch.zeros((1, 1, 300, 300), dtype=torch.uint8)
    for stage in ("noise", "denoise", "defect"):
        model, ckpt = load_checkpoint(ckdir / f"{stage}.pt", stage)
        path = out / f"{stage}.onnx"
        print(f"exporting {stage} -> {path}", flush=True)
        export_onnx(model, path)
        diff = parity(model, path, stage)
        cfg = ckpt["config"]
        entries[stage] = StageEntry(
            stage=stage,
            file=path.name,
            sha256=sha256_file(path),
            arch=ckpt.get("arch", STAGE_ARCH[stage]),
            classes=CLASSES[stage],
            input=InputSpec(resize_to=cfg.get("input_size")),
            output=OUTPUT_DESC[stage],
            params=param_count(model),
            gflop_per_frame=gflop(count_flops(model, example)),
            config=cfg,
            training={**{k: v for k, v in ckpt["info"].items()}, "parity_max_abs_diff": diff},
        )
    return entries


def package(args: argparse.Namespace, command: str) -> Manifest:
    t0 = time.time()
    profile = get_profile(args.profile, train_frames=args.train_frames, test_frames=args.test_frames)
    progress = not args.quiet
    ckdir = args.checkpoints if args.checkpoints is not None else Path("build") / args.profile
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    entries = _stage_entries(ckdir, out, profile)
    ckout = out / "checkpoints"
    ckout.mkdir(exist_ok=True)
    shipped_ck = {}
    for stage in entries:
        shutil.copyfile(ckdir / f"{stage}.pt", ckout / f"{stage}.pt")
        shipped_ck[f"checkpoints/{stage}.pt"] = sha256_file(ckout / f"{stage}.pt")
    engines = {s: open_engine("onnxruntime", out / e.file, s) for s, e in entries.items()}
    pipe = Pipeline(engines, threshold=0.5)

    figdir = out / "figures"
    cal, calib_labels, _, _ = calibrate_set(
        pipe, args.data, profile, args.seed, args.escape_rate, figdir, progress
    )
    _say_calibration(cal)

    report = evaluate_set(pipe, args.data, profile, args.seed, figdir, progress)
    budget = {
        "clean_frame": round(entries["noise"].gflop_per_frame + entries["defect"].gflop_per_frame, 4),
        "noisy_frame": round(sum(e.gflop_per_frame for e in entries.values()), 4),
        "limit_clean_frame": 2.5,
        "limit_noisy_frame": 6.0,
    }
    report["budget_gflop"] = budget
    report["calibration"] = calibration_record(cal, len(calib_labels), args.data, args.seed)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    prior = [c for c in _prior_commands(ckdir) if c != command]
    manifest = Manifest(
        model_version=f"{profile.name}-s{args.seed}-{created[:10]}",
        profile=profile.name,
        created=created,
        command=" && ".join([*prior, command]) if prior else command,
        seed=args.seed,
        data=args.data,
        threshold=cal["threshold"],
        thresholds=cal["thresholds"],
        escape_target=args.escape_rate,
        salt_pepper_filter=pipe.routes["salt_pepper"],
        periodic_filter=pipe.routes["periodic"],
        stages=entries,
        checkpoints=shipped_ck,
        budget_gflop=budget,
        calibration=manifest_calibration(report["calibration"]),
        metrics=summary_metrics(report),
        versions=library_versions(),
        git_revision=git_revision(),
    )
    report["manifest"] = {
        "model_version": manifest.model_version,
        "command": manifest.command,
        "seed": manifest.seed,
        "profile": profile.to_dict(),
    }
    report["elapsed_seconds"] = round(time.time() - t0, 1)
    write_manifest(out, manifest)
    write_report(out, report)
    pipe.close()
    print(f"engine set written to {out} in {time.time() - t0:.0f} s", flush=True)
    return manifest


def _say_calibration(cal: dict[str, Any]) -> None:
    print(
        f"single threshold {cal['threshold']:.5f} for escape target {cal['escape_target']}: calibration false "
        f"reject rate {cal['calibration_metrics']['false_reject_rate']:.4f}; per noise type "
        + ", ".join(f"{k} {v:.5f}" for k, v in cal["thresholds"].items())
        + f": {cal['calibration_metrics_per_group']['false_reject_rate']:.4f}",
        flush=True,
    )


def calibration_record(cal: dict[str, Any], n: int, data: str, seed: int) -> dict[str, Any]:
    """The report's calibration block."""
    return {
        **cal,
        "split": f"synthetic seed {synthetic_seed(seed, 'calib')}"
        if data == "synthetic"
        else f"carved from {data}",
        "n": n,
        "mix": "frame i: clean if i % 4 == 0, else gaussian / salt_pepper / periodic at a training-range level",
    }


def manifest_calibration(record: dict[str, Any]) -> dict[str, Any]:
    """The manifest's calibration block: the report's, with the whole split's metrics under ``metrics``."""
    return {k: v for k, v in record.items() if k != "calibration_metrics"} | {
        "metrics": record["calibration_metrics"]
    }


def recalibrate(args: argparse.Namespace, command: str) -> Manifest:
    """New thresholds for an existing engine set (another escape target, or the line's own frames).

    Scores the calibration split through the set, sets the single and the
    per-noise-type thresholds, rewrites the manifest (thresholds, target, the
    command appended) and the calibration figures, and re-runs the evaluation
    so the report describes the new operating point. The engine files are
    untouched: their hashes still hold, and a running daemon picks the new
    thresholds up on reload (SIGHUP).
    """
    if not 0.0 <= args.escape_rate < 1.0:  # before minutes of scoring, not after
        raise ValueError(f"escape rate target must be in [0, 1), got {args.escape_rate}")
    root: Path = args.engines
    manifest = load_manifest(root)
    profile = get_profile(manifest.profile, test_frames=args.test_frames)
    data = args.data if args.data is not None else manifest.data
    progress = not args.quiet
    # Scores only: the set's current thresholds play no part (and an INT8 set that kept float32's, which
    # the daemon refuses to serve, is exactly what this command gives thresholds of its own).
    pipe = Pipeline.from_manifest(root, threshold=manifest.threshold)
    cal, labels, _, _ = calibrate_set(
        pipe, data, profile, manifest.seed, args.escape_rate, root / "figures", progress
    )
    _say_calibration(cal)
    report = json.loads((root / "report.json").read_text()) if (root / "report.json").is_file() else {}
    report["calibration"] = calibration_record(cal, len(labels), data, manifest.seed)
    report.update(evaluate_set(pipe, manifest.data, profile, manifest.seed, root / "figures", progress))
    pipe.close()
    manifest = manifest.model_copy(
        update={
            "threshold": cal["threshold"],
            "thresholds": cal["thresholds"],
            "escape_target": args.escape_rate,
            "command": f"{manifest.command} && {command}",
            "calibration": manifest_calibration(report["calibration"])
            | (  # an INT8 set calibrated here has thresholds of its own (inspector.manifest.borrowed_thresholds)
                {"int8": {"thresholds_calibrated": True, "by": "inspector-build calibrate on INT8 scores"}}
                if manifest.precision.startswith("int8")
                else {}
            ),
            "metrics": summary_metrics(report) if "denoising" in report else manifest.metrics,
        }
    )
    write_manifest(root, manifest)
    write_report(root, report)
    print(f"thresholds of {root} recalibrated for escape rate {args.escape_rate}")
    return manifest


def calibrate_set(
    pipe: Pipeline,
    data: str,
    profile: Profile,
    seed: int,
    escape_target: float,
    figdir: Path | None,
    progress: bool,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """Score the calibration split through ``pipe``, set its thresholds (single and per noise type).

    Returns the calibration result (``calibration.threshold.calibrate`` with groups) and the split's
    labels, scores and called noise types; draws the ROC and score histograms into ``figdir`` when given.
    """
    labels, scores, kinds = calibration_scores(pipe, data, profile, seed, progress)
    cal = calibrate(labels, scores, escape_target, groups=kinds)
    pipe.threshold, pipe.thresholds = cal["threshold"], cal["thresholds"]
    if figdir is not None:
        plot_calibration(labels, scores, cal["threshold"], figdir, kinds, cal["thresholds"])
    return cal, labels, scores, kinds


def calibration_scores(
    pipe: Pipeline, data: str, profile: Profile, seed: int, progress: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, defect scores and called noise types of the calibration split, through ``pipe``."""
    return operating_point.calibration_scores(pipe, data, profile.calib_frames, seed, progress)


def _prior_commands(ckdir: Path) -> list[str]:
    marker = ckdir / "train_command.txt"
    return (
        [line.strip() for line in marker.read_text().splitlines() if line.strip()] if marker.is_file() else []
    )


def evaluate_set(
    pipe: Pipeline, data: str, profile: Profile, seed: int, figdir: Path, progress: bool
) -> dict[str, Any]:
    test = load_split(data, "test", profile.test_frames, seed, progress)
    figdir.mkdir(parents=True, exist_ok=True)
    noise_rep, sets = ev.evaluate_noise_types(pipe, test.frames, seed, progress)
    n_tune = min(20, max(len(test.frames) // 10, 2))
    n_eval = min(profile.eval_denoise_frames, len(test.frames) - n_tune)
    den_rep, examples = ev.evaluate_denoising(
        pipe, test.frames, sets, n_eval, n_tune, progress, bm3d_frames=profile.bm3d_frames
    )
    split: dict[str, Any] = {
        "data": data,
        "generator_seed": synthetic_seed(seed, "test") if data == "synthetic" else None,
        "frames": len(test.frames),
        "defective": int(test.labels.sum()),
    }
    subsets = None
    if data != "synthetic":
        leak = test_leakage(data, len(test.frames), seed)
        split["leakage"] = {
            "byte_identical_in_train": int(leak["identical"].sum()),
            "copies_in_train": int(leak["near"].sum()),
            "copy_min_score": leak["copy_min"],
            "deduplicated_frames": int((~leak["identical"] & ~leak["near"]).sum()),
        }
        subsets = {
            "deduplicated": ~leak["identical"] & ~leak["near"],
            "without byte-identical": ~leak["identical"],
        }
    def_rep = ev.evaluate_defects(pipe, test.frames, test.labels, sets, progress, subsets)
    ev.plot_confusions(noise_rep, figdir / "noise_confusion.png")
    if examples:
        ev.plot_examples(examples, figdir / "denoise_examples.png")
    ev.plot_defects(def_rep, figdir / "defect_accuracy.png")
    out: dict[str, Any] = {
        "test_split": split,
        "noise_type": noise_rep,
        "denoising": den_rep,
        "defect": def_rep,
        "latency_ms_per_frame_batch8": ev.stage_latency(pipe, test.frames),
    }
    if data != "synthetic":
        out["robustness"] = ev.evaluate_robustness(pipe, test.frames, test.labels, seed, progress)
    return out


def test_leakage(data: str, count: int, seed: int) -> dict[str, Any]:
    """Which photographs of the folder's test split (as ``load_split`` draws it) also sit in ``train``."""
    from engines.data import _folder, test_indices
    from engines.dedup import COPY_MIN, leaked_test

    test_frames, _, test_files = _folder(data, "test")
    train_frames, _, train_files = _folder(data, "train")
    idx = test_indices(data, count, seed)
    leak = leaked_test(
        test_frames[idx], [test_files[i] for i in idx], train_frames, train_files, sys.stderr.isatty()
    )
    return {**leak, "copy_min": COPY_MIN}


def summary_metrics(report: dict[str, Any]) -> dict[str, Any]:
    d = report["defect"]
    den = report["denoising"]
    out: dict[str, Any] = {
        "noise_type_accuracy_main_levels": {
            k: v["accuracy"] for k, v in report["noise_type"]["levels"].items() if v["main"]
        },
        "denoise_ssim_main_levels": {
            k: v["methods"][v["ours"]]["ssim_mean"] for k, v in den.items() if v["main"]
        },
        "test_frames": report["test_split"]["frames"],
    }
    for suffix, rows, rec in (
        ("", d["rows"], d["gap_recovery"]),
        ("_at_0.5", d["rows_at_0.5"], d["gap_recovery_at_0.5"]),
    ):
        out[f"defect_accuracy_clean{suffix}"] = rows["clean (classifier only)"]["accuracy"]
        out[f"defect_accuracy_mixed_noisy_raw{suffix}"] = rows["mixed noise without denoising"]["accuracy"]
        out[f"defect_accuracy_mixed_noisy_pipeline{suffix}"] = rows["mixed noise full pipeline"]["accuracy"]
        out[f"gap_recovery{suffix}"] = rec
    return out


def write_report(out: Path, report: dict[str, Any]) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "report.md").write_text(render_markdown(report))


def reevaluate(args: argparse.Namespace) -> None:
    root: Path = args.engines
    manifest = load_manifest(root)
    profile = get_profile(manifest.profile, test_frames=args.test_frames)
    pipe = Pipeline.from_manifest(root)
    report = json.loads((root / "report.json").read_text()) if (root / "report.json").is_file() else {}
    report.update(evaluate_set(pipe, manifest.data, profile, manifest.seed, root / "figures", not args.quiet))
    write_report(root, report)
    pipe.close()
    print(f"report rewritten in {root}")
