"""``inspector rebuild``: what an engine set needs on this machine, without torch.

Run by the systemd rebuild unit on the line host (``make install-runtime
EXTRAS=rebuild`` or ``gpu,rebuild``); training stays in ``inspector-build``.

1. **Verify** the ONNX set: every file against its manifest's sha256.
2. **INT8** (``--int8-out``): each stage's ONNX quantized to Q/DQ by ONNX
   Runtime's ``quantize_static`` (needs the ``onnx`` package, no torch),
   calibrated on the set's calibration split (``--calib-data auto``: the data
   named in its manifest, when this host has it) or on a folder of frames
   recorded from the line (``inspector record``). With labelled calibration
   frames (the set's data) the INT8 set gets its own thresholds for the same
   escape target; with unlabelled frames it keeps the float32 set's and its
   manifest says so.
3. **TensorRT plans** for each set where TensorRT and a GPU are present
   (``inspector.backends.trt_build``); skipped with the reason otherwise.

Reloading the daemon is the unit's ``ExecStartPost`` (``systemctl
try-reload-or-restart inspector``): SIGHUP, two-phase, READY "reloaded" only
after the inference worker swapped.
"""

from __future__ import annotations

import argparse
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from inspector.manifest import Manifest, load_manifest, sha256_file, write_manifest

RUNTIME_PACKAGES = ("onnx", "onnxruntime", "numpy", "opencv-python-headless", "line-inspector")


def versions(packages: tuple[str, ...] = RUNTIME_PACKAGES) -> dict[str, str]:
    """Python and the installed version of each package (recorded in a manifest)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def labelled(source: str) -> bool:
    """Whether ``source`` is a build data set (labelled calibration split), not a folder of line frames."""
    return source == "synthetic" or ((Path(source) / "train").is_dir() and (Path(source) / "test").is_dir())


def int8_set(
    src: Path,
    out: Path,
    calib_data: str,
    calib_frames: int,
    command: str,
    progress: bool,
    extra_versions: dict[str, str] | None = None,
) -> tuple[Manifest, dict[str, Any] | None]:
    """Quantize the set at ``src`` into ``out`` (on ``calib_data``'s frames) and set its thresholds on the
    set's own labelled calibration split when this host has its data; returns the manifest and, when it
    calibrated, ``{"cal", "labels", "scores", "kinds"}``."""
    try:
        from calibration.int8 import calibration_set, count_qdq, quantize_model
    except ImportError as exc:  # onnxruntime.quantization needs the onnx package
        raise RuntimeError(
            f"INT8 quantization needs the 'onnx' package ({exc}): install the runtime with EXTRAS=rebuild"
        ) from exc
    fp32 = load_manifest(src)
    source = fp32.data if calib_data == "auto" else calib_data
    if calib_data == "auto" and not labelled(source):
        raise ValueError(
            f"the set was built from {source!r}, which this host does not have: give --calib-data, a folder of "
            "frames recorded from the line (inspector record)"
        )
    frames = calibration_set(source, calib_frames, fp32.seed)
    out.mkdir(parents=True, exist_ok=True)
    stages = {}
    for name, entry in fp32.stages.items():
        path = quantize_model(src / entry.file, out / entry.file, frames)
        stages[name] = entry.model_copy(
            update={"sha256": sha256_file(path), "training": {**entry.training, "int8_qdq": count_qdq(path)}}
        )
        print(f"quantized {name}: {count_qdq(path)}", flush=True)
    int8: dict[str, Any] = {
        "frames": len(frames),
        "source": source,
        "method": "minmax, symmetric, per-channel weights",
    }
    has_labels = labelled(fp32.data)
    if not has_labels:
        int8["thresholds_from"] = (
            f"the float32 set ({fp32.data!r} was not on the rebuilding host): "
            "recalibrate with inspector-build calibrate where labelled frames exist"
        )
    manifest = fp32.model_copy(
        update={
            "model_version": fp32.model_version + "-int8",
            "precision": "int8-qdq",
            "command": fp32.command + " && " + command,
            "stages": stages,
            "checkpoints": {},
            "versions": extra_versions or versions(),
            "calibration": {**fp32.calibration, "int8": int8},
        }
    )
    write_manifest(out, manifest)  # complete as it stands; calibrated thresholds are added below
    if not has_labels:
        print(
            f"thresholds: the float32 set's ({fp32.data!r}, the labelled data, is not on this host)",
            flush=True,
        )
        return manifest, None
    from calibration.operating_point import calibration_scores
    from calibration.threshold import calibrate
    from engines.profiles import get_profile
    from inspector.pipeline import Pipeline

    p8 = Pipeline.from_manifest(out)
    try:
        # Its own operating point: INT8 scores shift a little, and the float32 threshold sits where the
        # score distribution is dense, so the INT8 set is calibrated like the float32 one, on the same split.
        count = get_profile(fp32.profile).calib_frames
        labels, scores, kinds = calibration_scores(p8, fp32.data, count, fp32.seed, progress)
    finally:
        p8.close()
    cal = calibrate(labels, scores, fp32.escape_target, groups=kinds)
    manifest = manifest.model_copy(
        update={
            "threshold": cal["threshold"],
            "thresholds": cal["thresholds"],
            "calibration": {
                **manifest.calibration,
                "int8": {
                    **manifest.calibration["int8"],
                    "threshold": cal["threshold"],
                    "thresholds": cal["thresholds"],
                },
                "metrics": cal["calibration_metrics"],
            },
        }
    )
    write_manifest(out, manifest)
    print(
        f"INT8 threshold {cal['threshold']:.5f} (float32 {fp32.threshold:.5f}) for escape target {fp32.escape_target}",
        flush=True,
    )
    return manifest, {"cal": cal, "labels": labels, "scores": scores, "kinds": kinds}


def rebuild(
    engines: Path,
    int8_out: Path | None,
    calib_data: str,
    calib_frames: int,
    max_batch: int,
    command: str,
    progress: bool,
) -> dict[str, Any]:
    """The three steps; returns what was done, per set."""
    from inspector.backends.tensorrt import TensorRTUnavailable

    m = load_manifest(engines)
    print(f"ONNX engine set {engines} ({m.model_version}): every file matches its sha256", flush=True)
    done: dict[str, Any] = {"verified": str(engines), "int8": None, "plans": {}}
    sets = [engines]
    if int8_out is not None:
        try:
            m8, _ = int8_set(engines, int8_out, calib_data, calib_frames, command, progress)
        except (ValueError, RuntimeError) as exc:  # the plans can still be built: say why, go on, exit 1
            done["int8"] = f"failed: {exc}"
            print(f"INT8 set not made: {exc}", file=sys.stderr, flush=True)
        else:
            load_manifest(int8_out)  # verify what was written
            print(f"INT8 engine set written to {int8_out} ({m8.model_version})", flush=True)
            done["int8"] = str(int8_out)
            sets.append(int8_out)
    for engine_set in sets:
        try:
            from inspector.backends.trt_build import build_set

            meta = build_set(engine_set, max_batch)
            done["plans"][str(engine_set)] = meta
            print(
                f"TensorRT plans for {engine_set}: TensorRT {meta['tensorrt']} on {meta['gpu']} "
                f"(sm {meta['compute_capability']})",
                flush=True,
            )
        except TensorRTUnavailable as exc:
            done["plans"][str(engine_set)] = f"skipped: {exc}"
            print(f"skipping the TensorRT step for {engine_set}: {exc}", flush=True)
    return done


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "rebuild",
        help="verify an engine set, re-quantize its INT8 twin and build TensorRT plans on this machine (no torch)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--engines",
        type=Path,
        default=Path("engines/default"),
        help="float32 engine set (default: %(default)s)",
    )
    p.add_argument("--int8-out", type=Path, default=None, help="also (re)make the INT8 set here")
    p.add_argument(
        "--calib-data",
        default="auto",
        help="INT8 calibration frames: 'auto' (the set's own data, if this host has it) or a folder of images "
        "recorded from the line (default: %(default)s)",
    )
    p.add_argument(
        "--calib-frames", type=int, default=256, help="frames to calibrate INT8 on (default: %(default)s)"
    )
    p.add_argument(
        "--max-batch", type=int, default=8, help="largest batch the daemon flushes (default: %(default)s)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(a: argparse.Namespace) -> int:
    import shlex

    from inspector.manifest import ManifestError

    command = "inspector rebuild " + " ".join(shlex.quote(x) for x in sys.argv[2:])
    try:
        done = rebuild(
            a.engines, a.int8_out, a.calib_data, a.calib_frames, a.max_batch, command,
            not a.quiet and sys.stderr.isatty(),
        )  # fmt: skip
    except (ManifestError, ValueError, RuntimeError) as exc:
        print(f"inspector rebuild: {exc}", file=sys.stderr)
        return 2
    return 1 if str(done["int8"]).startswith("failed") else 0
