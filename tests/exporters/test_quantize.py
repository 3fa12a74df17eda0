"""INT8 export: a QDQ graph calibrated on the user's images, running in onnxruntime, close to fp32."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from naslora_deploy.core.merging.spec import MergeSpec
from naslora_deploy.exporters.criteria import PASS_CRITERIA
from naslora_deploy.exporters.export import ExportSpec, export_artifacts
from naslora_deploy.exporters.specs import EngineSpec
from naslora_deploy.exporters.verify import verify_parity

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
MISSING = "--precision int8 calibrates activations on your images: give them with --calibration FOLDER"


@pytest.fixture(scope="module")
def int8_artifacts(binary_adapter, binary_data, tmp_path_factory):
    spec = ExportSpec(precision="int8", merge=MergeSpec(calibration=str(binary_data), calibration_images=4))
    return export_artifacts(binary_adapter, tmp_path_factory.mktemp("int8") / "art", spec)


def test_the_encoder_is_a_qdq_graph_with_per_channel_weights(int8_artifacts):
    import onnx
    from onnx import numpy_helper

    out, _ = int8_artifacts
    graph = onnx.load(str(out / "image_encoder.onnx")).graph
    kinds = [node.op_type for node in graph.node]
    assert kinds.count("QuantizeLinear") > 0 and kinds.count("DequantizeLinear") > 0
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants]
    assert weights and all(constants[n.input[0]].dtype == np.int8 for n in weights)
    assert all(constants[n.input[1]].size > 1 for n in weights)  # one scale per output channel
    assert all(not constants[n.input[2]].any() for n in weights)  # symmetric: zero point 0 (TensorRT)
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    kept = [n for n in graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert kept and all(produced_by.get(i) != "DequantizeLinear" for n in kept for i in n.input)
    decoder = onnx.load(str(out / "mask_decoder.onnx")).graph
    assert not any(n.op_type == "QuantizeLinear" for n in decoder.node)  # the decoders stay fp32


def test_int8_runs_in_onnxruntime_and_its_masks_agree_with_fp32(int8_artifacts):
    out, _ = int8_artifacts
    report = verify_parity(out)
    rows = {(r.backend, r.output): r for r in report.rows}
    assert report.passed, report.table()
    end_to_end = rows[("onnxruntime CPU", "mask_logits (end to end)")]
    assert end_to_end.min_mask_iou == PASS_CRITERIA["int8"].end_to_end_min_mask_iou == 0.9
    assert end_to_end.mask_iou >= 0.95  # measured 0.978 on these probes (vit_tiny, random weights)
    embeddings = rows[("onnxruntime CPU", "image_embeddings")]
    assert embeddings.rel < 0.05 and embeddings.criterion == "reported only"  # measured 0.021
    assert rows[("onnxruntime CPU", "mask_logits (torch embeddings)")].tolerance == 1e-3  # fp32 decoder


def test_manifest_records_int8_and_the_trtexec_line(int8_artifacts):
    out, manifest = int8_artifacts
    assert manifest["precision"] == manifest["onnx_precision"] == "int8"
    assert manifest["export"]["engine"]["precision"] == "int8"
    assert manifest["files"]["image_encoder.onnx"]["outputs"][0]["shape"] == ["batch", 64, 16, 16]
    for command in manifest["trtexec"].values():
        assert " --int8 --fp16 " in command and "--precisionConstraints=obey" in command


def test_int8_needs_calibration_images(binary_adapter, tmp_path):
    with pytest.raises(ValueError, match="--precision int8 calibrates activations"):
        ExportSpec(precision="int8")
    assert EngineSpec(precision="int8").precision == "int8"
    result = subprocess.run(
        [sys.executable, "-m", "naslora_deploy", "export", str(binary_adapter), "--precision", "int8"]
        + ["--out", str(tmp_path / "art")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and MISSING in lines[0], result.stderr
    assert not (tmp_path / "art").exists()


def test_only_weight_ops_can_be_asked_for(tmp_path):
    from naslora_deploy.exporters.quantize import onnx_to_int8

    with pytest.raises(ValueError, match="not Softmax"):
        onnx_to_int8(tmp_path / "a.onnx", tmp_path / "b.onnx", [], op_types=("MatMul", "Softmax"))


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed here (no wheel for this machine)")
@pytest.mark.tensorrt
def test_int8_engines_from_the_qdq_graph(binary_adapter, binary_data, tmp_path):
    merge = MergeSpec(calibration=str(binary_data), calibration_images=4)
    spec = ExportSpec(format="trt", precision="int8", merge=merge)
    out, manifest = export_artifacts(binary_adapter, tmp_path / "art", spec)
    assert manifest["export"]["engine"]["precision"] == "int8"
    report = verify_parity(out)
    engine_rows = [r for r in report.rows if r.backend.startswith("tensorrt") and r.mask_iou is not None]
    assert engine_rows and all(r.mask_iou >= 0.9 for r in engine_rows), report.table()
