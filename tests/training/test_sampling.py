"""Flips mirror the image content and keep SAM's bottom/right padding where test images have it."""

import numpy as np
import pytest
import torch
from PIL import Image

from naslora_deploy.common.imaging import IGNORE_INDEX
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data.dataset import SegmentationDataset
from naslora_deploy.training.sampling import flip_batch, flips


def _pair(tmp_path, height, width):
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[:, : width // 3] = 255  # an object on the left: mirrored, it is on the right
    Image.fromarray(image).save(tmp_path / f"i{height}x{width}.png")
    Image.fromarray(mask).save(tmp_path / f"m{height}x{width}.png")
    return tmp_path / f"i{height}x{width}.png", tmp_path / f"m{height}x{width}.png"


def _flipped_batch(dataset, count):
    """A batch of ``count`` copies of the item, and a (seed, epoch) that flips the first one."""
    items = [dataset[0] for _ in range(count)]
    batch = {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}
    seed = next(s for s in range(100) if flips(batch, s, 0)[0])
    return batch, seed


@pytest.mark.parametrize("shape", [(60, 30), (30, 60)])  # tall: padded on the right; wide: at the bottom
def test_flip_keeps_the_padding_bottom_right_and_mirrors_the_content(tmp_path, shape):
    dataset = SegmentationDataset([_pair(tmp_path, *shape)], ClassSpec(), 64)
    item = dataset[0]
    h, w = item["size"].tolist()
    assert (h, w) == (64, 32) if shape == (60, 30) else (32, 64)
    batch, seed = _flipped_batch(dataset, 1)
    before_image, before_labels = batch["image"][0].clone(), batch["labels"][0].clone()
    flip_batch(batch, seed, 0)
    image, labels = batch["image"][0], batch["labels"][0]
    # padding: still at the bottom and right, untouched
    assert (labels[h:] == IGNORE_INDEX).all() and (labels[:, w:] == IGNORE_INDEX).all()
    assert (image[:, h:] == 0).all() and (image[:, :, w:] == 0).all()
    assert (labels[:h, :w] != IGNORE_INDEX).all()
    # content: the valid region mirrored
    assert torch.equal(labels[:h, :w], before_labels[:h, :w].flip(-1))
    assert torch.equal(image[:, :h, :w], before_image[:, :h, :w].flip(-1))
    assert labels[:h, w - 1].eq(1).all() and labels[:h, 0].eq(0).all()  # the object moved to the right


def test_flips_are_a_pure_function_of_seed_epoch_and_index(tmp_path):
    dataset = SegmentationDataset([_pair(tmp_path, 40, 24)], ClassSpec(), 64)
    batch, seed = _flipped_batch(dataset, 2)
    batch["index"] = torch.tensor([3, 11])
    assert flips(batch, seed, 5) == flips(batch, seed, 5)
    decided = [flips(batch, s, e) for s in range(8) for e in range(4)]
    assert any(d[0] for d in decided) and not all(d[0] for d in decided)


def test_a_batch_without_sizes_is_refused():
    batch = {"image": torch.zeros(1, 3, 8, 8), "labels": torch.zeros(1, 8, 8), "index": torch.tensor([0])}
    with pytest.raises(ValueError, match="valid \\(h, w\\)"):
        flip_batch(batch, 0, 0)
