"""``naslora-deploy predict``: masks, overlays and ``results.jsonl`` for files, folders or globs."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import IMAGE_SUFFIXES, overlay, save_png
from naslora_deploy.common.io import atomic_write
from naslora_deploy.common.progress import progress as progress_bar


def expand_inputs(inputs: Iterable[str]) -> List[Path]:
    """Files, folders (their images, sorted) and globs, in order, without duplicates."""
    found: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            if not matches:
                raise NasloraError(f"{item}: no such file, folder or matching glob")
            found += matches
    return list(dict.fromkeys(found))


def predict_files(
    segmenter, files: List[Path], out: Path, points=None, box=None, progress: Optional[bool] = None
) -> Tuple[int, List[str]]:
    """Segment every file; a bad file is reported and skipped. Returns (done, errors).

    ``progress``: a bar over the files (None: on a terminal only, and only for two or more).
    """
    from naslora_deploy.runtime.segmenter import load_image

    out.mkdir(parents=True, exist_ok=True)
    records, errors = [], []
    for path in progress_bar(files, "predict", progress if len(files) > 1 else False):
        try:
            image = load_image(path)
            result = segmenter.segment(image, points=points, box=box)
        except (NasloraError, ValueError) as exc:
            errors.append(f"{path}: {exc}" if str(path) not in str(exc) else str(exc))
            continue
        mask_png = result.class_map if result.class_map is not None else (result.mask * 255).astype(np.uint8)
        save_png(out / f"{path.stem}_mask.png", mask_png)
        save_png(out / f"{path.stem}_overlay.png", overlay(image, result.mask, result.class_map))
        records.append(
            {
                "file": str(path),
                "width": result.size[1],
                "height": result.size[0],
                "area": result.area,
                "area_fraction": result.area / float(result.size[0] * result.size[1]),
                "class_areas": result.class_areas,
                "score": result.score,
                "timings_ms": {k: round(v, 3) for k, v in result.timings.items()},
            }
        )
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(out / "results.jsonl", lambda tmp: tmp.write_text(text))
    return len(records), errors
