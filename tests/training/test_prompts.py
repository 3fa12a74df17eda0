"""Box prompts from ground-truth components: exact for evaluation, seeded jitter for training."""

import numpy as np
import torch
from conftest import sam_masks

from naslora_deploy.training.prompts import (
    MAX_BOXES,
    component_boxes,
    jitter_boxes,
    scale_boxes,
    training_prompts,
)


def _two_blobs():
    mask = np.zeros((40, 60), np.uint8)
    mask[5:15, 10:30] = 1  # 10 x 20 = 200 px
    mask[25:35, 40:45] = 1  # 10 x 5 = 50 px
    return mask


def test_one_box_per_component_largest_first():
    boxes, masks = component_boxes(_two_blobs() == 1)
    np.testing.assert_array_equal(boxes, [[10, 5, 29, 14], [40, 25, 44, 34]])
    assert masks.shape == (2, 40, 60) and masks[0].sum() == 200 and masks[1].sum() == 50
    assert component_boxes(np.zeros((8, 8), bool))[0].shape == (0, 4)
    many = np.zeros((20, 20), bool)
    many[::4, ::4] = True
    assert len(component_boxes(many)[0]) == MAX_BOXES


def test_jitter_is_seeded_bounded_and_keeps_boxes_valid():
    boxes, _ = component_boxes(_two_blobs() == 1)
    a = jitter_boxes(boxes, 20, (40, 60), [0, 3, 7])
    np.testing.assert_array_equal(a, jitter_boxes(boxes, 20, (40, 60), [0, 3, 7]))  # same seed, same boxes
    assert not np.array_equal(a, jitter_boxes(boxes, 20, (40, 60), [0, 4, 7]))  # another epoch moves them
    assert (np.abs(a - boxes) <= 20).all()
    assert (a[:, 0] <= a[:, 2]).all() and (a[:, 1] <= a[:, 3]).all()
    assert a[:, 0::2].min() >= 0 and a[:, 0::2].max() <= 59 and a[:, 1::2].max() <= 39
    exact, masks = training_prompts(_two_blobs(), 20, None)
    np.testing.assert_array_equal(exact, boxes)


def test_boxes_follow_the_longest_side_resize():
    boxes = np.array([[10, 5, 29, 14]], np.float32)
    np.testing.assert_allclose(
        scale_boxes(boxes, (40, 60), (171, 256)), [[42.67, 21.375, 123.73, 59.85]], atol=0.01
    )


def test_box_prompted_forward_is_sams_own_decoder_per_box():
    from naslora_deploy import build_sam
    from naslora_deploy.core.model.heads import SegmentationModel

    torch.manual_seed(0)
    model = SegmentationModel(build_sam("vit_tiny")).eval()
    images = torch.randn(2, 3, 256, 256)
    boxes = [torch.tensor([[10.0, 20.0, 100.0, 120.0], [30.0, 40.0, 200.0, 220.0]]), torch.zeros(0, 4)]
    with torch.no_grad():
        out = model(images, boxes)
    _, expected, _ = sam_masks(model.sam, images[:1], boxes=boxes[0][1:], multimask_output=False)
    assert out["mask_logits"].shape == (2, 1, 64, 64) and out["prompt_image"].tolist() == [0, 0]
    torch.testing.assert_close(out["mask_logits"][1:], expected, rtol=1e-5, atol=1e-5)
