"""What TensorRT's ONNX parser is given: UINT8 tensors reach only Cast nodes, and the outputs are unchanged."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from inspector.backends.trt_build import uint8_only_through_casts
from inspector.tools.synthetic import ImpellerGenerator
from tests.conftest import SHIPPED

onnx = pytest.importorskip("onnx")


def uint8_consumers(model) -> list[str]:
    from onnx import TensorProto, shape_inference

    m = shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*m.graph.value_info, *m.graph.input]}
    return [n.op_type for n in m.graph.node for i in n.input if types.get(i) == TensorProto.UINT8]


@pytest.mark.parametrize("stage", ["noise", "denoise", "defect"])
def test_shipped_stages_take_uint8_only_through_casts_after_the_rewrite(stage):
    raw = (SHIPPED / f"{stage}.onnx").read_bytes()
    before = uint8_consumers(onnx.load_from_string(raw))
    fixed = uint8_only_through_casts(raw)
    after = uint8_consumers(onnx.load_from_string(fixed))
    assert set(after) == {"Cast"}, after
    if stage == "denoise":
        assert "Shape" in before  # what the exported graph did, and TensorRT would refuse
    frames = ImpellerGenerator(seed=8).batch(0, 3)[0][:, None]
    a = ort.InferenceSession(raw, providers=["CPUExecutionProvider"]).run(None, {"frames": frames})[0]
    b = ort.InferenceSession(fixed, providers=["CPUExecutionProvider"]).run(None, {"frames": frames})[0]
    np.testing.assert_array_equal(a, b)
