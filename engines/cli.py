"""``inspector-build`` (or ``python -m engines``): train, export, calibrate and evaluate engine sets.

Typical use::

    inspector-build all --out engines/default            # what `make engines` runs
    inspector-build train --stage defect --data /data/casting_data --out build/myline
    inspector-build package --checkpoints build/default --out engines/default
    inspector-build evaluate --engines engines/default
    inspector-build calibrate --engines engines/default --escape-rate 0.01   # another operating point
    inspector-build train --stage defect --arch resnet50 --checkpoints build/resnet50
    inspector-build compare --data ../shared/data/casting --out docs/comparison   # the comparison (~1 h)

Checkpoints go to ``--checkpoints`` (default ``build/<profile>``); an engine set
(ONNX files, manifest.json, report.json, report.md, figures/) goes to ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from engines.architectures import ARCHS
from engines.profiles import PROFILES, get_profile

STAGES = ("noise", "denoise", "defect")
log = logging.getLogger("engines")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        default="default",
        choices=sorted(PROFILES),
        help="model sizes and training schedule (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic' (the seeded impeller generator) or a folder <root>/<split>/<class>/*.png|jpg",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="master seed: data splits, initialisation, sampling (default: %(default)s)",
    )
    p.add_argument(
        "--checkpoints", type=Path, default=None, help="checkpoint folder (default: build/<profile>)"
    )
    p.add_argument(
        "--train-frames", type=int, default=None, help="override the profile's number of training frames"
    )
    p.add_argument(
        "--test-frames", type=int, default=None, help="override the profile's number of test frames"
    )
    p.add_argument(
        "--arch",
        choices=ARCHS,
        default=None,
        help="defect classifier architecture (default: the profile's, vgg16); every one exports and serves",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _package_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", type=Path, required=True, help="engine set folder to write (e.g. engines/default)"
    )
    _escape_rate(p)


def _escape_rate(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--escape-rate",
        type=float,
        default=0.005,
        help="target share of defective parts passed, per noise type (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inspector-build",
        description="Line Inspector build step: train the three stages, export ONNX engines, calibrate the "
        "decision threshold and evaluate, from synthetic impeller frames or your own folder of images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Typical use::", 1)[1] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one stage or all three into the checkpoint folder")
    _common(p)
    p.add_argument(
        "--stage", choices=(*STAGES, "all"), default="all", help="which stage to train (default: all)"
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="defect stage: start from this checkpoint and run only the training phases it has not been through",
    )

    p = sub.add_parser(
        "package", help="export checkpoints to ONNX, calibrate the threshold, evaluate, write the manifest"
    )
    _common(p)
    _package_args(p)

    p = sub.add_parser("all", help="train all stages, then package: what `make engines` runs")
    _common(p)
    _package_args(p)

    p = sub.add_parser(
        "evaluate", help="re-run the evaluation of an existing engine set and rewrite its report"
    )
    _common(p)
    p.add_argument("--engines", type=Path, required=True, help="engine set folder (with manifest.json)")

    p = sub.add_parser(
        "calibrate",
        help="new decision thresholds for an engine set (another escape rate, or your line's frames), re-evaluated",
    )
    p.add_argument("--engines", type=Path, required=True, help="engine set folder (with manifest.json)")
    _escape_rate(p)
    p.add_argument(
        "--data",
        default=None,
        help="'synthetic' or a folder <root>/<split>/<class>/*.png|jpg to calibrate on (default: the set's own)",
    )
    p.add_argument(
        "--test-frames", type=int, default=None, help="override the profile's number of test frames"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("quantize", help="INT8 Q/DQ engine set from a float32 one, evaluated against it")
    p.add_argument(
        "--engines",
        type=Path,
        default=Path("engines/default"),
        help="float32 engine set (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("engines/default-int8"),
        help="INT8 engine set to write (default: %(default)s)",
    )
    p.add_argument(
        "--calib-data",
        default="auto",
        help="'auto' (the calibration split of the float32 set's own data), 'synthetic', a data set folder "
        "(<root>/train|test/...: its calibration split) or a folder of frames (e.g. from `inspector record`)",
    )
    p.add_argument(
        "--calib-frames", type=int, default=256, help="frames to calibrate on (default: %(default)s)"
    )
    p.add_argument(
        "--test-frames", type=int, default=None, help="override the profile's number of test frames"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    from inspector.rebuild import add_parser as rebuild_parser

    rebuild_parser(sub)  # the same command as `inspector rebuild` (which needs no torch), kept for old timers

    p = sub.add_parser("export", help="export one checkpoint to ONNX and check parity with ONNX Runtime")
    p.add_argument("--stage", choices=STAGES, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument(
        "--arch",
        choices=ARCHS,
        default=None,
        help="defect stage: fail unless the checkpoint is this architecture",
    )

    p = sub.add_parser(
        "compare",
        help="the study's classifier comparison: train every architecture with several seeds, one table",
        description="Train the defect stage once per architecture and seed on the same frames, export each to "
        "ONNX, and score it on clean frames, noisy frames without denoising and noisy frames through the "
        "pipeline (the noise classifier and denoisers of --engines). Writes README.md (the table), "
        "results.json and accuracy_vs_latency.png to --out.",
    )
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default: %(default)s)")
    p.add_argument(
        "--profile",
        default="compare",
        choices=sorted(PROFILES),
        help="schedule and sizes (default: %(default)s)",
    )
    p.add_argument(
        "--engines",
        type=Path,
        default=Path("engines/default"),
        help="engine set whose noise classifier and denoisers route the noisy frames (default: %(default)s)",
    )
    p.add_argument("--data", default="synthetic", help="'synthetic' or a folder <root>/<split>/<class>/")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the data splits (default: %(default)s)")
    p.add_argument(
        "--out", type=Path, default=Path("docs/comparison"), help="results folder (default: %(default)s)"
    )
    p.add_argument("--train-frames", type=int, default=None, help="override the profile's training frames")
    p.add_argument("--test-frames", type=int, default=None, help="override the profile's test frames")
    p.add_argument("--input-size", type=int, default=None, help="override the profile's defect input size")
    p.add_argument("--width", type=float, default=None, help="override the profile's width multiplier")
    p.add_argument("--epochs", type=int, default=None, help="override the profile's defect epochs")
    p.add_argument("--keep-runs", action="store_true", help="keep every run's checkpoint and ONNX file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def checkpoint_dir(args: argparse.Namespace) -> Path:
    return args.checkpoints if args.checkpoints is not None else Path("build") / args.profile


def cmd_train(args: argparse.Namespace, stages: tuple[str, ...], command: str) -> dict[str, dict]:
    from engines import train as tr
    from engines.data import load_split

    profile = get_profile(args.profile, train_frames=args.train_frames, defect_arch=args.arch)
    progress = not args.quiet
    ckdir = checkpoint_dir(args)
    t0 = time.time()
    train = load_split(args.data, "train", profile.train_frames, args.seed, progress)
    val = load_split(args.data, "val", profile.val_frames, args.seed, progress)
    results: dict[str, dict] = {}
    for stage in stages:
        out = ckdir / f"{stage}.pt"
        print(
            f"training stage {stage!r} ({profile.name} profile, {len(train.frames)} frames, seed {args.seed}) -> {out}",
            flush=True,
        )
        if stage == "noise":
            results[stage] = tr.train_noise(train.frames, val.frames, profile, args.seed + 1, out, progress)
        elif stage == "denoise":
            results[stage] = tr.train_denoise(train.frames, val.frames, profile, args.seed + 2, out, progress)
        else:
            resume = getattr(args, "resume", None)
            ae_path = ckdir / "denoise.pt"
            denoiser = tr.load_checkpoint(ae_path, "denoise")[0] if ae_path.is_file() else None
            if denoiser is None:
                print(f"  no {ae_path}: the defect stage trains on clean frames only", flush=True)
            # Hard-example mining scores fresh frames too where the generator can draw them; a folder
            # dataset mines its own training split.
            pool = None
            if profile.defect_mining_epochs and profile.defect_mining_frames and args.data == "synthetic":
                mined = load_split(args.data, "mining", profile.defect_mining_frames, args.seed, progress)
                pool = (mined.frames, mined.labels)
            results[stage] = tr.train_defect(
                train.frames,
                train.labels,
                val.frames,
                val.labels,
                profile,
                args.seed + 3,
                out,
                progress,
                resume=resume,
                denoiser=denoiser,
                pool=pool,
            )
        summary = {k: v for k, v in results[stage].items() if "history" not in k and k != "main"}
        print(f"  {stage}: {summary}", flush=True)
    print(f"trained {', '.join(stages)} in {time.time() - t0:.0f} s", flush=True)
    # The record of how these checkpoints were made: a full run replaces it, a single stage adds to it.
    marker = ckdir / "train_command.txt"
    prior = marker.read_text() if marker.is_file() and len(stages) < len(STAGES) else ""
    marker.write_text(prior + command + "\n")
    return results


def _check_arch(arch: str, checkpoint: Path) -> None:
    from engines.train import CheckpointError, load_checkpoint

    found = load_checkpoint(checkpoint, "defect")[1]["config"].get("arch", "vgg16")
    if found != arch:
        raise CheckpointError(f"{checkpoint} is a {found} checkpoint, not {arch}")


def main(argv: list[str] | None = None) -> int:
    from engines.train import CheckpointError
    from inspector.manifest import ManifestError
    from inspector.tools.folder import DatasetError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    command = "inspector-build " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    try:
        if args.cmd == "train":
            cmd_train(args, STAGES if args.stage == "all" else (args.stage,), command)
        elif args.cmd in ("package", "all"):
            from engines.package import package

            if args.cmd == "all":
                cmd_train(args, STAGES, command)
            elif args.arch is not None:
                _check_arch(args.arch, checkpoint_dir(args) / "defect.pt")
            package(args, command)
        elif args.cmd == "calibrate":
            from engines.package import recalibrate

            recalibrate(args, command)
        elif args.cmd == "quantize":
            from engines.quantize import quantize_set

            quantize_set(args, command)
        elif args.cmd == "rebuild":
            from inspector.rebuild import rebuild

            rebuild(
                args.engines, args.int8_out, args.calib_data, args.calib_frames, args.max_batch, command,
                not args.quiet,
            )  # fmt: skip
        elif args.cmd == "compare":
            from engines.compare import compare

            compare(args, command)
        elif args.cmd == "evaluate":
            from engines.package import reevaluate
            from inspector.manifest import load_manifest

            found = load_manifest(args.engines, verify=False).stages["defect"].arch
            if args.arch is not None and found != args.arch:
                raise ValueError(f"{args.engines} has a {found} defect classifier, not {args.arch}")
            reevaluate(args)
        elif args.cmd == "export":
            from engines.export import export_onnx, parity
            from engines.train import load_checkpoint

            model, ckpt = load_checkpoint(args.checkpoint, args.stage)
            arch = ckpt["config"].get("arch", "vgg16") if args.stage == "defect" else None
            if args.arch is not None and args.stage == "defect" and arch != args.arch:
                raise CheckpointError(f"{args.checkpoint} is a {arch} checkpoint, not {args.arch}")
            export_onnx(model, args.out)
            diff = parity(model, args.out, args.stage)
            print(f"exported {args.stage} to {args.out} (max |torch - onnxruntime| = {diff:.2e})")
    except (DatasetError, CheckpointError, ManifestError, ValueError, FileNotFoundError) as exc:
        print(f"inspector-build: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("inspector-build: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
