"""``merge_run``: load a run, read its calibration images once, merge, report.

The one path from a trained run to a merged model: the ``merge`` command, ``export``
(ONNX, TensorRT, Triton), the PEFT export and ``verify``'s PyTorch reference all
call it, so the calibration images are chosen and recovery is built in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from naslora_deploy.common.progress import phase
from naslora_deploy.core.merging.calibration import calibration_images
from naslora_deploy.core.merging.merge import merge
from naslora_deploy.core.merging.recovery import Recovery
from naslora_deploy.core.merging.report import MergeReport
from naslora_deploy.core.merging.spec import MergeSpec
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.runs.checkpoint import load_adapter


def read_calibration(
    spec: MergeSpec, model: SegmentationModel, progress: Optional[bool] = False
) -> Optional[torch.Tensor]:
    """``spec``'s calibration images (its folder, its count), preprocessed for ``model``; None without a
    folder. Read once per merge and handed on (int8 quantization calibrates on the same tensor).
    ``progress``: False is silent, otherwise one log line (``steps.phase``)."""
    if not spec.calibration:
        return None
    with phase(f"merge: read calibration images from {spec.calibration}", progress):
        return calibration_images(
            spec.calibration, spec.calibration_images, model.image_size, model.normalization
        )


def merge_run(
    source: Union[str, Path, SegmentationModel],
    spec: Optional[MergeSpec] = None,
    *,
    base=None,
    allow_base_mismatch: bool = False,
    device="cpu",
    calibration: Optional[torch.Tensor] = None,
    progress: Optional[bool] = False,
    measure: bool = True,
) -> Tuple[SegmentationModel, Optional[MergeReport]]:
    """Merge a trained run as ``spec`` says; returns ``(merged model, report)``.

    ``source``: a run or checkpoint directory (loaded with ``load_adapter``: ``base``,
    ``allow_base_mismatch``, ``device``; an adapter that records no base needs ``base``, and the
    recorded base must still have its sha256), or the ``SegmentationModel`` it returns.
    ``calibration``: images already read with ``read_calibration`` (otherwise read
    here). The merged model carries the run's ``spec`` and is in eval mode. ``measure=False``: no
    fidelity measurement, the report is None (``merge``'s ``measure``).
    """
    spec = spec or MergeSpec()
    if isinstance(source, SegmentationModel):
        trained = source
    else:
        with phase(f"merge: load run {source}", progress):
            trained = load_adapter(source, base, allow_base_mismatch, device=device)
    if calibration is None:
        calibration = read_calibration(spec, trained, progress)
    recovery = Recovery(steps=spec.recover, decoder=spec.recover_decoder)
    merged, report = merge(
        trained, spec.mode, calibration=calibration, progress=progress, recover=recovery, measure=measure
    )
    merged.spec = getattr(trained, "spec", None)
    return merged.eval(), report
