"""The shipped set on photographs it never saw: the carved calibration and validation photographs.

The official test split cannot say how the engines do on new castings: almost every test photograph
is a copy of a training photograph (the report's leakage line). The calibration and validation splits
are carved out of ``train`` by whole groups of copies (``engines.splits``), so none of their
photographs was trained on in any pose. A seeded sample of each is checked once more with the copy
test (``engines.dedup.carve_copies``: each against its ``RECHECK_CANDIDATES`` nearest photographs in the
carved training split), and the full pipeline runs on all of them. The classifier's own decision
(threshold 0.5) of the calibration photographs is untouched by training and selection; the
validation photographs picked the training epoch, and the calibration photographs set the calibrated
thresholds, so the other figures lean optimistic, each for its own reason (said beside them).

    python -m engines.unseen --engines engines/default     # about 3 min on 2 cores

writes ``<engines>/unseen.json``; the README's block is generated from it (``python -m engines.readme``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from calibration.metrics import binary_metrics
from engines.compare import mixed_noisy
from engines.data import _folder, folder_parts
from engines.dedup import COPY_MIN, carve_copies
from inspector.manifest import load_manifest
from inspector.pipeline import Pipeline

RECHECK_SAMPLE = 100
RECHECK_CANDIDATES = 16

CAVEATS = {
    "calib": "these photographs set the calibrated thresholds: figures at 0.5 are unbiased, calibrated ones lean optimistic",
    "val": "these photographs picked the training epoch: every figure leans slightly optimistic",
}


def unseen(engines: Path, data: str | None = None, progress: bool = False) -> dict[str, Any]:
    manifest = load_manifest(engines)
    data = data or manifest.data
    frames, labels, _ = _folder(data, "train")
    parts = folder_parts(data, manifest.seed)
    checked = carve_copies(data, manifest.seed, progress, sample=RECHECK_SAMPLE, k=RECHECK_CANDIDATES)
    pipe = Pipeline.from_manifest(engines)
    out: dict[str, Any] = {}
    for name in ("calib", "val"):
        idx = parts[name]
        y = labels[idx]
        rows = {}
        for cond, imgs in (
            ("clean", frames[idx]),
            ("mixed noise", mixed_noisy(frames[idx], manifest.seed)),
        ):
            res = [r for i in range(0, len(imgs), 32) for r in pipe.run(imgs[i : i + 32])]
            s = np.array([r.score for r in res])
            t = np.array([r.threshold for r in res])
            rows[cond] = {"at_0.5": binary_metrics(y, s, 0.5), "calibrated": binary_metrics(y, s, t)}
        sample, score = checked[name]
        out[name] = {
            "photographs": len(idx),
            "defective": int(y.sum()),
            "recheck": {
                "sample": len(sample),
                "candidates": RECHECK_CANDIDATES,
                "with_a_copy_in_train": int((score >= COPY_MIN).sum()),
                "highest_score": round(float(score.max()), 4),
                "indices": sample.tolist(),
            },
            "caveat": CAVEATS[name],
            "rows": rows,
            "indices": idx.tolist(),  # into the folder's train photographs, in file order
        }
    pipe.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m engines.unseen",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    ap.add_argument(
        "--engines", type=Path, default=Path("engines/default"), help="engine set (default: %(default)s)"
    )
    ap.add_argument(
        "--data", default=None, help="the photograph folder (default: the one the manifest names)"
    )
    ap.add_argument("--out", type=Path, default=None, help="result file (default: <engines>/unseen.json)")
    a = ap.parse_args(argv)
    t0 = time.time()
    result: dict[str, Any] = {
        "command": f"python -m engines.unseen --engines {a.engines}" + (" --data DATA" if a.data else ""),
        "copy_min": COPY_MIN,
    }
    result.update(unseen(a.engines, a.data, progress=sys.stderr.isatty()))
    result["elapsed_seconds"] = round(time.time() - t0, 1)
    out = a.out or a.engines / "unseen.json"
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    for name in ("calib", "val"):
        r = result[name]
        acc = r["rows"]["clean"]["at_0.5"]["accuracy"]
        c = r["recheck"]
        print(
            f"{name}: {r['photographs']} photographs, clean accuracy at 0.5 {acc:.2%}; recheck: "
            f"{c['with_a_copy_in_train']} of {c['sample']} with a copy among their {c['candidates']} nearest in training"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
