"""predict on a folder with a corrupt file, bench's output, and the Triton repository."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from naslora_deploy.cli import main
from naslora_deploy.exporters.export import ExportSpec, export_artifacts


@pytest.fixture(scope="module")
def artifacts(binary_adapter, tmp_path_factory):
    return export_artifacts(binary_adapter, tmp_path_factory.mktemp("pb") / "art", ExportSpec(prompts=True))[
        0
    ]


def test_predict_folder_with_one_corrupt_file(artifacts, binary_data, tmp_path):
    import shutil

    folder = tmp_path / "in"
    shutil.copytree(binary_data / "test" / "images", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "naslora_deploy",
            "predict",
            str(artifacts),
            str(folder),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1  # some files failed
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    good = sorted(p for p in folder.iterdir() if p.name != "broken.png")
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == [str(p) for p in good]
    for path, record in zip(good, records):  # outputs keep the whole input name: x.png -> x.png_mask.png
        assert record["mask"] == f"{path.name}_mask.png" and record["overlay"] == f"{path.name}_overlay.png"
        mask = np.asarray(Image.open(tmp_path / "out" / record["mask"]))
        assert mask.shape == np.asarray(Image.open(path)).shape[:2] and set(np.unique(mask)) <= {0, 255}
        assert (tmp_path / "out" / record["overlay"]).is_file()
    assert set(records[0]["timings_ms"]) == {"pre", "encoder", "decoder", "post"}


def test_predict_with_prompts_and_a_glob(artifacts, binary_data, tmp_path):
    pattern = str(binary_data / "test" / "images" / "*.png")
    code = main(
        [
            "predict",
            str(artifacts),
            pattern,
            "--out",
            str(tmp_path),
            "--points",
            "40,40,1;5,5,0",
            "--box",
            "10,10,120,120",
            "--no-progress",
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert records and all(r["score"] is not None for r in records)
    assert main(["predict", str(artifacts), pattern, "--out", str(tmp_path), "--box", "1,2,3"]) == 2


def test_bench_alternates_two_artifacts(artifacts, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                str(artifacts),
                str(artifacts),
                "--runs",
                "4",
                "--warmup",
                "1",
                "--batch-sizes",
                "1,2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert [r["batch"] for r in rows] == [1, 2]
    for row in rows:
        for side in ("a", "b"):
            stats = row[side]
            assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] and stats["images_per_s"] > 0
        assert row["ratio_a_over_b"] > 0 and row["peak_host_mb"] > 0
    assert "a/b median ratio" in capsys.readouterr().out


def test_triton_repository_configs_match_the_onnx_files(binary_adapter, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from naslora_deploy.exporters.onnx_export import io_signature

    assert main(["export", str(binary_adapter), "--format", "triton", "--out", str(tmp_path / "t")]) == 0
    repository = tmp_path / "t" / "model_repository"
    types = {"float32": model_config_pb2.TYPE_FP32}
    for model, onnx_name in (
        ("naslora_image_encoder", "image_encoder"),
        ("naslora_mask_decoder", "mask_decoder"),
    ):
        config = text_format.Parse(
            (repository / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        onnx_file = repository / model / "1" / "model.onnx"
        signature = io_signature(onnx_file)
        assert config.name == model and config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
        assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        for kind in ("inputs", "outputs"):
            tensors = config.input if kind == "inputs" else config.output
            assert [t.name for t in tensors] == [v["name"] for v in signature[kind]]
            assert [list(t.dims) for t in tensors] == [v["shape"][1:] for v in signature[kind]]
            assert [t.data_type for t in tensors] == [types[v["dtype"]] for v in signature[kind]]
    ensemble = text_format.Parse(
        (repository / "naslora_segment" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["naslora_image_encoder", "naslora_mask_decoder"]
    assert dict(steps[0].output_map) == {"image_embeddings": "image_embeddings"}
    assert [o.name for o in ensemble.output] == ["low_res_logits", "mask_logits"]
    assert not ensemble.HasField("dynamic_batching")  # Triton refuses it on ensembles


def test_dynamic_batching_prefers_powers_of_two_up_to_the_largest_batch():
    from naslora_deploy.exporters.triton import dynamic_batching

    assert dynamic_batching(1) == ""
    assert "preferred_batch_size: [ 2, 4, 6 ]" in dynamic_batching(6)
    assert "preferred_batch_size: [ 2, 4, 8, 16 ]" in dynamic_batching(16)


def test_bench_times_the_predictor_path(artifacts, tmp_path, capsys):
    """One embedding and N prompts in one call against N one-shot calls; every figure measured."""
    out = tmp_path / "bench.json"
    argv = ["bench", str(artifacts), "--runs", "3", "--warmup", "1", "--prompts", "1,8", "--json", str(out)]
    assert main(argv) == 0
    rows = [r for r in json.loads(out.read_text()) if "prompts" in r]
    assert [r["prompts"] for r in rows] == [1, 8]
    for row in rows:
        stats = row["a"]
        assert min(stats["set_image_p50_ms"], stats["predict_p50_ms"], stats["one_shot_p50_ms"]) > 0
        expected = (
            row["prompts"] * stats["one_shot_p50_ms"] / (stats["set_image_p50_ms"] + stats["predict_p50_ms"])
        )
        assert stats["speedup"] == pytest.approx(expected)
    assert "speedup" in capsys.readouterr().out
