"""Shared fixtures: real segment-anything models with random weights."""

from __future__ import annotations

import pytest
import torch

from naslora_deploy import AdapterConfig, add_adapters, build_sam
from naslora_deploy.testing import perturb_adapters, set_alpha


def make_adapted(method="nas_pc_lora", favoured=None, seed=0, perturb=True, **config_fields):
    """vit_tiny with adapters; non-zero W_d unless ``perturb`` is False."""
    torch.manual_seed(1234)
    sam = build_sam("vit_tiny")
    add_adapters(sam, AdapterConfig(method=method, seed=seed, **config_fields))
    if perturb:
        perturb_adapters(sam, seed=seed + 7)
    if favoured is not None:
        set_alpha(sam, favoured)
    return sam


@pytest.fixture
def adapted_factory():
    return make_adapted


@pytest.fixture(scope="session")
def tiny_images():
    generator = torch.Generator().manual_seed(99)
    return torch.randn(2, 3, 256, 256, generator=generator)


@pytest.fixture(scope="session")
def binary_data(tmp_path_factory):
    from naslora_deploy.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("binary") / "data", count=8, seed=1)


@pytest.fixture(scope="session")
def multiclass_data(tmp_path_factory):
    from naslora_deploy.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("multi") / "data", count=8, multiclass=True, seed=2)
