"""``--method full``: the whole encoder and the decoder train; the checkpoint is a plain model that merges
trivially and reloads to the same outputs."""

import torch
from conftest import train_config

from naslora_deploy.core.merging.merge import merge
from naslora_deploy.core.runs.checkpoint import load_adapter, trainable_state
from naslora_deploy.training.trainer import Trainer


def test_full_fine_tuning_trains_the_encoder_and_reloads_and_merges_exactly(binary_data, tmp_path):
    config = train_config(
        binary_data, tmp_path / "run", dict(model="vit_tiny", method="full", epochs=1, batch_size=4, lr=1e-3)
    )
    trainer = Trainer(config)
    encoder = {k: v.clone() for k, v in trainer.model.sam.image_encoder.state_dict().items()}
    assert {g["name"] for g in trainer.weight_opt.param_groups} == {"decoder", "encoder"}
    run = trainer.run()
    after = trainer.model.sam.image_encoder.state_dict()
    assert any(not torch.equal(encoder[k], after[k]) for k in encoder), "the encoder must train"
    assert any(k.startswith("sam.image_encoder.") for k in trainable_state(trainer.model))

    model = load_adapter(run / "last")
    images = torch.rand(1, 3, 256, 256)
    merged, report = merge(model, "dense")
    with torch.no_grad():
        expected = trainer.model.eval()(images)["mask_logits"]
        torch.testing.assert_close(model(images)["mask_logits"], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged(images)["mask_logits"], expected, rtol=1e-5, atol=1e-5)
    assert "full fine-tuning" in report.fold
