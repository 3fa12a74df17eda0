"""The torch-free runtime: backends, pre/post-processing parity, prompts, bad input."""

import re

import numpy as np
import pytest
import torch

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.runtime import Segmenter


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_auto_picks_the_fastest_that_loads(binary_artifacts):
    assert Segmenter.open(binary_artifacts).backend_name.startswith("onnxruntime")


def test_postprocessing_matches_sams_within_one_pixel(binary_artifacts, photo):
    from scipy import ndimage

    from naslora_deploy import build_sam
    from naslora_deploy.common.imaging import preprocess_image, resized_shape

    seg = Segmenter.open(binary_artifacts, backend="onnxruntime")
    batch = preprocess_image(photo, 256)[None]
    outputs = seg.backend.decode(seg.backend.encode(batch))
    ours = seg._postprocess(outputs, 0, photo.shape[:2]).mask
    low_res = torch.from_numpy(outputs["low_res_logits"])
    sam = build_sam("vit_tiny")  # SAM's own post-processing: upscale, crop the padding, resize back
    theirs = (
        sam.postprocess_masks(low_res, resized_shape(*photo.shape[:2], 256), photo.shape[:2])[0, 0] > 0
    ).numpy()
    differ = ours != theirs
    boundary = ndimage.binary_dilation(theirs) ^ ndimage.binary_erosion(theirs)
    assert differ.sum() < 0.01 * differ.size
    assert not (differ & ~ndimage.binary_dilation(boundary)).any(), (
        "masks may differ only within one pixel of the boundary"
    )


def test_preprocessing_is_the_training_pipelines(binary_artifacts, tmp_path, photo):
    from PIL import Image

    from naslora_deploy.core.model.classes import ClassSpec
    from naslora_deploy.training.data.dataset import SegmentationDataset

    Image.fromarray(photo).save(tmp_path / "p.png")
    Image.fromarray(np.zeros(photo.shape[:2], np.uint8)).save(tmp_path / "m.png")
    training = SegmentationDataset([(tmp_path / "p.png", tmp_path / "m.png")], ClassSpec(), 256)[0][
        "image"
    ].numpy()
    seg = Segmenter.open(binary_artifacts, backend="onnxruntime")
    np.testing.assert_array_equal(seg._batch([photo])[0], training)


def test_minmax_preprocessing_is_the_same_in_training_evaluation_and_runtime(tmp_path, photo):
    """LiteMedSAM's normalisation, as a manifest records it, read by the runtime's own code path."""
    from PIL import Image

    from naslora_deploy.core.model.classes import ClassSpec
    from naslora_deploy.runtime.manifest import Manifest
    from naslora_deploy.training.data.dataset import SegmentationDataset

    Image.fromarray(photo).save(tmp_path / "p.png")
    Image.fromarray(np.zeros(photo.shape[:2], np.uint8)).save(tmp_path / "m.png")
    pairs = [(tmp_path / "p.png", tmp_path / "m.png")]
    training = SegmentationDataset(pairs, ClassSpec(), 256, "minmax")[0]["image"].numpy()
    record = dict(variant="litemedsam", image_size=256, head="binary", normalization="minmax")
    manifest = Manifest(
        **record, files={}, precision="fp32", onnx_precision="fp32", merge={}, export={}, source={}
    )
    runtime = Segmenter(tmp_path, manifest, backend=None)._batch([photo])[0]
    np.testing.assert_array_equal(runtime, training)
    new_h, new_w = 256 * photo.shape[0] // max(photo.shape[:2]), 256 * photo.shape[1] // max(photo.shape[:2])
    content = runtime[:, : new_h - 1, : new_w - 1]
    assert content.min() == 0.0 and content.max() == 1.0  # stretched to [0, 1]; the padding stays 0
    assert (runtime[:, new_h + 1 :, :] == 0).all() and (runtime[:, :, new_w + 1 :] == 0).all()


def test_image_kinds_and_batches(binary_artifacts, photo):
    seg = Segmenter.open(binary_artifacts, backend="onnxruntime")
    gray = photo[:, :, 0]
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    sixteen = photo[:, :, 0].astype(np.uint16) * 257
    results = seg.segment_batch([photo, gray, rgba, sixteen])
    assert [r.size for r in results] == [photo.shape[:2]] * 4
    assert _iou(results[0].mask, results[2].mask) == 1.0  # RGBA drops alpha
    with pytest.raises(NasloraError, match="must be a path or a numpy array"):
        seg.segment(42)


@pytest.mark.parametrize(
    "array, phrase",
    [
        (np.zeros((0, 0), np.uint8), "0x0 pixels"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((8, 8), 70000, np.int32), "outside 0..65535"),
        (np.zeros((8,), np.uint8), "got shape (8,)"),
        (np.zeros((8, 8, 2), np.uint8), "got shape (8, 8, 2)"),
        (np.zeros((1, 2000), np.uint8), "too thin"),
    ],
)
def test_bad_arrays_are_refused_at_the_entry(binary_artifacts, array, phrase):
    seg = Segmenter.open(binary_artifacts, backend="onnxruntime")
    with pytest.raises(NasloraError, match=re.escape(phrase)) as caught:
        seg.segment(array)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("the image array: ")


def test_other_dtypes_are_converted(binary_artifacts, photo):
    seg = Segmenter.open(binary_artifacts, backend="onnxruntime")
    reference = seg.segment(photo).probability
    for array in (photo.astype(np.int32), photo.astype(np.float64) / 255.0, photo[:, :, :1]):
        result = seg.segment(array)
        assert result.mask.shape == photo.shape[:2] and np.isfinite(result.probability).all()
    np.testing.assert_allclose(seg.segment(photo.astype(np.int32)).probability, reference)


def test_a_thin_file_is_named(binary_artifacts, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((1, 2000), np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(NasloraError, match=r"thin.png: 2000x1 pixels is too thin"):
        Segmenter.open(binary_artifacts, backend="onnxruntime").segment(tmp_path / "thin.png")


def test_multiclass_results(multiclass_artifacts, photo):
    result = Segmenter.open(multiclass_artifacts, backend="onnxruntime").segment(photo)
    assert result.class_map.shape == photo.shape[:2] and result.class_map.dtype == np.uint8
    assert sum(result.class_areas.values()) == photo.shape[0] * photo.shape[1]
    assert set(result.class_areas) == {"class_0", "class_1", "class_2"}


def test_prompts(binary_artifacts, multiclass_artifacts, photo):
    seg = Segmenter.open(binary_artifacts, backend="onnxruntime")
    result = seg.segment(photo, points=[(60, 50, 1), (10, 10, 0)], box=(20, 20, 150, 120))
    assert result.score is not None and result.mask.shape == photo.shape[:2]
    with pytest.raises(ValueError, match=r"point 0 is \(1, 2, 3, 4\)"):
        seg.segment(photo, points=[(1, 2, 3, 4)])
    with pytest.raises(ValueError, match="must be \\(x0, y0, x1, y1\\)"):
        seg.segment(photo, box=(10, 10, 5, 5))
    with pytest.raises(NasloraError, match="has no prompt decoder; export it with --prompts"):
        Segmenter.open(multiclass_artifacts, backend="onnxruntime").segment(photo, points=[(1, 1)])


def test_changed_artifact_is_refused(binary_artifacts, tmp_path):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(binary_artifacts, copy)
    (copy / "mask_decoder.onnx").write_bytes(b"tampered")
    with pytest.raises(NasloraError, match="does not match its sha256"):
        Segmenter.open(copy)
