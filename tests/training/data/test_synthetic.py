import numpy as np
from PIL import Image

from naslora_deploy.training.data.synthetic import write_synthetic_dataset


def test_synthetic_dataset_is_seeded_and_ordinary(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", count=4, seed=5)
    b = write_synthetic_dataset(tmp_path / "b", count=4, seed=5)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    for rel in files:
        assert np.array_equal(np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel)))
    masks = [np.asarray(Image.open(p)) for p in (a / "train" / "masks").iterdir()]
    assert all(set(np.unique(m)) <= {0, 255} for m in masks) and any(m.max() == 255 for m in masks)
    multi = write_synthetic_dataset(tmp_path / "m", count=4, multiclass=True, seed=5)
    labels = np.concatenate(
        [np.asarray(Image.open(p)).ravel() for p in (multi / "train" / "masks").iterdir()]
    )
    assert set(np.unique(labels)) <= {0, 1, 2} and (multi / "classes.json").is_file()
