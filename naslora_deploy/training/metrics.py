"""Evaluation metrics of the paper's tables, at the original image resolution.

Binary: IoU (Jaccard), Dice, accuracy, MAE, S-alpha, E-phi, weighted F-beta
(the last four from ``pysodmetrics``, fed raw probabilities, not min-max
stretched ones) and BER. Multi-class: per-class IoU, mIoU, pixel accuracy.
Numpy only, so the runtime can use it too.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from naslora_deploy.common.imaging import IGNORE_INDEX


class BinaryMetrics:
    """Accumulates per-image binary segmentation metrics; ``results()`` averages them."""

    def __init__(self, threshold: float = 0.5) -> None:
        import py_sod_metrics as sod

        self.threshold = threshold
        self._sod = {
            "mae": sod.MAE(),
            "sm": sod.Smeasure(),
            "em": sod.Emeasure(),
            "wfm": sod.WeightedFmeasure(),
        }
        self.iou: List[float] = []
        self.dice: List[float] = []
        self.accuracy: List[float] = []
        self.counts = np.zeros(4, dtype=np.int64)  # TP, TN, positives, negatives

    def update(self, prob: np.ndarray, target: np.ndarray) -> None:
        """Add one image: ``prob`` (H, W) in [0, 1], ``target`` (H, W) 0/1 or bool."""
        prob = np.clip(prob.astype(np.float64), 0.0, 1.0)
        gt = target.astype(bool)
        pred = prob >= self.threshold
        inter = np.logical_and(pred, gt).sum()
        union = np.logical_or(pred, gt).sum()
        total = pred.sum() + gt.sum()
        self.iou.append(1.0 if union == 0 else inter / union)
        self.dice.append(1.0 if total == 0 else 2.0 * inter / total)
        self.accuracy.append(float((pred == gt).mean()))
        self.counts += [inter, np.logical_and(~pred, ~gt).sum(), gt.sum(), (~gt).sum()]
        for metric in self._sod.values():
            metric.step(prob, gt, normalize=False)

    def results(self) -> Dict[str, float]:
        """Mean IoU/Dice/accuracy over images, pysodmetrics figures and BER (%)."""
        if not self.iou:
            raise ValueError("no images were evaluated")
        tp, tn, positives, negatives = self.counts
        recall_pos = tp / positives if positives else 1.0
        recall_neg = tn / negatives if negatives else 1.0
        return {
            "images": len(self.iou),
            "iou": float(np.mean(self.iou)),
            "dice": float(np.mean(self.dice)),
            "accuracy": float(np.mean(self.accuracy)),
            "mae": float(self._sod["mae"].get_results()["mae"]),
            "s_alpha": float(self._sod["sm"].get_results()["sm"]),
            "e_phi": float(np.mean(self._sod["em"].get_results()["em"]["curve"])),
            "f_beta_w": float(self._sod["wfm"].get_results()["wfm"]),
            "ber": float(100.0 * (1.0 - 0.5 * (recall_pos + recall_neg))),
        }


class MultiClassMetrics:
    """Confusion-matrix metrics over all pixels (255 ignored)."""

    def __init__(self, num_classes: int, names: Optional[Sequence[str]] = None) -> None:
        self.num_classes = num_classes
        self.names = list(names) if names else [str(i) for i in range(num_classes)]
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.images = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one image: predicted and true (H, W) class index maps."""
        valid = target != IGNORE_INDEX
        index = target[valid].astype(np.int64) * self.num_classes + pred[valid].astype(np.int64)
        self.confusion += np.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, -1)
        self.images += 1

    def results(self) -> Dict[str, object]:
        """Per-class IoU (classes that never occur are left out of mIoU), mIoU, accuracy."""
        if not self.images:
            raise ValueError("no images were evaluated")
        diag = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - diag
        per_class = {name: (float(d / u) if u else None) for name, d, u in zip(self.names, diag, union)}
        present = [v for v in per_class.values() if v is not None]
        return {
            "images": self.images,
            "miou": float(np.mean(present)) if present else 0.0,
            "accuracy": float(diag.sum() / max(self.confusion.sum(), 1)),
            "per_class_iou": per_class,
        }
