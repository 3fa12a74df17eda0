"""The real-photograph data set: seeded, bundled files only, ordinary folder layout."""

import numpy as np
from PIL import Image

from naslora_deploy.training.data.folder import discover
from naslora_deploy.training.data.photos import PHOTOS, load_photos, write_photo_dataset


def test_photographs_come_from_the_installed_wheel():
    photos = load_photos()
    assert len(photos) == len(PHOTOS) and all(p.dtype == np.uint8 and p.shape[2] == 3 for p in photos)


def test_seeded_folder_data_set_with_texture_inside_a_shape(tmp_path):
    a = write_photo_dataset(tmp_path / "a", count=3, seed=4, val=1, test=2)
    b = write_photo_dataset(tmp_path / "b", count=3, seed=4, val=1, test=2)
    splits = discover(a)
    assert [len(splits.split(s)) for s in ("train", "val", "test")] == [3, 1, 2]
    for (image, mask), (image_b, _) in zip(splits.split("train"), discover(b).split("train")):
        assert np.array_equal(np.asarray(Image.open(image)), np.asarray(Image.open(image_b)))
        labels = np.asarray(Image.open(mask))
        assert set(np.unique(labels)) == {0, 255} and 0.03 < (labels > 0).mean() < 0.6


def test_multiclass_version_has_three_classes_and_the_binary_default_stays_binary(tmp_path):
    multi = write_photo_dataset(tmp_path / "multi", count=3, seed=4, val=1, test=1, multiclass=True)
    splits = discover(multi)
    assert splits.classes.names == ["background", "blob", "box"]
    for _, mask in splits.split("train"):
        labels = np.asarray(Image.open(mask))
        assert set(np.unique(labels)) == {0, 1, 2}
        assert all(0.01 < (labels == c).mean() < 0.9 for c in (0, 1, 2))
    binary = write_photo_dataset(tmp_path / "binary", count=3, seed=4, val=1, test=2)
    again = write_photo_dataset(tmp_path / "again", count=3, seed=4, val=1, test=2, multiclass=False)
    for (image, mask), (image_b, mask_b) in zip(
        discover(binary).split("test"), discover(again).split("test")
    ):
        assert np.array_equal(np.asarray(Image.open(image)), np.asarray(Image.open(image_b)))
        assert np.array_equal(np.asarray(Image.open(mask)), np.asarray(Image.open(mask_b)))
    assert not (binary / "classes.json").exists()
