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
   escape target; without them it keeps the float32 set's, its manifest says
   so, and the daemon refuses to serve it until it is calibrated (below).
3. **TensorRT plans** for each set where TensorRT and a GPU are present
   (``inspector.backends.trt_build``); skipped with the reason otherwise.

Nothing live is written in place. Each output - the INT8 set with its plans,
and the float32 set's ``tensorrt/`` plans folder - is made complete in a fresh
sibling folder (``<live>.tmp-<pid>``; the float32 set's files are hard-linked
there, never changed), verified, fsynced, and then put in place by one rename:
``renameat2(RENAME_EXCHANGE)`` swaps the new folder and the live one in a
single step (Linux 3.15+ on ext4, XFS, btrfs, tmpfs), and the previous one,
now at the temp name, is removed. Where the kernel or filesystem cannot
exchange, the live folder is renamed aside (``<live>.old-<pid>``) and the new
one renamed in: for that instant the path is absent, never half-written. A
reader opening the live path therefore sees the old set or the new one, whole
(and :meth:`inspector.pipeline.Pipeline.from_manifest` loads again a set that
was swapped while it read it). A rebuild that fails, or is stopped (SIGTERM),
leaves the live folders as they were and removes its temp folder; what a
killed one left is swept at the next run (a live path missing beside its
``.old-<pid>`` is put back).

The INT8 set's manifest says whether its thresholds are its own
(``calibration.int8.thresholds_calibrated``); one that kept the float32 set's
is refused for serving unless the configuration gives one explicit threshold
(``engines.threshold``): see :func:`inspector.manifest.check_own_thresholds`.

Reloading the daemon is the unit's ``ExecStartPost`` (``systemctl
try-reload-or-restart inspector``): SIGHUP, two-phase, READY "reloaded" only
after the inference worker swapped.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import glob
import os
import platform
import shutil
import signal
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from inspector.manifest import MANIFEST_NAME, Manifest, load_manifest, sha256_file, write_manifest

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
        # Until calibrated below, the thresholds are the float32 set's: not servable as they stand
        # (inspector.manifest.check_own_thresholds).
        "thresholds_calibrated": False,
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
    write_manifest(out, manifest)  # complete, marked uncalibrated; calibrated thresholds are added below
    if not has_labels:
        print(
            f"thresholds: the float32 set's ({fp32.data!r}, the labelled data, is not on this host): "
            "the daemon refuses this INT8 set until it is calibrated, unless engines.threshold is set",
            flush=True,
        )
        return manifest, None
    from calibration.operating_point import calibration_scores
    from calibration.threshold import calibrate
    from engines.profiles import get_profile
    from inspector.pipeline import Pipeline

    p8 = Pipeline.from_manifest(out, threshold=fp32.threshold)  # its scores only: not yet its thresholds
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
                    "thresholds_calibrated": True,
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


AT_FDCWD = -100
RENAME_EXCHANGE = 2


def staging_path(live: Path) -> Path:
    """The fresh sibling folder an output is made in before it replaces ``live``."""
    return live.with_name(f"{live.name}.tmp-{os.getpid()}")


def _aside_path(live: Path) -> Path:
    return live.with_name(f"{live.name}.old-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs; this one's own pid counts as gone (the sweep runs before it makes
    anything, so a folder with its pid was left by an earlier process that had the same pid)."""
    from inspector.daemon.ring import pid_alive

    return pid != os.getpid() and pid_alive(pid)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def sweep(live: Path) -> list[Path]:
    """Clear what a killed rebuild left beside ``live``: its ``.tmp-<pid>`` folders, and ``.old-<pid>`` ones
    (put back at ``live`` if it was killed between the two renames of a swap). Returns what it removed."""
    removed: list[Path] = []
    if not live.parent.is_dir():
        return removed
    for kind in ("old", "tmp"):  # an .old- folder first: it may be the live set to put back
        for path in sorted(live.parent.glob(f"{glob.escape(live.name)}.{kind}-*")):
            pid = path.name.rsplit("-", 1)[1]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
            if kind == "old" and not live.exists() and not live.is_symlink():
                os.rename(path, live)
                print(f"put back {live} (a rebuild was stopped while swapping it)", flush=True)
                continue
            _remove(path)
            removed.append(path)
    return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # a few filesystems do not fsync directories
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file and folder under ``root`` on disk, so a swap never publishes data still in the page cache."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    C library, the kernel or the filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc before 2.28, or another C library
        return False
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def publish(new: Path, live: Path) -> Path | None:
    """Put the complete folder ``new`` at ``live`` by renaming, never by writing into ``live``.

    ``new`` is fsynced first. With something at ``live`` the two are exchanged in one step where the
    system can (the previous one ends at ``new``), else ``live`` is renamed aside and ``new`` renamed in
    (and ``live`` put back if that fails). Returns where the previous one now is, for the caller to
    remove, or None when there was none.
    """
    fsync_tree(new)
    if not live.exists() and not live.is_symlink():
        os.rename(new, live)
        old = None
    elif exchange(new, live):
        old = new
    else:
        old = _aside_path(live)
        os.rename(live, old)
        try:
            os.rename(new, live)
        except BaseException:
            os.rename(old, live)
            raise
    _fsync_dir(live.parent)
    return old


def _check_replaceable(live: Path) -> None:
    """Refuse to swap out anything but an engine set (a typo in --int8-out must not remove a folder)."""
    if live.is_symlink() or not live.exists():
        return
    if not live.is_dir() or (any(live.iterdir()) and not (live / MANIFEST_NAME).is_file()):
        raise ValueError(f"{str(live)!r} exists and is not an engine set: refusing to replace it")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _keep_timing_cache(live_set: Path, stage_set: Path) -> None:
    """The live plans' TensorRT timing cache, copied into the new set so its plans build fast."""
    cache = live_set / "tensorrt" / "timing.cache"
    if cache.is_file():
        (stage_set / "tensorrt").mkdir(parents=True, exist_ok=True)
        shutil.copy2(cache, stage_set / "tensorrt" / "timing.cache")


def _plans(engine_set: Path, max_batch: int, label: Path) -> dict[str, Any] | str:
    """TensorRT plans into ``engine_set/tensorrt`` (a staged folder), or why the step is skipped."""
    from inspector.backends.tensorrt import TensorRTUnavailable

    try:
        from inspector.backends.trt_build import build_set

        meta = build_set(engine_set, max_batch)
    except TensorRTUnavailable as exc:
        print(f"skipping the TensorRT step for {label}: {exc}", flush=True)
        return f"skipped: {exc}"
    print(
        f"TensorRT plans for {label}: TensorRT {meta['tensorrt']} on {meta['gpu']} "
        f"(sm {meta['compute_capability']})",
        flush=True,
    )
    return meta


def rebuild(
    engines: Path,
    int8_out: Path | None,
    calib_data: str,
    calib_frames: int,
    max_batch: int,
    command: str,
    progress: bool,
) -> dict[str, Any]:
    """The three steps, each output made in a temp folder and swapped in whole; returns what was done, per set."""
    for live in (engines, engines / "tensorrt", *(() if int8_out is None else (int8_out,))):
        for path in sweep(live):
            print(f"removed {path}, left by a rebuild that was stopped", flush=True)
    m = load_manifest(engines)
    print(f"ONNX engine set {engines} ({m.model_version}): every file matches its sha256", flush=True)
    done: dict[str, Any] = {"verified": str(engines), "int8": None, "plans": {}}
    if int8_out is not None:
        stage = staging_path(int8_out)
        try:
            if int8_out.resolve() == engines.resolve():
                raise ValueError("--int8-out names the float32 set itself: give the INT8 set its own folder")
            _check_replaceable(int8_out)
            int8_out.parent.mkdir(parents=True, exist_ok=True)
            stage.mkdir()
            _keep_timing_cache(int8_out, stage)
            m8, _ = int8_set(engines, stage, calib_data, calib_frames, command, progress)
            load_manifest(stage)  # verify what was written
            # Its plans are built in the staged set too, so the set and its plans go live together.
            plans = _plans(stage, max_batch, int8_out)
            publish(stage, int8_out)
        except (ValueError, RuntimeError) as exc:  # the plans can still be built: say why, go on, exit 1
            done["int8"] = f"failed: {exc}"
            print(f"INT8 set not made ({int8_out} left as it was): {exc}", file=sys.stderr, flush=True)
        else:
            print(f"INT8 engine set written to {int8_out} ({m8.model_version})", flush=True)
            done["int8"] = str(int8_out)
            done["plans"][str(int8_out)] = plans
        finally:
            _remove(stage)  # what failed, or the previous set the exchange left here
            aside = _aside_path(int8_out)
            if aside.exists() and (int8_out.exists() or int8_out.is_symlink()):
                _remove(aside)
    # The float32 set's plans: built on a staged twin of the set (its files hard-linked, unchanged) and
    # swapped in as a whole tensorrt/ folder.
    stage = staging_path(engines)
    try:
        stage.mkdir()
        for name in (MANIFEST_NAME, *(entry.file for entry in m.stages.values())):
            _link_or_copy(engines / name, stage / name)
        _keep_timing_cache(engines, stage)
        plans = _plans(stage, max_batch, engines)
        if isinstance(plans, dict):
            publish(stage / "tensorrt", engines / "tensorrt")
        done["plans"][str(engines)] = plans
    finally:
        _remove(stage)
        aside = _aside_path(engines / "tensorrt")
        if aside.exists() and (engines / "tensorrt").exists():
            _remove(aside)
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


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup: temp folders removed, live ones untouched


def run(a: argparse.Namespace) -> int:
    import shlex

    from inspector.manifest import ManifestError

    command = "inspector rebuild " + " ".join(shlex.quote(x) for x in sys.argv[2:])
    previous = signal.signal(signal.SIGTERM, _terminated)  # systemctl stop, or the unit's timeout
    try:
        done = rebuild(
            a.engines, a.int8_out, a.calib_data, a.calib_frames, a.max_batch, command,
            not a.quiet and sys.stderr.isatty(),
        )  # fmt: skip
    except (ManifestError, ValueError, RuntimeError, OSError) as exc:
        print(f"inspector rebuild: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 1 if str(done["int8"]).startswith("failed") else 0
