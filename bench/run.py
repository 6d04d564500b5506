"""``make bench``: the daemon measured from outside, beside the two loops it must be compared with.

In one run, on one machine, with the same engines and the same frames:

(a) tight loop   - the runtime's pipeline on ONNX Runtime in batches of ``max_batch``, no IPC:
                   the most this machine can do with these engines;
(b) eager loop   - the per-frame PyTorch eager loop a user would otherwise write (batch 1, torch
                   modules, the same classical filters on the same routes), from the engine set's
                   own checkpoints;
(c) the daemon   - started as a process, fed over its real ZeroMQ socket by a camera process at
                   several offered loads, verdicts collected by a subscriber: sustained throughput
                   (inspected verdicts per second), p50/p99 latency from receipt to publication,
                   and what was shed.
(d) INT8         - where the Q/DQ INT8 set sits beside the engines (``<engines>-int8``, or
                   ``--int8``): the tight loop again on it, run right after float32's on the same
                   frames, and each stage's ms per frame for both sets.
(e) backends     - (a) and (c) for each backend and precision: ONNX Runtime float32 (the baseline
                   above), OpenVINO f32, bf16 and int8 (the INT8 set's Q/DQ files), each daemon
                   load a multiple of that backend's own tight loop; compute used (best goodput x
                   network GFLOP per frame) against this machine's peak for the precision, measured
                   in the same run with one large GEMM.

Writes ``bench/results.json`` and prints a table. Not a test: nothing fails on speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector import noise as nz  # noqa: E402
from inspector.manifest import load_manifest  # noqa: E402
from inspector.pipeline import Pipeline  # noqa: E402
from inspector.tools.camera import synthetic_shots  # noqa: E402
from inspector.tools.listen import Listener  # noqa: E402

MIXES = {
    "line (clean 70%)": "clean=0.7,gaussian=0.1,salt_pepper=0.1,periodic=0.1",
    "all noisy": "gaussian=0.34,salt_pepper=0.33,periodic=0.33",
}


DEFAULT_DATA = REPO.parent / "shared" / "data" / "casting"


def frames_for(mix: str, n: int, data: Path | None, seed: int = 5) -> list[np.ndarray]:
    """``n`` frames of the mix: real test photographs with the mix's noise added, or generated impellers."""
    if data is None:
        shots = synthetic_shots(seed, 0.3, nz.parse_mix(mix))
        return [next(shots).image for _ in range(n)]
    from inspector.tools.folder import FolderDataset, read_gray

    ds = FolderDataset.scan(data, "test")
    weights = nz.parse_mix(mix)
    kinds, probs = list(weights), np.array(list(weights.values()))
    rng = np.random.default_rng([seed, 1])
    out = []
    for i in rng.choice(len(ds), size=n, replace=False):
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        out.append(nz.apply_random(read_gray(ds.files[int(i)]), kind, rng))
    return out


def tight_loop(
    engines: Path, frames: list[np.ndarray], batch: int, seconds: float, **engine: Any
) -> dict[str, float]:
    pipe = Pipeline.from_manifest(engines, **engine)
    arr = np.stack(frames)
    pipe.run(arr[:batch])
    done, t0 = 0, time.perf_counter()
    batch_times = []
    while time.perf_counter() - t0 < seconds:
        i = (done // batch * batch) % (len(arr) - batch)
        tb = time.perf_counter()
        pipe.run(arr[i : i + batch])
        batch_times.append(time.perf_counter() - tb)
        done += batch
    el = time.perf_counter() - t0
    pipe.close()
    return {
        "fps": done / el,
        "batch_ms_mean": float(np.mean(batch_times) * 1e3),
        "batch_ms_p99": float(np.percentile(batch_times, 99) * 1e3),
    }


def eager_loop(engines: Path, frames: list[np.ndarray], seconds: float) -> dict[str, float] | None:
    try:
        import torch

        from engines.train import load_checkpoint
    except ImportError:
        return None
    ck = engines / "checkpoints"
    if not ck.is_dir():
        return None
    from inspector.denoise import AUTOENCODER, CLASSICAL_FILTERS, routes
    from inspector.noise import NOISE_TYPES

    noise_net, _ = load_checkpoint(ck / "noise.pt", "noise")
    ae, _ = load_checkpoint(ck / "denoise.pt", "denoise")
    defect, _ = load_checkpoint(ck / "defect.pt", "defect")
    manifest = load_manifest(engines)
    thr = manifest.threshold
    route = routes(manifest.salt_pepper_filter, manifest.periodic_filter)  # the daemon's routes
    done, t0 = 0, time.perf_counter()
    with torch.no_grad():
        while time.perf_counter() - t0 < seconds:
            f = frames[done % len(frames)]
            x = torch.from_numpy(f)[None, None]
            kind = NOISE_TYPES[int(noise_net(x).argmax(1))]
            name = route.get(kind, "none")
            if name == AUTOENCODER:
                x = ae(x)
            elif name in CLASSICAL_FILTERS:
                x = torch.from_numpy(CLASSICAL_FILTERS[name](f))[None, None]
            _ = float(torch.softmax(defect(x), 1)[0, 1]) >= manifest.thresholds.get(kind, thr)
            done += 1
    el = time.perf_counter() - t0
    return {"fps": done / el}


def _camera_proc(endpoint: str, frames: list[np.ndarray], rate: float, seconds: float, ready: Any) -> None:
    """A separate camera process: pre-encoded messages, sent on a fixed schedule."""
    import zmq

    from inspector.protocol import encode_frame

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.connect(endpoint)
    msgs = [encode_frame(f, "bench", 0, 0) for f in frames]
    heads = [json.loads(m[0]) for m in msgs]
    ready.set()
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(n):
        target = t0 + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        h = heads[i % len(heads)]
        h["frame_id"] = i
        h["ts_ns"] = time.time_ns()
        sock.send_multipart([json.dumps(h).encode(), msgs[i % len(msgs)][1]])
    sock.close(10_000)
    ctx.term()


@contextlib.contextmanager
def running_daemon(engines: Path, sets: list[str]) -> Iterator[tuple[Any, Listener, str, str]]:
    """The daemon as a process on private ipc endpoints, with a listener; yields when it is ready."""
    tmp = Path(tempfile.mkdtemp(prefix="inspector-bench-"))
    ingest, publish = f"ipc://{tmp}/in.sock", f"ipc://{tmp}/out.sock"
    cmd = [sys.executable, "-m", "inspector", "serve"]
    for s in [
        f"engines.path={engines}",
        f"ingest.endpoint={ingest}",
        f"publish.endpoint={publish}",
        "metrics.enabled=false",
        "log.level=warning",
        *sets,
    ]:
        cmd += ["--set", s]
    log = open(tmp / "daemon.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    lst = Listener(publish).start()
    try:
        end = time.monotonic() + 180
        while not any(h.get("ready") for h in lst.heartbeats):
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("daemon did not start: " + (tmp / "daemon.log").read_text()[-2000:])
            time.sleep(0.05)
        yield proc, lst, ingest, publish
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        lst.close()
        log.close()


def _camera(ingest: str, frames: list[np.ndarray], rate: float, seconds: float) -> Any:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    cam = ctx.Process(target=_camera_proc, args=(ingest, frames, rate, seconds, ready))
    cam.start()
    ready.wait(60)
    return cam


def daemon_run(
    engines: Path, frames: list[np.ndarray], rate: float, seconds: float, sets: list[str]
) -> dict[str, Any]:
    with running_daemon(engines, sets) as (_proc, lst, ingest, _publish):
        cam = _camera(ingest, frames, rate, seconds)
        lst.wait_for(int(rate * seconds), timeout=seconds + 60)
        cam.join(30)
    vs = lst.verdicts
    inspected = [v for v in vs if v["verdict"] in ("PASS", "FAIL")]
    # Steady state: the middle 80% of the run, by the publication times of *all* verdicts (every
    # frame gets one, in about arrival order), so the window is the run's and not the inspected
    # frames' own: PASS + FAIL in that window over its length is the goodput.
    if len(vs) > 20 and inspected:
        ts_all = np.array([v["published_ns"] for v in vs])
        lo, hi = np.percentile(ts_all, 10), np.percentile(ts_all, 90)
        mid = [v for v in inspected if lo <= v["published_ns"] <= hi]
        fps = len(mid) / max((hi - lo) / 1e9, 1e-9)
    else:
        mid, fps = inspected, float("nan")
    lat = [v["latency_ms"]["total"] for v in mid]
    kinds: dict[str, int] = {}
    for v in vs:
        kinds[v["verdict"]] = kinds.get(v["verdict"], 0) + 1
    sent = int(rate * seconds)
    admitted = len(vs) - kinds.get("DROPPED", 0)
    return {
        "offered_fps": rate,
        "sent": sent,
        "verdicts": len(vs),
        "by_kind": kinds,
        # goodput: PASS + FAIL per second (steady state); a TIMEOUT or DROPPED frame is not counted
        "goodput_fps": fps,
        "timeout_share_of_admitted": kinds.get("TIMEOUT", 0) / admitted if admitted else float("nan"),
        "dropped_share_of_sent": kinds.get("DROPPED", 0) / sent if sent else float("nan"),
        # latency of the inspected frames (PASS + FAIL), receipt to publication
        "latency_ms_p50": float(np.percentile(lat, 50)) if lat else float("nan"),
        "latency_ms_p99": float(np.percentile(lat, 99)) if lat else float("nan"),
    }


# The backends measured side by side: (label, engines.backend, engines.precision, which set). The INT8
# precision runs the INT8 set's Q/DQ files; the others the float32 set.
BACKEND_RUNS = [
    ("ONNX Runtime f32", "onnxruntime", None, "float32"),
    ("OpenVINO f32", "openvino", "f32", "float32"),
    ("OpenVINO bf16", "openvino", "bf16", "float32"),
    ("OpenVINO int8", "openvino", "int8", "int8"),
]


def peak_gflops(seconds: float = 2.0) -> dict[str, float]:
    """The machine's measured peak per precision, now: one 2048^3 GEMM compiled by OpenVINO (f32, bf16; int8
    through FakeQuantize on both operands, which OpenVINO runs as an int8 GEMM), best of a timed loop."""
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return {}
    core = ov.Core()
    n = 2048
    rng = np.random.default_rng(0)
    x = rng.random((n, n), dtype=np.float32)
    out: dict[str, float] = {}
    for prec in ("f32", "bf16", "int8"):
        a = ops.parameter([n, n], ov.Type.f32, name="a")
        w = ops.constant(rng.random((n, n), dtype=np.float32))
        if prec == "int8":
            lo, hi = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
            a_in, w_in = ops.fake_quantize(a, lo, hi, lo, hi, 256), ops.fake_quantize(w, lo, hi, lo, hi, 255)
            config: dict[str, Any] = {}
        else:
            a_in, w_in = a, w
            config = {"INFERENCE_PRECISION_HINT": prec}
        compiled = core.compile_model(ov.Model([ops.matmul(a_in, w_in, False, False)], [a]), "CPU", config)
        req = compiled.create_infer_request()
        req.infer({0: x})
        best, t_end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            req.infer({0: x})
            best = min(best, time.perf_counter() - t0)
        out[prec] = 2 * n**3 / best / 1e9
    return out


def gflop_per_frame(engines: Path, mix: str) -> float:
    """Network GFLOP per frame of ``mix`` through the set's routes (noise + defect on every frame, the
    autoencoder on the types routed to it; classical filters not counted), assuming each frame is typed
    as its noise (the noise classifier is 100% on the test split)."""
    from inspector.denoise import AUTOENCODER, routes

    m = load_manifest(engines)
    route = routes(m.salt_pepper_filter, m.periodic_filter)
    g = {k: v.gflop_per_frame for k, v in m.stages.items()}
    ae = sum(w for kind, w in nz.parse_mix(mix).items() if route.get(kind) == AUTOENCODER)
    return g["noise"] + g["defect"] + ae * g.get("denoise", 0.0)


def backend_runs(
    fp32: Path,
    int8: Path | None,
    name: str,
    mix: str,
    frames: list[np.ndarray],
    loads: list[float],
    seconds: float,
    sets: list[str],
    max_batch: int,
    peak: dict[str, float],
    which_runs: list[tuple[str, str, str | None, str]],
) -> dict[str, Any]:
    """Every backend on one mix: a tight loop, then the daemon at each load (multiples of that backend's own
    tight loop), with compute use against the measured peak of the precision it runs."""
    out: dict[str, Any] = {}
    for label, backend, precision, which in which_runs:
        root = fp32 if which == "float32" else int8
        if root is None:
            continue
        engine: dict[str, Any] = {"backend": backend} | ({"precision": precision} if precision else {})
        bsets = [*sets, f"engines.backend={backend}"] + (
            [f"engines.precision={precision}"] if precision else []
        )
        try:
            print(f"[{name}] {label}: tight batched loop ...", flush=True)
            tight = tight_loop(root, frames, max_batch, seconds, **engine)
        except Exception as exc:  # a backend this machine cannot run: said in the results, not a crash
            out[label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            print(f"[{name}] {label}: not measured: {exc}", flush=True)
            continue
        runs = []
        for frac in loads:
            rate = max(tight["fps"] * frac, 1.0)
            print(
                f"[{name}] {label}: daemon at {rate:.0f} frames/s ({frac:g} x its tight loop) ...", flush=True
            )
            r = daemon_run(root, frames, rate, seconds, bsets)
            r["load_fraction"] = frac
            r["goodput_vs_tight"] = r["goodput_fps"] / tight["fps"]
            runs.append(r)
        best = max(r["goodput_fps"] for r in runs if r["goodput_fps"] == r["goodput_fps"])
        gflop = gflop_per_frame(root, mix)
        prec = precision or "f32"
        out[label] = {
            "backend": backend,
            "precision": prec,
            "engines": _shown(root),
            "tight_loop": tight,
            "daemon": runs,
            "daemon_best_goodput_fps": best,
            "p99_at_1x_ms": next((r["latency_ms_p99"] for r in runs if r["load_fraction"] == 1.0), None),
            "p99_bound_ms": sets_delay(sets) + 2 * tight["batch_ms_mean"],
            "gflop_per_frame": gflop,
            "gflops_used": best * gflop,
            "peak_gflops": peak.get(prec),
            "share_of_peak": best * gflop / peak[prec] if peak.get(prec) else None,
        }
    base = out.get(which_runs[0][0], {}).get("daemon_best_goodput_fps")
    for v in out.values():
        if base and "daemon_best_goodput_fps" in v:
            v["goodput_vs_onnxruntime"] = v["daemon_best_goodput_fps"] / base
    return out


def sets_delay(sets: list[str]) -> float:
    """batching.max_delay_ms from the bench's --set list."""
    for s in sets:
        if s.startswith("batching.max_delay_ms="):
            return float(s.split("=", 1)[1])
    return 10.0


def archive_run(
    engines: Path, frames: list[np.ndarray], tight_fps: float, seconds: float, sets: list[str]
) -> dict[str, Any]:
    """The reject archive: daemon goodput with it off and on at 1.5x the tight loop (alternated off, on, off,
    on, so drift on a shared machine falls on both; overload, so goodput is the daemon's capacity), then on at
    1x. Every "on" run counts the non-PASS verdicts the archive kept (target: all of them)."""
    from inspector.archive.store import Archive, Filters

    rate = 1.5 * tight_fps
    runs = []
    for mode, frac in (("off", 1.5), ("on", 1.5), ("off", 1.5), ("on", 1.5), ("on", 1.0)):
        folder = Path(tempfile.mkdtemp(prefix="inspector-bench-archive-"))
        extra = [f"archive.dir={folder}", "archive.min_free_mb=0"] if mode == "on" else []
        print(
            f"[archive] {mode}: daemon at {frac * tight_fps:.0f} frames/s ({frac:g} x tight loop) ...",
            flush=True,
        )
        r = daemon_run(engines, frames, frac * tight_fps, seconds, sets + extra)
        r["archive"] = mode
        r["load_fraction"] = frac
        if mode == "on":
            time.sleep(1.0)  # the worker stored what was queued before the daemon stopped (it drains on stop)
            a = Archive(folder, readonly=True)
            r["archived"] = a.count()
            r["non_pass_archived"] = a.count(Filters(verdicts=("FAIL", "ERROR", "TIMEOUT", "DROPPED")))
            r["archive_mb"] = a.total_bytes() / 1e6
            a.close()
            r["non_pass_verdicts"] = r["verdicts"] - r["by_kind"].get("PASS", 0)
            r["kept_share"] = r["non_pass_archived"] / max(r["non_pass_verdicts"], 1)
        shutil.rmtree(folder, ignore_errors=True)
        runs.append(r)
    off = float(np.mean([r["goodput_fps"] for r in runs if r["archive"] == "off"]))
    on = float(
        np.mean([r["goodput_fps"] for r in runs if r["archive"] == "on" and r["load_fraction"] == 1.5])
    )
    return {
        "offered_fps": rate,
        "runs": runs,
        "goodput_off_fps": off,
        "goodput_on_fps": on,
        "ratio_on_vs_off": on / off,
        "target_ratio": 0.95,
        "kept_share_min": min(r["kept_share"] for r in runs if r["archive"] == "on"),
    }


def bridge_run(engines: Path, frames: list[np.ndarray], rate: float, seconds: float) -> dict[str, Any]:
    """The Modbus bridge's added latency and its fail-safe time, measured from outside.

    A PLC-like poller reads the bridge's ``last_seq`` register every 2 ms; a verdict's latency is
    the time it first shows there minus its ``published_ns`` (same host clock). Then the daemon
    is SIGKILLed and the time to ``failsafe`` = 1 is measured from the last heartbeat received.
    """
    import socket as socketlib
    import threading

    from pymodbus.client import ModbusTcpClient

    with socketlib.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    interval = 0.5
    sets = [f"publish.heartbeat_interval_s={interval}"]
    seen: dict[int, int] = {}
    out: dict[str, Any] = {"offered_fps": rate, "heartbeat_interval_s": interval, "heartbeat_misses": 3}
    with running_daemon(engines, sets) as (proc, lst, ingest, publish):
        bridge = subprocess.Popen(
            [sys.executable, "-m", "inspector", "bridge", "modbus", "--daemon", publish,
             "--listen", f"127.0.0.1:{port}", "--camera", "bench", "--log-level", "warning"],
            cwd=REPO,
        )  # fmt: skip
        plc = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        try:
            end = time.monotonic() + 30
            while not plc.connect() or plc.read_holding_registers(3, count=1, device_id=1).registers[0]:
                if time.monotonic() > end:
                    raise RuntimeError("the Modbus bridge did not clear fail-safe")
                time.sleep(0.1)
            stop = threading.Event()

            def poll() -> None:
                while not stop.is_set():
                    r = plc.read_holding_registers(5, count=2, device_id=1).registers
                    seq, now = r[0] << 16 | r[1], time.time_ns()
                    for s_ in range(max(seen, default=0) + 1, seq + 1):
                        seen[s_] = now
                    time.sleep(0.002)

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            cam = _camera(ingest, frames, rate, seconds)
            lst.wait_for(int(rate * seconds), timeout=seconds + 60)
            cam.join(30)
            time.sleep(0.5)
            stop.set()
            poller.join(5)
            lat = [(seen[v["seq"]] - v["published_ns"]) / 1e6 for v in lst.verdicts if v["seq"] in seen]
            out.update(
                verdicts=len(lst.verdicts),
                visible=len(lat),
                added_latency_ms_p50=float(np.percentile(lat, 50)) if lat else float("nan"),
                added_latency_ms_p99=float(np.percentile(lat, 99)) if lat else float("nan"),
                poll_period_ms=2.0,
            )
            # The daemon falls silent (every process stopped: a hung host, a cut cable): the bridge
            # must notice from the missing heartbeats alone.
            os.killpg(proc.pid, signal.SIGSTOP)
            t_stop = time.time_ns()
            try:
                while not plc.read_holding_registers(3, count=1, device_id=1).registers[0]:
                    time.sleep(0.005)
                t_safe = time.time_ns()
            finally:
                os.killpg(proc.pid, signal.SIGCONT)
            last_hb = max(h["ts_ns"] for h in lst.heartbeats if h["ts_ns"] <= t_stop)  # same host clock
            out["failsafe_after_silence_s"] = (t_safe - t_stop) / 1e9
            out["failsafe_after_last_heartbeat_s"] = (t_safe - last_hb) / 1e9
        finally:
            plc.close()
            bridge.terminate()
            bridge.wait(20)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--engines",
        type=Path,
        default=None,
        help="engine set (default: engines/default on photographs, engines/synthetic on generated frames)",
    )
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each measured run")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-delay-ms", type=float, default=10.0)
    ap.add_argument(
        "--loads",
        default="0.5,1.0,1.5,3.0",
        help="offered loads as fractions of the tight loop's throughput (default: %(default)s)",
    )
    ap.add_argument(
        "--int8",
        default="auto",
        help="the INT8 (Q/DQ) engine set to compare on the CPU: a path, 'auto' (<engines>-int8 if it exists) "
        "or 'none' (default: %(default)s)",
    )
    ap.add_argument(
        "--data",
        default="auto",
        help="frames: a folder with the casting photographs' test/ split (noise added per mix), 'auto' "
        f"({DEFAULT_DATA} if it exists) or 'synthetic' (generated impellers) (default: %(default)s)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    ap.add_argument(
        "--backends",
        choices=["all", "onnxruntime"],
        default="all",
        help="'all': ONNX Runtime float32 and OpenVINO f32, bf16 and int8 (the INT8 set), each with its tight "
        "loop and the daemon at every load, and the machine's peak per precision; 'onnxruntime': the "
        "baseline alone (default: %(default)s)",
    )
    ap.add_argument(
        "--only",
        choices=["all", "bridge", "archive"],
        default="all",
        help="'bridge': measure only the Modbus bridge (added latency, fail-safe time); 'archive': only the "
        "daemon's goodput with the reject archive off and on; either updates that part of --out "
        "(default: %(default)s)",
    )
    args = ap.parse_args()
    data: Path | None
    if args.data == "auto":
        data = DEFAULT_DATA if (DEFAULT_DATA / "test").is_dir() else None
    else:
        data = None if args.data == "synthetic" else Path(args.data)
    source = (
        f"real test photographs of {data.name}/test with each mix's noise added"
        if data
        else "generated impellers"
    )
    if args.engines is None:
        args.engines = REPO / "engines" / ("default" if data else "synthetic")
    print(f"frames: {source}; engines: {args.engines}", flush=True)
    int8: Path | None = None
    if args.int8 == "auto":
        cand = args.engines.parent / f"{args.engines.name}-int8"
        int8 = cand if (cand / "manifest.json").is_file() else None
    elif args.int8 != "none":
        int8 = Path(args.int8)
        load_manifest(int8)  # a clear error now, not after the daemon runs
    manifest = load_manifest(args.engines)
    line_frames = frames_for(MIXES["line (clean 70%)"], 64, data)
    sets = [f"batching.max_batch={args.max_batch}", f"batching.max_delay_ms={args.max_delay_ms}"]
    if args.only == "archive":
        results = json.loads(args.out.read_text())
        # Loads are multiples of a tight loop measured now, on this machine as it is today (not the stored one).
        print("[archive] tight batched loop on the line mix ...", flush=True)
        tight = tight_loop(args.engines, line_frames, args.max_batch, args.seconds)["fps"]
        results["archive"] = archive_run(args.engines, line_frames, tight, args.seconds, sets)
        results["archive"]["tight_loop_fps"] = tight
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(render(results))
        return 0
    if args.only == "bridge":
        results = json.loads(args.out.read_text())
        rate = 0.5 * results["mixes"]["line (clean 70%)"]["tight_loop"]["fps"]
        print(
            f"[bridge] Modbus bridge at {rate:.0f} frames/s (0.5 x the line mix's tight loop) ...", flush=True
        )
        results["bridge"] = bridge_run(args.engines, line_frames, rate, args.seconds)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(render(results))
        return 0
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "engines": _shown(args.engines),
        "frames": source,
        "model_version": manifest.model_version,
        "max_batch": args.max_batch,
        "max_delay_ms": args.max_delay_ms,
        "mixes": {},
    }
    loads = [float(x) for x in args.loads.split(",")]
    if args.backends != "onnxruntime":
        print("[peak] one GEMM per precision (OpenVINO) ...", flush=True)
        results["peak_gflops"] = peak_gflops()
    for name, mix in MIXES.items():
        frames = frames_for(mix, 64, data)
        backends = backend_runs(
            args.engines, int8, name, mix, frames, loads, args.seconds, sets, args.max_batch,
            results.get("peak_gflops", {}), BACKEND_RUNS if args.backends == "all" else BACKEND_RUNS[:1],
        )  # fmt: skip
        ort = backends[BACKEND_RUNS[0][0]]
        tight, runs = ort["tight_loop"], ort["daemon"]
        tight8 = None
        if int8 is not None:
            print(f"[{name}] tight batched loop, INT8 set on ONNX Runtime ...", flush=True)
            tight8 = tight_loop(int8, frames, args.max_batch, args.seconds)
        print(f"[{name}] per-frame PyTorch eager loop ...", flush=True)
        eager = eager_loop(args.engines, frames, args.seconds)
        sustained = ort["daemon_best_goodput_fps"]
        half = next((r for r in runs if r["load_fraction"] == 0.5), runs[0])
        results["mixes"][name] = {
            "mix": mix,
            "tight_loop": tight,
            "tight_loop_int8": tight8,
            "eager_loop": eager,
            "daemon": runs,
            "daemon_best_goodput_fps": sustained,
            "ratio_daemon_vs_tight": sustained / tight["fps"],
            "ratio_daemon_vs_eager": sustained / eager["fps"] if eager else None,
            "p99_at_half_load_ms": half["latency_ms_p99"],
            "p99_bound_ms": args.max_delay_ms + 2 * tight["batch_ms_mean"],
            "backends": backends,
        }
    if int8 is not None:
        print("[stages] ms per frame at batch 8, float32 and INT8 ...", flush=True)
        results["int8"] = {
            "engines": _shown(int8),
            "stage_ms_per_frame": stage_times(args.engines, int8, data),
        }
    rate = 0.5 * results["mixes"]["line (clean 70%)"]["tight_loop"]["fps"]
    print(f"[bridge] Modbus bridge at {rate:.0f} frames/s ...", flush=True)
    results["bridge"] = bridge_run(args.engines, line_frames, rate, args.seconds)
    results["archive"] = archive_run(args.engines, line_frames, 2 * rate, args.seconds, sets)
    results["archive"]["tight_loop_fps"] = 2 * rate
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    print(f"\nwritten {args.out}")
    return 0


def replace_block(doc: Path, begin: str, end: str, body: str) -> None:
    """Rewrite the generated block between the ``begin`` and ``end`` markers of ``doc`` with ``body``."""
    text = doc.read_text()
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{body}{end}{tail}")


def _shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it: results carry no machine's folders."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def stage_times(fp32: Path, int8: Path, data: Path | None) -> dict[str, dict[str, float]]:
    """Each stage's ONNX Runtime ms per frame at batch 8 (median of 20), both sets measured alternately."""
    from engines.evaluate import stage_latency

    frames = np.stack(frames_for(MIXES["line (clean 70%)"], 8, data))
    pipes = {"float32": Pipeline.from_manifest(fp32), "int8": Pipeline.from_manifest(int8)}
    rounds: dict[str, list[dict[str, float]]] = {k: [] for k in pipes}
    for _ in range(3):
        for k, p in pipes.items():
            rounds[k].append(stage_latency(p, frames, repeats=20))
    for p in pipes.values():
        p.close()
    return {k: {st: float(np.median([r[st] for r in rs])) for st in rs[0]} for k, rs in rounds.items()}


def render(r: dict[str, Any]) -> str:
    from engines.readme import bench_block

    return (
        f"\nLine Inspector benchmark - {r['model_version']} on {r['machine']['cpus']} CPUs, "
        f"max_batch {r['max_batch']}, max_delay_ms {r['max_delay_ms']:g}\n\n" + bench_block(r)
    )


if __name__ == "__main__":
    sys.exit(main())
