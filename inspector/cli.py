"""``inspector``: the daemon and its companions.

  inspector serve                 run the daemon (systemd runs this)
  inspector check-config          validate the configuration, print each error with its key path
  inspector camera                a simulated camera: synthetic impellers or a folder of images
  inspector listen                print verdicts as a PLC bridge sees them, or a live summary
  inspector demo                  daemon + camera + listener together, then a summary
  inspector record                save frames a camera sends (PNG), e.g. for INT8 calibration
  inspector keys NAME             generate a CURVE key pair for authenticated sockets
  inspector bridge modbus|opcua   PLC bridge: verdicts as Modbus registers / OPC UA nodes (docs/plc.md)
  inspector rebuild               verify an engine set, re-quantize INT8, build TensorRT plans (no torch)
  inspector archive ...           the reject archive: list, show (with --evidence), export, prune
  inspector ui                    the operator page: shift totals, rejects, archive, review marks (docs/operator-page.md)

Configuration comes from defaults < TOML (--config, else ./config/inspector.toml
if present) < environment (INSPECTOR_SECTION__KEY=value) < --set section.key=value.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from inspector.config import ConfigError, load_settings


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, default=None, help="TOML file (default: config/inspector.toml if present)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set batching.max_batch=16 (repeatable; highest precedence)",
    )


def _curve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--curve-server-key", type=Path, default=None, help="CURVE: the daemon's public key file (<name>.key)"
    )
    p.add_argument(
        "--curve-key",
        type=Path,
        default=None,
        help="CURVE: this client's secret key file (<name>.key_secret)",
    )


def _curve(args: argparse.Namespace) -> tuple[Path, Path] | None:
    if (args.curve_server_key is None) != (args.curve_key is None):
        raise SystemExit("give both --curve-server-key and --curve-key, or neither")
    return None if args.curve_key is None else (args.curve_server_key, args.curve_key)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inspector", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the inspection daemon in the foreground")
    _config_args(p)
    p.add_argument(
        "--backend",
        choices=("onnxruntime", "openvino", "tensorrt"),
        default=None,
        help="engine backend, as --set engines.backend=... (default: the configuration's; docs/backends.md)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "f32", "bf16", "int8"),
        default=None,
        help="openvino backend's precision, as --set engines.precision=... (int8: engines.path must be an "
        "INT8 set)",
    )

    p = sub.add_parser("check-config", help="validate the configuration; exit 1 listing every bad key")
    _config_args(p)
    p.add_argument("--show", action="store_true", help="print the effective configuration as JSON")

    p = sub.add_parser("camera", help="simulated camera over the real protocol")
    p.add_argument(
        "--endpoint",
        default="tcp://127.0.0.1:5555",
        help="the daemon's ingest endpoint (default: %(default)s)",
    )
    p.add_argument("--camera-id", default="cam0")
    p.add_argument("--count", type=int, default=1000, help="frames to send (default: %(default)s)")
    p.add_argument(
        "--rate",
        type=float,
        default=50.0,
        help="frames per second; 0 = as fast as possible (default: %(default)s)",
    )
    p.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="send the images under this folder (e.g. the casting set's test/), shuffled, labelled by class "
        "folder, instead of synthetic frames",
    )
    p.add_argument(
        "--defect-rate",
        type=float,
        default=0.2,
        help="synthetic: share of defective parts (default: %(default)s)",
    )
    p.add_argument(
        "--noise-mix",
        default="clean=0.7,gaussian=0.1,salt_pepper=0.1,periodic=0.1",
        help="synthetic: noise types and weights (default: %(default)s)",
    )
    p.add_argument(
        "--encoding",
        choices=("raw", "png", "jpeg"),
        default=None,
        help="payload encoding (default: jpeg for --folder - a JPEG file goes out as its own bytes - else raw)",
    )
    p.add_argument("--seed", type=int, default=2024)

    _curve_args(p)

    p = sub.add_parser("listen", help="subscribe to verdicts and print them")
    _curve_args(p)
    p.add_argument(
        "--endpoint",
        default="tcp://127.0.0.1:5556",
        help="the daemon's publish endpoint (default: %(default)s)",
    )
    p.add_argument(
        "--summary", action="store_true", help="a live one-line summary per second instead of every verdict"
    )
    p.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (default: until Ctrl-C)"
    )

    p = sub.add_parser("record", help="save the frames a camera sends as PNG files")
    p.add_argument(
        "--endpoint",
        default="tcp://127.0.0.1:5557",
        help="where to receive frames (bound PULL; default: %(default)s)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder to write <camera_id>/<frame_id>.png into")
    p.add_argument("--count", type=int, default=500, help="frames to save (default: %(default)s)")
    p.add_argument(
        "--timeout", type=float, default=0.0, help="give up after this many seconds (default: never)"
    )

    p = sub.add_parser(
        "bridge",
        help="PLC bridge: the daemon's verdicts as Modbus TCP registers or an OPC UA server (docs/plc.md)",
        description="A PLC bridge subscribes to the daemon's verdicts and heartbeats and presents them to a "
        "PLC, with a fail-safe state (reject every part) when heartbeats stop, the daemon is not ready or "
        "verdicts were lost. The register map and address space are in docs/plc.md.",
    )
    bsub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, listen, what in (
        ("modbus", "127.0.0.1:5020", "Modbus TCP server a PLC polls (HOST:PORT; 502 is the standard port)"),
        ("opcua", "opc.tcp://127.0.0.1:4840/line-inspector/", "OPC UA server endpoint"),
    ):
        b = bsub.add_parser(kind, help=what)
        b.add_argument(
            "--daemon",
            default="tcp://127.0.0.1:5556",
            help="the daemon's publish endpoint (default: %(default)s)",
        )
        b.add_argument("--listen", default=listen, help=f"{what} (default: %(default)s)")
        b.add_argument(
            "--camera",
            action="append",
            default=[],
            help="camera id, in the order the PLC numbers cameras (repeat; default: in order of first verdict)",
        )
        b.add_argument(
            "--max-cameras",
            type=int,
            default=4,
            help="cameras mapped without --camera (default: %(default)s)",
        )
        b.add_argument(
            "--fifo-depth",
            type=_depth,
            default=64,
            help="rejects kept per camera for the PLC: a power of two, 1-64 (default: %(default)s)",
        )
        b.add_argument(
            "--ring-depth",
            type=_depth,
            default=64,
            help="verdicts (PASS and reject) kept per camera in its verdict ring, the PLC's positive answer "
            "per part: a power of two, 1-64 (default: %(default)s)",
        )
        b.add_argument(
            "--heartbeat-misses",
            type=int,
            default=3,
            help="fail safe after this many heartbeat intervals without one (default: %(default)s)",
        )
        b.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        _curve_args(b)
        if kind == "modbus":
            b.add_argument(
                "--allow-from",
                action="append",
                type=_network,
                default=[],
                metavar="ADDRESS[/BITS]",
                help="accept Modbus connections only from these addresses or networks (repeat; default: any): "
                "the PLC, so no other host can read the map or acknowledge (write tail) its rejects",
            )
            b.add_argument(
                "--gate-plc",
                default=None,
                metavar="HOST:PORT",
                help="also drive the diverter: write a coil on this PLC (Modbus client; on = divert), held on "
                "in fail-safe (default: off; the PLC reads the verdict ring instead)",
            )
            b.add_argument(
                "--gate-mode",
                choices=["permit", "reject"],
                default="permit",
                help="permit: the coil rests on and drops off for pulse-ms on every PASS (fail-closed: a part "
                "with no verdict is diverted); reject: the coil rests off and pulses on for every reject - a "
                "frame that never reached the daemon then passes, so use it only beside the verdict ring "
                "(default: %(default)s)",
            )
            b.add_argument(
                "--gate-coil", type=int, default=0, help="coil address for --gate-plc (default: %(default)s)"
            )
            b.add_argument(
                "--gate-pulse-ms",
                type=float,
                default=200,
                help="coil pulse per PASS (permit) or per reject (reject) (default: %(default)s)",
            )
        if kind == "opcua":
            b.add_argument(
                "--cert", type=Path, default=None, help="server certificate (DER or PEM): Basic256Sha256"
            )
            b.add_argument("--key", type=Path, default=None, help="the certificate's private key (PEM)")
    p = sub.add_parser(
        "keys",
        help="generate a CURVE key pair (the daemon's, a camera's or a bridge's)",
        description="Writes <name>.key (public: copy it to the other side; a client's goes into the daemon's "
        "security.clients folder) and <name>.key_secret (keep it, mode 0600). See docs/operations.md.",
    )
    p.add_argument("name", help="e.g. daemon, cam1, bridge-modbus")
    p.add_argument(
        "--out", type=Path, default=Path("."), help="folder to write them into (default: %(default)s)"
    )

    from inspector.archive.cli import add_parser as archive_parser
    from inspector.rebuild import add_parser as rebuild_parser
    from inspector.triton.cli import add_parsers as triton_parsers
    from inspector.ui.server import add_parser as ui_parser

    archive_parser(sub, _config_args)
    ui_parser(sub, _config_args)
    rebuild_parser(sub)
    triton_parsers(sub)

    p = sub.add_parser("demo", help="run the daemon with a simulated camera and a listener, then summarise")
    p.add_argument(
        "--engines", type=Path, default=Path("engines/default"), help="engine set (default: %(default)s)"
    )
    p.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="stream the photographs under this folder (e.g. ../shared/data/casting/test) as JPEG, scored "
        "against their class folders; default: generated impellers",
    )
    p.add_argument(
        "--count",
        type=int,
        default=None,
        help="frames to send (default: every photograph of --folder, else 500)",
    )
    p.add_argument("--rate", type=float, default=20.0, help="frames per second (default: %(default)s)")
    p.add_argument(
        "--defect-rate", type=float, default=0.3, help="generated frames: share of defective parts"
    )
    p.add_argument(
        "--noise-mix",
        default="clean=0.55,gaussian=0.15,salt_pepper=0.15,periodic=0.15",
        help="generated frames: noise types and weights (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--page-port",
        type=int,
        default=8090,
        help="operator page port, 0 picks a free one (default: %(default)s)",
    )
    p.add_argument("--no-page", action="store_true", help="do not start the operator page")
    p.add_argument(
        "--hold", action="store_true", help="after the stream, keep the daemon and the page up until Ctrl-C"
    )
    return parser


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        s = load_settings(args.config, args.overrides)
    except ConfigError as exc:
        for e in exc.errors:
            print(f"error: {e}", file=sys.stderr)
        return 1
    from inspector.manifest import ManifestError, load_manifest

    try:
        m = load_manifest(s.engines.path)
        if s.engines.threshold is not None:
            thr = f"threshold {s.engines.threshold:.5f} (engines.threshold overrides the set's)"
        elif m.thresholds:
            thr = "thresholds " + ", ".join(f"{k} {v:.5f}" for k, v in m.thresholds.items())
        else:
            thr = f"threshold {m.threshold:.5f}"
        print(f"engines: {s.engines.path} ({m.model_version}, {thr})")
    except ManifestError as exc:
        print(f"error: engines.path: {exc}", file=sys.stderr)
        return 1
    if args.show:
        print(json.dumps(s.model_dump(mode="json"), indent=2))
    print("configuration OK")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # As overrides ahead of --set (which keeps the last word), so a reload (SIGHUP) keeps them too.
    flags = [f"engines.{k}={v}" for k in ("backend", "precision") if (v := getattr(args, k, None))]
    args.overrides = flags + list(args.overrides)
    try:
        s = load_settings(args.config, args.overrides)
    except ConfigError as exc:
        print(f"inspector: {exc}", file=sys.stderr)
        return 2
    from inspector.daemon.supervisor import serve

    return serve(s, args.config, args.overrides)


def cmd_camera(args: argparse.Namespace) -> int:
    from inspector import noise as nz
    from inspector.tools.camera import folder_shots, run_camera, synthetic_shots

    shots = (
        folder_shots(args.folder, args.seed)
        if args.folder
        else synthetic_shots(args.seed, args.defect_rate, nz.parse_mix(args.noise_mix))
    )
    encoding = args.encoding or ("jpeg" if args.folder else "raw")
    r = run_camera(
        args.endpoint,
        shots,
        args.count,
        args.rate,
        args.camera_id,
        encoding,
        keep_truth=False,
        curve=_curve(args),
    )
    print(
        f"sent {r.sent} frames in {r.seconds:.1f} s ({r.sent / max(r.seconds, 1e-9):.1f} frames/s) to {args.endpoint}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from inspector import noise as nz
    from inspector.manifest import ManifestError, load_manifest
    from inspector.tools.camera import folder_shots, run_camera, synthetic_shots
    from inspector.tools.folder import IMAGE_SUFFIXES
    from inspector.tools.listen import Listener

    try:
        manifest = load_manifest(args.engines)
        mix = nz.parse_mix(args.noise_mix)
        if args.folder is not None and not args.folder.is_dir():
            raise ValueError(f"no folder {str(args.folder)!r} to stream photographs from")
    except (ManifestError, ValueError) as exc:
        print(f"inspector demo: {exc}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="inspector-demo-"))
    ingest, publish = f"ipc://{tmp}/frames.sock", f"ipc://{tmp}/verdicts.sock"
    log_path = tmp / "daemon.log"
    cmd = [
        sys.executable, "-m", "inspector", "serve",
        "--set", f"engines.path={args.engines}",
        "--set", f"ingest.endpoint={ingest}",
        "--set", f"publish.endpoint={publish}",
        "--set", "metrics.port=0",
        "--set", "publish.heartbeat_interval_s=0.25",
        "--set", f"archive.dir={tmp / 'archive'}",
        "--set", "archive.min_free_mb=200",
    ]  # fmt: skip
    print(f"starting the daemon on {args.engines} ({manifest.model_version}); log: {log_path}", flush=True)
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    listener = Listener(publish).start()
    ui = None
    try:
        if not args.no_page:
            ui = subprocess.Popen(
                [sys.executable, "-m", "inspector", "ui", "--port", str(args.page_port),
                 "--archive", str(tmp / "archive"), "--publish", publish, "--engines", str(args.engines)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            line = ui.stdout.readline().strip() if ui.stdout else ""
            print(f"{line or 'operator page did not start'} (live while the demo runs)", flush=True)
        t0 = time.monotonic()
        while not any(h.get("ready") for h in listener.heartbeats):
            if daemon.poll() is not None:
                print(
                    f"inspector demo: the daemon exited with {daemon.returncode}; see {log_path}",
                    file=sys.stderr,
                )
                print(log_path.read_text()[-2000:], file=sys.stderr)
                return 1
            if time.monotonic() - t0 > 180:
                print("inspector demo: daemon not ready after 180 s", file=sys.stderr)
                return 1
            time.sleep(0.05)
        if args.folder is not None:
            files = [p for p in args.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
            count = args.count if args.count is not None else len(files)
            what = f"photographs of {args.folder} as JPEG, shuffled, labelled by their class folders"
            shots = folder_shots(args.folder, args.seed)
            encoding = "jpeg"
        else:
            count = args.count if args.count is not None else 500
            what = f"generated impellers, defect rate {args.defect_rate}, noise mix {args.noise_mix}"
            shots = synthetic_shots(args.seed, args.defect_rate, mix)
            encoding = "raw"
        print(
            f"daemon ready in {time.monotonic() - t0:.1f} s; camera sends {count} frames at {args.rate:g}/s ({what})",
            flush=True,
        )
        report = run_camera(ingest, shots, count, args.rate, "demo-cam", encoding)
        listener.wait_for(report.sent, timeout=60)
        time.sleep(0.3)
        if args.hold and ui is not None:
            print("holding: the daemon and the page stay up; Ctrl-C to stop and summarise", flush=True)
            try:
                while daemon.poll() is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = daemon.wait()
        listener.close()
        if ui is not None:
            ui.terminate()
            ui.wait(10)
    print(render_demo_summary(report, listener.verdicts, listener.gaps, code))
    print(
        f"reject archive (every non-PASS frame, 1% of PASS): {tmp / 'archive'}\n"
        f"  inspector archive list --dir {tmp / 'archive'} --verdict FAIL\n"
        f"  inspector ui --archive {tmp / 'archive'}   (the page again: shift totals come from the daemon's counters)"
    )
    return 0 if code == 0 else 1


def render_demo_summary(report: Any, verdicts: list[dict[str, Any]], gaps: int, exit_code: int) -> str:
    from collections import Counter

    import numpy as np

    by_id: dict[object, list[dict[str, Any]]] = {}
    for v in verdicts:
        by_id.setdefault(v["frame_id"], []).append(v)
    missing = [f for f in report.truth if f not in by_id]
    dupes = [f for f, vs in by_id.items() if len(vs) > 1]
    kinds = Counter(v["verdict"] for v in verdicts)
    inspected = [
        (report.truth[f], vs[0])
        for f, vs in by_id.items()
        if f in report.truth and vs[0]["verdict"] in ("PASS", "FAIL")
    ]
    correct = sum((v["verdict"] == "FAIL") == shot.defective for shot, v in inspected)
    escapes = sum(shot.defective and v["verdict"] == "PASS" for shot, v in inspected)
    false_rej = sum((not shot.defective) and v["verdict"] == "FAIL" for shot, v in inspected)
    n_def = sum(shot.defective for shot, _ in inspected)
    noise_ok = sum(v["noise_type"] == shot.noise for shot, v in inspected)
    lat = np.array([v["latency_ms"]["total"] for v in verdicts])
    span = (
        (max(v["published_ns"] for v in verdicts) - min(v["published_ns"] for v in verdicts)) / 1e9
        if len(verdicts) > 1
        else 0
    )
    n = max(len(inspected), 1)
    lines = [
        "",
        "Line Inspector demo summary",
        "---------------------------",
        f"frames sent              {report.sent} in {report.seconds:.1f} s",
        f"verdicts received        {len(verdicts)}  (missing {len(missing)}, duplicated {len(dupes)}, seq gaps {gaps})",
        "verdicts by kind         "
        + ", ".join(f"{k} {kinds.get(k, 0)}" for k in ("PASS", "FAIL", "ERROR", "TIMEOUT", "DROPPED")),
        f"defect accuracy          {correct / n * 100:.2f}% of {len(inspected)} inspected frames (ground truth: simulator or class folder)",
        f"escapes / false rejects  {escapes} of {n_def} defective passed, {false_rej} of {len(inspected) - n_def} good rejected",
        f"noise type accuracy      {noise_ok / n * 100:.2f}%"
        + (
            "  (photographs as taken: 'clean' is right)"
            if all(s.noise == "clean" for s, _ in inspected)
            else ""
        ),
        f"throughput               {len(verdicts) / span:.1f} verdicts/s"
        if span
        else "throughput               n/a",
        f"latency (receipt->out)   p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms"
        if len(lat)
        else "latency n/a",
        f"daemon exit code         {exit_code} (SIGTERM, drained)",
    ]
    return "\n".join(lines)


def _depth(text: str) -> int:
    """argparse type for --fifo-depth / --ring-depth: a clear usage error, not a traceback."""
    from inspector.bridges.core import check_depth

    try:
        return check_depth(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _network(text: str) -> str:
    """argparse type for --allow-from: an address or CIDR network, checked now (a usage error, not a traceback)."""
    from inspector.bridges.modbus import allow_list

    try:
        allow_list([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def cmd_bridge(args: argparse.Namespace) -> int:
    from inspector import logs
    from inspector.bridges.run import run_until_signal

    log = logs.configure(args.log_level, True, role=f"bridge.{args.kind}")
    curve = _curve(args)

    def zmq_options(sock: Any) -> None:
        if curve is not None:
            from inspector.daemon.security import client

            client(sock, *curve)

    if args.kind == "modbus":
        from inspector.bridges.modbus import serve

        host, _, port = args.listen.rpartition(":")
        return run_until_signal(
            lambda stop: serve(
                args.daemon,
                host or "127.0.0.1",
                int(port),
                args.camera,
                args.max_cameras,
                args.fifo_depth,
                args.heartbeat_misses,
                log,
                zmq_options=zmq_options,
                stop=stop,
                gate=(args.gate_plc, args.gate_coil, args.gate_pulse_ms, args.gate_mode)
                if args.gate_plc
                else None,
                ring_depth=args.ring_depth,
                allow_from=args.allow_from,
            )
        )
    from inspector.bridges.opcua import serve as serve_opcua

    return run_until_signal(
        lambda stop: serve_opcua(
            args.daemon,
            args.listen,
            args.camera,
            args.max_cameras,
            args.heartbeat_misses,
            log,
            cert=args.cert,
            key=args.key,
            zmq_options=zmq_options,
            stop=stop,
            fifo_depth=args.fifo_depth,
            ring_depth=args.ring_depth,
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "serve":
        return cmd_serve(args)
    if args.cmd == "check-config":
        return cmd_check_config(args)
    if args.cmd == "camera":
        return cmd_camera(args)
    if args.cmd == "listen":
        from inspector.tools.listen import listen_forever

        return listen_forever(args.endpoint, args.summary, duration=args.duration, curve=_curve(args))
    if args.cmd == "demo":
        return cmd_demo(args)
    if args.cmd == "bridge":
        return cmd_bridge(args)
    if args.cmd == "archive":
        from inspector.archive.cli import run

        return run(args)
    if args.cmd == "rebuild":
        from inspector.rebuild import run as run_rebuild

        return run_rebuild(args)
    if args.cmd in ("triton-repo", "triton-server"):
        from inspector.triton.cli import run as run_triton

        return run_triton(args)
    if args.cmd == "ui":
        from inspector.ui.server import run as run_ui

        return run_ui(args)
    if args.cmd == "keys":
        from inspector.daemon.security import generate

        public, secret = generate(args.out, args.name)
        print(f"public key {public} (give it out), secret key {secret} (keep it)")
        return 0
    if args.cmd == "record":
        from inspector.tools.record import record

        r = record(args.endpoint, args.out, args.count, args.timeout)
        print(f"saved {r['saved']} frames to {r['out']}; skipped bad messages: {r['errors'] or 'none'}")
        return 0 if r["saved"] else 1
    return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
