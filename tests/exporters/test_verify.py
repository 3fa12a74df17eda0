"""verify: every model of an artifact against PyTorch (encoder, prompt-free decoder, prompt decoder with
boxes and points), per-model verdicts, progress in a log, and a damaged prompt decoder caught."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from naslora_deploy.cli import main
from naslora_deploy.exporters.export import ExportSpec, _describe, export_artifacts
from naslora_deploy.exporters.verify import (
    DECODER_MODEL,
    ENCODER_MODEL,
    NOT_IN_ARTIFACT,
    PROMPT_MODEL,
    verification_prompts,
    verify_parity,
)
from naslora_deploy.runtime.manifest import read_manifest

CPU = "onnxruntime CPU"


def _verdicts(report) -> dict:
    return {v.model: v for v in report.models() if v.backend == CPU}


def test_verify_compares_all_three_models(binary_artifacts):
    report = verify_parity(binary_artifacts, count=1)
    verdicts = _verdicts(report)
    assert set(verdicts) == {ENCODER_MODEL, DECODER_MODEL, PROMPT_MODEL}
    assert report.passed and all(v.status == "pass" for v in verdicts.values())
    prompt_rows = [r.output for r in report.rows if r.model == PROMPT_MODEL and r.backend == CPU]
    for kind in ("boxes", "points"):
        assert f"low_res_logits ({kind})" in prompt_rows and f"iou_predictions ({kind})" in prompt_rows
    assert verdicts[PROMPT_MODEL].min_mask_iou is not None and verdicts[PROMPT_MODEL].max_abs < 1e-3
    table = report.table()
    assert f"per model, {CPU}:" in table and "prompt decoder: max abs (logits)" in table
    assert [m["model"] for m in report.to_dict()["models"]] == [ENCODER_MODEL, DECODER_MODEL, PROMPT_MODEL]


def test_verification_prompts_follow_the_decoder_layout():
    coords, labels = verification_prompts(256, "boxes", seed=3)
    assert coords.shape == (2, 2, 2) and (labels == [[2, 3], [2, 3]]).all()
    assert (coords[:, 0] <= coords[:, 1]).all() and coords.min() >= 0 and coords.max() < 256
    coords, labels = verification_prompts(256, "points", seed=3)
    assert coords.shape == (2, 3, 2) and (labels[:, -1] == -1).all() and (labels[:, 0] == 1).all()


def _damage_prompt_decoder(directory):
    """Swap the prompt decoder's two largest same-shaped float initializers (a bad export, not tampering:
    the manifest is rewritten with the damaged file's hash, so the runtime opens it)."""
    path = directory / "prompt_decoder.onnx"
    model = onnx.load(str(path))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1]
    by_shape = {}
    for tensor in sorted(floats, key=lambda t: -int(np.prod(t.dims))):
        by_shape.setdefault(tuple(tensor.dims), []).append(tensor)
    first, second = next(pair for pair in by_shape.values() if len(pair) >= 2)[:2]
    a, b = numpy_helper.to_array(first).copy(), numpy_helper.to_array(second).copy()
    assert not np.array_equal(a, b)
    first.CopyFrom(numpy_helper.from_array(b, first.name))
    second.CopyFrom(numpy_helper.from_array(a, second.name))
    onnx.save(model, str(path))
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][path.name].update(_describe(path))
    manifest_path.write_text(json.dumps(manifest, indent=2))


def test_a_damaged_prompt_decoder_fails_verify(binary_artifacts, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(binary_artifacts, damaged)
    _damage_prompt_decoder(damaged)
    read_manifest(damaged)  # the manifest is consistent: only the computation is wrong
    report = verify_parity(damaged, count=1)
    verdicts = _verdicts(report)
    assert not report.passed and verdicts[PROMPT_MODEL].status == "FAIL"
    assert verdicts[ENCODER_MODEL].status == "pass" and verdicts[DECODER_MODEL].status == "pass"
    capsys.readouterr()
    assert main(["verify", str(damaged), "--count", "1"]) == 1
    captured = capsys.readouterr()
    assert "prompt decoder: max abs (logits)" in captured.out and "FAIL" in captured.out
    assert "miss the pass criteria" in captured.err


def test_verify_without_prompt_decoder_says_so(binary_adapter, tmp_path, capsys):
    out, _ = export_artifacts(binary_adapter, tmp_path / "art", ExportSpec(merge="fused"))
    report = verify_parity(out, count=1)
    assert report.passed and _verdicts(report)[PROMPT_MODEL].status == NOT_IN_ARTIFACT
    result = tmp_path / "verify.json"
    assert main(["verify", str(out), "--count", "1", "--json", str(result)]) == 0
    assert f"prompt decoder: {NOT_IN_ARTIFACT}" in capsys.readouterr().out
    models = {m["model"]: m for m in json.loads(result.read_text())["models"]}
    assert models[PROMPT_MODEL]["status"] == NOT_IN_ARTIFACT and models[ENCODER_MODEL]["status"] == "pass"


def test_verify_logs_progress_per_model_and_image(binary_artifacts, capsys):
    """In a log (stderr not a terminal) every model and image gets its line; --no-progress is silent."""
    assert main(["verify", str(binary_artifacts), "--count", "2"]) == 0
    log = capsys.readouterr().err
    models = ("image encoder", "prompt-free decoder", "prompt decoder (boxes)", "prompt decoder (points)")
    for model in models:
        assert f"verify: {CPU} {model}, image 2/2" in log
    assert "verify: rebuild the PyTorch model" in log
    assert main(["verify", str(binary_artifacts), "--count", "1", "--no-progress"]) == 0
    assert "image 1/1" not in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--latency", "--repeats", "2"], ["--against-plain-sam"]])
def test_latency_is_optional(binary_artifacts, tmp_path, flags):
    result = tmp_path / "v.json"
    main(["verify", str(binary_artifacts), "--count", "1", *flags, "--json", str(result)])
    proof = json.loads(result.read_text())["against_plain_sam"]
    assert ("image_encoder_latency" in proof) == ("--latency" in flags)
    if "--latency" in flags:
        assert proof["image_encoder_latency"]["repeats"] == 2
