"""``inspector triton-repo`` and ``inspector triton-server`` (docs/scale-out.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from inspector.triton.repo import PLATFORMS


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "triton-repo",
        help="write a Triton model repository for an engine set (the plant's shared inference tier)",
        description="One model per stage, each config.pbtxt carrying the stage's inputs and outputs, "
        "max_batch_size, dynamic batching and the stage file's sha256, which a daemon with engines.backend = "
        "triton checks at connect. --platform python runs on the tritonserver of `make triton` (this project's "
        "own ONNX Runtime / OpenVINO backend inside model.py); onnxruntime, openvino and tensorrt are for "
        "NVIDIA's server images (docs/scale-out.md). Example: inspector triton-repo --engines engines/default "
        "--out /srv/triton/models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--engines", type=Path, default=Path("engines/default"), help="engine set (default: %(default)s)"
    )
    p.add_argument("--out", type=Path, required=True, help="the model repository folder to write")
    p.add_argument(
        "--platform", choices=PLATFORMS, default="python", help="Triton backend (default: %(default)s)"
    )
    p.add_argument(
        "--prefix", default="", help="model name prefix, e.g. 'photo-' (daemons: triton.model_prefix)"
    )
    p.add_argument(
        "--max-batch", type=int, default=8, help="max_batch_size of each model (default: %(default)s)"
    )
    p.add_argument(
        "--queue-delay-us",
        type=int,
        default=2000,
        help="dynamic batching: how long a request may wait for others to merge with (default: %(default)s)",
    )
    p.add_argument(
        "--instances", type=int, default=1, help="model instances per stage (default: %(default)s)"
    )
    p.add_argument(
        "--engine-backend",
        choices=["onnxruntime", "openvino"],
        default="onnxruntime",
        help="python platform: the project's backend inside model.py (default: %(default)s)",
    )
    p.add_argument("--precision", default="auto", help="python platform, openvino: f32, bf16, int8 or auto")
    p.add_argument(
        "--threads", type=int, default=1, help="python platform: threads per engine (default: %(default)s)"
    )
    p.add_argument("--check", action="store_true", help="only validate an existing --out against the set")

    p = sub.add_parser(
        "triton-server",
        help="run a real Triton Inference Server (nvidia-pytriton's tritonserver, python backend) on a repository",
        description="For CPU hosts and tests: the tritonserver binary of the nvidia-pytriton wheel in its own "
        "venv (`make triton` makes .venv-triton), staged as it needs (python backend stub, LD_LIBRARY_PATH, "
        "PATH). NVIDIA's server images run the other platforms (docs/scale-out.md).",
    )
    p.add_argument("--repo", type=Path, required=True, help="model repository (inspector triton-repo --out)")
    p.add_argument(
        "--venv", type=Path, default=Path(".venv-triton"), help="the server's venv (default: %(default)s)"
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path(".triton-work"),
        help="where the backend folder is staged (default: %(default)s)",
    )
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument(
        "--model-control",
        choices=("none", "explicit"),
        default="none",
        help="none: the repository's models, fixed; explicit: all loaded at start, and load / unload requests "
        "accepted (roll a new engine set through without a restart) (default: %(default)s)",
    )


def run(args: Any) -> int:
    from inspector.triton.repo import validate_repo, write_repo

    if args.cmd == "triton-server":
        from inspector.triton.server import main

        return main(args)
    if not args.check:
        names = write_repo(
            args.engines, args.out, args.platform, args.prefix, args.max_batch, args.queue_delay_us,
            args.instances, args.engine_backend, args.precision, args.threads,
        )  # fmt: skip
        print(f"wrote models {', '.join(names)} ({args.platform}) for {args.engines} into {args.out}")
    problems = validate_repo(args.out, args.engines, args.platform, args.prefix)
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems else 0
