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
    metrics = BinaryMetrics(saliency="raw")
    metrics.update(pred, gt)
    r = metrics.results()
    assert r["iou"] == pytest.approx(0.5)
    assert r["dice"] == pytest.approx(2 * 200 / 600)
    assert r["accuracy"] == pytest.approx(1 - 200 / 1600)
    assert r["ber"] == pytest.approx(100 * (1 - 0.5 * (0.5 + 1.0)))
    assert r["mae"] == pytest.approx((200 * 0.1 + 200 * 1.0) / 1600)
    assert r["saliency_protocol"] == "raw"
    # the standard protocol stretches 0 .. 0.9 to 0 .. 1: only the 200 missed pixels are wrong
    standard = BinaryMetrics()
    standard.update(pred, gt)
    assert standard.results()["mae"] == pytest.approx(200 / 1600)
    assert standard.results()["saliency_protocol"] == "normalized"


def _low_contrast():
    """4 x 4: the object is the left half; the prediction is 0.3 outside it, 0.5 and 0.7 on it."""
    gt = np.zeros((4, 4), bool)
    gt[:, :2] = True
    pred = np.full((4, 4), 0.3)
    pred[:2, :2] = 0.5
    pred[2:, :2] = 0.7
    return pred, gt


def test_standard_protocol_stretches_each_prediction_and_raw_does_not():
    pred, gt = _low_contrast()
    raw, standard = BinaryMetrics(saliency="raw"), BinaryMetrics()
    raw.update(pred, gt)
    standard.update(pred, gt)
    r, s = raw.results(), standard.results()
    # raw: |0.3 - 0| on 8 pixels, |0.5 - 1| on 4, |0.7 - 1| on 4 -> (2.4 + 2.0 + 1.2) / 16
    assert r["mae"] == pytest.approx(5.6 / 16)
    # min-max: (p - 0.3) / 0.4 -> 0 outside, 0.5 and 1.0 on the object -> 4 * 0.5 / 16
    assert s["mae"] == pytest.approx(2.0 / 16)
    assert (r["saliency_protocol"], s["saliency_protocol"]) == ("raw", "normalized")
    assert s["s_alpha"] > r["s_alpha"] and s["f_beta_w"] > r["f_beta_w"]
    for key in ("iou", "dice", "accuracy", "ber"):  # thresholded figures use the raw probabilities
        assert r[key] == s[key]
    assert r["iou"] == 1.0


def test_a_constant_prediction_is_not_stretched():
    gt = np.zeros((4, 4), bool)
    gt[0] = True
    metrics = BinaryMetrics()
    metrics.update(np.full((4, 4), 0.25), gt)
    assert metrics.results()["mae"] == pytest.approx((4 * 0.75 + 12 * 0.25) / 16)


def test_unknown_saliency_protocol_is_refused():
    with pytest.raises(ValueError, match="unknown saliency protocol 'minmax'"):
        BinaryMetrics(saliency="minmax")


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
    # class maps are one-hot distributions: 2 wrong pixels, each |diff| summing to 2 over 3 classes
    assert r["mae"] == pytest.approx(2 * 2 / (6 * 3))
    assert r["mae_from"] == "class maps"
    # class 0: TP 1 of 2, TN 3 of 4 -> 37.5; class 1: 2 of 2, 3 of 4 -> 12.5; class 2: 1 of 2, 4 of 4 -> 25
    assert r["per_class_ber"] == pytest.approx({"bg": 37.5, "a": 12.5, "b": 25.0})
    assert r["mber"] == pytest.approx(25.0)


def test_multiclass_mae_on_probabilities():
    target = np.array([[0, 2, 1, 255]])
    prob = np.zeros((3, 1, 4))
    prob[:, 0, 0] = [0.2, 0.2, 0.0]  # renormalised to (0.5, 0.5, 0), true class 0: 0.5 + 0.5 + 0
    prob[:, 0, 1] = [0.0, 0.0, 0.9]  # (0, 0, 1), true class 2: no error
    prob[:, 0, 2] = [0.0, 0.0, 0.0]  # nothing claims it: uniform, true class 1: 1/3 + 2/3 + 1/3
    prob[:, 0, 3] = [1.0, 0.0, 0.0]  # ignored
    metrics = MultiClassMetrics(3)
    metrics.update(prob, target)
    r = metrics.results()
    assert r["mae"] == pytest.approx((1.0 + 0.0 + 4 / 3) / (3 * 3))
    assert r["mae_from"] == "probabilities"
    assert r["accuracy"] == pytest.approx(2 / 3)  # argmax: 0 (a tie, first), 2, 0 (uniform, first)


def test_two_class_mae_is_the_binary_saliency_mae():
    rng = np.random.default_rng(0)
    fg = rng.uniform(size=(2, 6, 7))
    gt = rng.uniform(size=(2, 6, 7)) < 0.4
    multi, binary = MultiClassMetrics(2), BinaryMetrics(saliency="raw")
    for p, g in zip(fg, gt):
        multi.update(np.stack([1 - p, p]), g.astype(np.int64))
        binary.update(p, g)
    assert multi.results()["mae"] == pytest.approx(binary.results()["mae"])
    assert multi.results()["mber"] >= 0


def test_multiclass_metrics_refuse_bad_input():
    with pytest.raises(ValueError, match="class probabilities are"):
        MultiClassMetrics(3).update(np.zeros((2, 4, 4)), np.zeros((4, 4), np.int64))
    with pytest.raises(ValueError, match="class indices must lie in 0..2"):
        MultiClassMetrics(3).update(np.full((4, 4), 3), np.zeros((4, 4), np.int64))
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        MultiClassMetrics(3, ["a", "b"])


def test_ber_is_the_mean_of_per_image_errors_and_the_pooled_one_has_its_own_name():
    big = np.zeros((40, 40), bool)
    big[0:20] = True  # 800 positives; predicted perfectly: BER 0
    small = _square()  # 400 positives; half of them found: BER 25 %
    half = np.zeros((40, 40), float)
    half[10:30, 10:20] = 1.0
    metrics = BinaryMetrics()
    metrics.update(big.astype(float), big)
    metrics.update(half, small)
    r = metrics.results()
    assert r["ber"] == pytest.approx((0.0 + 25.0) / 2)
    pooled_tpr, pooled_tnr = (800 + 200) / 1200, 1.0
    assert r["ber_pooled"] == pytest.approx(100 * (1 - 0.5 * (pooled_tpr + pooled_tnr)))
    assert r["ber"] != pytest.approx(r["ber_pooled"])
