"""Where the build step's frames come from: the synthetic generator or a folder dataset.

Splits are disjoint by construction. Synthetic frames of split ``s`` come from
generator seed ``seed * 100 + SPLIT_CODES[s]``, so the test split's frames are
drawn from seeds never used in training (``mining`` holds the fresh frames the
defect stage's hard-example mining scores: training data too). A folder dataset uses its own
``train`` / ``test`` folders; validation and calibration are carved out of
``train`` with a seeded permutation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from inspector.folder import FolderDataset
from inspector.synthetic import ImpellerGenerator

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
    root = Path(data)
    if split == "test":
        ds = FolderDataset.scan(root, "test")
        frames, labels = ds.load()
        return Split(frames[:count], labels[:count])
    ds = FolderDataset.scan(root, "train")
    frames, labels = ds.load()
    order = np.random.default_rng(seed).permutation(len(frames))
    n_val = max(len(frames) // 10, 1)
    parts = {"val": order[:n_val], "calib": order[n_val : 2 * n_val], "train": order[2 * n_val :]}
    idx = parts[split][:count]
    return Split(frames[idx], labels[idx])
