"""``inspector triton-repo``: a Triton model repository for an engine set.

One model per stage (``<prefix>noise``, ``<prefix>denoise``, ``<prefix>defect``), version ``1``, each
with a ``config.pbtxt`` that carries the stage's inputs and outputs (read from the ONNX file itself),
``max_batch_size``, dynamic batching with a queue delay, an instance group, and parameters
``engine_sha256`` / ``model_version`` / ``stage`` that the daemon's Triton engine checks at connect
(:mod:`inspector.backends.triton`): a daemon never talks to a model whose engine set differs from its
manifest.

Platforms:

- ``python`` (what the tests run, on the ``tritonserver`` of the ``nvidia-pytriton`` wheel): a
  ``model.py`` that runs the stage with this project's own backend (:func:`inspector.backends.open_engine`,
  ONNX Runtime or OpenVINO) and merges the requests Triton's dynamic batcher hands it into one batch;
- ``onnxruntime`` / ``openvino``: the ONNX file on Triton's own backends (NVIDIA's server images);
- ``tensorrt``: the set's TensorRT plans (``<set>/tensorrt/<stage>.plan``, from ``inspector rebuild``
  on the GPU host that serves them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from inspector.manifest import Manifest, load_manifest

PLATFORMS = ("python", "onnxruntime", "openvino", "tensorrt")
ORT_TYPES = {"tensor(uint8)": "TYPE_UINT8", "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}

MODEL_PY = '''"""Triton python-backend model for one Line Inspector stage (written by `inspector triton-repo`).

Runs the stage's ONNX file with the project's own engine backend (inspector.backends.open_engine); the
server's Python environment must have the project installed (`make triton` does: pip install --no-deps).
Triton's dynamic batcher hands execute() several requests: they are run as one batch and split again.
"""

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from inspector.backends import open_engine


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        options = {"intra_op_threads": int(p.get("intra_op_threads", "1"))}
        if p.get("engine_backend") == "openvino":
            options = {"precision": p.get("precision", "auto"), "frame_size": tuple(json.loads(p["frame_size"]))}
        self.engine = open_engine(p.get("engine_backend", "onnxruntime"), folder / p["engine_file"], p["stage"], **options)
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        try:
            out = self.engine.infer(np.ascontiguousarray(np.concatenate(arrays, axis=0)))
        except Exception as exc:  # every request of the batch gets the error: the daemon answers ERROR
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))) for _ in requests]
        responses, start = [], 0
        for a in arrays:
            part = np.ascontiguousarray(out[start : start + len(a)])
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, part)]))
            start += len(a)
        return responses

    def finalize(self):
        self.engine.close()
'''


def _io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ONNX file's inputs and outputs as (name, Triton type, dims without the batch dimension)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def spec(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            if v.type not in ORT_TYPES:
                raise ValueError(f"{path}: {v.name} has type {v.type}, which this writer does not map")
            dims = [d if isinstance(d, int) else -1 for d in v.shape[1:]]
            out.append({"name": v.name, "data_type": ORT_TYPES[v.type], "dims": dims})
        return out

    return spec(sess.get_inputs()), spec(sess.get_outputs())


def _pbtxt_tensors(key: str, tensors: list[dict[str, Any]]) -> str:
    items = ", ".join(
        f'{{ name: "{t["name"]}", data_type: {t["data_type"]}, dims: [ {", ".join(map(str, t["dims"]))} ] }}'
        for t in tensors
    )
    return f"{key} [ {items} ]"


def _profiles(profiles: list[str] | None) -> str:
    """TensorRT: every optimization profile of the plan available to the instances (Triton's default is
    profile 0 alone, which would refuse the batches of the other range)."""
    return (", profile: [ " + ", ".join(f'"{p}"' for p in profiles) + " ]") if profiles else ""


def _plan_record(engines: Path, stage: str, entry: Any) -> dict[str, Any]:
    """The stage's record in ``<set>/tensorrt/plans.json``: built from this set's file, plan intact."""
    meta_path = engines / "tensorrt" / "plans.json"
    plan = engines / "tensorrt" / f"{stage}.plan"
    if not plan.is_file() or not meta_path.is_file():
        raise FileNotFoundError(
            f"{plan if not plan.is_file() else meta_path} does not exist: build the set's TensorRT plans on "
            f"the GPU host first (inspector rebuild --engines {engines}), then write the repository there"
        )
    records = {r["stage"]: r for r in json.loads(meta_path.read_text()).get("plans", [])}
    rec = records.get(stage)
    if rec is None:
        raise ValueError(f"{meta_path} has no plan for stage {stage!r}: rebuild (inspector rebuild)")
    if rec.get("onnx_sha256") != entry.sha256:
        raise ValueError(
            f"{plan} was built from another engine file than this set's {stage!r} (plans.json onnx_sha256 "
            f"{rec.get('onnx_sha256')!r}, manifest {entry.sha256!r}): rebuild (inspector rebuild)"
        )
    if rec.get("sha256") != _sha(plan):
        raise ValueError(f"{plan} is not the plan plans.json records (sha256): rebuild (inspector rebuild)")
    return rec


def config_pbtxt(
    name: str,
    platform: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    params: dict[str, str],
    max_batch: int,
    queue_delay_us: int,
    instances: int,
    gpu: bool,
    profiles: list[str] | None = None,
) -> str:
    head = {
        "python": 'backend: "python"',
        "onnxruntime": 'platform: "onnxruntime_onnx"',
        "openvino": 'backend: "openvino"\ndefault_model_filename: "model.onnx"',
        "tensorrt": 'platform: "tensorrt_plan"',
    }[platform]
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    lines = [
        f'name: "{name}"',
        head,
        f"max_batch_size: {max_batch}",
        _pbtxt_tensors("input", inputs),
        _pbtxt_tensors("output", outputs),
        f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}",
        f"instance_group [ {{ kind: {kind}, count: {instances}{_profiles(profiles)} }} ]",
        "parameters [ "
        + ", ".join(
            f'{{ key: "{k}", value: {{ string_value: {json.dumps(v)} }} }}' for k, v in params.items()
        )
        + " ]",
    ]
    return "\n".join(lines) + "\n"


def write_repo(
    engines: Path,
    out: Path,
    platform: str = "python",
    prefix: str = "",
    max_batch: int = 8,
    queue_delay_us: int = 2000,
    instances: int = 1,
    engine_backend: str = "onnxruntime",
    precision: str = "auto",
    intra_op_threads: int = 1,
) -> list[str]:
    """Write the repository for the set at ``engines`` into ``out``; returns the model names."""
    if platform not in PLATFORMS:
        raise ValueError(f"platform {platform!r}: one of {', '.join(PLATFORMS)}")
    manifest: Manifest = load_manifest(engines)  # verified: the files are the manifest's
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for stage, entry in manifest.stages.items():
        src = manifest.stage_path(engines, stage)
        inputs, outputs = _io(src)
        size = list(entry.input.frame_size)
        inputs[0]["dims"] = [1, *size]  # the set's frame size: Triton batches only requests of one shape
        name = f"{prefix}{stage}"
        folder = out / name / "1"
        if folder.parent.exists():
            shutil.rmtree(folder.parent)
        folder.mkdir(parents=True)
        params = {
            "stage": stage,
            "engine_sha256": entry.sha256,
            "model_version": manifest.model_version,
            "frame_size": json.dumps(size),
        }
        profiles = None
        if platform == "tensorrt":
            rec = _plan_record(engines, stage, entry)
            plan_max = max(int(hi) for _lo, _opt, hi in rec["profiles"])
            if max_batch > plan_max:
                raise ValueError(
                    f"--max-batch {max_batch} is more than the plans take ({plan_max}): rebuild them for it "
                    f"(inspector rebuild --max-batch {max_batch}) or write the repository with --max-batch {plan_max}"
                )
            profiles = [str(i) for i in range(len(rec["profiles"]))]
            shutil.copyfile(engines / "tensorrt" / f"{stage}.plan", folder / "model.plan")
            params["plan_sha256"] = rec["sha256"]
        else:
            shutil.copyfile(src, folder / "model.onnx")
        if platform == "python":
            (folder / "model.py").write_text(MODEL_PY)
            params |= {
                "engine_file": "model.onnx",
                "engine_backend": engine_backend,
                "precision": precision,
                "intra_op_threads": str(intra_op_threads),
            }
        text = config_pbtxt(
            name,
            platform,
            inputs,
            outputs,
            params,
            max_batch,
            queue_delay_us,
            instances,
            platform == "tensorrt",
            profiles,
        )
        (out / name / "config.pbtxt").write_text(text)
        names.append(name)
    return names


def _sha(path: Path) -> str:
    from inspector.manifest import sha256_file

    return sha256_file(path)


def parse_config(text: str) -> Any:
    """config.pbtxt parsed as Triton's own ``ModelConfig`` protobuf (what the server parses): a typo, an
    unknown field or a wrong type fails here, not at the server. ``None`` without tritonclient."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def validate_repo(repo: Path, engines: Path, platform: str, prefix: str = "") -> list[str]:
    """Problems with a written repository, without a server: each model's files and config against the set
    (the config parsed as Triton's ModelConfig where tritonclient is installed)."""
    manifest = load_manifest(engines)
    problems = []
    for stage, entry in manifest.stages.items():
        folder = repo / f"{prefix}{stage}"
        cfg = folder / "config.pbtxt"
        if not cfg.is_file():
            problems.append(f"{folder}: no config.pbtxt")
            continue
        text = cfg.read_text()
        if f'name: "{prefix}{stage}"' not in text:
            problems.append(f"{cfg}: name is not {prefix}{stage!r}")
        if f'"{entry.sha256}"' not in text:
            problems.append(f"{cfg}: engine_sha256 is not the manifest's")
        try:
            parsed = parse_config(text)
        except Exception as exc:  # text_format.ParseError: what the server would refuse to load
            problems.append(f"{cfg}: not a valid Triton ModelConfig: {exc}")
            parsed = None
        if parsed is not None:
            params = {k: v.string_value for k, v in parsed.parameters.items()}
            if (
                params.get("engine_sha256") != entry.sha256
                or params.get("model_version") != manifest.model_version
            ):
                problems.append(f"{cfg}: parameters engine_sha256 / model_version are not the manifest's")
            dims = list(parsed.input[0].dims) if parsed.input else []
            if dims != [1, *entry.input.frame_size]:
                problems.append(f"{cfg}: input dims {dims} are not [1, {entry.input.frame_size}]")
            if platform == "tensorrt":
                try:
                    rec = _plan_record(engines, stage, entry)
                except (OSError, ValueError) as exc:
                    problems.append(str(exc))
                else:
                    want = [str(i) for i in range(len(rec["profiles"]))]
                    if any(list(g.profile) != want for g in parsed.instance_group):
                        problems.append(f"{cfg}: instance groups do not offer the plan's profiles {want}")
                    if params.get("plan_sha256") != rec["sha256"]:
                        problems.append(f"{cfg}: plan_sha256 is not plans.json's")
        need = {
            "python": ["model.py", "model.onnx"],
            "onnxruntime": ["model.onnx"],
            "openvino": ["model.onnx"],
        }
        for f in need.get(platform, ["model.plan"]):
            if not (folder / "1" / f).is_file():
                problems.append(f"{folder}/1/{f} missing")
        onnx = folder / "1" / "model.onnx"
        if platform != "tensorrt" and onnx.is_file() and _sha(onnx) != entry.sha256:
            problems.append(f"{folder}/1/model.onnx is not the manifest's file")
        plan = folder / "1" / "model.plan"
        recorded = {k: v.string_value for k, v in parsed.parameters.items()} if parsed is not None else {}
        if (
            platform == "tensorrt"
            and plan.is_file()
            and parsed is not None
            and _sha(plan) != recorded.get("plan_sha256")
        ):
            problems.append(f"{plan} is not the plan its config records")
    return problems
