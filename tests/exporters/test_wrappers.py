"""Export wrappers against segment-anything's own forward passes."""

import pytest
import torch

from naslora_deploy import build_sam
from naslora_deploy.core.model.heads import SegmentationModel, batched_predict_masks
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
        low_res, iou = graph(embeddings, coords, labels)
        assert low_res.shape == (2, 4, 64, 64) and iou.shape == (2, 4)  # every mask token
        low_res, iou = low_res[:, :1], iou[:, :1]  # SAM's single-mask output
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


def test_prompt_decoder_shares_one_embedding_across_prompts(sam_and_embeddings):
    """E = 1 embedding with K prompts equals the embedding repeated K times (SAM's broadcast)."""
    sam, embeddings = sam_and_embeddings
    graph = PromptDecoderGraph(sam).eval()
    coords = torch.tensor([[[40.0, 60.0], [0.0, 0.0]], [[200.0, 30.0], [0.0, 0.0]], [[9.0, 9.0], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, -1.0], [1.0, -1.0], [0.0, -1.0]])
    with torch.no_grad():
        shared = graph(embeddings[:1], coords, labels)
        repeated = graph(embeddings[:1].repeat(3, 1, 1, 1), coords, labels)
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        native = sam.mask_decoder(
            embeddings[:1], sam.prompt_encoder.get_dense_pe(), sparse[:, :2], dense, multimask_output=True
        )
    for ours, theirs in zip(shared, repeated):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared[0][:, 1:], native[0], rtol=1e-4, atol=1e-4)  # SAM's multimask output
    torch.testing.assert_close(shared[1][:, 1:], native[1], rtol=1e-4, atol=1e-4)


def test_prompt_decoder_takes_sams_mask_input(sam_and_embeddings):
    """``mask_input`` with ``has_mask_input`` 1 is SAM's mask prompt; 0 is its "no mask" (the outputs of a
    call without mask inputs); one mask (B = 1) is shared by the K prompts."""
    sam, embeddings = sam_and_embeddings
    graph = PromptDecoderGraph(sam).eval()
    coords = torch.tensor([[[40.0, 60.0], [0.0, 0.0]], [[200.0, 30.0], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    masks = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(3)) * 4
    with torch.no_grad():
        plain = graph(embeddings[:1], coords, labels)
        unused = graph(embeddings[:1], coords, labels, masks, torch.zeros(2, 1))
        used = graph(embeddings[:1], coords, labels, masks, torch.ones(2, 1))
        shared = graph(embeddings[:1], coords, labels, masks[:1], torch.ones(1, 1))
        for k in range(2):
            sparse, dense = sam.prompt_encoder(
                points=(coords[k : k + 1], labels[k : k + 1]), boxes=None, masks=masks[k : k + 1]
            )
            native = sam.mask_decoder(
                embeddings[:1], sam.prompt_encoder.get_dense_pe(), sparse[:, :2], dense, multimask_output=True
            )
            torch.testing.assert_close(used[0][k : k + 1, 1:], native[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(used[1][k : k + 1, 1:], native[1], rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(unused, plain):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(shared[0][0], used[0][0], rtol=1e-5, atol=1e-5)
    assert (used[0] - plain[0]).abs().max() > 1e-2  # the mask changes the answer
