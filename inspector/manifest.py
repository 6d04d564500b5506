"""The engine-set manifest: the sidecar that makes an engine set self-describing.

``manifest.json`` sits beside the engine files. It records, per stage, the file
and its sha256, classes, input spec, FLOP count and parameters, plus the
decision threshold, training metrics, the exact build command and seed, and
library versions. The daemon refuses an engine set whose files do not match
their hashes, with a message that says how to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
STAGES = ("noise", "denoise", "defect")


class ManifestError(ValueError):
    """A missing, malformed or mismatched manifest, with what to do about it."""


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dtype: Literal["uint8"] = "uint8"
    layout: str = Field(
        default="NCHW", description="(batch, channel=1, height, width); batch, height and width are dynamic"
    )
    frame_size: tuple[int, int] = Field(
        default=(300, 300), description="the frame size the stage was trained on"
    )
    resize_to: int | None = Field(
        default=None, description="square size the graph resizes to internally, if any"
    )


class StageEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: Literal["noise", "denoise", "defect"]
    file: str
    sha256: str
    arch: str
    classes: list[str] = Field(default_factory=list)
    input: InputSpec = Field(default_factory=lambda: InputSpec())
    output: str
    params: int
    gflop_per_frame: float
    config: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: int = MANIFEST_FORMAT
    model_version: str
    profile: str
    created: str
    command: str
    seed: int
    data: str
    frame_size: int = 300
    threshold: float = Field(
        description="defect score (softmax probability of 'defective') at or above which a part is rejected"
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="per noise type (the frame's route): the threshold calibrated on that type's frames; "
        "a type without one (and every type in sets before 2026-11-25 evening) uses `threshold`",
    )
    escape_target: float
    precision: str = Field(default="float32", description="float32, or int8-qdq for a quantized set")
    salt_pepper_filter: str = "adaptive_median"
    periodic_filter: str = Field(
        default="autoencoder",
        description="route for periodic noise: sinusoid_fit (sets since 2026-11-25) or autoencoder (older sets)",
    )
    stages: dict[str, StageEntry]
    checkpoints: dict[str, str] = Field(
        default_factory=dict,
        description="PyTorch checkpoints shipped beside the engines (file -> sha256), for the build step and benchmarks",
    )
    budget_gflop: dict[str, float] = Field(default_factory=dict)
    calibration: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    git_revision: str = "unknown"

    def stage_path(self, root: Path, stage: str) -> Path:
        return root / self.stages[stage].file


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(root: str | Path, verify: bool = True) -> Manifest:
    """Read ``root/manifest.json``; with ``verify``, check every stage file's presence and sha256."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"no {MANIFEST_NAME} in {str(root)!r}: build an engine set with `make engines` (or `inspector-build all --out DIR`)"
        )
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ManifestError(f"{str(path)!r} is not a valid manifest: {exc}") from exc
    if manifest.format != MANIFEST_FORMAT:
        raise ManifestError(
            f"{str(path)!r} has manifest format {manifest.format}, this daemon reads {MANIFEST_FORMAT}: rebuild the engines"
        )
    missing = [s for s in STAGES if s not in manifest.stages]
    if missing:
        raise ManifestError(f"{str(path)!r} lacks stage(s) {', '.join(missing)}")
    if verify:
        for name, entry in manifest.stages.items():
            f = root / entry.file
            if not f.is_file():
                raise ManifestError(
                    f"stage {name!r}: engine file {str(f)!r} is missing: rebuild with `make engines`"
                )
            digest = sha256_file(f)
            if digest != entry.sha256:
                raise ManifestError(
                    f"stage {name!r}: {str(f)!r} has sha256 {digest[:12]}..., the manifest says {entry.sha256[:12]}...: "
                    "the file was changed or belongs to another build; rebuild with `make engines`"
                )
    return manifest


def borrowed_thresholds(manifest: Manifest) -> str | None:
    """Where an INT8 set's thresholds came from when they are not its own, else None.

    ``inspector rebuild --int8-out`` (and ``inspector-build quantize``) calibrate the INT8 set's
    thresholds on its own scores where the set's labelled data is; without it the set keeps the
    float32 set's and ``calibration.int8`` says so (``thresholds_calibrated: false``, and
    ``thresholds_from``). Those are the wrong operating point: INT8 scores sit lower (on the
    shipped photograph set the float32 thresholds are 3.1-4.6x the INT8 set's own), so such a set
    passes defective parts. An INT8 set whose ``calibration.int8`` records no thresholds of its own,
    or that has no ``calibration.int8`` at all, counts as borrowing too: nothing is trusted by
    absence. ``inspector-build calibrate`` on an INT8 set writes ``calibration.int8`` with
    ``thresholds_calibrated: true``. Float32 sets always are their own.
    """
    if not manifest.precision.startswith("int8"):
        return None
    int8 = manifest.calibration.get("int8")
    if not isinstance(int8, dict):  # no record that these thresholds were ever set on INT8 scores
        return "unknown: the set records no INT8 calibration (calibration.int8)"
    own = int8.get("thresholds_calibrated")
    if own is None:  # sets written before the flag: calibrated ones record their thresholds
        own = "thresholds_from" not in int8 and ("threshold" in int8 or "thresholds" in int8)
    if own is True:
        return None
    return str(int8.get("thresholds_from") or "the float32 set's, never calibrated on INT8 scores")


def check_own_thresholds(root: str | Path, manifest: Manifest) -> None:
    """Refuse (ManifestError, saying how to fix it) to serve a set at thresholds it did not calibrate."""
    source = borrowed_thresholds(manifest)
    if source is None:
        return
    raise ManifestError(
        f"{str(root)!r} is an INT8 engine set that kept the float32 set's thresholds ({source}). INT8 scores "
        "sit lower than float32's, so at those thresholds it would pass defective parts: refused. Give it "
        "thresholds of its own, calibrated on labelled frames: `inspector rebuild --engines <float32 set> "
        f"--int8-out {root} --calib-data auto` on a host that has the set's data ({manifest.data!r}), or "
        f"`inspector-build calibrate --engines {root} --data <labelled frames>`; or serve it at one explicit "
        "threshold: engines.threshold in the configuration (INSPECTOR_ENGINES__THRESHOLD), which replaces "
        "every threshold of the set"
    )


def write_manifest(root: str | Path, manifest: Manifest) -> Path:
    """Write ``root/manifest.json`` whole or not at all: a temp file beside it, fsynced, then renamed over it
    (a reader never sees a half-written manifest; the file's mode follows the umask as before)."""
    path = Path(root) / MANIFEST_NAME
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
