"""The build step end to end on the tiny profile: train, export, calibrate, evaluate, manifest; and its CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines.export import PARITY_ATOL, export_onnx, parity
from engines.models import DenoiseAE, NoiseTypeNet
from inspector.manifest import ManifestError, load_manifest, sha256_file
from inspector.pipeline import Pipeline


def test_engine_set_is_complete_and_self_describing(tiny_engines: Path):
    m = load_manifest(tiny_engines)
    assert set(m.stages) == {"noise", "denoise", "defect"}
    for entry in m.stages.values():
        assert sha256_file(tiny_engines / entry.file) == entry.sha256
        assert entry.gflop_per_frame > 0 and entry.params > 0
        assert entry.training["parity_max_abs_diff"] <= PARITY_ATOL[entry.stage]
    assert m.stages["noise"].classes == ["clean", "gaussian", "salt_pepper", "periodic"]
    assert m.seed == 3 and "inspector-build all --profile tiny" in m.command
    assert {"torch", "onnxruntime", "numpy"} <= set(m.versions)
    assert 0.0 <= m.threshold <= 1.0
    # one threshold per noise type that had defective parts in the calibration split
    assert m.thresholds and set(m.thresholds) <= {"clean", "gaussian", "salt_pepper", "periodic"}
    assert all(0.0 <= t <= 1.0 for t in m.thresholds.values())
    report = json.loads((tiny_engines / "report.json").read_text())
    assert len(report["noise_type"]["levels"]) == 8
    assert {"noisy input", "median 3x3"} <= set(report["denoising"]["gaussian@25"]["methods"])
    assert "mixed noise full pipeline" in report["defect"]["rows"]
    md = (tiny_engines / "report.md").read_text()
    assert "## Defect detection" in md and "| method | PSNR | SSIM |" in md
    for fig in (
        "noise_confusion",
        "denoise_examples",
        "defect_accuracy",
        "calibration_roc",
        "calibration_scores",
    ):
        assert (tiny_engines / "figures" / f"{fig}.png").stat().st_size > 1000


def test_onnx_takes_dynamic_batch_and_uint8(tiny_engines: Path):
    sess = ort.InferenceSession(str(tiny_engines / "noise.onnx"), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.type == "tensor(uint8)"
    for n in (1, 5):
        out = sess.run(None, {"frames": np.zeros((n, 1, 300, 300), np.uint8)})[0]
        assert out.shape == (n, 4)


def test_pipeline_runs_on_the_built_set(tiny_engines: Path, frames):
    pipe = Pipeline.from_manifest(tiny_engines)
    assert pipe.thresholds == load_manifest(tiny_engines).thresholds
    results = pipe.run(frames[0][:5])
    assert len(results) == 5
    for r in results:
        assert r.noise_type in ("clean", "gaussian", "salt_pepper", "periodic")
        assert r.threshold == pipe.threshold_for(r.noise_type)
        assert 0.0 <= r.score <= 1.0 and r.defective == (r.score >= r.threshold)
    pipe.close()
    # An operator's threshold (engines.threshold) replaces every calibrated one.
    pipe = Pipeline.from_manifest(tiny_engines, threshold=0.7)
    assert pipe.thresholds == {} and all(r.threshold == 0.7 for r in pipe.run(frames[0][:3]))
    pipe.close()


def test_report_rows_decide_each_frame_at_its_noise_types_threshold(tiny_engines: Path, frames):
    """The calibrated rows of the study's table use the per-type thresholds, as the daemon decides."""
    from engines.evaluate import MAIN_NOISY, evaluate_defects, noisy_set
    from inspector.noise import NOISE_TYPES

    x, y = frames
    sets = {lv.name: noisy_set(x, lv, 7) for lv in MAIN_NOISY}
    pipe = Pipeline.from_manifest(tiny_engines)
    # Every per-type threshold flags every frame; the single fallback threshold would flag none.
    pipe.threshold, pipe.thresholds = 1.01, dict.fromkeys(NOISE_TYPES, 0.0)
    report = evaluate_defects(pipe, x, y, sets, progress=False)
    at_half = float(np.mean((pipe.score(x) >= 0.5) == y.astype(bool)))
    pipe.close()
    assert 0 < y.sum() < len(y)
    for name, row in report["rows"].items():
        assert (row["sensitivity"], row["specificity"]) == (1.0, 0.0), name
    # The 0.5 rows ignore the calibrated thresholds.
    assert report["rows_at_0.5"]["clean (classifier only)"]["accuracy"] == pytest.approx(at_half)


def test_tampered_engine_is_refused(tiny_engines: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "set"
    shutil.copytree(tiny_engines, copy)
    with open(copy / "defect.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ManifestError, match="rebuild"):
        load_manifest(copy)


def test_parity_check_catches_a_mismatch(tmp_path: Path):
    net = NoiseTypeNet(0.0625, 64).eval()
    path = export_onnx(net, tmp_path / "n.onnx")
    assert parity(net, path, "noise") <= PARITY_ATOL["noise"]
    with torch.no_grad():
        net.backbone.head[-1].bias.add_(1.0)  # the torch model now differs from the file
    with pytest.raises(RuntimeError, match="parity failed"):
        parity(net, path, "noise")


def test_autoencoder_export_keeps_any_frame_size(tmp_path: Path):
    ae = DenoiseAE((4, 8, 8, 8)).eval()
    path = export_onnx(ae, tmp_path / "ae.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (2, 1, 240, 320), dtype=np.uint8)
    got = sess.run(None, {"frames": x})[0]
    want = ae(torch.from_numpy(x)).numpy()
    assert got.shape == x.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engines", *args], capture_output=True, text=True, timeout=300
    )


def _assert_one_line_error(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("inspector-build: error:")]
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_cli_missing_folder(tmp_path: Path):
    _assert_one_line_error(
        _cli("train", "--profile", "tiny", "--data", str(tmp_path / "absent"), "--quiet"), "does not exist"
    )


def test_cli_empty_class_and_unreadable_image(tmp_path: Path):
    (tmp_path / "train" / "ok_front").mkdir(parents=True)
    (tmp_path / "train" / "def_front").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "train" / "def_front" / "a.png"), np.zeros((300, 300), np.uint8))
    _assert_one_line_error(
        _cli("train", "--profile", "tiny", "--data", str(tmp_path), "--quiet"), "holds no images"
    )
    (tmp_path / "train" / "ok_front" / "b.png").write_bytes(b"garbage")
    _assert_one_line_error(
        _cli("train", "--profile", "tiny", "--data", str(tmp_path), "--quiet"), "cannot read image"
    )


def test_cli_wrong_checkpoint_for_stage(tiny_engines: Path, tmp_path: Path):
    ck = tiny_engines.parent / "ck" / "noise.pt"
    _assert_one_line_error(
        _cli("export", "--stage", "defect", "--checkpoint", str(ck), "--out", str(tmp_path / "x.onnx")),
        "for stage 'noise', not 'defect'",
    )
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    _assert_one_line_error(
        _cli("export", "--stage", "defect", "--checkpoint", str(junk), "--out", str(tmp_path / "x.onnx")),
        "cannot read checkpoint",
    )


def test_cli_trains_on_a_folder_dataset(tmp_path: Path):
    from inspector.tools.synthetic import ImpellerGenerator

    g = ImpellerGenerator(seed=9)
    for split, n in (("train", 40), ("test", 12)):
        for i in range(n):
            s = g.sample(i + (1000 if split == "test" else 0), defective=bool(i % 2))
            folder = tmp_path / "data" / split / ("def_front" if s.defective else "ok_front")
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{i}.jpeg"), s.image)
    res = _cli(
        "train",
        "--profile",
        "tiny",
        "--stage",
        "defect",
        "--data",
        str(tmp_path / "data"),
        "--checkpoints",
        str(tmp_path / "ck"),
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    assert torch.load(tmp_path / "ck" / "defect.pt", weights_only=True)["stage"] == "defect"


def test_defect_resume_runs_only_the_phases_the_checkpoint_lacks(tiny_engines: Path, tmp_path: Path):
    import shutil

    ck = tmp_path / "ck"
    ck.mkdir()
    shutil.copy(tiny_engines.parent / "ck" / "denoise.pt", ck / "denoise.pt")
    # A checkpoint that has been through the main schedule and the fine-tune, not mining or upsizing.
    full = torch.load(tiny_engines.parent / "ck" / "defect.pt", weights_only=True)
    assert full["info"]["phases"] == ["main", "finetune", "mining", "upsize"]
    info = {k: v for k, v in full["info"].items() if k not in ("mining_history", "upsize_history")}
    torch.save({**full, "info": {**info, "phases": ["main", "finetune"]}}, ck / "start.pt")
    res = _cli(
        "train",
        "--profile",
        "tiny",
        "--seed",
        "3",
        "--stage",
        "defect",
        "--resume",
        str(ck / "start.pt"),
        "--checkpoints",
        str(ck),
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    info = torch.load(ck / "defect.pt", weights_only=True)["info"]
    assert info["phases"] == ["main", "finetune", "mining", "upsize"]
    assert info["finetune_history"] == full["info"]["finetune_history"]  # carried over, not rerun
    assert info["mining_history"][0]["note"] == "starting weights"
    assert info["upsize_history"][0]["note"] == "starting weights"
    # The kept weights are never worse on validation than the ones the phase started from.
    assert info["val_accuracy"] >= info["mining_history"][0]["val_accuracy"]
    lines = (ck / "train_command.txt").read_text().splitlines()
    assert lines[-1].startswith("inspector-build train") and "--resume" in lines[-1]


def test_mining_resumed_from_a_fine_tuned_checkpoint_matches_an_uninterrupted_build(tmp_path: Path):
    """What lets a set be finished by `train --resume` and still be what `make engines` builds."""
    from dataclasses import replace

    from engines.data import load_split
    from engines.profiles import get_profile
    from engines.train import train_defect

    profile = replace(get_profile("tiny"), defect_mining_lr=5e-3)
    train, val = load_split("synthetic", "train", 48, 3, False), load_split("synthetic", "val", 16, 3, False)
    mined = load_split("synthetic", "mining", 16, 3, False)
    torch.manual_seed(0)
    denoiser = DenoiseAE(channels=list(profile.ae_channels)).eval()

    def run(p, out: str, resume: Path | None = None) -> dict:
        return train_defect(
            train.frames, train.labels, val.frames, val.labels, p, 6, tmp_path / out, False,
            resume=resume, denoiser=denoiser, pool=(mined.frames, mined.labels),
        )  # fmt: skip

    whole = run(profile, "whole.pt")
    part = run(replace(profile, defect_mining_epochs=0, defect_upsize_epochs=0), "part.pt")
    assert part["phases"] == ["main", "finetune"]
    mined_only = run(replace(profile, defect_upsize_epochs=0), "mined.pt")
    assert mined_only["phases"] == ["main", "finetune", "mining"]
    for name, start in (("resumed", "part.pt"), ("resumed_upsize", "mined.pt")):
        resumed = run(profile, f"{name}.pt", resume=tmp_path / start)
        assert resumed["phases"] == whole["phases"] == ["main", "finetune", "mining", "upsize"]
        # Same batches, same trajectory (the training loss of every epoch), same kept weights and size.
        assert resumed["mining_history"] == whole["mining_history"]
        assert resumed["upsize_history"] == whole["upsize_history"]
        assert "train_loss" in whole["mining_history"][1] and "train_loss" in whole["upsize_history"][1]
        a = torch.load(tmp_path / "whole.pt", weights_only=True)
        b = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert a["config"] == b["config"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


@pytest.mark.parametrize("upsize_wins", [True, False])
def test_the_upsized_classifier_is_kept_only_if_it_beats_the_smaller_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upsize_wins: bool
):
    """Progressive resizing: the phase really trains at the larger size; the comparison decides.

    The training is real; only the upsize phase's validation score is overridden, to force each
    side of the comparison with the previous phase's score at the smaller input.
    """
    from dataclasses import replace

    import engines.train as tr
    from engines.data import load_split
    from engines.profiles import get_profile

    profile = replace(get_profile("tiny"), defect_mining_epochs=0)
    train, val = load_split("synthetic", "train", 48, 3, False), load_split("synthetic", "val", 16, 3, False)
    seen: list[int] = []
    real = tr._classifier_loop

    def loop(stage, model, *args, **kwargs):
        seen.append(model.input_size)
        result = real(stage, model, *args, **kwargs)
        if model.input_size == profile.defect_upsize:
            result = {**result, "val_accuracy": 2.0 if upsize_wins else -1.0}
        return result

    before = tr.train_defect(
        train.frames, train.labels, val.frames, val.labels, replace(profile, defect_upsize_epochs=0),
        6, tmp_path / "before.pt", False,
    )  # fmt: skip
    monkeypatch.setattr(tr, "_classifier_loop", loop)
    info = tr.train_defect(
        train.frames, train.labels, val.frames, val.labels, profile, 6, tmp_path / "after.pt", False,
        resume=tmp_path / "before.pt",
    )  # fmt: skip
    assert seen == [profile.defect_upsize]  # only the missing phase ran, at the larger input
    assert info["phases"] == ["main", "finetune", "upsize"]
    assert info["upsize_history"][0]["note"] == "starting weights"
    after = torch.load(tmp_path / "after.pt", weights_only=True)
    start = torch.load(tmp_path / "before.pt", weights_only=True)
    if upsize_wins:
        assert after["config"]["input_size"] == profile.defect_upsize == 80
        assert "upsize_kept" not in info
        # It exports and runs at its new size, from the same uint8 300x300 frames.
        onnx = tmp_path / "defect.onnx"
        model = tr.load_checkpoint(tmp_path / "after.pt", "defect")[0]
        export_onnx(model, onnx)
        assert parity(model, onnx, "defect") <= PARITY_ATOL["defect"]
    else:
        assert info["upsize_kept"] is False
        assert after["config"] == start["config"] and after["config"]["input_size"] == 64
        assert info["val_accuracy"] == before["val_accuracy"]
        assert all(torch.equal(after["state_dict"][k], start["state_dict"][k]) for k in start["state_dict"])


def test_the_same_command_rebuilds_the_same_engine_set(tiny_engines: Path, tmp_path: Path):
    """`make engines` reproduces the shipped set: same seed, same code, same libraries -> same files.

    Training is deterministic on the CPU (seeded numpy frames and batches, seeded torch, no
    data-loader workers), so the second build's ONNX files are byte-identical and its report's
    numbers equal. (Another CPU model or library version may change the floating-point results.)
    """
    from engines.cli import main

    out = tmp_path / "engines"
    args = [
        "all",
        "--profile",
        "tiny",
        "--seed",
        "3",
        "--checkpoints",
        str(tmp_path / "ck"),
        "--out",
        str(out),
    ]
    assert main([*args, "--quiet"]) == 0
    first, again = load_manifest(tiny_engines), load_manifest(out)
    assert {s: e.sha256 for s, e in again.stages.items()} == {s: e.sha256 for s, e in first.stages.items()}
    assert again.thresholds == first.thresholds and again.threshold == first.threshold
    r1 = json.loads((tiny_engines / "report.json").read_text())
    r2 = json.loads((out / "report.json").read_text())
    assert r2["defect"]["rows"] == r1["defect"]["rows"]
    assert r2["noise_type"] == r1["noise_type"]


def test_calibrate_sets_new_thresholds_without_touching_the_engines(
    tiny_engines: Path, tmp_path: Path, capsys
):
    import shutil

    from engines.cli import main

    root = tmp_path / "set"
    shutil.copytree(tiny_engines, root)
    before = load_manifest(root)
    assert main(["calibrate", "--engines", str(root), "--escape-rate", "0.25", "--quiet"]) == 0
    after = load_manifest(root)  # the engine files' hashes still hold
    assert after.escape_target == 0.25 and after.command.endswith("--escape-rate 0.25 --quiet")
    assert {s: e.sha256 for s, e in after.stages.items()} == {s: e.sha256 for s, e in before.stages.items()}
    report = json.loads((root / "report.json").read_text())
    assert report["calibration"]["escape_target"] == 0.25
    assert report["calibration"]["thresholds"] == after.thresholds == report["defect"]["thresholds"]
    for m in report["calibration"]["threshold_metrics"].values():
        assert m["escape_rate"] <= 0.25
    # A looser escape target never needs a stricter (lower) threshold.
    for k, t in after.thresholds.items():
        if k in before.thresholds:
            assert t >= before.thresholds[k]
    capsys.readouterr()
    assert main(["calibrate", "--engines", str(root), "--escape-rate", "1.5", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("inspector-build: error: escape rate target must be in [0, 1)") and "\n" not in err


def test_bm3d_is_scored_beside_ours_on_the_same_frames(tiny_engines: Path, frames):
    """BM3D (the report's slowest baseline) runs at the Gaussian levels only, on the first frames, and is
    judged against ours on those same frames. Frames cropped to 96 px to keep it quick."""
    from engines import evaluate as ev
    from inspector.noise import REPORT_LEVELS

    if not ev.bm3d_available():
        pytest.fail("bm3d is in the build extra: pip install -e '.[build]'")
    clean = np.ascontiguousarray(frames[0][:6, 100:196, 100:196])
    sets = {lv.name: ev.noisy_set(clean, lv, 5) for lv in REPORT_LEVELS if lv.kind != "clean"}
    pipe = Pipeline.from_manifest(tiny_engines)
    table, _ = ev.evaluate_denoising(pipe, clean, sets, n_eval=4, n_tune=2, progress=False, bm3d_frames=2)
    pipe.close()
    for name, lv in table.items():
        bm3d = [k for k in lv["methods"] if k.startswith("BM3D")]
        if lv["kind"] != "gaussian":
            assert not bm3d, name
            continue
        (key,) = bm3d
        row, ours = lv["methods"][key], lv["methods"][lv["ours"]]
        assert lv["n"] == 4 and row["n"] == 2 and "n" not in ours
        assert row["ssim_mean"] > lv["methods"]["noisy input"]["ssim_mean"]  # it does denoise
        # Ours on BM3D's two frames is not ours on all four (the frames differ), and the verdict uses it.
        margins = {
            k: v["ssim_mean"] - v.get("ours_ssim_mean_same_frames", ours["ssim_mean"])
            for k, v in lv["methods"].items()
            if k not in ("noisy input", lv["ours"]) and "not routed" not in k
        }
        assert lv["best_baseline"] == max(margins, key=lambda k: margins[k])
        assert lv["ours_beats_best_baseline_ssim"] == (margins[lv["best_baseline"]] <= 0)


def test_the_fine_tune_switches_to_per_frame_normalisation_and_a_resume_accepts_either(tmp_path: Path):
    """``defect_finetune_norm``: the main phase reads frames at the fixed scale, the fine-tune standardised."""
    from dataclasses import replace

    from engines.data import load_split
    from engines.profiles import get_profile
    from engines.train import CheckpointError, load_checkpoint, train_defect

    profile = replace(get_profile("tiny"), defect_mining_epochs=0, defect_upsize_epochs=0)
    frame = replace(profile, defect_finetune_norm="frame")
    train, val = load_split("synthetic", "train", 48, 3, False), load_split("synthetic", "val", 16, 3, False)

    def run(p, out: str, resume: Path | None = None) -> dict:
        return train_defect(
            train.frames, train.labels, val.frames, val.labels, p, 6, tmp_path / out, False, resume=resume
        )

    main_only = run(replace(profile, defect_finetune_epochs=0), "main.pt")
    assert main_only["phases"] == ["main"]
    assert load_checkpoint(tmp_path / "main.pt", "defect")[1]["config"]["norm"] == "fixed"
    for name, resume in (("whole.pt", None), ("resumed.pt", tmp_path / "main.pt")):
        info = run(frame, name, resume)
        assert info["phases"] == ["main", "finetune"]
        # The fine-tune's first entry is the main phase's weights read the new way: the result to beat.
        assert info["finetune_history"][0]["note"] == "starting weights"
        model, ckpt = load_checkpoint(tmp_path / name, "defect")
        assert ckpt["config"]["norm"] == "frame" and model.norm == "frame"
    # A finished checkpoint resumes under the same profile (nothing left to run); a profile that
    # never switches refuses one that was switched.
    assert run(frame, "again.pt", tmp_path / "whole.pt")["phases"] == ["main", "finetune"]
    with pytest.raises(CheckpointError):
        run(profile, "refused.pt", tmp_path / "whole.pt")
