"""Export wrappers against segment-anything's own forward passes."""

import pytest
import torch

from naslora_deploy import build_sam
from naslora_deploy.core.heads import SegmentationModel, batched_predict_masks
from naslora_deploy.exporters.wrappers import MaskDecoderGraph, PromptDecoderGraph


@pytest.fixture(scope="module")
def sam_and_embeddings():
    torch.manual_seed(0)
    sam = build_sam("vit_tiny")
    with torch.no_grad():
        embeddings = sam.image_encoder(torch.randn(2, 3, 256, 256))
    return sam, embeddings


def _native(sam, embedding, points=None, box=None):
    sparse, dense = sam.prompt_encoder(points=points, boxes=box, masks=None)
    return sam.mask_decoder(
        embedding[None], sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=False
    )


@pytest.mark.parametrize("with_box", [True, False])
def test_prompt_decoder_matches_segment_anythings_prompted_forward(sam_and_embeddings, with_box):
    sam, embeddings = sam_and_embeddings
    graph = PromptDecoderGraph(sam).eval()
    coords = torch.tensor(
        [
            [[40.0, 60.0], [120.0, 80.0], [0.0, 0.0], [30.0, 20.0], [220.0, 200.0]],
            [[200.0, 30.0], [10.0, 250.0], [5.0, 5.0], [0.0, 0.0], [0.0, 0.0]],
        ]
    )
    labels = torch.tensor(
        [
            [1.0, 0.0, -1.0, 2.0, 3.0] if with_box else [1.0, 0.0, -1.0, -1.0, -1.0],
            [1.0, 1.0, 0.0, -1.0, -1.0],
        ]
    )
    with torch.no_grad():
        _, low_res, iou = graph(embeddings, coords, labels)
        for b in range(2):
            if labels[b, 3] == 2:  # box in the last two slots
                expected = _native(
                    sam,
                    embeddings[b],
                    (coords[b : b + 1, :3], labels[b : b + 1, :3]),
                    coords[b : b + 1, 3:].reshape(1, 4),
                )
            else:  # SAM pads one point itself when there is no box: give it one slot fewer
                expected = _native(sam, embeddings[b], (coords[b : b + 1, :4], labels[b : b + 1, :4]))
            torch.testing.assert_close(low_res[b : b + 1], expected[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(iou[b : b + 1], expected[1], rtol=1e-4, atol=1e-4)


def test_prompt_free_graph_matches_the_real_decoder(sam_and_embeddings):
    sam, embeddings = sam_and_embeddings
    model = SegmentationModel(sam).eval()
    with torch.no_grad():
        low_res, upscaled = MaskDecoderGraph(model)(embeddings)
        expected = model.decode(embeddings)["mask_logits"]
    torch.testing.assert_close(low_res, expected, rtol=1e-5, atol=1e-5)
    assert upscaled.shape == (2, 1, 256, 256)


def test_batched_predict_masks_has_all_mask_tokens(sam_and_embeddings):
    sam, embeddings = sam_and_embeddings
    _, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
    with torch.no_grad():
        masks, iou = batched_predict_masks(
            sam.mask_decoder, embeddings, sam.prompt_encoder.get_dense_pe(), dense, None
        )
    assert masks.shape == (2, 4, 64, 64) and iou.shape == (2, 4)
