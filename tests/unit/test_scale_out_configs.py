"""The scale-out tier's files (issue #25): the Triton repository writer, the Triton engine's failure
semantics without a server, the Prometheus / Grafana configuration, and docs/scale-out.md's figures.

A real Triton server runs in tests/system/test_scale_out.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from inspector.backends.base import EngineError
from inspector.triton.repo import PLATFORMS, parse_config, validate_repo, write_repo

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
        # what the server parses: Triton's own ModelConfig protobuf
        cfg = parse_config(text)
        assert cfg is not None and cfg.name == f"s-{stage}" and cfg.max_batch_size == 8
        assert list(cfg.input[0].dims) == [1, h, w] and cfg.instance_group[0].count == 2
        assert cfg.parameters["engine_sha256"].string_value == entry.sha256
    assert validate_repo(tmp_path, SET, platform, "s-") == []
    # a config the server would refuse to parse is caught without a server
    cfg_path = tmp_path / "s-defect" / "config.pbtxt"
    cfg_path.write_text(cfg_path.read_text().replace("max_batch_size", "max_batch_sise"))
    assert any("not a valid Triton ModelConfig" in p for p in validate_repo(tmp_path, SET, platform, "s-"))
    # a repository that no longer matches the set is caught
    (tmp_path / "s-noise" / "1" / "model.onnx").write_bytes(b"not the engine")
    assert any("not the manifest's file" in p for p in validate_repo(tmp_path, SET, platform, "s-"))


def test_tensorrt_needs_the_sets_plans_built_on_the_gpu_host(tmp_path: Path):
    """The plans and plans.json of `inspector rebuild` (faked: no GPU here, so no TensorRT to build them)."""
    from inspector.manifest import load_manifest, sha256_file

    with pytest.raises(FileNotFoundError, match="inspector rebuild"):
        write_repo(SET, tmp_path / "r", "tensorrt")
    fake = tmp_path / "set"
    shutil.copytree(SET, fake, ignore=shutil.ignore_patterns("figures", "checkpoints"))
    (fake / "tensorrt").mkdir()
    m = load_manifest(SET)
    records = []
    for s in ("noise", "denoise", "defect"):
        plan = fake / "tensorrt" / f"{s}.plan"
        plan.write_bytes(b"plan bytes of " + s.encode())
        records.append(
            {"stage": s, "file": plan.name, "sha256": sha256_file(plan), "onnx_sha256": m.stages[s].sha256,
             "profiles": [[1, 1, 4], [5, 8, 8]], "frame": [1, 1]}
        )  # fmt: skip
    (fake / "tensorrt" / "plans.json").write_text(json.dumps({"plans": records}))
    write_repo(fake, tmp_path / "r", "tensorrt")
    text = (tmp_path / "r" / "defect" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in text and "KIND_GPU" in text and "plan_sha256" in text
    # both optimization profiles offered to the instances (Triton's default is profile 0 alone)
    assert list(parse_config(text).instance_group[0].profile) == ["0", "1"]
    assert validate_repo(tmp_path / "r", fake, "tensorrt") == []
    # batches the plans do not take are refused at write time
    with pytest.raises(ValueError, match="more than the plans take"):
        write_repo(fake, tmp_path / "r16", "tensorrt", max_batch=16)
    # a plan that is not plans.json's, or plans built from another set's file, are refused
    (fake / "tensorrt" / "defect.plan").write_bytes(b"another plan")
    with pytest.raises(ValueError, match=r"not the plan plans\.json records"):
        write_repo(fake, tmp_path / "r2", "tensorrt")
    assert any(
        "not the plan plans.json records" in p for p in validate_repo(tmp_path / "r", fake, "tensorrt")
    )
    records[2]["onnx_sha256"] = "0" * 64
    (fake / "tensorrt" / "plans.json").write_text(json.dumps({"plans": records}))
    with pytest.raises(ValueError, match="another engine file"):
        write_repo(fake, tmp_path / "r3", "tensorrt")


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


def test_a_daemon_starts_unconnected_when_the_tier_is_away_and_every_call_is_bounded():
    """offline_ok (the daemon): no server at start is not fatal; each batch fails RemoteUnavailable, the
    probe says not ready, the next stage of the set does not wait again, and a batch's budget bounds it."""
    from inspector.backends.triton import RemoteUnavailable, TritonEngine
    from inspector.manifest import load_manifest

    m = load_manifest(SET)
    frame = tuple(m.stages["noise"].input.frame_size)
    url = "127.0.0.1:9"  # discard port: nothing answers gRPC there
    engines, took = [], []
    for stage in m.stages:
        t0 = time.monotonic()
        engines.append(
            TritonEngine(SET / m.stages[stage].file, stage, url=url, connect_timeout_s=2, timeout_ms=200,
                         frame_size=frame, offline_ok=True)
        )  # fmt: skip
        took.append(time.monotonic() - t0)
    # the first stage waited out its 2 s; the others knew the url had just been given up on and did not
    # wait (one refused connection each: far below the 2 s however busy the machine)
    assert took[0] >= 2 and all(t < 2 for t in took[1:]), took
    noise = engines[0]
    assert not noise.connected and noise.ready() is False
    frames = np.zeros((2, 1, *frame), np.uint8)
    with pytest.raises(RemoteUnavailable, match="not reachable"):
        noise.infer(frames)
    # the batch's budget (the inference worker sets it from supervisor.hang_timeout_s) is spent: no call
    noise.deadline = time.monotonic() - 1
    with pytest.raises(RemoteUnavailable, match="time for the inference tier is spent"):
        noise.infer(frames)
    for e in engines:
        e.close()


def test_shared_memory_regions_of_dead_processes_are_swept(tmp_path: Path):
    import subprocess
    import sys

    from inspector.backends.triton import SHM_PREFIX, sweep_shm

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / f"{SHM_PREFIX}{os.getpid()}-0a1b2c-noise-in"
    gone = tmp_path / f"{SHM_PREFIX}{dead.pid}-0a1b2c-noise-in"
    other = tmp_path / "inspector-1-ring"  # not ours to judge
    for f in (mine, gone, other):
        f.write_bytes(b"x")
    assert sweep_shm(tmp_path) == [gone.name]
    assert mine.exists() and other.exists() and not gone.exists()


def test_shared_memory_is_on_or_off():
    from pydantic import ValidationError

    from inspector.config import Settings

    assert Settings().triton.shared_memory == "off"
    with pytest.raises(ValidationError):
        Settings(triton={"shared_memory": "auto"})


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
