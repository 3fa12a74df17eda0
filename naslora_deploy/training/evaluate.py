"""Evaluate a ``SegmentationModel`` on image/mask pairs at their original resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.imaging import (
    postprocess_probabilities,
    preprocess_image,
    read_image,
    resized_shape,
)
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.core.model.heads import semantic_probabilities, upsample_logits
from naslora_deploy.training.config import TrainConfig
from naslora_deploy.training.data.dataset import load_labels
from naslora_deploy.training.data.folder import discover
from naslora_deploy.training.gallery import EvaluatedImage, Gallery, check_gallery_dir
from naslora_deploy.training.metrics import BinaryMetrics, MultiClassMetrics, check_saliency_protocol
from naslora_deploy.training.prompts import component_boxes, scale_boxes


@torch.no_grad()
def predict_probabilities(
    model, images: List[np.ndarray], device, boxes: Optional[List[np.ndarray]] = None
) -> List[np.ndarray]:
    """Per image: (H, W) foreground probability, or (K, H, W) class probabilities.

    ``boxes``: per image, (K, 4) box prompts in its own pixels; the image's
    probability is then the highest of its prompts' masks (zero without a box).
    """
    size = model.image_size
    batch = [preprocess_image(image, size, model.normalization) for image in images]
    batch = torch.from_numpy(np.stack(batch)).to(device)
    if boxes is not None:
        return _box_probabilities(model, batch, images, boxes)
    outputs = model(batch)
    logits = upsample_logits(outputs["mask_logits"].float(), size)
    if "class_logits" in outputs:
        prob = semantic_probabilities(logits, outputs["class_logits"].float())
    else:
        prob = logits[:, 0].sigmoid()
    prob = prob.cpu().numpy()
    return [postprocess_probabilities(p, image.shape[:2], size) for p, image in zip(prob, images)]


def _box_probabilities(model, batch: torch.Tensor, images: List[np.ndarray], boxes: List[np.ndarray]):
    size = model.image_size
    framed = [
        torch.from_numpy(scale_boxes(b, image.shape[:2], resized_shape(*image.shape[:2], size)))
        for b, image in zip(boxes, images)
    ]
    outputs = model(batch, framed)
    prob = upsample_logits(outputs["mask_logits"].float(), size)[:, 0].sigmoid()
    per_image = torch.zeros(len(images), size, size, device=prob.device)
    for mask, owner in zip(prob, outputs["prompt_image"].tolist()):  # an image's union: its prompts' maximum
        per_image[owner] = torch.maximum(per_image[owner], mask)
    return [
        postprocess_probabilities(p, image.shape[:2], size)
        for p, image in zip(per_image.cpu().numpy(), images)
    ]


def evaluate(
    model,
    pairs: List[Tuple],
    classes: ClassSpec,
    batch_size: int = 4,
    device="cpu",
    prompt: str = "none",
    saliency: str = "normalized",
    on_image: Optional[Callable[[EvaluatedImage, object], None]] = None,
) -> Dict[str, object]:
    """Binary or multi-class metrics of ``model`` over ``pairs`` (see ``metrics``).

    ``prompt="box"``: box-prompted, one exact box per ground-truth component (MedSAM's protocol).
    ``saliency``: the binary saliency figures' protocol, ``normalized`` (standard per-image
    min-max) or ``raw``; the result records it as ``saliency_protocol``. Multi-class MAE
    is computed on the predicted class probabilities. ``on_image(EvaluatedImage, metrics)`` is
    called after each image is added to the metrics (``gallery.Gallery.add``).
    """
    check_saliency_protocol(saliency)
    was_training = model.training
    model.eval()
    metrics = (
        BinaryMetrics(saliency=saliency)
        if classes.binary
        else MultiClassMetrics(classes.num_classes, classes.names)
    )
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            images = [read_image(image_path) for image_path, _ in chunk]
            labels_of = [load_labels(mask_path, classes) for _, mask_path in chunk]
            boxes = [component_boxes(labels == 1)[0] for labels in labels_of] if prompt == "box" else None
            probabilities = predict_probabilities(model, images, device, boxes)
            for offset, (prob, labels) in enumerate(zip(probabilities, labels_of)):
                metrics.update(prob, labels)  # binary: (H, W) probability; multi-class: (K, H, W)
                if on_image is not None:
                    framed = None if boxes is None else boxes[offset]
                    on_image(EvaluatedImage(start + offset, chunk[offset], labels, prob, framed), metrics)
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


def evaluate_run(
    model,
    data,
    split: Optional[str] = None,
    batch_size: int = 4,
    skip_bad: bool = False,
    prompt: Optional[str] = None,
    saliency_protocol: str = "normalized",
    gallery=None,
    gallery_count: int = 8,
    overwrite: bool = False,
) -> Dict[str, object]:
    """``naslora-deploy eval``: a loaded run (``load_adapter``) on the folder data set ``data``.

    ``split``: default test, else val, else train. On the run's own data without split folders,
    val is the images training held out, split as training split them (its val fraction and
    seed); the run's data options (COCO category, bands, stretch) apply. ``prompt``: default as
    trained. ``gallery``: a folder for per-image metrics and the ``gallery_count`` worst and best
    overlays (``training.gallery``; an earlier gallery there is replaced only with ``overwrite``).
    Returns ``{"split", "images", "prompt", "metrics"}`` (and ``"gallery"``, the folder).
    """
    if gallery is not None:
        check_gallery_dir(gallery, overwrite, data)  # before any work
    classes = model.spec.classes
    trained = model.spec.training or {}
    formats = {k: trained.get(k) for k in ("category", "bands", "stretch")}
    same_data = trained.get("data") is not None and Path(trained["data"]).resolve() == Path(data).resolve()
    run = TrainConfig.from_dict(trained) if same_data else None
    held_out = {"val_fraction": run.val_fraction, "seed": run.seed} if run else {"val_fraction": 0.0}
    splits = discover(
        data, None if classes.binary else classes.num_classes, skip_bad=skip_bad, **held_out, **formats
    )
    split = split or next(s for s in ("test", "val", "train") if splits.split(s))
    pairs = splits.split(split)
    if not pairs:
        raise NasloraError(f"{data} has no {split} split")
    prompt = prompt or model.spec.prompt
    device = next(model.parameters()).device
    collector = Gallery(classes, gallery_count, prompt) if gallery is not None else None
    on_image = collector.add if collector is not None else None
    metrics = evaluate(model, pairs, classes, batch_size, device, prompt, saliency_protocol, on_image)
    result = {"split": split, "images": len(pairs), "prompt": prompt, "metrics": metrics}
    if collector is not None:
        title = f"{split} split of {data}, prompt {prompt}: {headline(metrics)[0]} {headline(metrics)[1]:.4f}"
        result["gallery"] = str(collector.write(gallery, overwrite, data, title))
    return result
