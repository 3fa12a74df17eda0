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
