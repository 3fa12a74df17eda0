"""Metrics on cases with known answers."""

import numpy as np
import pytest

from naslora_deploy.training.metrics import BinaryMetrics, MultiClassMetrics


def _square():
    gt = np.zeros((40, 40), bool)
    gt[10:30, 10:30] = True
    return gt


def test_perfect_binary_prediction():
    metrics = BinaryMetrics()
    gt = _square()
    metrics.update(gt.astype(float), gt)
    r = metrics.results()
    assert r["iou"] == 1 and r["dice"] == 1 and r["accuracy"] == 1
    assert r["mae"] == 0 and r["ber"] == 0
    assert r["s_alpha"] == pytest.approx(1.0, abs=1e-6)
    assert r["f_beta_w"] == pytest.approx(1.0, abs=1e-6)
    assert r["e_phi"] == pytest.approx(1.0, abs=5e-3)  # mean over 256 thresholds; the top one misses


def test_half_covered_object():
    gt = _square()  # 400 pixels
    pred = np.zeros_like(gt, float)
    pred[10:30, 10:20] = 0.9  # 200 of them, nothing outside
    metrics = BinaryMetrics()
    metrics.update(pred, gt)
    r = metrics.results()
    assert r["iou"] == pytest.approx(0.5)
    assert r["dice"] == pytest.approx(2 * 200 / 600)
    assert r["accuracy"] == pytest.approx(1 - 200 / 1600)
    assert r["ber"] == pytest.approx(100 * (1 - 0.5 * (0.5 + 1.0)))
    assert r["mae"] == pytest.approx((200 * 0.1 + 200 * 1.0) / 1600)


def test_empty_prediction_of_empty_mask_counts_as_perfect():
    metrics = BinaryMetrics()
    metrics.update(np.zeros((5, 5)), np.zeros((5, 5), bool))
    assert metrics.results()["iou"] == 1.0


def test_multiclass_confusion():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 2]])
    metrics = MultiClassMetrics(3, ["bg", "a", "b"])
    metrics.update(pred, target)
    r = metrics.results()
    # class 0: tp 1, fp 1, fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 1, fn 1 -> 1/2
    assert r["per_class_iou"] == pytest.approx({"bg": 1 / 3, "a": 2 / 3, "b": 1 / 2})
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert r["accuracy"] == pytest.approx(4 / 6)
