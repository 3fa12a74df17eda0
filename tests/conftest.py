"""Shared fixtures: real segment-anything models with random weights."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

import numpy as np
import pytest
import torch

from naslora_deploy import AdapterConfig, add_adapters, build_sam
from naslora_deploy.core.adapters.testing import perturb_adapters, set_alpha

_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None
TRIM_ABOVE_KB = 1_500_000


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next((int(line.split()[1]) for line in status if line.startswith("VmRSS")), 0)


def release_freed_memory(above_kb: int = TRIM_ABOVE_KB) -> None:
    """Hand the memory Python and torch freed back to the system, where the process is above
    ``above_kb``: glibc keeps freed heap (2.1 GB of it after one LiteMedSAM training step, 0.9 GB once
    trimmed), and the suite runs in one process. Frees nothing still held; a trim costs time, so only
    large processes pay it."""
    if _LIBC is None or not hasattr(_LIBC, "malloc_trim") or _rss_kb() < above_kb:
        return
    gc.collect()
    _LIBC.malloc_trim(0)


def pytest_runtest_teardown(item):
    """After each test (see ``release_freed_memory``)."""
    release_freed_memory()


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
    from naslora_deploy.training.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("binary") / "data", count=8, seed=1)


@pytest.fixture(scope="session")
def multiclass_data(tmp_path_factory):
    from naslora_deploy.training.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("multi") / "data", count=8, multiclass=True, seed=2
    )


def make_adapter_dir(root, num_classes=1, method="nas_pc_lora", seed=0, **config_fields):
    """A checkpoint directory of a vit_tiny with random non-zero adapters (no training needed)."""
    from pathlib import Path

    from safetensors.torch import save_file

    from naslora_deploy.common.io import sha256_of
    from naslora_deploy.core.model.classes import ClassSpec
    from naslora_deploy.core.model.heads import SegmentationModel
    from naslora_deploy.core.runs.checkpoint import RunSpec, save_checkpoint

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sam = build_sam("vit_tiny")
    base = root / "base.safetensors"
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(base))
    config = AdapterConfig(method=method, seed=seed, **config_fields)
    add_adapters(sam, config)
    perturb_adapters(sam, seed=seed + 1)
    model = SegmentationModel(sam, num_classes, 0)
    spec = RunSpec(
        "vit_tiny",
        config,
        ClassSpec(num_classes),
        model.class_head.queries.num_embeddings if model.class_head else 0,
        256,
        str(base.resolve()),
        sha256_of(base),
    )
    return save_checkpoint(root / "ckpt", model, spec)


@pytest.fixture(scope="session")
def binary_adapter(tmp_path_factory):
    return make_adapter_dir(tmp_path_factory.mktemp("binary_adapter"))


@pytest.fixture(scope="session")
def multiclass_adapter(tmp_path_factory):
    return make_adapter_dir(tmp_path_factory.mktemp("multi_adapter"), num_classes=3)


@pytest.fixture(scope="session")
def binary_artifacts(binary_adapter, tmp_path_factory):
    from naslora_deploy.exporters.export import ExportSpec, export_artifacts

    return export_artifacts(binary_adapter, tmp_path_factory.mktemp("rt") / "art", ExportSpec(prompts=True))[
        0
    ]


@pytest.fixture(scope="session")
def multiclass_artifacts(multiclass_adapter, tmp_path_factory):
    from naslora_deploy.exporters.export import ExportSpec, export_artifacts

    return export_artifacts(multiclass_adapter, tmp_path_factory.mktemp("rtm") / "art", ExportSpec())[0]


@pytest.fixture(scope="session")
def photo():
    from naslora_deploy.training.data.synthetic import synthetic_sample

    return synthetic_sample(np.random.default_rng(3))[0]


def run_without(body: str, blocked=("torch",)):
    """Run ``body`` in a fresh interpreter where importing any of ``blocked`` fails.

    A meta-path finder refuses them, so ``import x`` and ``importlib.import_module``
    both raise ``ModuleNotFoundError``, as on a machine where they are not installed.
    """
    import subprocess
    import sys
    import textwrap

    blocker = textwrap.dedent(
        f"""
        import sys
        class _Uninstalled:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {tuple(blocked)!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked in this test)")
                return None
        sys.meta_path.insert(0, _Uninstalled())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", blocker + textwrap.dedent(body)], capture_output=True, text=True
    )


def run_without_torch(body: str):
    """Run ``body`` in a fresh interpreter where torch cannot be imported."""
    return run_without(body, ("torch",))


@pytest.fixture(scope="session")
def hostile_ctx(binary_adapter, binary_artifacts, binary_data, multiclass_data, photo):
    """What every hostile row may build on (tests/hostile; copy before damaging: ``harness.copy_into``)."""
    return {
        "adapter": binary_adapter,
        "artifacts": binary_artifacts,
        "binary_data": binary_data,
        "multiclass_data": multiclass_data,
        "photo": photo,
    }


def train_config(data, out, defaults: dict, **changes):
    """A quiet ``TrainConfig`` on ``data`` into ``out``: a test file's ``defaults``, then ``changes``."""
    from naslora_deploy.training.config import TrainConfig

    return TrainConfig(**{"data": str(data), "out": str(out), "progress": False, **defaults, **changes})


def first_batch(trainer):
    """The first training batch of ``trainer``'s epoch 0, as its own loader yields it."""
    from naslora_deploy.training.trainer import epoch_order

    pairs = trainer.splits.split("train")
    return next(iter(trainer._loader(pairs, epoch_order(len(pairs), 0, 0))))


def train_args(data, out, *options, model="vit_tiny"):
    """The command line ``train --data DATA --model MODEL --out OUT OPTIONS`` (no program name)."""
    return ["train", "--data", str(data), "--model", model, "--out", str(out), *options]


def sam_masks(sam, images, points=None, boxes=None, masks=None, multimask_output=True):
    """SAM's own three parts on ``images`` with these prompts: (image embedding, mask logits, IoU)."""
    with torch.no_grad():
        embedding = sam.image_encoder(images)
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
        low_res, iou = sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
    return embedding, low_res, iou


def vit_b_small(image_size: int = 256):
    """SAM ViT-B's image encoder and decoders (12 blocks of width 768, global attention at 2, 5, 8, 11,
    windows of 14) built with segment-anything's own modules for ``image_size`` inputs: the real
    architecture, block for block, at a fraction of the 1024-pixel memory (14.7 GB to export one)."""
    import dataclasses

    from naslora_deploy.core.model.variants import VARIANTS

    return dataclasses.replace(VARIANTS["vit_b"], image_size=image_size, registry=None).build()
