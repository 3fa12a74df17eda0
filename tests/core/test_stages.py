"""The encoder as stages: applied in order they are the encoder's own forward; the frozen prefix ends
where the first trained weight is."""

import pytest
import torch

from naslora_deploy.core.adapters.config import AdapterConfig
from naslora_deploy.core.adapters.injection import add_adapters
from naslora_deploy.core.adapters.testing import perturb_adapters
from naslora_deploy.core.model.stages import encoder_stages, run_stages, trainable_start
from naslora_deploy.core.model.variants import build_sam

CASES = [  # variant, adapted blocks, name of the first trained stage
    ("vit_tiny", [2, 3], "blocks.2"),
    ("vit_tiny", "all", "blocks.0"),
    ("litemedsam", [8, 9], "layers.3.blocks.0"),
    ("litemedsam", [2, 9], "layers.2.blocks.0"),
    ("litemedsam", "all", "layers.1.blocks.0"),
]


@pytest.mark.parametrize("variant, blocks, first", CASES)
def test_stages_in_order_are_the_encoder_and_the_prefix_ends_at_the_first_adapter(variant, blocks, first):
    torch.manual_seed(0)
    sam = add_adapters(build_sam(variant, pretrained=False), AdapterConfig(method="lora", blocks=blocks))
    perturb_adapters(sam, seed=1)  # the adapters change the output: stages must keep them in place
    stages = encoder_stages(sam.image_encoder)
    start = trainable_start(sam.image_encoder, stages)
    assert stages[start].name == first
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        whole = sam.image_encoder(images)
        split = run_stages(stages, run_stages(stages, images, 0, start), start)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, expected", [("none", "all"), ("full", 0)])
def test_decoder_only_has_the_whole_encoder_frozen_and_full_none_of_it(method, expected):
    sam = add_adapters(build_sam("vit_tiny"), AdapterConfig(method=method))
    stages = encoder_stages(sam.image_encoder)
    assert trainable_start(sam.image_encoder, stages) == (len(stages) if expected == "all" else expected)
