"""The runtime and the CLI's runtime commands where torch cannot be imported, on every path ``auto`` takes."""

import json
import shutil

import pytest
from conftest import run_without, run_without_torch

from naslora_deploy.core.merging.spec import MergeSpec


def test_runtime_imports_without_torch():
    result = run_without_torch(
        """
        import naslora_deploy.runtime
        import naslora_deploy
        assert naslora_deploy.__version__
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.fixture(scope="module")
def photo_file(photo, tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(photo).save(path)
    return path


@pytest.fixture(scope="module")
def with_engine(binary_artifacts, tmp_path_factory):
    """The artifacts plus an image_encoder.engine: ``auto`` tries TensorRT first on a GPU-capable device."""
    copy = tmp_path_factory.mktemp("engine") / "art"
    shutil.copytree(binary_artifacts, copy)
    (copy / "image_encoder.engine").write_bytes(b"not an engine")
    (copy / "image_encoder.engine.json").write_text(
        json.dumps({"tensorrt_version": "0.0", "compute_capability": None})
    )
    return copy


SEGMENT = """
from naslora_deploy.runtime import Segmenter
seg = Segmenter.open({artifacts!r}, device={device!r})
result = seg.segment({photo!r})
prompted = seg.segment({photo!r}, box=(10, 10, 120, 100))
assert "torch" not in sys.modules
print(seg.backend_name, result.area, prompted.score is not None)
"""


@pytest.mark.parametrize("device", ["auto", "cpu", None])
def test_auto_without_engines_takes_onnxruntime(binary_artifacts, photo_file, device):
    result = run_without_torch(
        SEGMENT.format(artifacts=str(binary_artifacts), device=device, photo=str(photo_file))
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("onnxruntime (CPU)") and result.stdout.strip().endswith("True")


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_auto_with_engines_falls_back_to_onnxruntime(with_engine, photo_file, device):
    """TensorRT is tried (device auto) and fails (no TensorRT, or a bad engine): onnxruntime takes over."""
    result = run_without_torch(
        SEGMENT.format(artifacts=str(with_engine), device=device, photo=str(photo_file))
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("onnxruntime (CPU)")


def test_auto_with_nothing_that_loads_says_why_in_one_error(with_engine):
    result = run_without(
        f"""
        from naslora_deploy.common.errors import NasloraError
        from naslora_deploy.runtime import Segmenter
        try:
            Segmenter.open({str(with_engine)!r})
        except NasloraError as exc:
            print(exc)
        """,
        blocked=("torch", "onnxruntime"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    message = result.stdout.strip()
    assert message.startswith("no backend could load these artifacts (tensorrt: ")
    assert (
        "; onnxruntime: the onnxruntime backend needs the onnxruntime package: pip install onnxruntime"
        in message
    )
    assert "torch" not in message.replace("blocked", "")


CLI = """
from naslora_deploy.cli import main
code = main({argv!r})
assert "torch" not in sys.modules, "the CLI imported torch"
sys.exit(code)
"""


def test_cli_predict_and_bench_without_torch(binary_artifacts, photo_file, tmp_path):
    out = tmp_path / "pred"
    result = run_without_torch(
        CLI.format(argv=["predict", str(binary_artifacts), str(photo_file), "--out", str(out)])
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backend: onnxruntime (CPU); 1 image(s)" in result.stdout
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["file"] == str(photo_file)
    result = run_without_torch(
        CLI.format(argv=["bench", str(binary_artifacts), "--runs", "2", "--warmup", "1"])
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "onnxruntime (CPU)" in result.stdout


EVERYDAY = """
import numpy as np
from naslora_deploy.runtime import Segmenter
seg = Segmenter.open({artifacts!r}, "onnxruntime", "cpu")
seg.set_image({photo!r})
boxes = seg.predict(boxes=np.array([[10, 10, 120, 100], [30, 40, 90, 90]]), multimask_output=False)
points = seg.predict(points=np.array([[60, 50]]), labels=np.array([1]))
found = seg.generate({photo!r}, points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0)
tiled = seg.segment_tiled({photo!r}, tile=64, overlap=16)
assert "torch" not in sys.modules
print(boxes.masks.shape[:2], points.masks.shape[0], len(found) > 0, tiled.mask.shape == tiled.size)
"""


def test_predictor_everything_and_tiling_without_torch(binary_artifacts, photo_file, tmp_path):
    """The everyday runtime (predictor, everything mode, tiling; API and CLI) never imports torch."""
    result = run_without_torch(EVERYDAY.format(artifacts=str(binary_artifacts), photo=str(photo_file)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(2, 1) 3 True True"
    loose = ["--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0"]
    for flags in (["--everything", *loose], ["--tile", "64", "--overlap", "8"]):
        out = tmp_path / flags[0].strip("-")
        argv = ["predict", str(binary_artifacts), str(photo_file), "--out", str(out), *flags]
        result = run_without_torch(CLI.format(argv=argv))
        assert result.returncode == 0, result.stderr[-2000:]
        assert (out / "results.jsonl").is_file()


def test_cli_help_and_torch_backend_without_torch(binary_artifacts, photo_file, tmp_path):
    result = run_without_torch(CLI.format(argv=["--help"]))
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_without_torch(
        CLI.format(
            argv=[
                "predict",
                str(binary_artifacts),
                str(photo_file),
                "--out",
                str(tmp_path),
                "--backend",
                "torch",
            ]
        )
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "naslora-deploy predict: error: --backend torch needs the torch package: pip install torch"
    )


def test_int8_artifacts_run_without_torch(binary_adapter, binary_data, photo_file, tmp_path):
    """INT8 (QDQ) artifacts, exported here, segment and prompt in a process where torch cannot load."""
    from naslora_deploy.exporters.export import ExportSpec, export_artifacts

    spec = ExportSpec(
        precision="int8", merge=MergeSpec(calibration=str(binary_data), calibration_images=2), prompts=True
    )
    out, manifest = export_artifacts(binary_adapter, tmp_path / "int8", spec)
    assert manifest["onnx_precision"] == "int8"
    result = run_without_torch(SEGMENT.format(artifacts=str(out), device="cpu", photo=str(photo_file)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("onnxruntime (CPU)") and result.stdout.strip().endswith("True")
