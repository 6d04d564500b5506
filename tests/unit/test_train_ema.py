"""The defect stage's weight average (``Profile.defect_ema_epochs``): what is validated and kept is the EMA."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import engines.train as tr
from engines.profiles import get_profile


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 2), nn.BatchNorm1d(2))


def _run(tmp_path: Path, monkeypatch, ema_epochs: float, snapshots: list[dict[str, torch.Tensor]]) -> dict:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(64, 8, 8), dtype=np.uint8)
    labels = (frames.mean(axis=(1, 2)) > 127).astype(np.int64)
    model = _model()

    def make_batch(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return frames[idx].astype(np.float32) / 255.0, labels[idx]

    # Every optimiser step's raw weights and BatchNorm statistics, as the average sees them.
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        out = real_step(self, *a, **k)
        snapshots.append({n: v.detach().clone().float() for n, v in model.state_dict().items()})
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    profile = replace(get_profile("tiny"), batch=16, patience=5)
    tr._classifier_loop(
        "defect", model, make_batch, len(frames), (frames.astype(np.float32) / 255.0, labels), profile,
        1, np.random.default_rng(2), tmp_path / "m.pt", {"arch": "vgg16"}, lr=0.05, progress=False,
        ema_epochs=ema_epochs,
    )  # fmt: skip
    monkeypatch.undo()
    return torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]


def test_ema_keeps_the_moving_average_of_weights_and_statistics(tmp_path: Path, monkeypatch):
    raw: list[dict[str, torch.Tensor]] = []
    kept_raw = _run(tmp_path, monkeypatch, 0.0, raw)
    assert len(raw) == 4  # 64 frames, batch 16, one epoch
    for name, value in kept_raw.items():  # no average: the last step's weights are kept
        assert torch.allclose(value.float(), raw[-1][name]), name

    steps: list[dict[str, torch.Tensor]] = []
    kept = _run(tmp_path, monkeypatch, 0.5, steps)  # time constant half an epoch = 2 steps: decay 0.5
    assert len(steps) == 4
    decay = 1.0 - 1.0 / 2.0
    for name in ("1.weight", "1.bias", "2.weight", "2.running_mean", "2.running_var"):
        expect = steps[0][name]
        for snap in steps[1:]:
            expect = decay * expect + (1 - decay) * snap[name]
        assert torch.allclose(kept[name].float(), expect, atol=1e-6), name
        assert not torch.allclose(expect, steps[-1][name], atol=1e-4), (
            name
        )  # the average is not the last step
