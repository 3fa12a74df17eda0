"""The comparison's data set: real photographs (scikit-image's), one texture in a random shape on another.

Seeded, so every session and machine regenerates the same files; written once under
``benchmarks/results/.data/`` (ignored by git) and reused.
"""

from __future__ import annotations

from pathlib import Path

from naslora_deploy.training.data.photos import write_photo_dataset

DATA_ROOT = Path(__file__).parent / "results" / ".data"


def photo_set(train: int = 64, val: int = 16, test: int = 32, seed: int = 0) -> Path:
    """The folder of a ``train``/``val``/``test`` photo data set, written if it is not there yet."""
    root = DATA_ROOT / f"photos-{train}-{val}-{test}-s{seed}"
    done = root / ".complete"
    if not done.is_file():
        write_photo_dataset(root, count=train, seed=seed, val=val, test=test)
        done.write_text("ok\n")
    return root
