"""Each annotation format trains end to end (vit_tiny, a couple of steps) and records what it read."""

import json
import warnings

import numpy as np
import pytest
from fixtures_formats import write_coco, write_labelme, write_npz, write_tiff_folder

from naslora_deploy.core.runs.checkpoint import read_spec
from naslora_deploy.training.trainer import TrainConfig, Trainer


def _train(data, out, **changes):
    fields = dict(data=str(data), out=str(out), model="vit_tiny", epochs=1, search_start=1, batch_size=2)
    fields.update(progress=False, max_steps=2, val_fraction=0.0)
    fields.update(changes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        run = Trainer(TrainConfig(**fields)).run()
    return read_spec(run)


def test_coco_trains_multiclass_with_the_json_category_order(tmp_path):
    spec = _train(write_coco(tmp_path / "coco"), tmp_path / "run")
    assert spec.classes.names == ["background", "cat", "dog"]
    assert spec.input_mapping is None


def test_coco_category_trains_the_binary_head(tmp_path):
    spec = _train(write_coco(tmp_path / "coco", "roboflow"), tmp_path / "run", category=["dog"])
    assert spec.classes.binary and spec.training["category"] == ["dog"]


def test_labelme_trains(tmp_path):
    spec = _train(write_labelme(tmp_path / "lm"), tmp_path / "run")
    assert spec.classes.names == ["background", "cat", "dog"]  # the sorted labels


def test_npz_volume_trains(tmp_path):
    spec = _train(write_npz(tmp_path / "npz"), tmp_path / "run")
    assert spec.classes.binary


def test_multiband_uint16_tiff_trains_and_records_its_input_mapping(tmp_path):
    spec = _train(write_tiff_folder(tmp_path / "tif"), tmp_path / "run", bands=[4, 3, 2], stretch=[2, 98])
    expected = {"bands": [4, 3, 2], "stretch": {"percentiles": [2.0, 98.0], "per": "image"}}
    assert spec.input_mapping == expected
    saved = json.loads((tmp_path / "run" / "last" / "adapter_config.json").read_text())
    assert saved["input_mapping"] == expected


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(bands=[1, 2]), "--bands takes 1 or 3 band numbers"),
        (dict(stretch=[98, 2]), "--stretch takes two percentiles"),
        (dict(category=["cat"], classes=3), "--category trains the binary head"),
    ],
)
def test_bad_data_options_are_one_line(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), **changes).validate()


def test_input_mapping_is_idempotent_in_training_reads(tmp_path):
    from naslora_deploy.common.imaging import InputMapping, image_array, read_image

    data = write_tiff_folder(tmp_path / "tif", count=1)
    mapping = InputMapping.of([4, 3, 2], [2, 98])
    once = read_image(data / "images" / "t0.tif", mapping)
    assert np.array_equal(image_array(once, "again", mapping), once)  # already mapped: not mapped twice


def test_the_mapping_reaches_the_manifest_and_the_runtime_applies_it(tmp_path):
    import tifffile

    from naslora_deploy.exporters.export import export_artifacts
    from naslora_deploy.exporters.specs import ExportSpec
    from naslora_deploy.runtime.segmenter import Segmenter

    data = write_tiff_folder(tmp_path / "tif", count=2)
    _train(data, tmp_path / "run", bands=[4, 3, 2], stretch=[2, 98], max_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, manifest = export_artifacts(tmp_path / "run", tmp_path / "art", ExportSpec())
    assert manifest["input_mapping"]["bands"] == [4, 3, 2]
    segmenter = Segmenter.open(out, backend="onnxruntime")
    path = data / "images" / "t0.tif"
    from_path = segmenter._load(path)
    from_array = segmenter._load(np.moveaxis(tifffile.imread(path), 0, -1))  # raw (H, W, 5) uint16
    assert np.array_equal(from_path, from_array) and from_path.shape == (32, 40, 3)
    assert segmenter.segment(path).mask.shape == (32, 40)
