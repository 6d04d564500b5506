"""Where the build step's frames come from: the synthetic generator or a folder dataset.

Splits are disjoint by construction. Synthetic frames of split ``s`` come from
generator seed ``seed * 100 + SPLIT_CODES[s]``, so the test split's frames are
drawn from seeds never used in training (``mining`` holds the fresh frames the
defect stage's hard-example mining scores: training data too). A folder dataset uses its own
``train`` / ``test`` folders; validation (10%) and calibration (10%) are carved
out of ``train`` by groups of augmented copies of one photograph
(:mod:`engines.splits`, the copy test of :mod:`engines.dedup`), so no
photograph's copies straddle training and validation; ``test`` is the data
set's own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from inspector.tools.folder import FolderDataset
from inspector.tools.synthetic import ImpellerGenerator

SPLIT_CODES = {"train": 11, "val": 22, "calib": 33, "test": 44, "mining": 55}


@dataclass
class Split:
    frames: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64, 1 = defective


def synthetic_seed(seed: int, split: str) -> int:
    return seed * 100 + SPLIT_CODES[split]


def load_split(data: str, split: str, count: int, seed: int, progress: bool = True) -> Split:
    """``count`` frames of ``split`` from ``data`` ("synthetic" or a folder path)."""
    if data == "synthetic":
        gen = ImpellerGenerator(seed=synthetic_seed(seed, split))
        samples = [
            gen.sample(i)
            for i in tqdm(range(count), desc=f"generate {split}", disable=not progress, leave=False)
        ]
        return Split(np.stack([s.image for s in samples]), np.array([s.label for s in samples], np.int64))
    if split == "test":
        frames, labels, _ = _folder(data, "test")
        idx = test_indices(data, count, seed)
    else:
        frames, labels, _ = _folder(data, "train")
        idx = _subset(folder_parts(data, seed)[split if split != "mining" else "train"], count, seed)
    return Split(frames[idx], labels[idx])


def test_indices(data: str, count: int, seed: int) -> np.ndarray:
    """Indices of the folder's test photographs that ``load_split(data, "test", count, seed)`` returns."""
    return _subset(np.arange(len(_folder(data, "test")[0])), count, seed)


def _subset(idx: np.ndarray, count: int, seed: int) -> np.ndarray:
    """All of ``idx`` when ``count`` covers it, else a seeded sample of ``count`` (files are sorted by
    class folder, so the first ``count`` would hold one class only), kept in file order."""
    if count >= len(idx):
        return idx
    return np.sort(np.random.default_rng([seed, 31]).choice(idx, size=count, replace=False))


@lru_cache(maxsize=4)
def _folder(data: str, split: str) -> tuple[np.ndarray, np.ndarray, tuple[Path, ...]]:
    ds = FolderDataset.scan(Path(data), split)
    frames, labels = ds.load()
    frames.flags.writeable = False
    return frames, labels, ds.files


@lru_cache(maxsize=4)
def folder_parts(data: str, seed: int) -> dict[str, np.ndarray]:
    """Indices of ``train``'s photographs in the carved splits: whole groups of augmented copies to each
    (:mod:`engines.splits`), a tenth of every class to validation and to calibration, the rest trains."""
    from engines.splits import carve, train_groups

    _, labels, _ = _folder(data, "train")
    return carve(train_groups(data, progress=sys.stderr.isatty()), labels, seed)
