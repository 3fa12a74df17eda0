"""The optimisers' semantics: --adapter-lr groups, --lora-alpha as its exact Adam form, alpha's decay,
and a run whose search never starts saying so."""

import copy

import pytest
import torch
from conftest import train_config
from torch.nn.utils import parametrize

from naslora_deploy.core.adapters.config import AdapterConfig
from naslora_deploy.core.adapters.injection import adapted_layers, add_adapters
from naslora_deploy.core.adapters.testing import perturb_adapters
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.variants import build_sam
from naslora_deploy.core.runs.architecture import inspection_summary
from naslora_deploy.training.config import TrainConfig
from naslora_deploy.training.optimizers import build_optimizers, weight_groups
from naslora_deploy.training.schedule import search_never_starts
from naslora_deploy.training.trainer import train


def _train_config(**changes):
    return TrainConfig(
        **{"data": "unused", "out": "unused", "model": "vit_tiny", "method": "lora", **changes}
    )


def _lora_model(seed=0):
    torch.manual_seed(seed)
    sam = add_adapters(build_sam("vit_tiny"), AdapterConfig(method="lora", seed=seed))
    perturb_adapters(sam, seed=5, b_std=0.02)
    return SegmentationModel(sam).train()


def test_groups_carry_their_own_learning_rates():
    config = _train_config(lr=1e-4, adapter_lr=1e-3, lora_alpha=6, weight_decay=1e-4)
    groups = {g["name"]: g for g in weight_groups(_lora_model(), config)}
    assert groups["decoder"]["base_lr"] == 1e-4
    assert groups["adapters"]["base_lr"] == 1e-3
    assert groups["lora_B"]["base_lr"] == pytest.approx(1e-3 * 6 / 3)
    assert groups["lora_B"]["weight_decay"] == pytest.approx(1e-4 / (6 / 3) ** 2)
    assert all(p.shape[0] == 3 for p in groups["adapters"]["params"])  # W_e (r x C) only, under LoRA


class _Scaled(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, weight):
        return weight * self.scale


def _effective_b(model):
    return torch.cat(
        [
            a.lora_B.detach().flatten()
            for _, layer in adapted_layers(model.sam)
            for a in layer.adapters.values()
        ]
    )


def test_lora_alpha_is_peft_scaling_in_its_exact_adam_form():
    """Ours (W_d's learning rate x s, decay / s^2) against PEFT's forward scaling s W_d', same steps.

    Compared as the whole update of the effective W_d over two steps: Adam's first steps are
    nearly sign steps, so single entries whose gradient is at rounding level may differ; the
    update as a whole must agree (ignoring the scale would be off by (s - 1) / s = 62 %).
    """
    scale, config = 8 / 3, _train_config(lr=1e-3, adapter_lr=1e-3, lora_alpha=8, weight_decay=1e-2)
    ours = _lora_model()
    reference = copy.deepcopy(ours)
    for _, layer in adapted_layers(reference.sam):
        for adapter in layer.adapters.values():
            with torch.no_grad():
                adapter.lora_B.div_(scale)  # the same effective W_d = s W_d'
            parametrize.register_parametrization(adapter, "lora_B", _Scaled(scale))
    start = _effective_b(ours)
    torch.testing.assert_close(_effective_b(reference), start)
    ours_opt, _ = build_optimizers(ours, config)
    trained = [p for p in reference.parameters() if p.requires_grad]
    reference_opt = torch.optim.Adam(trained, lr=1e-3, weight_decay=1e-2)
    images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        for model, optimizer in ((ours, ours_opt), (reference, reference_opt)):
            optimizer.zero_grad()
            model(images)["mask_logits"].square().mean().backward()
            optimizer.step()
    mine, theirs = _effective_b(ours) - start, _effective_b(reference) - start
    assert float((mine - theirs).norm() / theirs.norm()) < 0.02
    assert float(theirs.norm()) > 0


def test_decoupled_decay_lets_a_tiny_gradient_move_alpha_and_coupled_holds_it():
    moved = {}
    for decay in ("coupled", "decoupled"):
        alpha = torch.nn.Parameter(torch.zeros(8))
        kind = torch.optim.AdamW if decay == "decoupled" else torch.optim.Adam
        optimizer = kind([alpha], lr=1e-3, weight_decay=1e-3)
        for _ in range(300):
            alpha.grad = torch.full((8,), 1e-7) * torch.arange(-4.0, 4.0)  # alpha's measured size
            optimizer.step()
        moved[decay] = float(alpha.softmax(0).sub(1 / 8).abs().max())
    assert moved["coupled"] < 1e-4 < 1e-2 < moved["decoupled"]


def test_the_default_arch_optimiser_is_adamw():
    sam = add_adapters(build_sam("vit_tiny"), AdapterConfig(method="nas_pc_lora"))
    model = SegmentationModel(sam)
    _, arch = build_optimizers(model, _train_config(method="nas_pc_lora"))
    _, paper = build_optimizers(model, _train_config(method="nas_pc_lora", arch_decay="coupled"))
    assert type(arch) is torch.optim.AdamW and type(paper) is torch.optim.Adam


@pytest.mark.parametrize(
    "changes, said",
    [
        (dict(epochs=5, search_start=5), "--search-start 5 is at or past the last epoch"),
        (dict(epochs=5, search_start=2, max_steps=8), "--max-steps 8 ends the run before epoch 3"),
        (dict(epochs=5, search_start=2, max_steps=9), None),
        (dict(epochs=5, search_start=5, joint=True), None),
    ],
)
def test_a_search_that_never_starts_is_said(changes, said):
    message = search_never_starts(_train_config(method="nas_pc_lora", **changes), steps_per_epoch=4)
    assert (message is None) if said is None else (said in message)


def test_inspect_of_a_run_without_search_names_no_top_operation(binary_data, tmp_path, capsys):
    defaults = dict(model="vit_tiny", method="nas_pc_lora", epochs=1, search_start=1, batch_size=4)
    config = train_config(binary_data, tmp_path / "run", defaults)
    run = train(config)
    assert "no search will run" in capsys.readouterr().err
    summary = inspection_summary(run)
    assert summary["search_ran"] is False and "no search ran" in summary["table"]
    assert " top" not in summary["table"].splitlines()[1] and summary["trajectory"]
