"""Evaluation metrics of the paper's tables, at the original image resolution.

Binary: IoU (Jaccard), Dice, accuracy, BER (thresholded at 0.5) and the four
saliency figures MAE, S-alpha, E-phi and weighted F-beta (``pysodmetrics``).
Multi-class: per-class IoU, mIoU, pixel accuracy, MAE and mBER.
Numpy only, so the runtime can use it too.

The saliency protocol (``SALIENCY_PROTOCOLS``): ``normalized``, the default, is
the standard evaluation toolbox's (and ``pysodmetrics``'): each prediction is
stretched to [0, 1] by its own minimum and maximum before the four saliency
figures are computed (MATLAB's ``mapminmax``; a constant prediction is left as
it is), without the 8-bit rounding a PNG on disk would add. ``raw`` feeds the
probabilities as they are. The thresholded figures (IoU, Dice, accuracy, BER)
always use the raw probabilities. Every result names its protocol.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from naslora_deploy.common.imaging import IGNORE_INDEX

SALIENCY_PROTOCOLS = ("normalized", "raw")


def check_saliency_protocol(protocol: str) -> str:
    """``protocol`` if it is one of ``SALIENCY_PROTOCOLS``; ``ValueError`` otherwise."""
    if protocol not in SALIENCY_PROTOCOLS:
        raise ValueError(
            f"unknown saliency protocol {protocol!r}; choose one of {', '.join(SALIENCY_PROTOCOLS)}"
        )
    return protocol


def min_max_stretch(prob: np.ndarray) -> np.ndarray:
    """``prob`` stretched to [0, 1] by its own minimum and maximum (unchanged when constant)."""
    low, high = float(prob.min()), float(prob.max())
    if high == low:
        return prob
    return (prob - low) / (high - low)


def balanced_error(tp: int, tn: int, positives: int, negatives: int) -> float:
    """Balanced error rate (%), ``100 (1 - (TPR + TNR) / 2)``; a class with no pixels counts as recalled."""
    recall_pos = tp / positives if positives else 1.0
    recall_neg = tn / negatives if negatives else 1.0
    return float(100.0 * (1.0 - 0.5 * (recall_pos + recall_neg)))


class BinaryMetrics:
    """Accumulates per-image binary segmentation metrics; ``results()`` averages them.

    ``saliency``: ``"normalized"`` (standard, per-image min-max) or ``"raw"``
    (see the module docstring); it applies to MAE, S-alpha, E-phi and F-beta^w.
    """

    def __init__(self, threshold: float = 0.5, saliency: str = "normalized") -> None:
        import py_sod_metrics as sod

        self.threshold = threshold
        self.saliency = check_saliency_protocol(saliency)
        self._sod = {
            "mae": sod.MAE(),
            "sm": sod.Smeasure(),
            "em": sod.Emeasure(),
            "wfm": sod.WeightedFmeasure(),
        }
        self.iou: List[float] = []
        self.dice: List[float] = []
        self.accuracy: List[float] = []
        self.ber: List[float] = []
        self.counts = np.zeros(4, dtype=np.int64)  # TP, TN, positives, negatives

    def update(self, prob: np.ndarray, target: np.ndarray) -> None:
        """Add one image: ``prob`` (H, W) in [0, 1], ``target`` (H, W) 0/1 or bool."""
        if prob.shape != target.shape:
            raise ValueError(f"prediction is {prob.shape} but its mask is {target.shape}")
        prob = np.clip(prob.astype(np.float64), 0.0, 1.0)
        gt = target.astype(bool)
        pred = prob >= self.threshold
        inter = np.logical_and(pred, gt).sum()
        union = np.logical_or(pred, gt).sum()
        total = pred.sum() + gt.sum()
        self.iou.append(1.0 if union == 0 else inter / union)
        self.dice.append(1.0 if total == 0 else 2.0 * inter / total)
        self.accuracy.append(float((pred == gt).mean()))
        counts = np.array([inter, np.logical_and(~pred, ~gt).sum(), gt.sum(), (~gt).sum()])
        self.ber.append(balanced_error(*counts))
        self.counts += counts
        saliency = min_max_stretch(prob) if self.saliency == "normalized" else prob
        for metric in self._sod.values():
            metric.step(saliency, gt, normalize=False)

    def results(self) -> Dict[str, object]:
        """Mean IoU/Dice/accuracy over images, pysodmetrics figures, BER (%) and the saliency protocol.

        ``ber`` is the mean of the per-image balanced error (the protocol the paper's SBU figures
        come from); ``ber_pooled`` is computed once from the pixel counts of every image together.
        """
        if not self.iou:
            raise ValueError("no images were evaluated")
        return {
            "images": len(self.iou),
            "iou": float(np.mean(self.iou)),
            "dice": float(np.mean(self.dice)),
            "accuracy": float(np.mean(self.accuracy)),
            "mae": float(self._sod["mae"].get_results()["mae"]),
            "s_alpha": float(self._sod["sm"].get_results()["sm"]),
            "e_phi": float(np.mean(self._sod["em"].get_results()["em"]["curve"])),
            "f_beta_w": float(self._sod["wfm"].get_results()["wfm"]),
            "ber": float(np.mean(self.ber)),
            "ber_pooled": balanced_error(*self.counts),
            "saliency_protocol": self.saliency,
        }


class MultiClassMetrics:
    """Confusion-matrix metrics over all valid pixels (255 ignored), plus MAE and mBER.

    - IoU per class, mIoU (mean over classes that occur in the ground truth or the
      predictions) and pixel accuracy, from the confusion matrix pooled over images.
    - MAE (the paper's Table 2): per image, the mean over valid pixels and over the
      K classes of ``|p_c - [y = c]|``, where ``p`` is the predicted class distribution
      (the per-class probabilities renormalised to sum to 1 at each pixel; a class
      map counts as a one-hot distribution); then the mean over images. For K = 2
      this is exactly the binary saliency MAE of the foreground probability. (The
      Trans10K code behind Table 2, TransLab's, takes ``|argmax - label|`` on class
      indices, which depends on how classes are numbered; this one does not.)
    - mBER (%): the mean over classes of the per-class balanced error rate
      ``100 * (1 - (TP / P + TN / N) / 2)``, class c against all the others, from the
      pooled confusion matrix (as the binary BER pools its counts). Classes absent
      from the ground truth are left out; background counts as a class, as in mIoU
      (TransLab leaves it out: recompute from ``per_class_ber`` if you need that).
    """

    def __init__(self, num_classes: int, names: Optional[Sequence[str]] = None) -> None:
        if num_classes < 2:
            raise ValueError(f"multi-class metrics need at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.names = list(names) if names else [str(i) for i in range(num_classes)]
        if len(self.names) != num_classes:
            raise ValueError(f"{len(self.names)} class names for {num_classes} classes")
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.mae: List[float] = []
        self.mae_inputs: set = set()
        self.images = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one image: ``pred`` an (H, W) class map or (K, H, W) class probabilities, ``target`` (H, W)."""
        k = self.num_classes
        if pred.ndim == 3:
            if pred.shape != (k, *target.shape):
                raise ValueError(f"class probabilities are {pred.shape}; expected ({k}, {target.shape})")
            prob = np.clip(pred.astype(np.float64), 0.0, None)
            total = prob.sum(0, keepdims=True)
            prob = np.where(total > 0, prob / np.where(total > 0, total, 1.0), 1.0 / k)
            classes = prob.argmax(0)
            self.mae_inputs.add("probabilities")
        elif pred.shape == target.shape:
            classes = pred.astype(np.int64)
            if classes.size and (classes.min() < 0 or classes.max() >= k):
                raise ValueError(f"predicted class indices must lie in 0..{k - 1}")
            prob = None
            self.mae_inputs.add("class maps")
        else:
            raise ValueError(f"prediction is {pred.shape} but its mask is {target.shape}")
        valid = target != IGNORE_INDEX
        labels = target[valid].astype(np.int64)
        index = labels * k + classes[valid]
        self.confusion += np.bincount(index, minlength=k**2).reshape(k, -1)
        if valid.any():
            onehot = np.eye(k)[labels].T  # (K, valid pixels)
            chosen = np.eye(k)[classes[valid]].T if prob is None else prob[:, valid]
            self.mae.append(float(np.abs(chosen - onehot).mean()))
        self.images += 1

    def results(self) -> Dict[str, object]:
        """Per-class IoU and BER (classes that never occur are left out), mIoU, accuracy, MAE, mBER."""
        if not self.images:
            raise ValueError("no images were evaluated")
        confusion = self.confusion.astype(np.float64)
        diag = np.diag(confusion)
        union = confusion.sum(0) + confusion.sum(1) - diag
        per_class = {name: (float(d / u) if u else None) for name, d, u in zip(self.names, diag, union)}
        present = [v for v in per_class.values() if v is not None]
        total = confusion.sum()
        positives = confusion.sum(1)
        negatives = total - positives
        true_neg = total - positives - confusion.sum(0) + diag
        per_class_ber = {}
        for name, tp, p, tn, n in zip(self.names, diag, positives, true_neg, negatives):
            if not p:
                per_class_ber[name] = None
                continue
            specificity = tn / n if n else 1.0
            per_class_ber[name] = float(100.0 * (1.0 - 0.5 * (tp / p + specificity)))
        bers = [v for v in per_class_ber.values() if v is not None]
        inputs = sorted(self.mae_inputs)
        return {
            "images": self.images,
            "miou": float(np.mean(present)) if present else 0.0,
            "accuracy": float(diag.sum() / max(total, 1.0)),
            "mae": float(np.mean(self.mae)) if self.mae else 0.0,
            "mber": float(np.mean(bers)) if bers else 0.0,
            "mae_from": inputs[0] if len(inputs) == 1 else "mixed",
            "per_class_iou": per_class,
            "per_class_ber": per_class_ber,
        }
