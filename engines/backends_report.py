"""``python -m engines.backends_report``: the report's headline figures on every backend and precision.

Runs the shipped float32 set on ONNX Runtime float32 (the reference: what ``report.md`` was measured
on) and on OpenVINO at each float precision (f32, bf16), and the INT8 set on ONNX Runtime and on
OpenVINO int8, through the runtime's own :class:`~inspector.pipeline.Pipeline` and the build step's
own evaluation (:func:`engines.evaluate.evaluate_noise_types`, :func:`engines.evaluate.evaluate_defects`):
the same test split, the same seeded noise, so a difference is the backend's. For each run:

- the headline figures, in percent: noise-type accuracy at the main levels, clean accuracy at 0.5,
  mixed-noise full-pipeline accuracy at 0.5 and at the set's calibrated thresholds, and the
  calibrated escape and false-reject rates (mixed noise and clean, full pipeline); and the
  autoencoder's PSNR/SSIM at the main Gaussian level on the report's frames;
- each figure's change from the set's ONNX Runtime run, in points; a precision that moves any by
  more than :data:`MAX_DELTA_POINTS` is not fit to be a default;
- stage by stage against that reference, on the same inputs: noise-type calls (identical?),
  denoised frames (largest grey-level difference, share of pixels more than 1 apart), defect scores
  (largest difference);
- ms per batch per stage (interleaved rounds, min and median; static and dynamic OpenVINO shapes),
  and how long the engines take to open with an empty and with a filled model cache.

Writes ``<engines>/backends.json`` and prints the table side by side. Typical use, from the
repository root::

    python -m engines.backends_report --engines engines/default --int8 engines/default-int8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engines import evaluate as ev
from engines.data import load_split
from engines.profiles import get_profile
from inspector import noise as nz
from inspector.manifest import load_manifest
from inspector.pipeline import Pipeline, softmax

MAX_DELTA_POINTS = 0.2
GAUSSIAN = next(lv for lv in nz.REPORT_LEVELS if lv.kind == "gaussian" and lv.main)

# (set, backend, precision); the first run of each set is that set's reference.
RUNS: tuple[tuple[str, str, str], ...] = (
    ("float32", "onnxruntime", "f32"),
    ("float32", "openvino", "f32"),
    ("float32", "openvino", "bf16"),
    ("int8", "onnxruntime", "int8"),
    ("int8", "openvino", "int8"),
)

# Headline figure -> (table, condition, metric); every one in percent.
HEADLINE: dict[str, tuple[str, str, str]] = {
    "clean accuracy @0.5": ("rows_at_0.5", "clean (classifier only)", "accuracy"),
    "mixed-noise pipeline accuracy @0.5": ("rows_at_0.5", "mixed noise full pipeline", "accuracy"),
    "mixed-noise pipeline accuracy, calibrated": ("rows", "mixed noise full pipeline", "accuracy"),
    "mixed-noise escapes, calibrated": ("rows", "mixed noise full pipeline", "escape_rate"),
    "mixed-noise false rejects, calibrated": ("rows", "mixed noise full pipeline", "false_reject_rate"),
    "clean escapes, calibrated": ("rows", "clean (full pipeline)", "escape_rate"),
    "clean false rejects, calibrated": ("rows", "clean (full pipeline)", "false_reject_rate"),
}
TABLE_METRICS = ("accuracy", "escape_rate", "false_reject_rate")


def label(run: tuple[str, str, str]) -> str:
    s, backend, precision = run
    return f"{s} set, {'ORT' if backend == 'onnxruntime' else 'OpenVINO'} {precision}"


def open_pipeline(root: Path, backend: str, precision: str, cache: Path, **extra: Any) -> Pipeline:
    if backend == "onnxruntime":
        return Pipeline.from_manifest(root)
    return Pipeline.from_manifest(root, backend=backend, precision=precision, cache_dir=cache, **extra)


def figures(
    pipe: Pipeline,
    frames: np.ndarray,
    labels: np.ndarray,
    seed: int,
    n_tune: int,
    n_eval: int,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The headline figures (percent), the full defect tables, and the noisy sets they were measured on."""
    noise_rep, sets = ev.evaluate_noise_types(pipe, frames, seed, progress)
    d = ev.evaluate_defects(pipe, frames, labels, sets, progress)
    head: dict[str, float] = {
        f"noise-type accuracy {name}": 100 * lv["accuracy"]
        for name, lv in noise_rep["levels"].items()
        if lv["main"]
    }
    for name, (table, cond, metric) in HEADLINE.items():
        head[name] = 100 * d[table][cond][metric]
    noisy, clean = sets[GAUSSIAN.name][n_tune : n_tune + n_eval], frames[n_tune : n_tune + n_eval]
    ae = pipe.engines["denoise"]
    den = ev.batched(lambda b: ae.infer(b[:, None])[:, 0], noisy, batch=8, progress=False)
    q = np.array([ev.quality(a, c) for a, c in zip(den, clean, strict=True)])
    out = {
        "headline": head,
        "autoencoder": {
            "level": GAUSSIAN.name,
            "frames": len(den),
            "psnr_mean": float(q[:, 0].mean()),
            "ssim_mean": float(q[:, 1].mean()),
        },
        "rows": d["rows"],
        "rows_at_0.5": d["rows_at_0.5"],
    }
    return out, sets


def stage_outputs(pipe: Pipeline, frames: np.ndarray, sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each stage's raw output on fixed inputs: noise probabilities (clean + main noisy levels),
    denoised frames (main Gaussian level), defect scores (clean and main Gaussian level, as given)."""
    main = [lv.name for lv in nz.REPORT_LEVELS if lv.main]
    noise_in = np.concatenate([sets[n] for n in main])
    e = pipe.engines
    return {
        "noise": ev.batched(lambda b: softmax(e["noise"].infer(b[:, None])), noise_in, 8, progress=False),
        "denoise": ev.batched(
            lambda b: e["denoise"].infer(b[:, None])[:, 0], sets[GAUSSIAN.name], 8, progress=False
        ),
        "defect": ev.batched(
            lambda b: softmax(e["defect"].infer(b[:, None]))[:, 1],
            np.concatenate([frames, sets[GAUSSIAN.name]]),
            8,
            progress=False,
        ),
    }


def agreement(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, Any]:
    calls, calls_ref = out["noise"].argmax(1), ref["noise"].argmax(1)
    grey = np.abs(out["denoise"].astype(np.int16) - ref["denoise"].astype(np.int16))
    hist = np.bincount(np.minimum(grey.ravel(), 3), minlength=4)
    return {
        "noise_calls": {
            "frames": len(calls),
            "identical": int((calls == calls_ref).sum()),
            "max_probability_difference": float(np.abs(out["noise"] - ref["noise"]).max()),
        },
        "denoise": {
            "frames": len(grey),
            "max_grey_levels": int(grey.max()),
            "share_more_than_1": float((grey > 1).mean()),
            "mean_abs_grey_levels": float(grey.mean()),
            "pixels_by_difference_0_1_2_3plus": [int(x) for x in hist],
        },
        "defect_scores": {
            "frames": len(out["defect"]),
            "max_difference": float(np.abs(out["defect"] - ref["defect"]).max()),
        },
    }


def deltas(fig: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    head = {k: fig["headline"][k] - ref["headline"][k] for k in fig["headline"]}
    table = {
        f"{k} @0.5 - {cond}" if t == "rows_at_0.5" else f"{k} - {cond}": 100
        * (fig[t][cond][k] - ref[t][cond][k])
        for t in ("rows", "rows_at_0.5")
        for cond in fig[t]
        for k in TABLE_METRICS
    }
    worst = max(table, key=lambda k: abs(table[k]))
    return {
        "headline_points": head,
        "max_abs_headline_points": max(abs(v) for v in head.values()),
        "max_abs_table_points": abs(table[worst]),
        "max_abs_table_entry": worst,
        "within_max_delta": all(abs(v) <= MAX_DELTA_POINTS + 1e-9 for v in head.values()),
    }


SEQUENCE = (1, 3, 8, 2, 5, 8, 1, 4, 6, 8, 7, 2)  # partial batches as a daemon under moderate load makes them


def speed(open_run: dict[str, Any], frames: np.ndarray, noisy: np.ndarray, rounds: int) -> dict[str, Any]:
    """ms per batch per stage at batch 1 and 8, and ms for :data:`SEQUENCE` (batch sizes in turn).

    One configuration at a time (engines opened from the filled cache, timed, closed: ONNX Runtime's
    spinning threads and a second runtime's pools never overlap a timed call), in two passes, the
    second in reverse order, so drift in the machine's load falls on every configuration alike.
    Min and median over both passes.
    """
    times: dict[tuple[str, str, str], list[float]] = {}
    names = list(open_run)
    for order in (names, names[::-1]):
        for name in order:
            pipe = open_run[name]()
            for stage, e in pipe.engines.items():
                x = (noisy if stage == "denoise" else frames)[:, None]
                for b in (1, 8):
                    e.infer(x[:b])
                    e.infer(x[:b])
                    for _ in range(rounds):
                        t0 = time.perf_counter()
                        e.infer(x[:b])
                        times.setdefault((name, stage, f"batch {b}"), []).append(
                            (time.perf_counter() - t0) * 1e3
                        )
                for b in SEQUENCE:
                    e.infer(x[:b])
                for _ in range(max(1, rounds // 5)):
                    t0 = time.perf_counter()
                    for b in SEQUENCE:
                        e.infer(x[:b])
                    times.setdefault((name, stage, "sequence"), []).append((time.perf_counter() - t0) * 1e3)
            pipe.close()
    out: dict[str, Any] = {}
    for (name, stage, what), v in times.items():
        out.setdefault(what, {}).setdefault(name, {})[stage] = {
            "min": round(min(v), 2),
            "median": round(float(np.median(v)), 2),
        }
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "cores": len(os.sched_getaffinity(0))}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import openvino

        from inspector.backends.openvino import DEVICE, core

        info["openvino"] = openvino.__version__
        info["cpu"] = str(core().get_property(DEVICE, "FULL_DEVICE_NAME"))
        info["openvino_capabilities"] = list(core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))
    except Exception as exc:  # reported, not fatal: the ONNX Runtime runs still stand
        info["openvino_error"] = str(exc)
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
        info["cpu_flags"] = sorted(
            f for f in flags.split() if f.startswith(("avx512_bf16", "avx512_vnni", "amx", "avx512f"))
        )
    except (OSError, StopIteration):
        pass
    info["load_average_at_start"] = list(os.getloadavg())
    return info


def render(result: dict[str, Any]) -> str:
    runs = result["runs"]
    names = [r["label"] for r in runs]
    width = max(len(n) for n in names)
    keys = list(runs[0]["figures"]["headline"])
    col = max(len(k) for k in keys) + 2
    lines = ["".ljust(col) + "".join(n.rjust(width + 2) for n in names)]
    for k in keys:
        cells = []
        for r in runs:
            v = r["figures"]["headline"][k]
            d = r.get("deltas", {}).get("headline_points", {}).get(k)
            cells.append((f"{v:.2f}" + (f" ({d:+.2f})" if d is not None else "")).rjust(width + 2))
        lines.append(k.ljust(col) + "".join(cells))
    for k, fmt in (("psnr_mean", "{:.2f}"), ("ssim_mean", "{:.4f}")):
        lines.append(
            f"autoencoder {GAUSSIAN.name} {k.split('_')[0].upper()}".ljust(col)
            + "".join(fmt.format(r["figures"]["autoencoder"][k]).rjust(width + 2) for r in runs)
        )
    lines.append("")
    for r in runs:
        a = r.get("agreement")
        if not a:
            continue
        lines.append(
            f"{r['label']} vs {r['reference']}: noise calls {a['noise_calls']['identical']}/{a['noise_calls']['frames']} identical; "
            f"denoised max {a['denoise']['max_grey_levels']} grey levels ({100 * a['denoise']['share_more_than_1']:.4f}% of pixels > 1); "
            f"defect scores max {a['defect_scores']['max_difference']:.4f}; headline max {r['deltas']['max_abs_headline_points']:.2f} points "
            f"({'within' if r['deltas']['within_max_delta'] else 'OUTSIDE'} {MAX_DELTA_POINTS})"
        )
    sp = result.get("speed")
    if sp:
        lines.append("")
        for b, per in sp.items():
            what = f"the batch sizes {result['speed_sequence']} in turn" if b == "sequence" else b
            lines.append(f"ms per {what} (min / median, two passes):")
            for name, st in per.items():
                lines.append(
                    "  "
                    + name.ljust(width + 12)
                    + "  ".join(f"{s} {v['min']:.1f}/{v['median']:.1f}" for s, v in st.items())
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m engines.backends_report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--engines", type=Path, default=Path("engines/default"), help="the float32 set (default: %(default)s)"
    )
    ap.add_argument(
        "--int8",
        type=Path,
        default=Path("engines/default-int8"),
        help="its INT8 set; 'none' to skip (default: %(default)s)",
    )
    ap.add_argument("--data", default=None, help="the photographs (default: the set's manifest data)")
    ap.add_argument(
        "--test-frames", type=int, default=None, help="fewer test frames (default: the profile's: all)"
    )
    ap.add_argument(
        "--precisions", default="f32,bf16", help="OpenVINO float precisions to run (default: %(default)s)"
    )
    ap.add_argument(
        "--speed-rounds",
        type=int,
        default=15,
        help="interleaved timing rounds; 0 = no timing (default: %(default)s)",
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default: <engines>/backends.json)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    progress = not a.quiet and sys.stderr.isatty()
    manifest = load_manifest(a.engines)
    data = a.data or manifest.data
    profile = get_profile(manifest.profile, test_frames=a.test_frames)
    test = load_split(data, "test", profile.test_frames, manifest.seed, progress)
    n_tune = min(20, max(len(test.frames) // 10, 2))  # the report's split of tuning / scored frames
    n_eval = min(profile.eval_denoise_frames, len(test.frames) - n_tune)
    precisions = [p for p in a.precisions.split(",") if p]
    runs = [r for r in RUNS if r[1] == "onnxruntime" or r[2] in precisions or r[2] == "int8"]
    roots = {"float32": a.engines}
    if str(a.int8).lower() != "none":
        roots["int8"] = a.int8
    runs = [r for r in runs if r[0] in roots]
    t_start = time.time()
    result: dict[str, Any] = {
        "command": "python -m engines.backends_report "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "sets": {
            k: {"path": str(v), "model_version": load_manifest(v).model_version} for k, v in roots.items()
        },
        "test_split": {"data": data, "frames": len(test.frames), "defective": int(test.labels.sum())},
        "max_delta_points": MAX_DELTA_POINTS,
        "runs": [],
    }
    refs: dict[str, tuple[str, dict[str, Any], dict[str, np.ndarray]]] = {}
    with tempfile.TemporaryDirectory(prefix="ov-cache-") as tmp:
        cache = Path(tmp)
        sets: dict[str, np.ndarray] = {}
        for run in runs:
            name = label(run)
            s, backend, precision = run
            t0 = time.perf_counter()
            pipe = open_pipeline(roots[s], backend, precision, cache)
            t_open = time.perf_counter() - t0
            entry: dict[str, Any] = {"label": name, "set": s, "backend": backend, "precision": precision}
            if backend == "openvino":
                pipe.close()
                t0 = time.perf_counter()
                pipe = open_pipeline(roots[s], backend, precision, cache)
                entry["open_seconds"] = {
                    "empty_cache": round(t_open, 2),
                    "filled_cache": round(time.perf_counter() - t0, 2),
                }
                entry["precision_running"] = {
                    k: getattr(e, "precision", precision) for k, e in pipe.engines.items()
                }
            else:
                entry["open_seconds"] = {"onnxruntime": round(t_open, 2)}
            print(f"{name}: evaluating {len(test.frames)} test frames", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            fig, sets = figures(pipe, test.frames, test.labels, manifest.seed, n_tune, n_eval, progress)
            outs = stage_outputs(pipe, test.frames, sets)
            entry["figures"] = fig
            entry["evaluation_seconds"] = round(time.perf_counter() - t0, 1)
            if s not in refs:
                refs[s] = (name, fig, outs)
            else:
                ref_name, ref_fig, ref_outs = refs[s]
                entry["reference"] = ref_name
                entry["deltas"] = deltas(fig, ref_fig)
                entry["agreement"] = agreement(outs, ref_outs)
                if s == "int8" and "float32" in refs:  # how far the INT8 set sits from float32, for scale
                    entry["deltas_from_float32_ort"] = deltas(fig, refs["float32"][1])["headline_points"]
            result["runs"].append(entry)
            print(f"  done in {entry['evaluation_seconds']} s", file=sys.stderr, flush=True)
            pipe.close()
        if a.speed_rounds > 0:
            # Static shapes (what the daemon compiles) beside dynamic-only models, same settings.
            openers: dict[str, Any] = {}
            for run in runs:
                r, s_, b_, p_ = label(run), roots[run[0]], run[1], run[2]
                openers[r] = lambda s_=s_, b_=b_, p_=p_: open_pipeline(s_, b_, p_, cache)
                if b_ == "openvino":
                    openers[r + " dynamic"] = lambda s_=s_, b_=b_, p_=p_: open_pipeline(
                        s_, b_, p_, cache, static_batches=0
                    )
            result["speed"] = speed(openers, test.frames, sets[GAUSSIAN.name], a.speed_rounds)
            result["speed_rounds"] = a.speed_rounds
            result["speed_sequence"] = list(SEQUENCE)
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result["elapsed_seconds"] = round(time.time() - t_start, 1)
    out = a.out or a.engines / "backends.json"
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(render(result))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
