"""``--augment``: masks move with their images, seeded per (seed, epoch, index), resume-exact."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from naslora_deploy.common.imaging import IGNORE_INDEX, PIXEL_MEAN, PIXEL_STD
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data.augment import AUGMENTS, Augmentation, sample_seed
from naslora_deploy.training.data.dataset import SegmentationDataset
from naslora_deploy.training.prompts import component_boxes
from naslora_deploy.training.trainer import TrainConfig, Trainer

H, W = 48, 80  # not square: a 90-degree rotation swaps them


def _coordinates():
    """An image whose pixels encode where they are (R = x, G = y), and a label map that is a function of
    (x, y): after any geometric transform, each pixel's labels can be checked against its colour."""
    y, x = np.mgrid[:H, :W]
    image = np.stack([x * 3, y * 5, np.full_like(x, 77)], axis=-1).astype(np.uint8)
    return image, _labels_at(x, y)


def _labels_at(x, y):
    return ((x // 7 + y // 5) % 3).astype(np.uint8)  # three classes in a tilted checkerboard


def test_light_moves_every_label_with_its_pixel():
    image, labels = _coordinates()
    moved = set()
    for index in range(16):
        out_image, out_labels = Augmentation("light", seed=3, epoch=1).apply(image, labels, index)
        assert out_image.shape[:2] == out_labels.shape and sorted(out_labels.shape) == sorted((H, W))
        x, y = out_image[..., 0] // 3, out_image[..., 1] // 5
        assert (out_image[..., 2] == 77).all()
        np.testing.assert_array_equal(out_labels, _labels_at(x.astype(int), y.astype(int)))
        moved.add((out_labels.shape, out_image[0, 0, 0], out_image[0, 0, 1]))
    assert len(moved) >= 6, "16 draws should reach most of the eight flips/rotations"


def test_medium_moves_masks_with_images_and_fills_with_ignore():
    image = np.zeros((H, W, 3), np.uint8)
    labels = np.zeros((H, W), np.uint8)
    labels[10:30, 20:60] = 1
    image[labels == 1] = 255
    filled = 0
    for index in range(24):
        out_image, out_labels = Augmentation("medium", seed=0, epoch=0).apply(image, labels, index)
        bright = out_image.mean(axis=-1) > 128  # brightness/contrast at most +-20 %: 0 stays dark, 255 bright
        valid = out_labels != IGNORE_INDEX
        assert set(np.unique(out_labels)) <= {0, 1, IGNORE_INDEX}
        assert (bright[valid] == (out_labels[valid] == 1)).mean() > 0.97
        assert not bright[~valid].any(), "pixels an affine move brings in are black"
        filled += (~valid).any()
    assert filled, "some affine move should bring in ignored border"


def test_none_is_the_identity_and_the_dataset_is_unchanged(tmp_path):
    image, labels = _coordinates()
    out_image, out_labels = Augmentation("none", seed=5, epoch=2).apply(image, labels, 1)
    assert out_image is image and out_labels is labels
    pair = _write_pair(tmp_path, image, labels)
    classes = ClassSpec(num_classes=3)
    plain = SegmentationDataset([pair], classes, 64)[0]
    none = SegmentationDataset([pair], classes, 64, augment=Augmentation("none", 5, 2))[0]
    for key in ("image", "labels", "size"):
        assert torch.equal(plain[key], none[key])


def test_each_sample_is_a_pure_function_of_seed_epoch_and_index():
    image, labels = _coordinates()
    first = Augmentation("medium", seed=1, epoch=4)
    draws = [first.apply(image, labels, i) for i in (0, 1, 2, 3)]  # advance its generator
    again = Augmentation("medium", seed=1, epoch=4).apply(image, labels, 3)  # a fresh object, as on resume
    for a, b in zip(draws[3], again):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first.apply(image, labels, 3), again):  # the same object, drawn again
        np.testing.assert_array_equal(a, b)
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(3)}
    assert len(seeds) == 27


def test_boxes_follow_the_augmented_mask(tmp_path):
    image = np.zeros((H, W, 3), np.uint8)
    labels = np.zeros((H, W), np.uint8)
    labels[6:20, 10:34] = 1
    image[labels == 1] = 255
    pair = _write_pair(tmp_path, image, labels * 255)
    plain = SegmentationDataset([pair], ClassSpec(), 64)[0]
    boxes = set()
    for epoch in range(6):
        item = SegmentationDataset([pair], ClassSpec(), 64, augment=Augmentation("light", 0, epoch))[0]
        box, _ = component_boxes(item["labels"].numpy() == 1)
        pixels = item["image"].numpy().transpose(1, 2, 0) * PIXEL_STD + PIXEL_MEAN
        ys, xs = np.nonzero(pixels.mean(axis=-1) > 128)
        np.testing.assert_allclose(box[0], [xs.min(), ys.min(), xs.max(), ys.max()], atol=1)
        boxes.add(tuple(box[0]))
    assert len(boxes) > 1, "six epochs should move the box"
    assert boxes - {tuple(component_boxes(plain["labels"].numpy() == 1)[0][0])}, "some box moved"


def _write_pair(tmp_path, image, mask):
    Image.fromarray(image).save(tmp_path / "p.png")
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "m.png")
    return tmp_path / "p.png", tmp_path / "m.png"


def test_bad_values_are_refused_with_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^--augment must be one of none, light, medium, got 'heavy'$"):
        Augmentation("heavy")
    with pytest.raises(ValueError, match="--augment must be one of"):
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "o"), augment="heavy").validate()
    from click.testing import CliRunner

    from naslora_deploy.cli import cli

    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path), "--out", "o", "--augment", "heavy"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if "heavy" in line]
    assert len(errors) == 1 and "--augment" in errors[0] and all(a in errors[0] for a in AUGMENTS)


def _run(data, out, **changes):
    fields = dict(data=str(data), out=str(out), model="vit_tiny", epochs=2, search_start=1, batch_size=4)
    fields.update(lr=1e-3, augment="medium", progress=False)
    Trainer(TrainConfig(**{**fields, **changes})).run()
    return load_file(str(out / "last" / "adapter_model.safetensors"))


def test_a_resumed_run_continues_the_same_augmentation_stream(binary_data, tmp_path):
    straight = _run(binary_data, tmp_path / "straight")
    _run(binary_data, tmp_path / "cut", epochs=1)
    resumed = _run(binary_data, tmp_path / "cut", resume=True)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
