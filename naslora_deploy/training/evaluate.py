"""Evaluate a ``SegmentationModel`` on image/mask pairs at their original resolution."""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch

from naslora_deploy.common.imaging import postprocess_probabilities, preprocess_image, read_image
from naslora_deploy.core.classes import ClassSpec
from naslora_deploy.core.heads import semantic_probabilities, upsample_logits
from naslora_deploy.training.data.dataset import load_labels
from naslora_deploy.training.metrics import BinaryMetrics, MultiClassMetrics


@torch.no_grad()
def predict_probabilities(model, images: List[np.ndarray], device) -> List[np.ndarray]:
    """Per image: (H, W) foreground probability, or (K, H, W) class probabilities."""
    size = model.image_size
    batch = [preprocess_image(image, size, model.normalization) for image in images]
    batch = torch.from_numpy(np.stack(batch)).to(device)
    outputs = model(batch)
    logits = upsample_logits(outputs["mask_logits"].float(), size)
    if "class_logits" in outputs:
        prob = semantic_probabilities(logits, outputs["class_logits"].float())
    else:
        prob = logits[:, 0].sigmoid()
    prob = prob.cpu().numpy()
    return [postprocess_probabilities(p, image.shape[:2], size) for p, image in zip(prob, images)]


def evaluate(
    model, pairs: List[Tuple], classes: ClassSpec, batch_size: int = 4, device="cpu"
) -> Dict[str, object]:
    """Binary or multi-class metrics of ``model`` over ``pairs`` (see ``metrics``)."""
    was_training = model.training
    model.eval()
    metrics = BinaryMetrics() if classes.binary else MultiClassMetrics(classes.num_classes, classes.names)
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            images = [read_image(image_path) for image_path, _ in chunk]
            for prob, (_, mask_path) in zip(predict_probabilities(model, images, device), chunk):
                labels = load_labels(mask_path, classes)
                if classes.binary:
                    metrics.update(prob, labels)
                else:
                    metrics.update(prob.argmax(0), labels)
    finally:
        model.train(was_training)
    return metrics.results()


def headline(metrics: Dict[str, object]) -> Tuple[str, float]:
    """The figure that picks the best checkpoint: IoU (binary) or mIoU (multi-class)."""
    return ("miou", float(metrics["miou"])) if "miou" in metrics else ("iou", float(metrics["iou"]))


def format_metrics(metrics: Dict[str, object]) -> str:
    """One line per figure (per-class IoU indented), for a terminal."""
    lines = []
    for name, value in metrics.items():
        if isinstance(value, dict):
            lines.append(f"  {name}:")
            lines += [f"    {k:<20} {'n/a' if v is None else f'{v:.4f}'}" for k, v in value.items()]
        else:
            lines.append(f"  {name:<22} {value:.4f}" if isinstance(value, float) else f"  {name:<22} {value}")
    return "\n".join(lines)
