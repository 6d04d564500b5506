"""The study's classifier comparison, done properly: every architecture, several seeds, one table.

For each architecture and seed, the defect stage is trained on the same frames
(the same clean frames and the same routed noisy copies, made once with the
engine set's own denoisers), exported to ONNX (parity-checked), and scored on
the same held-out test frames three ways: clean; noisy (gaussian@25,
salt_pepper@0.1 and periodic@0.2 in turn, the main levels) without denoising;
and the same noisy frames through the pipeline (the engine set's noise-type
classifier and its routed denoisers). Metrics are at threshold 0.5, the
study's rule. Per architecture the table gives mean and spread (sample
standard deviation) over seeds, parameters, GFLOP per frame, and CPU latency
per frame on ONNX Runtime; a plot shows accuracy against latency.

Typical use (the committed results in ``docs/comparison/``)::

    inspector-build compare --data ../shared/data/casting --out docs/comparison   # on the photographs
    inspector-build compare --out docs/comparison/synthetic                       # on generated impellers
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calibration.metrics import binary_metrics
from engines.architectures import ARCHS
from engines.data import load_split, synthetic_seed
from engines.evaluate import MAIN_NOISY, batched, noisy_set
from engines.profiles import get_profile
from inspector.backends import open_engine
from inspector.pipeline import Pipeline, softmax

CONDITIONS = ("clean", "noisy without denoising", "noisy through the pipeline")
METRICS = ("accuracy", "sensitivity", "specificity", "f1", "auc")


def parse_list(text: str, valid: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"empty list {text!r}")
    if valid is not None:
        bad = [t for t in items if t not in valid]
        if bad:
            raise ValueError(f"unknown architecture {bad[0]!r}; valid: {', '.join(valid)}")
    return items


def mixed_noisy(frames: np.ndarray, seed: int) -> np.ndarray:
    """Frame i at main noise level i % 3 (gaussian@25, salt_pepper@0.1, periodic@0.2)."""
    sets = [noisy_set(frames, lv, seed) for lv in MAIN_NOISY]
    return np.stack([sets[i % len(sets)][i] for i in range(len(frames))])


def ort_latency_ms(path: Path, frames: np.ndarray, batch: int, repeats: int = 15) -> float:
    """Median ONNX Runtime (CPU) milliseconds per frame at ``batch``."""
    engine = open_engine("onnxruntime", path, "defect")
    x = frames[:batch, None]
    engine.infer(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.infer(x)
        times.append(time.perf_counter() - t0)
    engine.close()
    return float(np.median(times) * 1e3 / batch)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds of every metric, per condition."""
    out: dict[str, Any] = {}
    for cond in CONDITIONS:
        out[cond] = {}
        for m in METRICS:
            vals = np.array([r["metrics"][cond][m] for r in runs], np.float64)
            out[cond][m] = {
                "mean": float(vals.mean()),
                "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                "values": vals.tolist(),
            }
    for key in ("latency_ms_batch1", "latency_ms_batch8", "train_seconds"):
        vals = np.array([r[key] for r in runs])
        out[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    out["params"] = runs[0]["params"]
    out["gflop_per_frame"] = runs[0]["gflop_per_frame"]
    out["seeds"] = [r["seed"] for r in runs]
    return out


def _pm(d: dict[str, float], scale: float = 100.0, digits: int = 1) -> str:
    return f"{d['mean'] * scale:.{digits}f} ± {d['std'] * scale:.{digits}f}"


def _data_lines(cfg: dict[str, Any]) -> list[str]:
    """What the runs trained and were tested on: generated frames or a photograph folder."""
    common = (
        "half clean and half routed noisy copies per batch, "
        f"{cfg['epochs']} epochs, the same for every architecture; validation {cfg['val_frames']} frames for "
        f"early stopping. Seeds {', '.join(map(str, cfg['seeds']))} vary initialisation and sampling, not the data."
    )
    noisy = (
        "noisy = gaussian@25 / salt_pepper@0.1 / periodic@0.2 in turn; pipeline = the noise-type classifier "
        f"and routed denoisers of `{cfg['engines']}`."
    )
    if cfg["data"] == "synthetic":
        return [
            f"- Training: {cfg['train_frames']} synthetic frames (generator seed {cfg['train_seed']}), {common}",
            f"- Test: {cfg['test_frames']} frames from generator seed {cfg['test_seed']} (never used in "
            f"training); {noisy}",
        ]
    return [
        f"- Training: up to {cfg['train_frames']} photographs of `{cfg['data']}`'s `train` split (the part left "
        f"after validation and calibration are carved out, `engines.data.folder_parts`), {common}",
        "- Test: the data set's own `test` split, "
        + (
            f"{cfg['frames_used']['test']} photographs"
            if "frames_used" in cfg
            else f"{cfg['test_frames']} photographs at most (all of it when it holds fewer)"
        )
        + f"; {noisy}",
    ]


def write_markdown(result: dict[str, Any], path: Path) -> None:
    cfg = result["config"]
    lines = [
        "# Defect classifier comparison",
        "",
        "The study's comparison (CNN, AlexNet, VGG16, ResNet50, InceptionV3 on noisy frames, before and",
        "after denoising) rerun with several seeds on the same data. Generated by `inspector-build compare`;",
        "nothing in this file is edited by hand.",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- Architectures at width {cfg['width']:g} of the published channel counts, input {cfg['input_size']} px "
        f"(resized inside the graph from the 300 px frame), 1 input channel, 2 classes.",
        *_data_lines(cfg),
        "- Metrics at threshold 0.5 (the study's rule), in percent, mean ± sample standard deviation over seeds. "
        "Latency: ONNX Runtime on this machine's CPU "
        f"({result['machine']}), defect stage only, median of 15 runs.",
        "",
    ]
    for cond in CONDITIONS:
        lines += [
            f"## {cond[0].upper() + cond[1:]}",
            "",
            "| architecture | accuracy | sensitivity | specificity | F1 | AUC | params | GFLOP/frame | ms/frame (batch 1) | ms/frame (batch 8) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for arch, s in result["architectures"].items():
            c = s[cond]
            lines.append(
                f"| {arch} | {_pm(c['accuracy'])} | {_pm(c['sensitivity'])} | {_pm(c['specificity'])} | "
                f"{_pm(c['f1'])} | {_pm(c['auc'], digits=2)} | {s['params'] / 1e6:.3f} M | "
                f"{s['gflop_per_frame']:.3f} | {_pm(s['latency_ms_batch1'], 1, 2)} | {_pm(s['latency_ms_batch8'], 1, 2)} |"
            )
        lines.append("")
    lines += [
        "## Accuracy recovered by the pipeline",
        "",
        "| architecture | clean | noisy, no denoising | noisy, pipeline | share of the gap recovered |",
        "|---|---|---|---|---|",
    ]
    for arch, s in result["architectures"].items():
        a = [s[c]["accuracy"]["mean"] for c in CONDITIONS]
        gap = a[0] - a[1]
        # Below 5 points the clean classifier is near chance itself, and the share is noise.
        share = f"{(a[2] - a[1]) / gap * 100:.0f}%" if gap >= 0.05 else "n/a (gap under 5 points)"
        lines.append(f"| {arch} | {a[0] * 100:.1f}% | {a[1] * 100:.1f}% | {a[2] * 100:.1f}% | {share} |")
    lines += [
        "",
        "Study (single run, about 90 test images): VGG16 94.6% on noisy frames -> 97.0% after denoising; "
        "see `../shared/design/EVALUATION.md` for its other rows.",
        "",
        "![accuracy against latency](accuracy_vs_latency.png)",
        *(
            [
                "",
                "The same comparison on generated impellers, the table this one replaced (made by the command "
                "it records, then moved to `synthetic/`): [`synthetic/README.md`](synthetic/README.md).",
            ]
            if cfg["data"] != "synthetic" and (path.parent / "synthetic" / "README.md").is_file()
            else []
        ),
        "",
        f"Elapsed: {result['elapsed_seconds']:.0f} s.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"clean": "o", "noisy without denoising": "x", "noisy through the pipeline": "s"}
    for cond, marker in markers.items():
        xs, ys, es = [], [], []
        for s in result["architectures"].values():
            xs.append(s["latency_ms_batch8"]["mean"])
            ys.append(s[cond]["accuracy"]["mean"] * 100)
            es.append(s[cond]["accuracy"]["std"] * 100)
        ax.errorbar(xs, ys, yerr=es, fmt=marker, capsize=3, label=cond)
    for arch, s in result["architectures"].items():
        ax.annotate(
            arch,
            (s["latency_ms_batch8"]["mean"], s["noisy through the pipeline"]["accuracy"]["mean"] * 100),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("defect stage latency, ms per frame (ONNX Runtime CPU, batch 8, log scale)")
    ax.set_ylabel("accuracy at threshold 0.5 (%)")
    ax.set_title("Defect classifiers: accuracy (mean ± sd over seeds) against latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from engines.export import export_onnx, parity
    from engines.models import count_flops, gflop, param_count
    from engines.train import load_checkpoint, routed_copies, train_defect

    t0 = time.time()
    archs = parse_list(args.archs, ARCHS)
    seeds = [int(s) for s in parse_list(args.seeds)]
    overrides = {
        "train_frames": args.train_frames,
        "test_frames": args.test_frames,
        "defect_size": args.input_size,
        "defect_width": args.width,
        "defect_epochs": args.epochs,
    }
    base = get_profile(args.profile, **overrides)
    progress = not args.quiet
    out: Path = args.out
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)

    # The engine set's noise classifier and autoencoder, routed the way the runtime routes by default
    # (the way routed_copies routes the training frames), whatever routes an older manifest names.
    ref = Pipeline.from_manifest(args.engines)
    pipe = Pipeline(ref.engines, threshold=0.5)
    ae_ckpt = Path(args.engines) / "checkpoints" / "denoise.pt"
    denoiser = load_checkpoint(ae_ckpt, "denoise")[0]
    train = load_split(args.data, "train", base.train_frames, args.data_seed, progress)
    val = load_split(args.data, "val", base.val_frames, args.data_seed, progress)
    test = load_split(args.data, "test", base.test_frames, args.data_seed, progress)
    print(f"routing the training frames through {args.engines}'s denoisers (once, for every run)", flush=True)
    routed = routed_copies(train.frames, val.frames, denoiser, args.data_seed + 3, progress)
    noisy = mixed_noisy(test.frames, args.data_seed)

    def through_pipeline(b: np.ndarray) -> np.ndarray:
        return pipe.denoise(b, pipe.classify_noise(b)[0])[0]

    piped = batched(through_pipeline, noisy, batch=16, desc="pipeline test frames", progress=progress)
    test_sets = dict(zip(CONDITIONS, (test.frames, noisy, piped), strict=True))

    import torch

    example = torch.zeros((1, 1, 300, 300), dtype=torch.uint8)
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in archs}
    jobs = [(a, s) for a in archs for s in seeds]
    bar = tqdm(jobs, desc="compare", disable=not progress)
    for arch, seed in bar:
        bar.set_postfix_str(f"{arch} seed {seed}")
        profile = get_profile(args.profile, **overrides, defect_arch=arch, defect_finetune_epochs=0)
        ck = runs_dir / f"{arch}-s{seed}.pt"
        t_train = time.time()
        info = train_defect(
            train.frames,
            train.labels,
            val.frames,
            val.labels,
            profile,
            seed,
            ck,
            progress=False,
            routed=routed,
        )
        t_train = time.time() - t_train
        model, _ = load_checkpoint(ck, "defect")
        onnx_path = runs_dir / f"{arch}-s{seed}.onnx"
        export_onnx(model, onnx_path)
        diff = parity(model, onnx_path, "defect")
        engine = open_engine("onnxruntime", onnx_path, "defect")
        metrics = {}
        for cond, frames in test_sets.items():
            logits = batched(engine.infer, frames[:, None], batch=32, progress=False)
            scores = softmax(logits)[:, 1]
            metrics[cond] = binary_metrics(test.labels, scores, 0.5)
        engine.close()
        run = {
            "arch": arch,
            "seed": seed,
            "metrics": metrics,
            "params": param_count(model),
            "gflop_per_frame": gflop(count_flops(model, example)),
            "train_seconds": round(t_train, 1),
            "best_val_accuracy": info.get("val_accuracy"),
            "epochs_run": info.get("epochs_run"),
            "parity_max_abs_diff": diff,
        }
        runs[arch].append(run)
        print(
            f"  {arch} seed {seed}: clean {metrics['clean']['accuracy']:.3f}, noisy "
            f"{metrics[CONDITIONS[1]]['accuracy']:.3f}, pipeline {metrics[CONDITIONS[2]]['accuracy']:.3f} "
            f"({t_train:.0f} s)",
            flush=True,
        )
    pipe.close()
    # Latency last, one architecture after another with nothing else training, on every run's file.
    for arch, seed in tqdm(jobs, desc="latency", disable=not progress):
        run = next(r for r in runs[arch] if r["seed"] == seed)
        onnx_path = runs_dir / f"{arch}-s{seed}.onnx"
        run["latency_ms_batch1"] = ort_latency_ms(onnx_path, test.frames, 1)
        run["latency_ms_batch8"] = ort_latency_ms(onnx_path, test.frames, 8)
        (runs_dir / f"{arch}-s{seed}.json").write_text(json.dumps(run, indent=1))
    result = {
        "command": command,
        "machine": f"{platform.machine()}, {_cpu_count()} CPU threads",
        "config": {
            "profile": base.name,
            "width": base.defect_width,
            "input_size": base.defect_size,
            "train_frames": base.train_frames,
            "val_frames": base.val_frames,
            "test_frames": base.test_frames,
            "frames_used": {"train": len(train.frames), "val": len(val.frames), "test": len(test.frames)},
            "epochs": base.defect_epochs,
            "seeds": seeds,
            "data": args.data,
            "train_seed": synthetic_seed(args.data_seed, "train") if args.data == "synthetic" else None,
            "test_seed": synthetic_seed(args.data_seed, "test") if args.data == "synthetic" else None,
            "engines": str(args.engines),
        },
        "architectures": {a: summarise(r) for a, r in runs.items()},
        "runs": runs,
        "elapsed_seconds": round(time.time() - t0, 1),
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "accuracy_vs_latency.png")
    write_markdown(result, out / "README.md")
    if not args.keep_runs:
        for f in runs_dir.glob("*.pt"):
            f.unlink()
        for f in runs_dir.glob("*.onnx"):
            f.unlink()
    print(f"comparison written to {out}/README.md in {time.time() - t0:.0f} s", flush=True)
    return result


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> int:
    """Rewrite a comparison's README.md and plot from its results.json (after a change to the layout)."""
    ap = argparse.ArgumentParser(prog="python -m engines.compare", description=main.__doc__)
    ap.add_argument("folder", type=Path, help="the folder holding results.json (e.g. docs/comparison)")
    a = ap.parse_args(argv)
    result = json.loads((a.folder / "results.json").read_text())
    plot(result, a.folder / "accuracy_vs_latency.png")
    write_markdown(result, a.folder / "README.md")
    print(f"rewrote {a.folder}/README.md and accuracy_vs_latency.png from results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
