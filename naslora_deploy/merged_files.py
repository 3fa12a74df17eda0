"""Write merged models to disk: a plain SAM checkpoint (dense) or the fused form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from naslora_deploy.errors import NasloraError
from naslora_deploy.imaging import IMAGE_SUFFIXES, preprocess_image, read_image
from naslora_deploy.io import atomic_write, atomic_write_text
from naslora_deploy.merge import merge


def calibration_images(folder, count: int, image_size: int) -> torch.Tensor:
    """Up to ``count`` preprocessed images from ``folder`` (or its images/, train/images/)."""
    folder = Path(folder)
    for candidate in (folder / "train" / "images", folder / "images", folder):
        if candidate.is_dir():
            files = sorted(p for p in candidate.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                break
    else:
        raise NasloraError(f"calibration folder {folder} not found")
    if not files:
        raise NasloraError(f"no images in {folder} (png, jpg, jpeg, bmp, tif) for calibration")
    step = max(1, len(files) // count)
    chosen = files[::step][:count]
    return torch.from_numpy(np.stack([preprocess_image(read_image(p), image_size) for p in chosen]))


def save_state(path: Path, state: dict) -> Path:
    """A tensor dict to ``.safetensors`` or a ``torch.save`` file, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        return atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def sidecar_paths(out: Path) -> dict:
    """Where the report and (multi-class) head go, beside ``out``."""
    stem = out.with_suffix("")
    return {"report": Path(f"{stem}.report.json"), "head": Path(f"{stem}.head.safetensors")}


def write_merged(model, mode: str, out, calibration: Optional[torch.Tensor] = None, source: str = ""):
    """Merge a trained ``SegmentationModel`` and write it; returns (merged SAM, report, paths).

    dense: ``out`` is a plain SAM state dict (loads with ``sam_model_registry``);
    fused: ``out`` holds the fused model's state. The fidelity report (plus what
    the model is) goes to ``<stem>.report.json``; a multi-class class head and
    queries to ``<stem>.head.safetensors``.
    """
    out = Path(out)
    spec = model.spec
    merged_sam, report = merge(model.sam, mode, calibration=calibration)
    written = [save_state(out, merged_sam.state_dict())]
    paths = sidecar_paths(out)
    if model.class_head is not None:
        head = {f"class_head.{k}": v for k, v in model.class_head.state_dict().items()}
        written.append(save_state(paths["head"], head))
    description = {
        "variant": spec.variant,
        "image_size": spec.image_size,
        "head": spec.head,
        "classes": spec.classes.to_dict(),
        "num_queries": spec.num_queries,
        "adapter": spec.adapter.to_dict(),
        "source": source,
        "checkpoint": out.name,
        "head_weights": paths["head"].name if model.class_head is not None else None,
        "merge": report.to_dict(),
    }
    written.append(atomic_write_text(paths["report"], json.dumps(description, indent=2) + "\n"))
    return merged_sam, report, written
