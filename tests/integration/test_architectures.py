"""Every defect architecture exports to ONNX, matches torch, and serves in the pipeline unchanged;
the comparison command writes its table in a tiny configuration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.architectures import ARCHS
from engines.cli import main
from engines.export import export_onnx, parity
from engines.models import DefectNet
from inspector.manifest import load_manifest, sha256_file, write_manifest
from inspector.pipeline import Pipeline


def swap_defect(tiny_engines: Path, dest: Path, arch: str) -> Path:
    """A copy of the tiny engine set whose defect stage is an (untrained) ``arch`` network."""
    shutil.copytree(tiny_engines, dest)
    torch.manual_seed(0)
    model = DefectNet(width=0.0625, input_size=80, arch=arch).eval()
    export_onnx(model, dest / "defect.onnx")
    parity(model, dest / "defect.onnx", "defect")
    m = load_manifest(dest, verify=False)
    entry = m.stages["defect"].model_copy(
        update={"sha256": sha256_file(dest / "defect.onnx"), "arch": arch, "config": {"arch": arch}}
    )
    write_manifest(dest, m.model_copy(update={"stages": {**m.stages, "defect": entry}}))
    return dest


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_exports_and_serves_in_the_pipeline(tmp_path: Path, tiny_engines: Path, frames, arch):
    root = swap_defect(tiny_engines, tmp_path / arch, arch)
    pipe = Pipeline.from_manifest(root)  # what the daemon loads: sha256 verified
    results = pipe.run(frames[0][:5])
    assert len(results) == 5
    assert all(0.0 <= r.score <= 1.0 for r in results)
    # The served scores are the torch model's (same weights, within the export tolerance).
    torch.manual_seed(0)
    model = DefectNet(width=0.0625, input_size=80, arch=arch).eval()
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(frames[0][:5, None])), 1)[:, 1].numpy()
    got = pipe.score(frames[0][:5])
    np.testing.assert_allclose(got, want, atol=1e-4)
    pipe.close()


def test_export_refuses_a_checkpoint_of_another_arch(tmp_path: Path, capsys):
    from engines.train import save_checkpoint

    cfg = {"width": 0.0625, "input_size": 80, "arch": "cnn"}
    save_checkpoint(tmp_path / "d.pt", "defect", cfg, DefectNet(**cfg), {})
    ck, onnx = str(tmp_path / "d.pt"), str(tmp_path / "d.onnx")
    base = ["export", "--stage", "defect", "--checkpoint", ck, "--out", onnx]
    assert main([*base, "--arch", "resnet50"]) == 2
    assert "is a cnn checkpoint, not resnet50" in capsys.readouterr().err
    assert main([*base, "--arch", "cnn"]) == 0


def test_compare_writes_the_table_in_a_tiny_configuration(tmp_path: Path, tiny_engines: Path):
    # The tiny engine set's noise classifier and autoencoder route the noisy frames; training is
    # a few steps, so only the shape of the result is checked here, not its accuracy.
    out = tmp_path / "cmp"
    args = ["compare", "--profile", "tiny", "--input-size", "80", "--archs", "cnn,inceptionv3"]
    rc = main([*args, "--seeds", "0,1,2", "--engines", str(tiny_engines), "--out", str(out), "--quiet"])
    assert rc == 0
    result = json.loads((out / "results.json").read_text())
    assert list(result["architectures"]) == ["cnn", "inceptionv3"]
    for summary in result["architectures"].values():
        for cond in ("clean", "noisy without denoising", "noisy through the pipeline"):
            for metric in ("accuracy", "sensitivity", "specificity", "f1", "auc"):
                vals = summary[cond][metric]["values"]
                assert len(vals) == 3
                assert summary[cond][metric]["mean"] == pytest.approx(np.mean(vals))
        assert summary["params"] > 0 and summary["gflop_per_frame"] > 0
        assert summary["latency_ms_batch1"]["mean"] > 0
    md = (out / "README.md").read_text()
    assert "| architecture | accuracy | sensitivity | specificity | F1 | AUC | params | GFLOP/frame |" in md
    assert md.count("| inceptionv3 |") == 4  # three condition tables and the recovery table
    assert "--seeds 0,1,2" in md
    assert (out / "accuracy_vs_latency.png").stat().st_size > 10_000
    assert not list((out / "runs").glob("*.onnx"))  # per-run files are dropped unless --keep-runs
    assert len(list((out / "runs").glob("*.json"))) == 6
