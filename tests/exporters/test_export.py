"""ONNX artifacts: parity with PyTorch for every head, merge mode and precision; manifest contents."""

import json

import pytest

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.exporters.export import ExportSpec, export_artifacts
from naslora_deploy.exporters.verify import verify_parity
from naslora_deploy.runtime.manifest import read_manifest

CASES = [
    ("binary", "dense", "fp32"),
    ("binary", "fused", "fp32"),
    ("binary", "dense", "fp16"),
    ("multiclass", "dense", "fp32"),
    ("multiclass", "fused", "fp16"),
]


@pytest.mark.parametrize("head, merge, precision", CASES, ids=["-".join(c) for c in CASES])
def test_onnx_parity(head, merge, precision, binary_adapter, multiclass_adapter, tmp_path):
    source = binary_adapter if head == "binary" else multiclass_adapter
    out, manifest = export_artifacts(source, tmp_path / "art", ExportSpec(merge=merge, precision=precision))
    assert manifest["head"] == head and manifest["onnx_precision"] == precision
    report = verify_parity(out)
    rows = {(r.backend, r.output): r for r in report.rows}
    embeddings = rows[("onnxruntime CPU", "image_embeddings")]
    end_to_end = rows[("onnxruntime CPU", "mask_logits (end to end)")]
    if precision == "fp32":
        assert report.passed and embeddings.tolerance == 1e-4
        assert embeddings.max_abs < 1e-4 and end_to_end.mask_iou > 0.999
    else:  # fp16 is held to relative limits and an end-to-end mask IoU (bench_fp16_parity.py)
        assert report.passed and embeddings.tolerance is None and embeddings.max_rel == 3e-2
        assert end_to_end.min_mask_iou == 0.98
        assert embeddings.rel < 5e-3 and end_to_end.mask_iou > 0.98
    if head == "multiclass":
        assert rows[("onnxruntime CPU", "class_logits (torch embeddings)")].max_abs < (
            1e-3 if precision == "fp32" else 5e-2
        )
    report_entry = manifest["merge"]["report"]
    assert report_entry["mode"] == merge
    if merge == "fused":
        assert report_entry["embedding_rel_error"] <= 1e-5


def test_manifest_describes_every_file(binary_adapter, tmp_path):
    out, manifest = export_artifacts(
        binary_adapter, tmp_path / "art", ExportSpec(prompts=True, point_slots=3)
    )
    assert set(manifest["files"]) == {"image_encoder.onnx", "mask_decoder.onnx", "prompt_decoder.onnx"}
    encoder = manifest["files"]["image_encoder.onnx"]
    assert encoder["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 256, 256]}]
    assert encoder["outputs"] == [
        {"name": "image_embeddings", "dtype": "float32", "shape": ["batch", 64, 16, 16]}
    ]
    decoder = manifest["files"]["mask_decoder.onnx"]
    assert [o["name"] for o in decoder["outputs"]] == ["low_res_logits", "mask_logits"]
    assert decoder["outputs"][1]["shape"] == ["batch", 1, 256, 256]  # upscaled to S x S inside the graph
    assert all(
        not isinstance(d, str) or d == "batch"
        for name, f in manifest["files"].items()
        if name != "prompt_decoder.onnx"
        for v in f["inputs"]
        for d in v["shape"]
    )
    prompt = manifest["files"]["prompt_decoder.onnx"]
    assert [v["shape"] for v in prompt["inputs"]] == [
        ["images", 64, 16, 16],
        ["batch", "points", 2],
        ["batch", "points"],
        ["masks", 1, 64, 64],  # mask_input: earlier low-res logits (one shared, or one a prompt)
        ["masks", 1],  # has_mask_input: 1 uses it, 0 is SAM's "no mask"
    ]
    assert [v["shape"] for v in prompt["outputs"]] == [["batch", 4, 64, 64], ["batch", 4]]  # every mask token
    assert manifest["prompt_point_slots"] == 5  # the TensorRT profile's points: 3 point slots + 2 box slots
    assert (
        "--maxShapes=image_embeddings:8x64x16x16,point_coords:8x5x2" in manifest["trtexec"]["prompt_decoder"]
    )
    for key in ("variant", "image_size", "classes", "precision", "opset", "naslora_deploy_version", "merge"):
        assert key in manifest
    assert manifest["variant"] == "vit_tiny" and manifest["opset"] == 17
    assert set(manifest["trtexec"]) == {"image_encoder", "mask_decoder", "prompt_decoder"}
    assert "--maxShapes=image:8x3x256x256" in manifest["trtexec"]["image_encoder"]
    assert read_manifest(out).to_dict() == json.loads((out / "manifest.json").read_text())


def test_external_data_on_a_small_threshold(binary_adapter, tmp_path):
    spec = ExportSpec(external_threshold=100_000)
    out, manifest = export_artifacts(binary_adapter, tmp_path / "art", spec)
    assert (out / "image_encoder.onnx.data").is_file()
    assert manifest["files"]["image_encoder.onnx"]["external_data"]["file"] == "image_encoder.onnx.data"
    assert (out / "image_encoder.onnx").stat().st_size < 200_000
    assert verify_parity(out).passed


def test_changed_or_truncated_files_are_refused(binary_adapter, tmp_path):
    out, _ = export_artifacts(binary_adapter, tmp_path / "art", ExportSpec())
    decoder = out / "mask_decoder.onnx"
    decoder.write_bytes(decoder.read_bytes()[:5000])
    with pytest.raises(NasloraError, match="mask_decoder.onnx does not match its sha256"):
        read_manifest(out)
    (out / "manifest.json").unlink()
    with pytest.raises(NasloraError, match="manifest.json not found"):
        read_manifest(out)


def test_plain_sam_checkpoint_needs_its_variant(tmp_path):
    import torch

    from naslora_deploy import build_sam

    path = tmp_path / "sam.pth"
    torch.save(build_sam("vit_tiny").state_dict(), path)
    with pytest.raises(NasloraError, match="name its variant with --model"):
        export_artifacts(path, tmp_path / "art", ExportSpec())
    out, manifest = export_artifacts(path, tmp_path / "art", ExportSpec(), variant="vit_tiny")
    assert manifest["merge"]["report"] is None and manifest["source"]["kind"] == "sam_checkpoint"
    assert verify_parity(out).passed
    assert not list(tmp_path.glob(".art*")), "no temporary directories left behind"


def test_a_darts_cell_exports_fused_with_parity(tmp_path):
    """DARTS' non-linear cell (ReLU, BN folded into the convs, pools) goes through ONNX exactly."""
    from conftest import make_adapter_dir

    source = make_adapter_dir(tmp_path / "darts", cell_form="darts")
    out, manifest = export_artifacts(source, tmp_path / "art", ExportSpec(merge="fused"))
    assert manifest["merge"]["report"]["embedding_rel_error"] <= 1e-5
    report = verify_parity(out)
    assert report.passed
    rows = {(r.backend, r.output): r for r in report.rows}
    assert rows[("onnxruntime CPU", "image_embeddings")].max_abs < 1e-4


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "bf16"])
def test_every_precision_states_what_verify_checks(precision):
    from naslora_deploy.exporters.criteria import PASS_CRITERIA, criteria_for

    criteria = PASS_CRITERIA[precision]
    line = criteria.describe()
    assert line.startswith(f"pass criteria ({precision}): image_embeddings ") and criteria.basis in line
    assert criteria.to_dict()["precision"] == precision
    overridden = criteria_for(precision, tolerance=2e-3)
    assert overridden.embeddings_max_abs == 2e-3 and overridden.embeddings_max_rel is None


def test_fp16_verify_fails_past_its_criteria_and_says_which(binary_adapter, tmp_path, capsys):
    """A tampered fp16 encoder (one weight tensor scaled by 1.05) fails the fp16 criteria: exit 1."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from naslora_deploy.cli import main
    from naslora_deploy.common.io import sha256_of

    out, _ = export_artifacts(binary_adapter, tmp_path / "art", ExportSpec(precision="fp16"))
    assert main(["verify", str(out), "--count", "1", "--json", str(tmp_path / "ok.json")]) == 0
    result = json.loads((tmp_path / "ok.json").read_text())
    assert result["criteria"]["onnx"]["embeddings_max_rel"] == 3e-2 and result["passed"]
    head = capsys.readouterr().out.splitlines()[0]
    assert head.startswith("onnx pass criteria (fp16): image_embeddings rel <= 3e-02")
    model = onnx.load(str(out / "image_encoder.onnx"))
    weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float16(1.05), weight.name))
    onnx.save(model, str(out / "image_encoder.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())  # re-signed: a deliberate change, not damage
    manifest["files"]["image_encoder.onnx"]["sha256"] = sha256_of(out / "image_encoder.onnx")
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(out), "--count", "1", "--json", str(tmp_path / "bad.json")]) == 1
    rows = json.loads((tmp_path / "bad.json").read_text())["parity"]
    assert not rows[0]["passed"] and rows[0]["criterion"] == "rel <= 3e-02"
    assert "output(s) miss the pass criteria" in capsys.readouterr().err


def test_fp16_criteria_are_the_recorded_measurement():
    """verify's fp16 limits are what benchmarks/bench_fp16_parity.py derived, not figures typed in."""
    from pathlib import Path

    from naslora_deploy.exporters.criteria import PASS_CRITERIA

    record = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "fp16_parity.json"
    derived = json.loads(record.read_text())["criteria"]
    fp16 = PASS_CRITERIA["fp16"]
    assert derived == {
        "embeddings_max_rel": fp16.embeddings_max_rel,
        "decoder_max_rel": fp16.decoder_max_rel,
        "end_to_end_min_mask_iou": fp16.end_to_end_min_mask_iou,
    }


def test_export_of_a_merged_checkpoint_carries_its_report(binary_adapter, binary_data, tmp_path, capsys):
    """``merge`` once, then ``export`` its checkpoint: not merged again (the log says so, one line per
    exported model), the manifest holds merge's report, and ``--json -`` puts only JSON on stdout."""
    from naslora_deploy.cli import main

    merged = tmp_path / "merged.pth"
    options = ["--mode", "dense", "--calibration", str(binary_data), "--calibration-images", "4"]
    assert main(["merge", str(binary_adapter), *options, "--out", str(merged), "--no-progress"]) == 0
    capsys.readouterr()
    art = tmp_path / "art"
    assert main(["export", str(merged), "--out", str(art), "--json", "-"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    log = captured.err
    assert "export: load merged checkpoint" in log and "merge: fit block" not in log
    assert "export: ONNX model 1/2 image_encoder" in log and "export: ONNX model 2/2 mask_decoder" in log
    report = json.loads((tmp_path / "merged.report.json").read_text())["merge"]
    assert result["manifest"]["merge"]["report"] == report == read_manifest(art)["merge"]["report"]
    assert result["manifest"]["source"]["kind"] == "merged_checkpoint" and result["artifacts"] == str(art)
