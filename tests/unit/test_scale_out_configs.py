"""The scale-out tier's files (issue #25): the Triton repository writer, the Triton engine's failure
semantics without a server, the Prometheus / Grafana configuration, and docs/scale-out.md's figures.

A real Triton server runs in tests/system/test_scale_out.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from inspector.backends.base import EngineError
from inspector.triton.repo import PLATFORMS, validate_repo, write_repo

REPO = Path(__file__).resolve().parents[2]
SET = REPO / "engines" / "synthetic"
PROM = REPO / "deploy" / "prometheus"
DASH = REPO / "deploy" / "grafana" / "line-inspector-plant.json"


@pytest.mark.parametrize("platform", [p for p in PLATFORMS if p != "tensorrt"])
def test_the_repository_carries_each_stage_with_its_sha256_and_batching(tmp_path: Path, platform: str):
    from inspector.manifest import load_manifest

    names = write_repo(SET, tmp_path, platform, prefix="s-", max_batch=8, queue_delay_us=1500, instances=2)
    m = load_manifest(SET)
    assert names == [f"s-{s}" for s in m.stages]
    for stage, entry in m.stages.items():
        text = (tmp_path / f"s-{stage}" / "config.pbtxt").read_text()
        assert f'name: "s-{stage}"' in text and "max_batch_size: 8" in text
        assert "max_queue_delay_microseconds: 1500" in text and "count: 2" in text
        assert f'"{entry.sha256}"' in text and f'"{m.model_version}"' in text
        h, w = entry.input.frame_size
        assert f"data_type: TYPE_UINT8, dims: [ 1, {h}, {w} ]" in text
    assert validate_repo(tmp_path, SET, platform, "s-") == []
    # a repository that no longer matches the set is caught
    (tmp_path / "s-noise" / "1" / "model.onnx").write_bytes(b"not the engine")
    assert any("not the manifest's file" in p for p in validate_repo(tmp_path, SET, platform, "s-"))


def test_tensorrt_needs_the_sets_plans_built_on_the_gpu_host(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="inspector rebuild"):
        write_repo(SET, tmp_path / "r", "tensorrt")
    fake = tmp_path / "set"
    shutil.copytree(SET, fake, ignore=shutil.ignore_patterns("figures", "checkpoints"))
    (fake / "tensorrt").mkdir()
    for s in ("noise", "denoise", "defect"):
        (fake / "tensorrt" / f"{s}.plan").write_bytes(b"plan bytes")
    write_repo(fake, tmp_path / "r", "tensorrt")
    text = (tmp_path / "r" / "defect" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in text and "KIND_GPU" in text and "plan_sha256" in text
    assert validate_repo(tmp_path / "r", fake, "tensorrt") == []


def test_triton_repo_cli_writes_and_checks(tmp_path: Path):
    from inspector.cli import main

    assert main(["triton-repo", "--engines", str(SET), "--out", str(tmp_path / "m")]) == 0
    assert main(["triton-repo", "--engines", str(SET), "--out", str(tmp_path / "m"), "--check"]) == 0
    (tmp_path / "m" / "defect" / "config.pbtxt").unlink()
    assert main(["triton-repo", "--engines", str(SET), "--out", str(tmp_path / "m"), "--check"]) == 1


def test_an_unreachable_server_is_a_clear_error_in_bounded_time():
    from inspector.backends.triton import RemoteUnavailable
    from inspector.pipeline import Pipeline

    t0 = time.monotonic()
    with pytest.raises(RemoteUnavailable, match="not reachable") as exc:
        Pipeline.from_manifest(SET, backend="triton", url="127.0.0.1:9", connect_timeout_s=1, timeout_ms=200)
    assert time.monotonic() - t0 < 30
    assert isinstance(exc.value, EngineError) and exc.value.unavailable


def test_headers_must_be_name_value():
    from inspector.backends.triton import parse_headers

    assert parse_headers(["Authorization: Bearer x"]) == {"authorization": "Bearer x"}
    with pytest.raises(EngineError, match="name: value"):
        parse_headers(["no colon"])


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_prometheus_configuration_is_valid():
    promtool = shutil.which("promtool")
    if promtool:
        for args in (
            ["check", "config", str(PROM / "prometheus.yml")],
            ["check", "rules", str(PROM / "line-inspector-rules.yml")],
        ):
            r = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
    # the schema check, with or without promtool
    cfg = _yaml(PROM / "prometheus.yml")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"line-inspector", "triton"}
    for job in jobs.values():
        for sc in job["static_configs"]:
            assert all(re.fullmatch(r"[\w.-]+:\d+", t) for t in sc["targets"])
    assert all("line" in sc["labels"] for sc in jobs["line-inspector"]["static_configs"])
    assert cfg["rule_files"] == ["line-inspector-rules.yml"]
    rules = _yaml(PROM / "line-inspector-rules.yml")["groups"][0]["rules"]
    assert all("expr" in r and ("record" in r or "alert" in r) for r in rules)


def _exported_metrics() -> set[str]:
    text = (REPO / "inspector" / "daemon" / "metrics.py").read_text()
    return set(re.findall(r'"(inspector_\w+)"', text))


def test_dashboard_and_rules_use_only_metrics_that_exist():
    exported = _exported_metrics()
    rules = _yaml(PROM / "line-inspector-rules.yml")["groups"][0]["rules"]
    recorded = {r["record"] for r in rules if "record" in r}
    dash = json.loads(DASH.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]] + [r["expr"] for r in rules]
    used_inspector = {
        re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"inspector_\w+", e)
    }
    assert used_inspector and used_inspector <= exported, used_inspector - exported
    used_records = {m for e in exprs for m in re.findall(r"line:\w+:\w+", e)}
    assert used_records and used_records <= recorded, used_records - recorded
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_docs_scale_out_tables_are_bench_triton_json():
    result = REPO / "bench" / "triton.json"
    if not result.exists():
        pytest.fail("bench/triton.json missing: python -m bench.triton")
    import sys

    sys.path.insert(0, str(REPO))
    from bench.triton import BEGIN, END, render

    doc = (REPO / "docs" / "scale-out.md").read_text()
    block = doc.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block.strip() == render(json.loads(result.read_text())).strip()
