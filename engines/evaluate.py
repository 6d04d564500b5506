"""Honest evaluation of an engine set, through the runtime's own pipeline on ONNX Runtime.

Everything is measured on the exported engines (what ships), on a fixed test
split drawn from seeds never used in training, with every noisy frame derived
from a seeded generator so the table can be rerun to the digit.

Produces a report dict (written as report.json and report.md by
:mod:`engines.package`) and PNG figures:

- noise type: accuracy and 4x4 confusion matrix at every report level;
- denoising: PSNR/SSIM mean and std per noise type and level for the noisy
  input, our denoiser, median 3x3, OpenCV non-local means and Gaussian blur
  (the classical baselines get their strength tuned per level on held-out
  frames, an advantage ours does not get);
- defect: the study's table rerun - clean frames, noisy frames without
  denoising, and noisy frames through the full pipeline - with accuracy,
  sensitivity, specificity, F1, AUC, escape and false reject rates at the
  calibrated threshold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from tqdm import tqdm

from calibration.metrics import binary_metrics
from calibration.operating_point import pipeline_scores
from inspector import noise as nz
from inspector.denoise import AUTOENCODER, CLASSICAL_FILTERS, median3
from inspector.pipeline import Pipeline

MAIN_NOISY = [lv for lv in nz.REPORT_LEVELS if lv.main and lv.kind != "clean"]


def noisy_set(frames: np.ndarray, level: nz.NoiseLevel, seed: int) -> np.ndarray:
    """The test frames at ``level``: frame i's noise comes from rng([seed, level index, i])."""
    li = nz.REPORT_LEVELS.index(level)
    return np.stack(
        [nz.apply_level(f, level, np.random.default_rng([seed, 500 + li, i])) for i, f in enumerate(frames)]
    )


def batched(
    fn: Callable[[np.ndarray], np.ndarray],
    frames: np.ndarray,
    batch: int = 32,
    desc: str = "",
    progress: bool = True,
) -> np.ndarray:
    outs = []
    for i in tqdm(range(0, len(frames), batch), desc=desc, disable=not progress, leave=False):
        outs.append(fn(frames[i : i + batch]))
    return np.concatenate(outs)


def _to_unit(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) / 255.0


def quality(den: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """(PSNR dB, SSIM) of a uint8 frame against the clean frame, both on float [0, 1] (scikit-image)."""
    a, b = _to_unit(den), _to_unit(clean)
    return (
        float(peak_signal_noise_ratio(b, a, data_range=1.0)),
        float(structural_similarity(b, a, data_range=1.0)),
    )


def nlm(img: np.ndarray, h: float) -> np.ndarray:
    return cv2.fastNlMeansDenoising(img, None, h=float(h), templateWindowSize=7, searchWindowSize=21)


def gblur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), float(sigma))


def bm3d_filter(img: np.ndarray, sigma: float) -> np.ndarray:
    """BM3D (the ``bm3d`` package, both stages) with noise deviation ``sigma`` in grey levels."""
    import bm3d

    out = bm3d.bm3d(img.astype(np.float64) / 255.0, sigma_psd=float(sigma) / 255.0)
    return np.clip(np.rint(np.asarray(out) * 255.0), 0, 255).astype(np.uint8)


def bm3d_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bm3d") is not None


NLM_H = (3, 6, 10, 15, 22, 30, 40, 55, 70, 90)
BM3D_SIGMA = (10, 18, 25, 35, 50, 70)
BM3D_TUNE_FRAMES = 4
BLUR_SIGMA = (0.5, 0.8, 1.2, 1.7, 2.4, 3.5, 5.0)


def _tune(
    fn: Callable[[np.ndarray, float], np.ndarray],
    grid: tuple[float, ...],
    noisy: np.ndarray,
    clean: np.ndarray,
) -> float:
    """The grid value with the best mean SSIM on these (held-out) frames."""
    best = max(
        grid, key=lambda v: np.mean([quality(fn(n, v), c)[1] for n, c in zip(noisy, clean, strict=True)])
    )
    return float(best)


def evaluate_noise_types(
    pipe: Pipeline, frames: np.ndarray, seed: int, progress: bool
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Accuracy and confusion matrix per report level; also returns the noisy sets for reuse."""
    out: dict[str, Any] = {}
    sets: dict[str, np.ndarray] = {}
    for level in nz.REPORT_LEVELS:
        noisy = frames if level.kind == "clean" else noisy_set(frames, level, seed)
        sets[level.name] = noisy
        pred = batched(
            lambda b: pipe.classify_noise(b)[0], noisy, desc=f"noise type {level.name}", progress=progress
        )
        truth = nz.NOISE_TYPES.index(level.kind)
        cm = np.zeros((4, 4), np.int64)
        for p in pred:
            cm[truth, int(p)] += 1
        out[level.name] = {
            "kind": level.kind,
            "value": level.value,
            "main": level.main,
            "n": len(pred),
            "accuracy": float((pred == truth).mean()),
            "confusion": cm.tolist(),
        }
    main = [v["accuracy"] for v in out.values() if v["main"]]
    return {
        "levels": out,
        "classes": list(nz.NOISE_TYPES),
        "main_levels_min_accuracy": float(min(main)),
    }, sets


def evaluate_denoising(
    pipe: Pipeline,
    clean: np.ndarray,
    sets: dict[str, np.ndarray],
    n_eval: int,
    n_tune: int,
    progress: bool,
    bm3d_frames: int = 0,
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """PSNR/SSIM table; the first ``n_tune`` frames tune the baselines, the next ``n_eval`` are scored.

    ``bm3d_frames`` > 0 adds BM3D at the Gaussian levels, where the ``bm3d`` package is installed: its
    sigma tuned on the first ``BM3D_TUNE_FRAMES`` tuning frames, scored on the first ``bm3d_frames``
    scored frames (BM3D takes seconds a frame), and compared with ours on those same frames."""
    table: dict[str, Any] = {}
    examples: dict[str, dict[str, np.ndarray]] = {}
    ae = pipe.engines["denoise"]
    for level in nz.REPORT_LEVELS:
        if level.kind == "clean":
            continue
        noisy_all = sets[level.name]
        tune_n, tune_c = noisy_all[:n_tune], clean[:n_tune]
        noisy, ref = noisy_all[n_tune : n_tune + n_eval], clean[n_tune : n_tune + n_eval]
        h = _tune(nlm, NLM_H, tune_n, tune_c)
        s = _tune(gblur, BLUR_SIGMA, tune_n, tune_c)
        route = pipe.routes[level.kind]
        ae_out = batched(
            lambda b: ae.infer(b[:, None])[:, 0],
            noisy,
            batch=8,
            desc=f"autoencoder {level.name}",
            progress=progress,
        )
        others: dict[str, np.ndarray] = {}
        if route == AUTOENCODER:
            ours_name, ours = "autoencoder (route)", ae_out
        else:
            ours_name = f"{route.replace('_', ' ')} (route)"
            ours = np.stack([CLASSICAL_FILTERS[route](f) for f in noisy])
            if level.kind == "periodic":
                others["autoencoder (not routed)"] = ae_out
        methods = {
            "noisy input": noisy,
            ours_name: ours,
            "median 3x3": np.stack([median3(f) for f in noisy]),
            f"non-local means (h={h:g})": np.stack(
                [nlm(f, h) for f in tqdm(noisy, desc=f"nlm {level.name}", disable=not progress, leave=False)]
            ),
            f"gaussian blur (sigma={s:g})": np.stack([gblur(f, s) for f in noisy]),
            **others,
        }
        n_bm3d = min(bm3d_frames, len(noisy))
        if level.kind == "gaussian" and n_bm3d > 0 and bm3d_available():
            k = min(BM3D_TUNE_FRAMES, len(tune_n))
            sb = _tune(bm3d_filter, BM3D_SIGMA, tune_n[:k], tune_c[:k])
            bar = tqdm(noisy[:n_bm3d], desc=f"bm3d {level.name}", disable=not progress, leave=False)
            methods[f"BM3D (sigma={sb:g}, first {n_bm3d} frames)"] = np.stack(
                [bm3d_filter(f, sb) for f in bar]
            )
        rows = {}
        per_frame = {}  # (PSNR, SSIM) of each scored frame, per method
        for name, imgs in methods.items():
            q = per_frame[name] = np.array(
                [quality(d, c) for d, c in zip(imgs, ref[: len(imgs)], strict=True)]
            )
            rows[name] = {
                "psnr_mean": float(q[:, 0].mean()),
                "psnr_std": float(q[:, 0].std()),
                "ssim_mean": float(q[:, 1].mean()),
                "ssim_std": float(q[:, 1].std()),
            }
            if len(imgs) < len(noisy):  # scored on fewer frames: ours on those same frames beside it
                rows[name]["n"] = len(imgs)
                rows[name]["ours_ssim_mean_same_frames"] = float(per_frame[ours_name][: len(imgs), 1].mean())
        baselines = [k for k in rows if k not in ("noisy input", ours_name, *others)]

        # How far each baseline is above ours, on the frames it was scored on.
        ours_ssim = rows[ours_name]["ssim_mean"]
        margin = {
            k: rows[k]["ssim_mean"] - rows[k].get("ours_ssim_mean_same_frames", ours_ssim) for k in baselines
        }
        best_base = max(baselines, key=lambda k: margin[k])
        table[level.name] = {
            "kind": level.kind,
            "value": level.value,
            "main": level.main,
            "n": len(noisy),
            "ours": ours_name,
            "methods": rows,
            "best_baseline": best_base,
            "ours_beats_best_baseline_ssim": margin[best_base] <= 0,
        }
        if level.main:
            examples[level.name] = {
                "clean": ref[0],
                "noisy": noisy[0],
                "ours": ours[0],
                "median 3x3": methods["median 3x3"][0],
            }
    return table, examples


def evaluate_defects(
    pipe: Pipeline,
    frames: np.ndarray,
    labels: np.ndarray,
    sets: dict[str, np.ndarray],
    progress: bool,
    subsets: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The study's table: clean, noisy without denoising, noisy through the full pipeline.

    Every row twice: at the calibrated threshold (what the line runs, set for
    the escape-rate target) and at 0.5 (the classifier's own decision, the
    study's rule), with the share of the accuracy gap the pipeline recovers.
    ``subsets`` (name -> boolean mask over the frames) adds the same tables on
    those frames alone, from the same scores (e.g. the test split without the
    photographs that leak from ``train``), under ``"subsets"``.
    """
    scores: dict[str, np.ndarray] = {}
    kinds: dict[str, np.ndarray] = {}  # noise type the pipeline called, per frame, per condition
    scores["clean (classifier only)"] = batched(pipe.score, frames, desc="defect clean", progress=progress)
    scores["clean (full pipeline)"], kinds["clean"] = pipeline_scores(
        pipe, frames, "pipeline clean", progress
    )
    for level in MAIN_NOISY:
        noisy = sets[level.name]
        scores[f"{level.name} without denoising"] = batched(
            pipe.score, noisy, desc=f"defect {level.name} raw", progress=progress
        )
        scores[f"{level.name} full pipeline"], kinds[level.name] = pipeline_scores(
            pipe, noisy, f"pipeline {level.name}", progress
        )
    # Mixed: frame i carries noise type i % 3 at its main level (one fixed set, every frame once).
    pick = np.arange(len(frames)) % len(MAIN_NOISY)
    for what in ("without denoising", "full pipeline"):
        per = [scores[f"{lv.name} {what}"] for lv in MAIN_NOISY]
        scores[f"mixed noise {what}"] = np.array([per[k][i] for i, k in enumerate(pick)])
    kinds["mixed noise"] = np.array([kinds[MAIN_NOISY[k].name][i] for i, k in enumerate(pick)])

    def frame_thresholds(name: str) -> np.ndarray:
        # A row's frames are decided at the threshold of the noise type the pipeline called on them
        # (for the classifier-only rows: on the same frames), as the daemon decides.
        base = next(k for k in sorted(kinds, key=len, reverse=True) if name.startswith(k))
        return np.array([pipe.threshold_for(str(k)) for k in kinds[base]])

    def table(t: float | None, mask: np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, float]]:
        keep = np.ones(len(labels), bool) if mask is None else mask
        rows = {
            name: binary_metrics(
                labels[keep], s[keep], (frame_thresholds(name) if t is None else np.full(len(s), t))[keep]
            )
            for name, s in scores.items()
        }
        clean_acc = rows["clean (classifier only)"]["accuracy"]
        recovery = {}
        for name in [*(lv.name for lv in MAIN_NOISY), "mixed noise"]:
            a_raw = rows[f"{name} without denoising"]["accuracy"]
            gap = clean_acc - a_raw
            recovery[name] = (
                float((rows[f"{name} full pipeline"]["accuracy"] - a_raw) / gap)
                if gap > 1e-9
                else float("nan")
            )
        return rows, recovery

    rows, recovery = table(None)
    rows_half, recovery_half = table(0.5)
    extra = {}
    for name, mask in (subsets or {}).items():
        sub_rows, sub_rec = table(None, mask)
        sub_half, sub_rec_half = table(0.5, mask)
        extra[name] = {
            "rows": sub_rows,
            "gap_recovery": sub_rec,
            "rows_at_0.5": sub_half,
            "gap_recovery_at_0.5": sub_rec_half,
            "n": int(mask.sum()),
            "defective": int(labels[mask].sum()),
        }
    return {
        **({"subsets": extra} if extra else {}),
        "threshold": pipe.threshold,
        "thresholds": dict(pipe.thresholds),
        "rows": rows,
        "gap_recovery": recovery,
        "rows_at_0.5": rows_half,
        "gap_recovery_at_0.5": recovery_half,
        "n": len(frames),
        "defective": int(labels.sum()),
    }


def perturbations(frames: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The test frames as a real line may deliver them, one perturbation at a time (``engines.augment``)."""
    from engines import augment as au

    rng = np.random.default_rng([seed, 777])
    angles = rng.uniform(0, 360, len(frames))
    shifts = rng.uniform(0, 2 * np.pi, len(frames))

    def shifted(px: float) -> np.ndarray:
        return np.stack(
            [au.rotate(f, 0.0, (px * np.cos(a), px * np.sin(a))) for f, a in zip(frames, shifts, strict=True)]
        )

    return {
        "brightness -20%": np.stack([au.brightness(f, 0.8) for f in frames]),
        "brightness +20%": np.stack([au.brightness(f, 1.2) for f in frames]),
        "contrast 0.8x": np.stack([au.contrast(f, 0.8) for f in frames]),
        "contrast 1.2x": np.stack([au.contrast(f, 1.2) for f in frames]),
        "rotation 5 deg": np.stack([au.rotate(f, 5.0) for f in frames]),
        "rotation any angle": np.stack([au.rotate(f, a) for f, a in zip(frames, angles, strict=True)]),
        "shift 10 px": shifted(10.0),
        "shift 20 px": shifted(20.0),
        "defocus blur (sigma 1)": np.stack([au.defocus(f, 1.0) for f in frames]),
        "JPEG quality 50": np.stack([au.jpeg(f, 50) for f in frames]),
        "512 px camera resized on arrival": np.stack([au.camera_512(f) for f in frames]),
    }


def evaluate_robustness(
    pipe: Pipeline, frames: np.ndarray, labels: np.ndarray, seed: int, progress: bool
) -> dict[str, Any]:
    """Defect accuracy through the full pipeline per perturbation, at 0.5 and at the calibrated thresholds.

    Also the share of perturbed frames the noise classifier still calls clean: a brightness change
    is not noise, and a frame called noisy is denoised (and decided at that type's threshold).
    """
    rows: dict[str, Any] = {}
    sets = {"none (the clean test photographs)": frames, **perturbations(frames, seed)}
    for name, perturbed in sets.items():
        s, kinds = pipeline_scores(pipe, perturbed, f"robustness {name}", progress)
        at_half = binary_metrics(labels, s, 0.5)
        calibrated = binary_metrics(labels, s, np.array([pipe.threshold_for(str(k)) for k in kinds]))
        rows[name] = {
            "accuracy_at_0.5": at_half["accuracy"],
            "auc": at_half["auc"],
            "accuracy_calibrated": calibrated["accuracy"],
            "escape_rate_calibrated": calibrated["escape_rate"],
            "false_reject_rate_calibrated": calibrated["false_reject_rate"],
            "called_clean": float(np.mean(kinds == "clean")),
        }
    return {"n": len(frames), "rows": rows}


def stage_latency(pipe: Pipeline, frames: np.ndarray, batch: int = 8, repeats: int = 5) -> dict[str, float]:
    """ONNX Runtime ms per frame per stage at ``batch`` (median of ``repeats``), on this machine."""
    x = frames[:batch]
    out = {}
    for stage, engine in pipe.engines.items():
        engine.infer(x[:, None])
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            engine.infer(x[:, None])
            times.append(time.perf_counter() - t0)
        out[stage] = float(np.median(times) * 1e3 / batch)
    rng = np.random.default_rng(0)
    for name, kind in (("adaptive_median", "salt_pepper"), ("sinusoid_fit", "periodic")):
        level = next(lv for lv in nz.REPORT_LEVELS if lv.kind == kind and lv.main)
        noisy = nz.apply_level(x[0], level, rng)
        t0 = time.perf_counter()
        for _ in range(repeats):
            CLASSICAL_FILTERS[name](noisy)
        out[name] = (time.perf_counter() - t0) * 1e3 / repeats
    return out


def plot_confusions(noise_report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = noise_report["levels"]
    n = len(levels)
    cols = 4
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.3 * rows))
    short = ["clean", "gauss", "s&p", "period"]
    for ax, (name, lv) in zip(axes.flat, levels.items(), strict=False):
        cm = np.array(lv["confusion"])
        ax.imshow(cm, cmap="Blues")
        for i in range(4):
            for j in range(4):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="k" if cm[i, j] < cm.max() / 2 else "w",
                    )
        ax.set_xticks(range(4), short, fontsize=7)
        ax.set_yticks(range(4), short, fontsize=7)
        ax.set_title(f"{name}{' (main)' if lv['main'] else ''}\nacc {lv['accuracy'] * 100:.2f}%", fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Noise type: true (rows) vs predicted (columns)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_examples(examples: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["clean", "noisy", "ours", "median 3x3"]
    fig, axes = plt.subplots(len(examples), len(cols), figsize=(3 * len(cols), 3 * len(examples)))
    axes = np.atleast_2d(axes)
    for r, (name, ex) in enumerate(examples.items()):
        for c, key in enumerate(cols):
            axes[r, c].imshow(ex[key], cmap="gray", vmin=0, vmax=255)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if c == 0:
                axes[r, c].set_ylabel(name)
            if r == 0:
                axes[r, c].set_title("ours (routed)" if key == "ours" else key)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_defects(defect_report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(defect_report["rows"])
    acc = [defect_report["rows"][n]["accuracy"] * 100 for n in names]
    colors = ["tab:green" if "clean" in n else "tab:red" if "without" in n else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.barh(range(len(names)), acc, color=colors)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    lo = max(min(acc) - 5, 0)
    ax.set_xlim(lo, 100)
    for i, a in enumerate(acc):
        ax.text(a, i, f" {a:.2f}", va="center", fontsize=8)
    ax.set_xlabel(f"defect accuracy (%) at threshold {defect_report['threshold']:.4f}")
    ax.set_title("Defect detection: clean, noisy without denoising, full pipeline")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
