"""The zero-overhead proof: a dense-merged artifact is plain SAM, a fused one says what it adds."""

import gc

import numpy as np
import onnx
import pytest
import torch
from conftest import vit_b_small
from onnx import TensorProto, helper, numpy_helper

from naslora_deploy import AdapterConfig, add_adapters
from naslora_deploy.core.adapters.injection import adapted_layers
from naslora_deploy.core.adapters.testing import perturb_adapters
from naslora_deploy.core.merging.merge import constant_response_folds, dense_copy
from naslora_deploy.exporters.export import ExportSpec, export_artifacts
from naslora_deploy.exporters.onnx_export import module_to_onnx
from naslora_deploy.exporters.structure import _measured_shapes, compare_signatures, graph_signature
from naslora_deploy.exporters.verify import plain_sam_proof
from naslora_deploy.exporters.wrappers import ImageEncoderGraph


def test_dense_artifact_is_plain_sam_and_fused_reports_its_extras(binary_adapter, tmp_path):
    dense, _ = export_artifacts(binary_adapter, tmp_path / "dense", ExportSpec(merge="dense"))
    proof = plain_sam_proof(dense, repeats=5)
    assert proof["plain_sam"] and proof["extra_nodes"] == {} and proof["extra_parameters"] == 0
    assert (
        proof["candidate"]["gmacs"] == pytest.approx(proof["reference"]["gmacs"])
        and proof["candidate"]["gmacs"] > 0.2
    )
    assert proof["candidate"]["uncounted"] == []
    assert proof["image_encoder_latency"]["ratio"] > 0

    fused, _ = export_artifacts(binary_adapter, tmp_path / "fused", ExportSpec(merge="fused"))
    extra = plain_sam_proof(fused, repeats=0)
    assert not extra["plain_sam"]
    # per adapted block: one grouped Conv for the mixed kernel and one MaxPool
    assert extra["extra_nodes"]["Conv"] == 4 and extra["extra_nodes"]["MaxPool"] == 4
    # W_e (9 x 128) + kernel (9 x 3 x 9 x 9) + max-pool weights (9) + block-diagonal W_d (384 x 9) per block
    assert extra["extra_parameters"] == 4 * (9 * 128 + 9 * 3 * 81 + 9 + 384 * 9)
    assert extra["extra_gmacs"] > 0


def test_macs_of_a_known_graph(tmp_path):
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    path = module_to_onnx(conv, (torch.zeros(1, 3, 10, 10),), tmp_path / "conv.onnx", ["x"], ["y"])
    signature = graph_signature(path)
    assert signature.macs == 8 * 10 * 10 * 3 * 9
    assert signature.parameters == 8 * 3 * 9 + 8
    linear = torch.nn.Linear(16, 4)
    path = module_to_onnx(linear, (torch.zeros(2, 5, 16),), tmp_path / "linear.onnx", ["x"], ["y"])
    assert graph_signature(path).macs == 5 * 16 * 4  # batch counted as 1


def test_shapes_inference_cannot_follow_are_measured(tmp_path):
    """A reshape whose target passes through Floor defeats ONNX data propagation; its MatMul is still
    counted, from the shape measured by running the graph."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Cast", ["shape"], ["shape_f"], to=TensorProto.FLOAT),
        helper.make_node("Floor", ["shape_f"], ["floored"]),
        helper.make_node("Cast", ["floored"], ["target"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "target"], ["reshaped"]),
        helper.make_node("MatMul", ["reshaped", "w"], ["y"]),
    ]
    weight = numpy_helper.from_array(np.ones((6, 3), np.float32), "w")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "floor_reshape", inputs, outputs, [weight])
    path = tmp_path / "floor.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert graph_signature(path).macs == 4 * 6 * 3 and graph_signature(path).uncounted == []
    assert _measured_shapes(path, ["reshaped"]) == {"reshaped": [1, 4, 6]}


def _encoder_onnx(sam, path):
    """``sam``'s image encoder as ONNX (256-pixel input); one model in memory at a time keeps the peak low."""
    graph = ImageEncoderGraph(sam.image_encoder)
    return module_to_onnx(graph, (torch.zeros(1, 3, 256, 256),), path, ["image"], ["image_embeddings"])


@pytest.mark.slow
def test_vit_b_dense_merge_exports_as_plain_sam(tmp_path):
    torch.manual_seed(0)
    plain = _encoder_onnx(vit_b_small(), tmp_path / "plain.onnx")
    gc.collect()
    adapted = vit_b_small()
    add_adapters(adapted, AdapterConfig(method="nas_pc_lora"))
    perturb_adapters(adapted, seed=3)
    layers = dict(adapted_layers(adapted))
    with torch.no_grad():
        merged = dense_copy(adapted, layers, constant_response_folds(layers))
    del adapted, layers
    merged = _encoder_onnx(merged, tmp_path / "merged.onnx")
    gc.collect()
    result = compare_signatures(graph_signature(merged), graph_signature(plain))
    assert result["identical_operators"] and result["identical_initializers"] and result["identical_macs"]
    # SAM ViT-B at 256 pixels: 12 blocks of 768 on 16 x 16 tokens (486 GMAC at 1024)
    assert result["candidate"]["gmacs"] == pytest.approx(plain_vit_b_gmacs(256), rel=0.02)
    assert plain_vit_b_gmacs(1024) == pytest.approx(486.0, abs=0.5)  # the count is SAM ViT-B's known one
    assert result["extra_parameters"] == 0 and result["candidate"]["uncounted"] == []


def plain_vit_b_gmacs(size: int) -> float:
    """SAM ViT-B image encoder's multiply-accumulates at ``size`` pixels, counted by hand (at 1024: 486.0,
    the figure segment-anything's ViT-B is known by): patch embedding; per block the qkv and output
    projections (on the padded windows in windowed blocks), the MLP, attention and its decomposed
    relative positions; the neck (1x1 then 3x3 convolution to 256 channels)."""
    side, dim, window = size // 16, 768, 14
    tokens, padded = side**2, (-(-side // window) * window) ** 2
    macs = tokens * dim * 3 * 16 * 16 + tokens * (dim * 256 + 256 * 256 * 9)  # patch embedding, neck
    for block in range(12):
        if block in (2, 5, 8, 11):  # global attention over all tokens
            macs += tokens * 4 * dim * dim + 2 * tokens * tokens * dim + 2 * tokens * side * dim
        else:  # within each 14 x 14 window of the padded grid
            macs += padded * 4 * dim * dim + 2 * padded * window**2 * dim + 2 * padded * window * dim
        macs += tokens * 8 * dim * dim  # MLP
    return macs / 1e9
