"""``inspector triton-server``: a real Triton Inference Server from the ``nvidia-pytriton`` wheel, on any host.

The wheel ships NVIDIA's ``tritonserver`` binary with its ``python`` backend (no ONNX Runtime, OpenVINO or
TensorRT backends: those come with NVIDIA's server images, docs/scale-out.md). It runs in a venv of its
own (``make triton``: the wheel, ``numpy<2`` - with numpy 2 the python backend answers empty outputs
without an error - ONNX Runtime, and this project without its dependencies, for ``model.py``).

What it takes to start it bare, found by running it: the python backend's stub must sit in the backend
folder (the wheel keeps one per Python version elsewhere), so a backend folder is staged under
``work``; ``LD_LIBRARY_PATH`` must start with that venv's interpreter's ``LIBDIR`` (else the stub loads
the system libpython) and hold the wheel's ``nvidia_pytriton.libs``; that venv's ``bin`` must be first on
``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any


class ServerError(RuntimeError):
    pass


def venv_facts(venv: Path) -> dict[str, str]:
    """site-packages, LIBDIR and the Python version of the server's venv."""
    py = venv / "bin" / "python"
    if not py.exists():
        raise ServerError(f"no Triton venv at {venv}: run `make triton` (or give --venv)")
    code = (
        "import json, site, sys, sysconfig; print(json.dumps({'site': site.getsitepackages()[0], "
        "'libdir': sysconfig.get_config_var('LIBDIR'), 'version': f'{sys.version_info[0]}.{sys.version_info[1]}'}))"
    )
    facts: dict[str, str] = json.loads(subprocess.check_output([str(py), "-c", code], text=True))
    if not (Path(facts["site"]) / "pytriton" / "tritonserver" / "bin" / "tritonserver").exists():
        raise ServerError(f"{venv} has no tritonserver (nvidia-pytriton): run `make triton`")
    return facts


def stage_backends(facts: dict[str, str], work: Path) -> Path:
    """A backend folder with the python backend and the stub for the venv's Python version."""
    ts = Path(facts["site"]) / "pytriton" / "tritonserver"
    dst = work / "backends" / "python"
    dst.mkdir(parents=True, exist_ok=True)
    for f in (ts / "backends" / "python").iterdir():
        if f.is_file():
            _copy_once(f, dst / f.name)
    stub = ts / "python_backend_stubs" / facts["version"] / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"the wheel has no python backend stub for Python {facts['version']}")
    _copy_once(stub, dst / stub.name)
    return dst.parent


def _copy_once(src: Path, dst: Path) -> None:
    """Copy unless ``dst`` is already that file (a stub of a killed server may still be running from it)."""
    if dst.exists() and dst.stat().st_size == src.stat().st_size:
        return
    shutil.copy2(src, dst)


def command(
    venv: Path,
    repo: Path,
    work: Path,
    http: int = 8000,
    grpc: int = 8001,
    metrics: int = 8002,
    verbose: int = 0,
    control: str = "none",
) -> tuple[list[str], dict[str, str]]:
    """The tritonserver command line and environment. ``control``: ``none`` (every model of the repository,
    fixed) or ``explicit`` (all loaded at start; load / unload requests accepted: rolling a set through)"""
    facts = venv_facts(venv)
    site = Path(facts["site"])
    backends = stage_backends(facts, work)
    env = dict(os.environ)
    libs = [facts["libdir"], str(site / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PATH"] = f"{venv.resolve() / 'bin'}:{env.get('PATH', '')}"
    cmd = [
        str(site / "pytriton" / "tritonserver" / "bin" / "tritonserver"),
        f"--model-repository={repo.resolve()}",
        f"--backend-directory={backends.resolve()}",
        f"--cache-directory={site / 'pytriton' / 'tritonserver' / 'caches'}",
        *(
            ["--model-control-mode=explicit", "--load-model=*"]
            if control == "explicit"
            else ["--model-control-mode=none"]
        ),
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        "--allow-gpu-metrics=false",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--log-verbose={verbose}",
    ]
    return cmd, env


class LocalServer:
    """A tritonserver process: ``start()``, ``wait_ready()``, ``kill()``, ``stop()``."""

    def __init__(
        self,
        venv: Path,
        repo: Path,
        work: Path,
        http: int,
        grpc: int,
        metrics: int,
        log: Path | None = None,
        control: str = "none",
    ) -> None:
        self.venv, self.repo, self.work, self.control = venv, repo, work, control
        self.ports = {"http": http, "grpc": grpc, "metrics": metrics}
        self.log_path = log or work / "tritonserver.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def start(self) -> LocalServer:
        cmd, env = command(self.venv, self.repo, self.work, **self.ports, control=self.control)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.ports['http']}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not self.ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"tritonserver exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > end:
                raise ServerError(f"tritonserver not ready in {timeout:g} s: {self.tail()}")
            time.sleep(0.1)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the server (its python stubs notice and exit by themselves within a few seconds)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def main(args: Any) -> int:
    """``inspector triton-server``: run the server in the foreground until SIGTERM / Ctrl-C."""
    cmd, env = command(
        args.venv,
        args.repo,
        args.work,
        args.http_port,
        args.grpc_port,
        args.metrics_port,
        control=args.model_control,
    )
    print(f"tritonserver: repository {args.repo}, gRPC :{args.grpc_port}, HTTP :{args.http_port}, "
          f"metrics :{args.metrics_port}", flush=True)  # fmt: skip
    os.execve(cmd[0], cmd, env)
    return 1  # not reached
