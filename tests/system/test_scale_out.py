"""Beyond one machine (issue #25): several daemons sharing one real Triton Inference Server.

A real ``tritonserver`` (the nvidia-pytriton wheel's, python backend, in ``.venv-triton`` from
``make triton``) serves a repository written by ``inspector triton-repo``; real daemons with
``engines.backend = triton`` (different camera sets) send it their batches over gRPC; a real Modbus
bridge watches one of them. Every frame gets exactly one verdict; the server's statistics show requests
of different daemons merged into one execution; killing the server turns into ERROR verdicts, not-ready
heartbeats and PLC fail-safe, and its return into PASS/FAIL again.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.system.harness import Bridge, Daemon, Plc, assert_exactly_one, free_port, wait_for

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("TRITON_VENV", REPO / ".venv-triton"))
DASH = REPO / "deploy" / "grafana" / "line-inspector-plant.json"


@pytest.fixture(scope="module")
def triton_venv() -> Path:
    if not (VENV / ".installed").exists():
        msg = f"no Triton server venv at {VENV}: `make triton` makes it (make test does)"
        if os.environ.get("CI"):
            pytest.fail(msg + " - CI runs make test, which must have made it")
        pytest.skip(msg)
    return VENV


@pytest.fixture
def server(tmp_path: Path, tiny_engines: Path, triton_venv: Path) -> Any:
    from inspector.triton.repo import validate_repo, write_repo
    from inspector.triton.server import LocalServer

    repo = tmp_path / "models"
    names = write_repo(tiny_engines, repo, "python", max_batch=8, queue_delay_us=20_000)
    assert names == ["noise", "denoise", "defect"] and validate_repo(repo, tiny_engines, "python") == []
    srv = LocalServer(triton_venv, repo, tmp_path / "work", free_port(), free_port(), free_port())
    (tmp_path / "work").mkdir()
    srv.start().wait_ready(120)
    yield srv
    srv.stop()


def _stats(srv: Any, model: str) -> dict[str, int]:
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(srv.grpc_url)
    s = c.get_inference_statistics(model, as_json=True)["model_stats"][0]
    c.close()
    return {
        "inferences": int(s.get("inference_count", 0)),
        "executions": int(s.get("execution_count", 0)),
        "batch_sizes": {
            int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in s.get("batch_stats", [])
        },
    }


def _daemon(tmp: Path, engines: Path, srv: Any, name: str) -> Daemon:
    d_tmp = tmp / name
    d_tmp.mkdir()
    return Daemon(
        d_tmp,
        engines,
        [
            "engines.backend=triton",
            f"triton.url={srv.grpc_url}",
            "triton.timeout_ms=2000",
            # One frame per request: a batch larger than one at the server is requests of several daemons
            # merged by Triton's dynamic batcher (each daemon has at most one request in flight per stage).
            "batching.max_batch=1",
            "batching.deadline_ms=5000",
            "ingest.deadline_from=receipt",
            f"daemon_id={name}",
        ],
    )


def test_daemons_share_one_triton_server_and_fail_closed_when_it_dies(
    tmp_path: Path, tiny_engines: Path, pool: list[np.ndarray], server: Any
):
    daemons = {name: _daemon(tmp_path, tiny_engines, server, name) for name in ("line1", "line2", "line3")}
    bridge = None
    plc = None
    sent: dict[str, list[tuple[str, Any]]] = {n: [] for n in daemons}
    sent_at: dict[tuple[str, Any], float] = {}

    def stream(name: str, start: int, count: int, rate: float) -> None:
        d = daemons[name]
        for i in range(start, start + count):
            cam = f"{name}-cam{i % 2}"
            sent_at[(cam, i)] = time.monotonic()
            d.send_frame(pool[i % len(pool)], i, camera=cam)
            sent[name].append((cam, i))
            time.sleep(1 / rate)

    def stream_all(start: int, count: int, rate: float) -> None:
        ts = [threading.Thread(target=stream, args=(n, start, count, rate)) for n in daemons]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    try:
        for d in daemons.values():
            d.wait_ready(180)
        bridge = Bridge(
            tmp_path, "modbus", daemons["line1"].publish, ["--camera", "line1-cam0", "--camera", "line1-cam1"]
        )
        plc = Plc(bridge.port)
        wait_for(lambda: plc.status()["failsafe"] == 0, 30, "the bridge to clear fail-safe")
        before = {m: _stats(server, m) for m in ("noise", "defect")}

        # 1. Three lines, one tier: every frame one verdict, requests of different daemons merged.
        stream_all(0, 40, 15)
        inspected = 0
        for name, d in daemons.items():
            d.wait_verdicts(40, 90)
            got = assert_exactly_one(d.verdicts, sent[name])
            k = Counter(v["verdict"] for v in got.values())
            # no ERROR while the server is up; a frame shed on a busy shared machine is DROPPED/TIMEOUT
            assert set(k) <= {"PASS", "FAIL", "TIMEOUT", "DROPPED"} and k["PASS"] + k["FAIL"] >= 30, k
            inspected += k["PASS"] + k["FAIL"]
        after = {m: _stats(server, m) for m in ("noise", "defect")}
        for m in ("noise", "defect"):
            inferences = after[m]["inferences"] - before[m]["inferences"]
            executions = after[m]["executions"] - before[m]["executions"]
            assert inferences >= inspected, (m, inferences, inspected)  # one request of one frame each
            # fewer executions than requests: some executions held requests of two or three daemons
            assert executions < inferences, (m, after[m])
            assert any(size > 1 for size in after[m]["batch_sizes"]), after[m]
        print(f"\nmerged across daemons: {after['noise']['batch_sizes']} (batch size: executions)")
        # the plant dashboard's and rules' tier metrics are ones this server exports
        exported = set(re.findall(r"^(nv_\w+)", server.metrics(), re.M))
        texts = [DASH.read_text(), (REPO / "deploy" / "prometheus" / "line-inspector-rules.yml").read_text()]
        used = {m for t in texts for m in re.findall(r"nv_\w+", t)}
        assert used and used <= exported, used - exported

        # 2. The server dies mid-stream: ERROR verdicts, not-ready heartbeats, PLC fail-safe; never a PASS
        # inspected by nobody, never a hang.
        for d in daemons.values():
            d.listener.heartbeats.clear()
        killed_at: list[float] = []
        killer = threading.Timer(1.2, lambda: (server.kill(), killed_at.append(time.monotonic())))
        killer.start()
        stream_all(100, 40, 15)
        killer.join()
        for name, d in daemons.items():
            d.wait_verdicts(80, 90)
            got = assert_exactly_one(d.verdicts, sent[name])
            late = [got[k] for k in sent[name][40:]]
            errors = [v for v in late if v["verdict"] == "ERROR"]
            assert errors, Counter(v["verdict"] for v in late)
            assert all(v["reject"] and "engine failure" in (v["reason"] or "") for v in errors)
            # nothing sent after the server was dead was inspected by anybody: no PASS, no FAIL
            after_kill = [got[k]["verdict"] for k in sent[name][40:] if sent_at[k] > killed_at[0]]
            assert after_kill and not {"PASS", "FAIL"} & set(after_kill), Counter(after_kill)
            assert any(h.get("ready") is False for h in d.listener.heartbeats), f"{name} never said not ready"
        wait_for(lambda: plc.status()["failsafe"] == 1, 10, "PLC fail-safe while the server is down")
        assert plc.status()["reason"] in (3, 8)  # not ready (or frames unanswered)

        # 3. The server returns (the same repository): the daemons reconnect by themselves.
        server.start().wait_ready(120)
        for d in daemons.values():
            d.listener.heartbeats.clear()
        wait_for(
            lambda: all(
                d.listener.heartbeats and d.listener.heartbeats[-1].get("ready") for d in daemons.values()
            ),
            60,
            "every daemon ready again",
        )
        stream_all(200, 10, 10)
        for name, d in daemons.items():
            d.wait_verdicts(90, 90)
            got = assert_exactly_one(d.verdicts, sent[name])
            back = Counter(got[k]["verdict"] for k in sent[name][80:])
            assert set(back) <= {"PASS", "FAIL"} and sum(back.values()) == 10, back
        wait_for(lambda: plc.status()["failsafe"] == 0, 30, "the bridge to clear fail-safe")
    finally:
        if plc:
            plc.close()
        if bridge:
            bridge.stop()
        for d in daemons.values():
            d.stop()


def test_a_daemon_refuses_a_server_whose_models_are_another_engine_set(
    tmp_path: Path, tiny_engines: Path, server: Any
):
    """The manifest's sha256 per stage is checked at connect: a repository of another set is refused."""
    from inspector.backends.base import EngineError
    from inspector.pipeline import Pipeline

    other = tmp_path / "other"
    import shutil

    shutil.copytree(tiny_engines, other)
    import json

    man = json.loads((other / "manifest.json").read_text())
    man["stages"]["noise"]["sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(EngineError, match="another engine set"):
        Pipeline.from_manifest(
            other, backend="triton", verify=False, url=server.grpc_url, connect_timeout_s=5
        )
    # a daemon batching more than the served models take is refused at connect, not at its first full batch
    with pytest.raises(EngineError, match="takes batches of at most 8"):
        Pipeline.from_manifest(tiny_engines, backend="triton", url=server.grpc_url, max_batch=16)
    # and the set it was written from connects and runs, with the tensors in the gRPC messages or in
    # system shared memory, with the same results as in-process
    from inspector.tools.synthetic import ImpellerGenerator

    frames = ImpellerGenerator(seed=3).batch(0, 4)[0]
    local = Pipeline.from_manifest(tiny_engines)
    want = local.run(frames)
    for shm in ("off", "on"):
        pipe = Pipeline.from_manifest(tiny_engines, backend="triton", url=server.grpc_url, shared_memory=shm)
        assert all(e.shm == (shm == "on") for e in pipe.engines.values())
        got = pipe.run(frames)
        assert [r.noise_type for r in got] == [r.noise_type for r in want]
        assert max(abs(x.score - y.score) for x, y in zip(got, want, strict=True)) < 1e-6
        pipe.close()
    # a server that cannot open the regions (here: their files are gone; on a line host: a container without
    # --ipc=host, a DynamicUser's private /dev/shm) refuses the registration: the gRPC messages carry them
    pipe = Pipeline.from_manifest(tiny_engines, backend="triton", url=server.grpc_url, shared_memory="on")
    for e in pipe.engines.values():
        for _handle, _size, name in e._regions.values():
            (Path("/dev/shm") / name).unlink()
    got = pipe.run(frames)
    pipe.engines["denoise"].infer(frames[:2, None])  # the run may have routed no frame to the autoencoder
    assert not any(e.shm for e in pipe.engines.values())
    assert max(abs(x.score - y.score) for x, y in zip(got, want, strict=True)) < 1e-6
    pipe.close()
    local.close()


def test_a_daemon_starts_without_its_tier_and_follows_it_down_and_up(
    tmp_path: Path, tiny_engines: Path, pool: list[np.ndarray], triton_venv: Path
):
    """The tier is away when the line host starts: the daemon comes up loaded but not ready (it does not exit
    for systemd to give up on), answers ERROR, and is ready once the server answers a real inference. Then an
    operator unloads one stage's model (an error status that is not UNAVAILABLE): ERROR and not ready again,
    and back when it is loaded."""
    import tritonclient.grpc as grpcclient

    from inspector.triton.repo import write_repo
    from inspector.triton.server import LocalServer

    repo = tmp_path / "models"
    write_repo(tiny_engines, repo, "python", max_batch=8, queue_delay_us=2000)
    # and a copy of the set whose defect model has gone wrong: it answers, with NaN scores
    write_repo(tiny_engines, repo, "python", prefix="nan-", max_batch=8, queue_delay_us=2000)
    broken = repo / "nan-defect" / "1" / "model.py"
    code = broken.read_text()
    assert "out = self.engine.infer(" in code
    broken.write_text(code.replace("out = self.engine.infer(", "out = np.nan * self.engine.infer("))
    (tmp_path / "work").mkdir()
    srv = LocalServer(
        triton_venv, repo, tmp_path / "work", free_port(), free_port(), free_port(), control="explicit"
    )
    d_tmp = tmp_path / "line"
    d_tmp.mkdir()
    d = Daemon(
        d_tmp,
        tiny_engines,
        [
            "engines.backend=triton",
            f"triton.url={srv.grpc_url}",
            "triton.connect_timeout_s=1",
            "triton.timeout_ms=2000",
            "batching.max_batch=4",
            "batching.deadline_ms=5000",
            "ingest.deadline_from=receipt",
        ],
    )
    sent: list[tuple[str, Any]] = []
    n = 0

    def send(count: int, rate: float = 10) -> list[tuple[str, Any]]:
        nonlocal n
        keys = []
        for _ in range(count):
            d.send_frame(pool[n % len(pool)], n)
            keys.append(("cam0", n))
            n += 1
            time.sleep(1 / rate)
        sent.extend(keys)
        return keys

    def verdicts(keys: list[tuple[str, Any]]) -> Counter[str]:
        d.wait_verdicts(len(sent), 90)
        got = assert_exactly_one(d.verdicts, sent)
        return Counter(got[k]["verdict"] for k in keys)

    def ready_again(timeout: float = 60) -> None:
        d.listener.heartbeats.clear()
        wait_for(lambda: d.listener.heartbeats and d.listener.heartbeats[-1].get("ready"), timeout, "ready")

    try:
        # 1. No server: the daemon is up (heartbeats), not ready, and every frame is an ERROR.
        # (the supervisor's "ready" event: started, ingest taking frames; readiness is the heartbeats')
        wait_for(lambda: '"event": "ready"' in d.log_path.read_text(), 120, "the daemon to start")
        assert "engines loaded" in d.log_path.read_text()
        d.listener.heartbeats.clear()
        wait_for(lambda: len(d.listener.heartbeats) >= 3, 30, "heartbeats of a daemon without its tier")
        assert d.proc.poll() is None and not any(h.get("ready") for h in d.listener.heartbeats)
        k = verdicts(send(5))
        assert k == Counter({"ERROR": 5}), k
        # the inference worker dies while the tier is away: its restart comes back loaded, still not ready
        old_pid = d.worker_pids()["inference"]
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: "inference worker back" in d.log_path.read_text(), 120, "the inference restart")
        assert d.worker_pids()["inference"] != old_pid and d.proc.poll() is None
        d.listener.heartbeats.clear()
        k = verdicts(send(3))
        assert k == Counter({"ERROR": 3}), k
        assert d.listener.heartbeats and not any(h.get("ready") for h in d.listener.heartbeats)

        # 2. The server comes up: ready by itself (the probe's real inference), PASS/FAIL.
        srv.start().wait_ready(120)
        ready_again()
        k = verdicts(send(10))
        assert set(k) <= {"PASS", "FAIL"} and sum(k.values()) == 10, k

        # 3. One stage's model is unloaded (the server answers, with an error): ERROR, not ready, no PASS.
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        c.unload_model("defect")
        wait_for(lambda: not c.is_model_ready("defect"), 30, "the model to unload")
        d.listener.heartbeats.clear()
        k = verdicts(send(8))
        assert k["ERROR"] >= 1 and not {"PASS", "FAIL"} & set(k), k
        wait_for(lambda: any(h.get("ready") is False for h in d.listener.heartbeats), 10, "not ready")

        # 4. Loaded again: ready, PASS/FAIL.
        c.load_model("defect")
        ready_again()
        k = verdicts(send(10))
        assert set(k) <= {"PASS", "FAIL"} and sum(k.values()) == 10, k
        c.close()

        # 5. A model that answers non-finite scores inspects nothing: RemoteUnavailable (ERROR, not ready)
        from inspector.backends.triton import RemoteUnavailable
        from inspector.pipeline import Pipeline

        pipe = Pipeline.from_manifest(tiny_engines, backend="triton", url=srv.grpc_url, model_prefix="nan-")
        with pytest.raises(RemoteUnavailable, match="non-finite"):
            pipe.run(np.stack(pool[:2]))
        assert pipe.engines["defect"].ready() is False and pipe.engines["noise"].ready() is True
        pipe.close()
    finally:
        assert d.stop() == 0, d.log_path.read_text()[-3000:]
        srv.stop()
