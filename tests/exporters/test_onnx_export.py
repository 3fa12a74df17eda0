"""ONNX files are checked on the way out and on the way in."""

import pytest
import torch

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.exporters.onnx_export import check_onnx, io_signature, module_to_onnx, onnx_to_fp16


def test_damaged_onnx_gives_one_clear_line(tmp_path):
    path = module_to_onnx(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), tmp_path / "m.onnx", ["x"], ["y"])
    check_onnx(path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(NasloraError) as info:
        check_onnx(path)
    assert "m.onnx: not a valid ONNX model" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(NasloraError, match="not found"):
        check_onnx(tmp_path / "absent.onnx")


def test_fp16_keeps_layernorm_and_softmax_in_fp32(tmp_path):
    import onnx

    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Softmax(-1))
    path = module_to_onnx(module, (torch.zeros(1, 8),), tmp_path / "m.onnx", ["x"], ["y"])
    half = onnx_to_fp16(path, tmp_path / "half.onnx")
    model = onnx.load(str(half))
    types = {i.name: i.data_type for i in model.graph.initializer}
    matmul_weight = next(n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm"))
    assert types[matmul_weight] == onnx.TensorProto.FLOAT16
    norm = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    assert types[norm.input[1]] == onnx.TensorProto.FLOAT
    assert io_signature(half)["inputs"][0]["dtype"] == "float32"  # fp32 at the boundary


class WithOptionalInput(torch.nn.Module):
    """A module that declares an input of its own beyond the caller's (as the prompt decoder's mask)."""

    def forward(self, x, extra=None):
        return x * 2 if extra is None else x * 2 + extra.sum(-1, keepdim=True)

    def onnx_extra_inputs(self):
        return ("extra",), (torch.zeros(1, 3),), {"extra": {0: "extras"}}


def test_a_module_adds_the_inputs_it_declares(tmp_path):
    import numpy as np
    import onnxruntime as ort

    path = module_to_onnx(WithOptionalInput(), (torch.zeros(2, 4),), tmp_path / "m.onnx", ["x"], ["y"])
    inputs = io_signature(path)["inputs"]
    assert [(i["name"], i["shape"]) for i in inputs] == [("x", ["batch", 4]), ("extra", ["extras", 3])]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, extra = np.ones((2, 4), np.float32), np.full((1, 3), 0.5, np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x, "extra": extra})[0], 2 * x + 1.5)
    named = module_to_onnx(  # the caller names it: taken as given, not added twice
        WithOptionalInput(),
        (torch.zeros(2, 4), torch.zeros(2, 3)),
        tmp_path / "n.onnx",
        ["x", "extra"],
        ["y"],
    )
    assert [i["name"] for i in io_signature(named)["inputs"]] == ["x", "extra"]
