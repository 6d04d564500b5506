"""Leak-free validation and calibration splits carved out of a folder data set's ``train``.

The public casting set's photographs come in families of augmented copies of one shot (turned,
mirrored, shifted, zoomed; ``engines.dedup``). A carve that cuts through a family trains on one
photograph and validates on its copy, and model selection and the calibrated thresholds then measure
memory. So ``train``'s photographs are linked by the copy test (``engines.dedup.copy_groups``), class
by class (a copy keeps its label), and ``carve`` deals out whole groups, class by class, until
validation and calibration each hold a tenth of every class.

Linking the 6633 training photographs takes about 15 minutes on 2 cores, so a data set's groups are
committed under ``engines/splits/`` keyed by a digest of the photographs' bytes:
``python -m engines.splits --data DATA`` writes them. Any other folder is linked on first use and its
groups kept in the user's cache (``~/.cache/line-inspector/splits``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from engines.dedup import COPY_MIN, GROUP_CANDIDATES, GROUP_MISSES, copy_groups

COMMITTED = Path(__file__).parent / "splits"
SHARE = 10  # validation and calibration each take 1/SHARE of every class


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "line-inspector" / "splits"


def names(files: tuple[Path, ...] | list[Path], data: str) -> list[str]:
    """The photographs' paths relative to the split folder (``def_front/cast_def_0_0.jpeg``)."""
    root = Path(data) / "train"
    return [Path(f).relative_to(root).as_posix() for f in files]


def digest(files: tuple[Path, ...] | list[Path], data: str) -> str:
    """sha256 over the photographs' relative names and bytes, in name order."""
    h = hashlib.sha256()
    for name, f in sorted(zip(names(files, data), files, strict=True)):
        h.update(name.encode() + b"\0" + hashlib.sha256(Path(f).read_bytes()).digest())
    return h.hexdigest()


def _class_groups(data: str, label: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    from engines.data import _folder

    frames, labels, _ = _folder(data, "train")
    idx = np.nonzero(labels == label)[0]
    return idx, copy_groups(frames[idx], progress, desc=f"copy groups, class {label}")


def link(data: str, jobs: int = 2, progress: bool = False) -> np.ndarray:
    """A group id per ``train`` photograph (file order), linked by the copy test within each class; one
    process per class when ``jobs`` > 1."""
    from engines.data import _folder

    labels = _folder(data, "train")[1]
    classes = sorted({int(x) for x in labels})
    if jobs > 1:
        with ProcessPoolExecutor(min(jobs, len(classes))) as pool:
            parts = list(pool.map(_class_groups, [data] * len(classes), classes, [progress] * len(classes)))
    else:
        parts = [_class_groups(data, c, progress) for c in classes]
    groups = np.empty(len(labels), np.int64)
    for idx, local in parts:
        groups[idx] = idx[local]  # a group is named by its first member's index into train
    return groups


def group_ids(groups: list[list[str]], files: list[str]) -> np.ndarray | None:
    """A group id per name in ``files`` (the index of its group's first member), from a groups file's
    lists of names; None when the lists do not cover ``files`` exactly."""
    where = {name: i for i, name in enumerate(files)}
    ids = np.full(len(files), -1, np.int64)
    for g in groups:
        members = [where.get(n, -1) for n in g]
        if min(members, default=0) < 0:
            return None
        ids[members] = min(members)
    return ids if (ids >= 0).all() else None


def _read(path: Path, key: str, files: list[str]) -> np.ndarray | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return group_ids(doc["groups"], files) if doc.get("digest") == key else None


def document(data: str, groups: np.ndarray, key: str, seconds: float, command: str) -> dict[str, Any]:
    from engines.data import _folder

    _, labels, files = _folder(data, "train")
    rel = names(files, data)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(i)
    ordered = sorted(members.values(), key=lambda m: (-len(m), m[0]))
    sizes = np.array([len(m) for m in ordered])
    return {
        "command": command,
        "digest": key,
        "photographs": len(files),
        "copy_min": COPY_MIN,
        "candidates": GROUP_CANDIDATES,
        "misses": GROUP_MISSES,
        "seconds": round(seconds),
        "groups_per_class": {
            str(c): len({g for g, lab in zip(groups.tolist(), labels.tolist(), strict=True) if lab == c})
            for c in sorted({int(x) for x in labels})
        },
        "group_size_min_median_max": [int(x) for x in np.percentile(sizes, [0, 50, 100])],
        "singletons": int((sizes == 1).sum()),
        "largest_group_share": round(float(sizes.max() / len(files)), 4),
        "groups": [[rel[i] for i in m] for m in ordered],
    }


def train_groups(data: str, progress: bool = False) -> np.ndarray:
    """The copy groups of ``data``'s ``train`` photographs: committed, cached, or linked now (and cached)."""
    from engines.data import _folder

    files = _folder(data, "train")[2]
    key = digest(files, data)
    rel = names(files, data)
    for folder in (COMMITTED, cache_dir()):
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            groups = _read(path, key, rel)
            if groups is not None:
                return groups
    print(
        f"linking {len(files)} photographs of {data}/train by the copy test (no committed or cached groups "
        f"for this data; about 0.15 s per photograph on one core)",
        file=sys.stderr,
    )
    start = time.monotonic()
    groups = link(data, jobs=min(2, os.cpu_count() or 1), progress=progress)
    doc = document(data, groups, key, time.monotonic() - start, "computed on first use")
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        (cache_dir() / f"{key[:16]}.json").write_text(json.dumps(doc) + "\n")
    except OSError as e:
        print(f"could not cache the copy groups: {e}", file=sys.stderr)
    return groups


def carve(groups: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Indices for ``val``, ``calib`` and ``train``: within each class, groups shuffled with ``seed`` and
    dealt whole to validation until it holds 1/SHARE of the class, then to calibration, then to training."""
    parts: dict[str, list[int]] = {"val": [], "calib": [], "train": []}
    rng = np.random.default_rng(seed)
    for c in sorted({int(x) for x in labels}):
        mine = np.nonzero(labels == c)[0]
        quota = len(mine) // SHARE
        got = {"val": 0, "calib": 0}
        ids = np.unique(groups[mine])
        for g in rng.permutation(ids):
            members = mine[groups[mine] == g]
            name = "val" if got["val"] < quota else "calib" if got["calib"] < quota else "train"
            if name != "train":
                got[name] += len(members)
            parts[name] += members.tolist()
    return {k: np.array(sorted(v), np.int64) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m engines.splits",
        description="Link a folder data set's train photographs into groups of augmented copies (the copy test "
        "of engines.dedup, one process per class; about 15 min on 2 cores for the casting set) and write them "
        "where the build step finds them (engines/splits/NAME.json, committed). Validation and calibration are "
        "then carved by whole groups, so no copy straddles training and validation.",
    )
    ap.add_argument("--data", required=True, help="the data set (the folder holding train/ and test/)")
    ap.add_argument("--name", default="casting", help="file name under engines/splits (default casting)")
    ap.add_argument("--jobs", type=int, default=2, help="processes (default 2: one per class)")
    a = ap.parse_args(argv)
    from engines.data import _folder

    files = _folder(a.data, "train")[2]
    start = time.monotonic()
    groups = link(a.data, a.jobs, progress=sys.stderr.isatty())
    doc = document(
        a.data,
        groups,
        digest(files, a.data),
        time.monotonic() - start,
        f"python -m engines.splits --data DATA --name {a.name}",
    )
    COMMITTED.mkdir(exist_ok=True)
    out = COMMITTED / f"{a.name}.json"
    out.write_text(json.dumps(doc) + "\n")
    print(
        f"wrote {out}: {doc['photographs']} photographs in {len(doc['groups'])} groups "
        f"(per class {doc['groups_per_class']}; size min/median/max {doc['group_size_min_median_max']}, "
        f"largest {doc['largest_group_share']:.1%} of the photographs) in {doc['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
