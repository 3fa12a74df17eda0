"""BCE + Dice and the Hungarian-matched multi-class loss on hand-built cases."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from naslora_deploy.common.imaging import IGNORE_INDEX
from naslora_deploy.training.losses import bce_dice, binary_loss, match_queries, multiclass_loss


def test_bce_dice_known_value():
    logits = torch.zeros(1, 4, 4)
    target = torch.ones(1, 4, 4)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    # p = 0.5 everywhere: BCE = ln 2; Dice = 1 - 2*0.5*16 / (16 + 0.25*16) = 0.2
    assert float(bce_dice(logits, target, valid)) == pytest.approx(math.log(2) + 0.2, abs=1e-6)


def test_ignored_pixels_do_not_count():
    logits = torch.full((1, 1, 4, 4), 8.0)
    labels = torch.ones(1, 4, 4, dtype=torch.long)
    labels[:, :, 2:] = IGNORE_INDEX  # right half ignored; the prediction there does not matter
    low = binary_loss({"mask_logits": logits}, labels)
    logits[..., 2:] = -8.0
    assert float(binary_loss({"mask_logits": logits}, labels)) == pytest.approx(float(low), abs=1e-6)


def _hand_built():
    """Labels: left half class 0, right half class 1 (K = 2), 3 queries.

    Query 0 predicts the right half and says class 1; query 2 the left half and
    class 0; query 1 predicts nothing and says "no object".
    """
    size = 8
    labels = torch.zeros(1, size, size, dtype=torch.long)
    labels[:, :, size // 2 :] = 1
    right = torch.where(labels[0] == 1, 6.0, -6.0)
    masks = torch.stack([right, torch.full_like(right, -6.0), -right])[None]
    class_logits = torch.tensor([[[0.0, 4.0, 0.0], [0.0, 0.0, 4.0], [4.0, 0.0, 0.0]]])
    return {"mask_logits": masks, "class_logits": class_logits}, labels


def test_hungarian_matching_on_a_hand_built_case():
    outputs, labels = _hand_built()
    rows, class_ids, targets = match_queries(outputs, labels)[0]
    assert dict(zip(rows.tolist(), class_ids.tolist())) == {0: 1, 2: 0}
    assert targets.shape == (2, 8, 8)


def test_multiclass_loss_equals_an_independent_computation():
    outputs, labels = _hand_built()
    loss = multiclass_loss(outputs, labels, num_classes=2)
    # matched: query 0 <-> class 1 (right half), query 2 <-> class 0 (left half); query 1 -> no object (2)
    target_masks = torch.stack([(labels[0] == 1).float(), (labels[0] == 0).float()])
    logits = outputs["mask_logits"][0, [0, 2]]
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target_masks, reduction="none").mean((1, 2))
    dice = 1 - 2 * (prob * target_masks).sum((1, 2)) / (
        target_masks.pow(2).sum((1, 2)) + prob.pow(2).sum((1, 2))
    )
    ce = F.cross_entropy(outputs["class_logits"][0], torch.tensor([1, 2, 0]))
    expected = 1.0 * (bce + dice).mean() + 2.0 * ce
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_swapped_queries_cost_more():
    outputs, labels = _hand_built()
    swapped = {k: v[:, [2, 1, 0]] for k, v in outputs.items()}
    swapped["class_logits"] = outputs["class_logits"]  # classes now disagree with the masks
    assert float(multiclass_loss(swapped, labels, 2)) > float(multiclass_loss(outputs, labels, 2))


def test_image_with_only_ignored_pixels_trains_no_object():
    outputs, labels = _hand_built()
    labels[:] = IGNORE_INDEX
    loss = multiclass_loss(outputs, labels, 2)
    expected = 2.0 * F.cross_entropy(outputs["class_logits"][0], torch.tensor([2, 2, 2]))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert np.isfinite(float(loss))


def test_no_object_weight_down_weights_the_unmatched_queries_in_the_ce():
    outputs, labels = _hand_built()
    outputs["class_logits"][0, 1] = torch.tensor([0.0, 0.0, 1.0])  # an unsure "no object": a larger CE
    assert dict(zip(*[m.tolist() for m in match_queries(outputs, labels)[0][:2]])) == {0: 1, 2: 0}
    loss = multiclass_loss(outputs, labels, num_classes=2, no_object_weight=0.1)
    # matched queries 0 -> class 1, 2 -> class 0 weigh 1; query 1 -> "no object" (2) weighs 0.1
    per_query = F.cross_entropy(outputs["class_logits"][0], torch.tensor([1, 2, 0]), reduction="none")
    weights = torch.tensor([1.0, 0.1, 1.0])
    ce = (weights * per_query).sum() / weights.sum()
    plain = multiclass_loss(outputs, labels, num_classes=2)
    plain_ce = per_query.mean()
    assert float(loss) == pytest.approx(float(plain - 2.0 * plain_ce + 2.0 * ce), rel=1e-6)
    assert float(loss) < float(plain) - 0.1  # the larger CE counts for less
    with pytest.raises(ValueError, match="no_object_weight must be a finite number > 0"):
        multiclass_loss(outputs, labels, num_classes=2, no_object_weight=0.0)
