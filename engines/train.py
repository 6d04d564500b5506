"""Training loops for the three stages, apart from the models they train.

Each ``train_*`` function takes data arrays and a :class:`~engines.profiles.Profile`,
trains with a seeded generator, validates every epoch, keeps the best weights
(early stopping), shows a progress bar, and writes a checkpoint that loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from engines.augment import augment
from engines.models import DefectNet, DenoiseAE, NoiseTypeNet
from engines.profiles import Profile
from inspector import noise as nz

STAGE_ARCH = {"noise": "vgg16-fft", "denoise": "unet-ae", "defect": "vgg16"}


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or for another stage."""


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def build_model(stage: str, config: dict[str, Any]) -> nn.Module:
    if stage == "noise":
        return NoiseTypeNet(width=config["width"], input_size=config["input_size"])
    if stage == "defect":
        return DefectNet(
            width=config["width"],
            input_size=config["input_size"],
            arch=config.get("arch", "vgg16"),
            pool=config.get("pool", "avg"),
            norm=config.get("norm", "fixed"),
        )
    if stage == "denoise":
        return DenoiseAE(channels=tuple(config["channels"]))
    raise ValueError(f"unknown stage {stage!r}; expected noise, denoise or defect")


def stage_config(stage: str, profile: Profile) -> dict[str, Any]:
    if stage == "noise":
        return {"width": profile.noise_width, "input_size": profile.noise_size}
    if stage == "defect":
        return {
            "width": profile.defect_width,
            "input_size": profile.defect_size,
            "arch": profile.defect_arch,
            "pool": profile.defect_pool,
            "norm": profile.defect_norm,
        }
    return {"channels": list(profile.ae_channels)}


def save_checkpoint(
    path: Path, stage: str, config: dict[str, Any], model: nn.Module, info: dict[str, Any]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "stage": stage,
            "arch": config.get("arch", STAGE_ARCH[stage]),
            "config": config,
            "state_dict": model.state_dict(),
            "info": info,
        },
        path,
    )


def load_checkpoint(path: str | Path, stage: str) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint of ``stage`` (weights only); a clear error for a wrong or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(ckpt, dict) or "stage" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is not a Line Inspector checkpoint")
    if ckpt["stage"] != stage:
        raise CheckpointError(f"{str(path)!r} is a checkpoint for stage {ckpt['stage']!r}, not {stage!r}")
    model = build_model(stage, ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def _to_input(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch[:, None]))


def _lr_at(step: int, total: int, base: float) -> float:
    warm = max(total // 50, 1)
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1))) + base * 0.01


def _predict(model: nn.Module, frames: np.ndarray, batch: int = 64) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            outs.append(model(_to_input(frames[i : i + batch])).numpy())
    return np.concatenate(outs)


def noisy_copies(
    frames: np.ndarray, seed: int, kinds: tuple[str, ...] = nz.NOISE_TYPES
) -> tuple[np.ndarray, np.ndarray]:
    """Each frame with a noise type drawn from ``kinds`` at a training-range level; returns frames, type ids."""
    rng = np.random.default_rng(seed)
    types = rng.integers(len(kinds), size=len(frames))
    out = np.stack([nz.apply_random(f, kinds[t], rng) for f, t in zip(frames, types, strict=True)])
    ids = np.array([nz.NOISE_TYPES.index(kinds[t]) for t in types], np.int64)
    return out, ids


def _classifier_loop(
    stage: str,
    model: nn.Module,
    make_batch: Any,
    n_train: int,
    val: tuple[np.ndarray, np.ndarray],
    profile: Profile,
    epochs: int,
    rng: np.random.Generator,
    out: Path,
    config: dict[str, Any],
    lr: float = 2e-3,
    progress: bool = True,
    keep_initial: bool = False,
    ema_epochs: float = 0.0,
) -> dict[str, Any]:
    """Train ``model``, validating every epoch; keeps the best weights by (accuracy, -loss).

    With ``ema_epochs`` > 0 an exponential moving average of the weights (and of
    BatchNorm's statistics), with a time constant of that many epochs, is what
    gets validated and kept: the raw weights' validation accuracy can swing by
    tens of points from one epoch to the next on groups of photographs it never
    trained on, and the average sits between the swings.
    """
    steps_per_epoch = max(n_train // profile.batch, 1)
    total = steps_per_epoch * epochs
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    ema = None
    if ema_epochs > 0:
        decay = 1.0 - 1.0 / max(ema_epochs * steps_per_epoch, 1.0)
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    judged = model if ema is None else ema.module
    best = (-1.0, math.inf)
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    if keep_initial:
        # Fine-tuning: the weights we start from are the result to beat.
        logits = _predict(model, val[0])
        best = (
            float((logits.argmax(1) == val[1]).mean()),
            float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(val[1]))),
        )
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append({"epoch": 0, "val_accuracy": best[0], "val_loss": best[1], "note": "starting weights"})
    stale = 0
    step = 0
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(n_train)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{stage} epoch {epoch + 1}/{epochs}",
            disable=not progress,
            leave=False,
        )
        running = 0.0
        for b in bar:
            idx = order[b * profile.batch : (b + 1) * profile.batch]
            x, y = make_batch(idx)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, lr)
            loss = F.cross_entropy(model(_to_input(x)), torch.from_numpy(y), label_smoothing=0.02)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            running = 0.9 * running + 0.1 * loss.item() if b else loss.item()
            bar.set_postfix(loss=f"{running:.4f}")
        logits = _predict(judged, val[0])
        val_loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(val[1])))
        acc = float((logits.argmax(1) == val[1]).mean())
        history.append({"epoch": epoch + 1, "val_accuracy": acc, "val_loss": val_loss, "train_loss": running})
        if progress:
            tqdm.write(f"{stage}: epoch {epoch + 1} val accuracy {acc:.4f} val loss {val_loss:.4f}")
        if (acc, -val_loss) > (best[0], -best[1]):
            best = (acc, val_loss)
            best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
            stale = 0
        else:
            stale += 1
            if stale >= profile.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    info = {
        "val_accuracy": best[0],
        "val_loss": best[1],
        "epochs_run": len(history),
        "history": history,
        "train_seconds": round(time.time() - t0, 1),
        "train_frames": n_train,
    }
    save_checkpoint(out, stage, config, model, info)
    return info


def train_noise(
    train: np.ndarray, val: np.ndarray, profile: Profile, seed: int, out: Path, progress: bool = True
) -> dict[str, Any]:
    """Stage 1 on clean frames with noise drawn per sample from the training ranges (4 classes, balanced)."""
    rng = seed_everything(seed)
    config = stage_config("noise", profile)
    model = NoiseTypeNet(**config)
    val_x, val_y = noisy_copies(val, seed + 1)

    def make_batch(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = augment(profile.augment, train[idx], rng)
        types = rng.integers(len(nz.NOISE_TYPES), size=len(idx))
        x = np.stack([nz.apply_random(f, nz.NOISE_TYPES[t], rng) for f, t in zip(frames, types, strict=True)])
        return x, types.astype(np.int64)

    return _classifier_loop(
        "noise",
        model,
        make_batch,
        len(train),
        (val_x, val_y),
        profile,
        profile.noise_epochs,
        rng,
        out,
        config,
        progress=progress,
    )


DEFECT_PHASES = ("main", "finetune", "mining", "upsize")


def _phases_done(info: dict[str, Any]) -> list[str]:
    """The defect training phases a checkpoint has been through (older checkpoints: from their keys)."""
    if "phases" in info:
        return list(info["phases"])
    return ["main", *(["finetune"] if "finetune_history" in info else [])]


def _sensor_jitter(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild sensor noise (20%) or blur (5%) on a batch, in place: what a denoiser leaves behind."""
    import cv2

    for i in range(len(frames)):
        r = rng.random()
        if r < 0.2:
            frames[i] = nz.gaussian(frames[i], rng.uniform(1, 4), rng)
        elif r < 0.25:
            frames[i] = cv2.GaussianBlur(frames[i], (0, 0), rng.uniform(0.3, 0.6))
    return frames


def mining_weights(model: nn.Module, frames: np.ndarray, labels: np.ndarray, share: float) -> np.ndarray:
    """Sampling probabilities for the mining phase: ``share`` of the mass by each frame's loss, the rest uniform.

    ``share`` 0 is plain training on the larger pool, and scores nothing.
    """
    if share <= 0:
        return np.full(len(frames), 1.0 / len(frames))
    logits = _predict(model, frames)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction="none").numpy()
    loss = loss.astype(np.float64)
    return share * loss / max(float(loss.sum()), 1e-12) + (1 - share) / len(loss)


def train_defect(
    train: np.ndarray,
    labels: np.ndarray,
    val: np.ndarray,
    val_labels: np.ndarray,
    profile: Profile,
    seed: int,
    out: Path,
    progress: bool = True,
    resume: Path | None = None,
    denoiser: nn.Module | None = None,
    routed: tuple[np.ndarray, np.ndarray] | None = None,
    pool: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Stage 3 on what the pipeline feeds it: clean frames and denoised noisy frames, half and half.

    With a ``denoiser`` (the trained stage-2 autoencoder), every training frame
    also gets a noisy version (gaussian, periodic or salt-and-pepper at a
    training-range level, in turn) passed through its route - the autoencoder,
    the sinusoid fit or the adaptive median - so the classifier learns the denoisers' residue
    instead of mistaking it for defects (trained on clean frames only, it lost
    most of its accuracy on autoencoder output). Flips, quarter turns and mild
    sensor noise on top.

    Up to four phases (``DEFECT_PHASES``), each keeping the best weights on validation:

    - ``main``: the main schedule from scratch;
    - ``finetune`` (``defect_finetune_epochs``): from the best weights at a low
      learning rate; it keeps them unless it does better. With ``defect_finetune_norm``
      the network's input normalisation is switched first (``engines.models.NORMS``: "frame"
      standardises each frame, so the classifier can no longer read the exposure), and the
      switched starting weights are the result to beat;
    - ``mining`` (``defect_mining_epochs``): hard-example mining. The current
      model scores every frame of the training set and of ``pool`` (fresh
      frames, ``defect_mining_frames`` of them from their own split), clean and
      routed; batches are then drawn ``defect_mining_share`` by each frame's
      loss and the rest uniformly, so the tail the model gets wrong (faint
      cracks, small blowholes) is seen far more often than its share. With
      share 0 (the default profile) it is plain training on the larger pool;
    - ``upsize`` (``defect_upsize_epochs``): progressive resizing. The model
      is rebuilt at input size ``defect_upsize`` with the same weights and
      fine-tuned there; it is kept only if it beats the previous phase's
      validation score at the smaller size, else the smaller model stays.

    ``resume`` starts from a checkpoint's weights and runs only the phases it
    has not been through. The mining phase seeds its own generators, so
    mining resumed from a fine-tuned checkpoint reaches exactly the weights of
    an uninterrupted build (the fine-tune continues the main phase's generator,
    as it always has). ``routed`` passes the routed copies of the
    training and validation frames precomputed (as ``denoised_copies`` makes
    them), for callers that train several models on the same data.
    """
    rng = seed_everything(seed)
    config = stage_config("defect", profile)
    model = build_model("defect", config)

    if routed is None and denoiser is not None:
        routed = routed_copies(train, val, denoiser, seed, progress)
    train_routed = None
    if routed is not None:
        train_routed = routed[0]
        # Validate on what the pipeline sees too: the clean frames and their routed noisy versions.
        val = np.concatenate([val, routed[1]])
        val_labels = np.concatenate([val_labels, val_labels])

    def make_batch(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        src = (
            train[idx]
            if train_routed is None
            else np.where((rng.random(len(idx)) < 0.5)[:, None, None], train_routed[idx], train[idx])
        )
        return _sensor_jitter(augment(profile.augment, src, rng), rng), labels[idx]

    def phase(epochs: int, lr: float, keep_initial: bool, batches: Any = make_batch) -> dict[str, Any]:
        return _classifier_loop(
            "defect", model, batches, len(train), (val, val_labels), profile, epochs, rng, out, config,
            lr=lr, progress=progress, keep_initial=keep_initial, ema_epochs=profile.defect_ema_epochs,
        )  # fmt: skip

    def mining_batches() -> Any:
        parts = [train] if train_routed is None else [train, train_routed]
        part_labels = [labels] * len(parts)
        if pool is not None and len(pool[0]):
            parts.append(pool[0])
            part_labels.append(pool[1])
            if denoiser is not None:
                parts.append(denoised_copies(pool[0], denoiser, seed + 31, progress))
                part_labels.append(pool[1])
        frames, frame_labels = np.concatenate(parts), np.concatenate(part_labels)
        p = mining_weights(model, frames, frame_labels, profile.defect_mining_share)
        if progress and profile.defect_mining_share > 0:
            top = np.sort(p)[::-1][: len(p) // 20].sum()
            tqdm.write(f"defect mining: {len(p)} frames scored; the hardest 5% draw {top:.0%} of the batches")
        elif progress:
            tqdm.write(f"defect mining: share 0, plain training on {len(p)} frames drawn uniformly")

        def draw(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            pick = rng.choice(len(frames), size=len(idx), p=p)
            return _sensor_jitter(augment(profile.augment, frames[pick], rng), rng), frame_labels[pick]

        return draw

    record: dict[str, Any] = {}
    done: list[str] = []
    if resume is not None:
        start, ckpt = load_checkpoint(resume, "defect")
        sizes = {profile.defect_size, profile.defect_upsize or profile.defect_size}
        got = {"arch": "vgg16", "pool": "avg", "norm": "fixed", **ckpt["config"]}
        norms = {profile.defect_norm, profile.defect_finetune_norm or profile.defect_norm}
        if (
            {**got, "input_size": config["input_size"], "norm": config["norm"]} != config
            or got["input_size"] not in sizes
            or got["norm"] not in norms
        ):
            raise CheckpointError(f"{resume} has config {ckpt['config']}, the profile wants {config}")
        config = {**config, "input_size": int(ckpt["config"]["input_size"]), "norm": got["norm"]}
        model = _resized(start, config)
        record = dict(ckpt["info"]) if "main" in ckpt["info"] else {**ckpt["info"], "main": ckpt["info"]}
        done = _phases_done(ckpt["info"])
    plan = {
        "main": (profile.defect_epochs, profile.defect_lr),
        "finetune": (profile.defect_finetune_epochs, profile.defect_finetune_lr),
        "mining": (profile.defect_mining_epochs, profile.defect_mining_lr),
        "upsize": (profile.defect_upsize_epochs if profile.defect_upsize else 0, profile.defect_upsize_lr),
    }
    ran = False
    for name in DEFECT_PHASES:
        epochs, lr = plan[name]
        if name in done or not epochs:
            continue
        if name == "mining":
            rng = seed_everything(seed + 3000)
        before = None
        if name == "finetune" and profile.defect_finetune_norm:
            config = {**config, "norm": profile.defect_finetune_norm}
            model = _resized(model, config)  # the same weights, read the new way
        if name == "upsize":
            rng = seed_everything(seed + 4000)
            before = (record, config, model)
            config = {**config, "input_size": profile.defect_upsize}
            model = _resized(model, config)
        result = phase(
            epochs, lr, name != "main", batches=mining_batches() if name == "mining" else make_batch
        )
        if before is not None and (result["val_accuracy"], -result["val_loss"]) <= (
            before[0]["val_accuracy"],
            -before[0]["val_loss"],
        ):
            # The larger input did not beat the smaller one on the same validation frames: keep that.
            if progress:
                tqdm.write(f"defect {name}: not better than input {before[1]['input_size']} - kept it")
            record, config, model = before
            record = {**record, f"{name}_history": result["history"], f"{name}_kept": False}
        elif name == "main":
            record = {**result, "main": result}
        else:
            kept = {k: v for k, v in record.items() if k == "main" or k.endswith("_history")}
            record = {**result, **kept, f"{name}_history": result["history"]}
        done.append(name)
        record["phases"] = list(done)
        save_checkpoint(out, "defect", config, model, record)
        ran = True
    if not ran:  # a resumed checkpoint that had every phase: still written where it was asked for
        save_checkpoint(out, "defect", config, model, record)
    return record


def _resized(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """``model``'s weights in a defect classifier built for ``config``'s input size (VGG16's do not depend on it)."""
    out = build_model("defect", config)
    try:
        out.load_state_dict(model.state_dict())
    except RuntimeError as e:
        raise CheckpointError(
            f"{config.get('arch')} weights depend on the input size; cannot resize to {config['input_size']}"
        ) from e
    return out


def routed_copies(
    train: np.ndarray, val: np.ndarray, denoiser: nn.Module, seed: int, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Routed noisy copies of the training and the validation frames (the defect stage's second half)."""
    return denoised_copies(train, denoiser, seed, progress), denoised_copies(
        val, denoiser, seed + 9, progress
    )


def denoised_copies(frames: np.ndarray, denoiser: nn.Module, seed: int, progress: bool = True) -> np.ndarray:
    """Each frame made noisy (gaussian / periodic / salt-and-pepper in turn) and sent through its route.

    The routes are the runtime's defaults (``inspector.denoise.routes``): the autoencoder for
    gaussian, the sinusoid fit for periodic, the impulse median for salt-and-pepper.
    """
    from inspector.denoise import AUTOENCODER, CLASSICAL_FILTERS, routes

    route = routes("adaptive_median", "sinusoid_fit")
    rng = np.random.default_rng([seed, 4242])
    kinds = ("gaussian", "periodic", "salt_pepper")
    out = np.empty_like(frames)
    noisy = np.stack([nz.apply_random(f, kinds[i % 3], rng) for i, f in enumerate(frames)])
    ae_idx = np.array([i for i in range(len(frames)) if route[kinds[i % 3]] == AUTOENCODER])
    for i in tqdm(range(len(frames)), desc="classical routes", disable=not progress, leave=False):
        name = route[kinds[i % 3]]
        if name != AUTOENCODER:
            out[i] = CLASSICAL_FILTERS[name](noisy[i])
    denoiser.eval()
    with torch.no_grad():
        for j in tqdm(
            range(0, len(ae_idx), 16), desc="denoise training frames", disable=not progress, leave=False
        ):
            sel = ae_idx[j : j + 16]
            out[sel] = denoiser(_to_input(noisy[sel])).numpy()[:, 0]
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def train_denoise(
    train: np.ndarray, val: np.ndarray, profile: Profile, seed: int, out: Path, progress: bool = True
) -> dict[str, Any]:
    """Stage 2: MSE on (noisy, clean) patches; Gaussian and periodic noise, with some clean patches."""
    rng = seed_everything(seed)
    config = stage_config("denoise", profile)
    model = DenoiseAE(channels=tuple(config["channels"]))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    p = profile.ae_patch
    h, w = train.shape[1:]
    # Validation: full frames at the two main AE-routed levels, fixed for the whole run.
    vrng = np.random.default_rng(seed + 7)
    nval = min(len(val), 48)
    val_levels = [lv for lv in nz.REPORT_LEVELS if lv.main and lv.kind in ("gaussian", "periodic")]
    val_noisy = np.stack([nz.apply_level(val[i], val_levels[i % len(val_levels)], vrng) for i in range(nval)])
    val_clean = val[:nval]

    def evaluate() -> float:
        den = _predict(model, val_noisy, batch=8)[:, 0]
        return float(np.mean([psnr(d, c) for d, c in zip(den, val_clean, strict=True)]))

    best_psnr = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    history = []
    check_every = max(profile.ae_steps // 10, 1)
    t0 = time.time()
    bar = tqdm(range(profile.ae_steps), desc="denoise", disable=not progress)
    running = 0.0
    for step in bar:
        model.train()
        noisy_b, clean_b = [], []
        for _ in range(profile.ae_batch):
            f = train[int(rng.integers(len(train)))]
            if profile.augment != "geometry":  # photographs: the part at any angle, in any light
                f = augment(profile.augment, f[None], rng)[0]
            r = rng.random()
            kind = "gaussian" if r < 0.45 else "periodic" if r < 0.9 else "clean"
            n = nz.apply_random(f, kind, rng)
            y0 = int(rng.integers(h - p + 1))
            x0 = int(rng.integers(w - p + 1))
            k = int(rng.integers(4))
            noisy_b.append(np.rot90(n[y0 : y0 + p, x0 : x0 + p], k))
            clean_b.append(np.rot90(f[y0 : y0 + p, x0 : x0 + p], k))
        xn = torch.from_numpy(np.stack(noisy_b)[:, None].astype(np.float32) / 255)
        xc = torch.from_numpy(np.stack(clean_b)[:, None].astype(np.float32) / 255)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, profile.ae_steps, 2e-3)
        loss = F.mse_loss(model.denoise_float(xn), xc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        bar.set_postfix(mse=f"{running:.5f}")
        if (step + 1) % check_every == 0 or step + 1 == profile.ae_steps:
            v = evaluate()
            history.append({"step": step + 1, "val_psnr": round(v, 3), "train_mse": running})
            if progress:
                tqdm.write(f"denoise: step {step + 1} val PSNR {v:.2f} dB")
            if v > best_psnr:
                best_psnr = v
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    info = {
        "val_psnr": best_psnr,
        "steps": profile.ae_steps,
        "patch": p,
        "history": history,
        "train_seconds": round(time.time() - t0, 1),
        "train_frames": len(train),
    }
    save_checkpoint(out, "denoise", config, model, info)
    return info
