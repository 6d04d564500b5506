"""The periodic route on photographs the set never trained on (issue #26, item 2).

Routed SSIM of the periodic filter at the main report level (periodic@0.2: one sinusoid, 20 cycles,
random angle and phase) on a seeded sample of the held-out copy groups (the carve's calibration and
validation photographs, ``engines.data.folder_parts``), beside the same frames with the *true*
pattern removed (what a perfect fit could reach: the clipped pixels still need filling), and the
filter's time per frame on this CPU (that sample overlaps the calibration groups the inpainting was
chosen on: a mild selection); and the choice of how clipped pixels are filled
(``inspector.denoise.INPAINT``): made on the calibration groups, confirmed on the validation groups.

    python -m engines.periodic_route --data ../shared/data/casting      # about a minute on 2 cores

writes ``engines/periodic_route.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.data import _folder, folder_parts
from engines.evaluate import quality
from inspector import noise as nz
from inspector.denoise import INPAINT, remove_pattern, sinusoid_fit

OUT = Path(__file__).with_name("periodic_route.json")
LEVEL = nz.NoiseLevel("periodic", 0.2, True)
SEED = 31


def true_pattern(rng_key: list[int], h: int, w: int) -> np.ndarray:
    """The sinusoid ``nz.apply_level`` drew from this key, unclipped (removed by the route's own
    :func:`~inspector.denoise.remove_pattern`: the ceiling a perfect fit could reach)."""
    c = nz.random_sinusoid(np.random.default_rng(rng_key), amplitude=LEVEL.value, cycles=20.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    arg = 2 * math.pi * c.cycles * (xx * math.cos(c.theta) + yy * math.sin(c.theta)) / w + c.phase
    return np.asarray(255.0 * c.amplitude * np.sin(arg))


INPAINTING = {
    "telea r1": (cv2.INPAINT_TELEA, 1),
    "telea r2": (cv2.INPAINT_TELEA, 2),
    "telea r3": (cv2.INPAINT_TELEA, 3),
    "ns r1": (cv2.INPAINT_NS, 1),
    "ns r2": (cv2.INPAINT_NS, 2),
    "ns r3": (cv2.INPAINT_NS, 3),
}
CHOICE_SAMPLE = 100


def _mean_ssim(fit: Callable[[np.ndarray], np.ndarray], noisy: list[np.ndarray], clean: np.ndarray) -> float:
    return round(float(np.mean([quality(fit(x), c)[1] for x, c in zip(noisy, clean, strict=True)])), 4)


def inpainting(frames: np.ndarray, parts: dict[str, np.ndarray]) -> dict[str, Any]:
    """How the route fills clipped pixels (``inspector.denoise.INPAINT``): each method's mean SSIM on a
    sample of the calibration groups (where the choice is made) and of the validation groups (where it is
    confirmed), other draws than the main sample's."""
    out: dict[str, Any] = {"chosen_on": "calib", "confirmed_on": "val", "photographs_each": CHOICE_SAMPLE}
    for part in ("calib", "val"):
        pick = np.sort(np.random.default_rng([1, SEED]).choice(parts[part], CHOICE_SAMPLE, replace=False))
        noisy = [
            nz.apply_level(frames[i], LEVEL, np.random.default_rng([1, 500, j])) for j, i in enumerate(pick)
        ]

        out[f"{part}: imputation rounds 4 instead of 2 (shipped method)"] = _mean_ssim(
            partial(sinusoid_fit, iterations=4), noisy, frames[pick]
        )
        out[part] = {
            name: _mean_ssim(partial(sinusoid_fit, inpaint=how), noisy, frames[pick])
            for name, how in INPAINTING.items()
        }
    out["best_on_calib"] = max(out["calib"], key=out["calib"].get)
    out["best_on_val"] = max(out["val"], key=out["val"].get)
    out["shipped"] = next(k for k, v in INPAINTING.items() if v == INPAINT)
    return out


def measure(data: Path, n: int) -> dict[str, Any]:
    frames, _labels, _files = _folder(str(data), "train")
    parts = folder_parts(str(data), 0)
    held = np.concatenate([parts["calib"], parts["val"]])
    pick = np.sort(np.random.default_rng([0, SEED]).choice(held, n, replace=False))
    route, ceiling, clipped, ms = [], [], [], []
    for j, i in enumerate(pick):
        clean = frames[i]
        key = [0, 500 + nz.REPORT_LEVELS.index(LEVEL), j]
        noisy = nz.apply_level(clean, LEVEL, np.random.default_rng(key))
        t0 = time.perf_counter()
        out = sinusoid_fit(noisy)
        ms.append(1000 * (time.perf_counter() - t0))
        route.append(quality(out, clean)[1])
        ceiling.append(quality(remove_pattern(noisy, true_pattern(key, *clean.shape)), clean)[1])
        clipped.append(float(((noisy == 0) | (noisy == 255)).mean()))
    r = np.array(route)
    return {
        "inpainting": inpainting(frames, parts),
        "level": "periodic@0.2",
        "photographs": int(n),
        "from": f"held-out copy groups (carve seed 0: calib {len(parts['calib'])} + val {len(parts['val'])})",
        "sample_seed": SEED,
        "route_ssim_mean": float(r.mean()),
        "route_ssim_p5": float(np.percentile(r, 5)),
        "route_ssim_min": float(r.min()),
        "true_pattern_ssim_mean": float(np.mean(ceiling)),
        "clipped_fraction_mean": float(np.mean(clipped)),
        "ms_per_frame_median": float(np.median(ms)),
        "ms_per_frame_p90": float(np.percentile(ms, 90)),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/casting"), help="the casting data set")
    ap.add_argument("--n", type=int, default=150, help="photographs in the sample (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    result = measure(args.data, args.n)
    args.out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
