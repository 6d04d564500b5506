"""The operating point from labelled calibration frames, through a pipeline (torch-free).

Shared by the build step (``inspector-build package`` / ``quantize``) and the
line host's ``inspector rebuild``: the calibration split of the set's data
(generated impellers, or the photographs' ``train`` carved by near-duplicate
groups), each frame as the line sees it (frame i clean if i % 4 == 0, else a
noise type at a training-range level), scored through the full pipeline.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from inspector import noise as nz
from inspector.pipeline import Pipeline


def calibration_frames(frames: np.ndarray, seed: int) -> np.ndarray:
    """The calibration split as the line sees it: frame i clean if i % 4 == 0, else a noise type at a training-range level."""
    out = frames.copy()
    for i in range(len(frames)):
        kind = nz.NOISE_TYPES[i % 4]
        out[i] = nz.apply_random(frames[i], kind, np.random.default_rng([seed, 900, i]))
    return out


def pipeline_scores(
    pipe: Pipeline, frames: np.ndarray, desc: str = "pipeline", progress: bool = True, batch: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Defect score and the noise type the pipeline called, per frame, through the full pipeline."""
    scores: list[float] = []
    kinds: list[str] = []
    for i in tqdm(range(0, len(frames), batch), desc=desc, disable=not progress, leave=False):
        for r in pipe.run(frames[i : i + batch]):
            scores.append(r.score)
            kinds.append(r.noise_type)
    return np.array(scores, np.float64), np.array(kinds)


def calibration_scores(
    pipe: Pipeline, data: str, count: int, seed: int, progress: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, defect scores and called noise types of the calibration split, through ``pipe``."""
    from engines.data import load_split  # numpy + OpenCV only: no torch

    calib = load_split(data, "calib", count, seed, progress)
    frames, labels = calib.frames, calib.labels
    # A folder's calibration split is small (10% of train): each photograph is used up to four times,
    # so it appears under several noise types (frame i's type is i % 4, and the split's size shifts it).
    reps = max(1, min(4, count // max(len(frames), 1)))
    frames, labels = np.concatenate([frames] * reps), np.concatenate([labels] * reps)
    frames = calibration_frames(frames, seed)
    scores, kinds = pipeline_scores(pipe, frames, "calibration", progress)
    return labels, scores, kinds
