"""Every public name takes what the public loaders return.

The loaders (``build_sam``, ``add_adapters``, ``load_adapter``, ``merge``) give a
SAM or a ``SegmentationModel``. Each public name that reads a model is driven
with each loader's output through one shared check, from one table of cases (as
HF PEFT's tests are), and its result is checked, not only that it runs. The
names that take no model (``load_adapter``, constants, error classes) are checked
for their kind, and a test keeps both tables covering ``naslora_deploy.__all__``.
vit_tiny and one 256 px image: seconds on one CPU thread.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import pytest
import torch

import naslora_deploy
from naslora_deploy import (
    VARIANTS,
    AdapterConfig,
    CheckpointError,
    MergeError,
    MergeReport,
    NasloraError,
    adapted_layers,
    adapters_disabled,
    add_adapters,
    architecture_parameters,
    build_sam,
    load_adapter,
    merge,
    probe_images,
    set_cell_forward,
    trainable_summary,
    variant_of,
    weight_parameters,
)
from naslora_deploy.core.adapters.injection import attention_blocks
from naslora_deploy.core.adapters.layers import AdaptedQKV
from naslora_deploy.core.adapters.testing import perturb_adapters
from naslora_deploy.core.model.heads import SegmentationModel, sam_of

IMAGE = probe_images(256, 1, seed=0)
SAME = 1e-5  # relative error of the same maths computed another way: rounding is ~1e-7
CHANGED = 1e-3  # relative change that adapters with non-zero W_d must make


@dataclass
class Loaded:
    """One loader's output and what the checks compare against."""

    model: torch.nn.Module
    embedding: torch.Tensor  # the model's image embedding of IMAGE
    base_embedding: Optional[torch.Tensor] = None  # its base SAM's, where it has adapters
    fused: bool = False  # a fused merge: its qkv layers keep fixed cells

    @property
    def adapted(self) -> bool:
        """Whether the model has (non-zero) adapters."""
        return self.base_embedding is not None


def encode(model, images: torch.Tensor = IMAGE) -> torch.Tensor:
    """The image embeddings of ``images`` by ``model``'s encoder."""
    with torch.no_grad():
        return sam_of(model).image_encoder(images)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm())


def ids(params) -> set:
    """The identities of ``params``."""
    return {id(p) for p in params}


def adapted_qkvs(model) -> List[AdaptedQKV]:
    """The model's adapted qkv layers, found by type (not through the API under test)."""
    return [m for m in sam_of(model).image_encoder.modules() if isinstance(m, AdaptedQKV)]


def adapters(model) -> list:
    """Every adapter (one per adapted block and projection)."""
    return [adapter for layer in adapted_qkvs(model) for adapter in layer.adapters.values()]


@pytest.fixture(scope="module")
def loader_outputs(binary_adapter) -> Dict[str, Loaded]:
    """What each public loader returns, built once: the checks below leave them as they found them."""
    torch.manual_seed(0)
    built = build_sam("vit_tiny")
    adapted = add_adapters(copy.deepcopy(built), AdapterConfig(seed=0))
    perturb_adapters(adapted, seed=1)  # non-zero W_d: the adapters change the output
    loaded = load_adapter(binary_adapter)  # conftest's run: random non-zero adapters
    loaded_base = build_sam("vit_tiny", checkpoint=loaded.spec.base_checkpoint)
    merged_sam, _ = merge(adapted, "dense", probe_count=1)
    merged_head, _ = merge(loaded, "fused", probe_count=1)
    return {
        "build_sam": Loaded(built, encode(built)),
        "add_adapters": Loaded(adapted, encode(adapted), encode(built)),
        "load_adapter": Loaded(loaded, encode(loaded), encode(loaded_base)),
        "merge_dense_sam": Loaded(merged_sam, encode(merged_sam)),
        "merge_fused_head": Loaded(merged_head, encode(merged_head), fused=True),
    }


LOADERS = ["build_sam", "add_adapters", "load_adapter", "merge_dense_sam", "merge_fused_head"]
LOADER_TYPES = {  # the class each loader output is an instance of
    "build_sam": "Sam",
    "add_adapters": "Sam",
    "load_adapter": "SegmentationModel",
    "merge_dense_sam": "Sam",
    "merge_fused_head": "SegmentationModel",
}


# ---- the checks: each gets the loader output and what its case's call returned ----


def expect_variant(loaded: Loaded, name: str) -> None:
    assert name == "vit_tiny"


def expect_adapted_layers(loaded: Loaded, layers: list) -> None:
    encoder = sam_of(loaded.model).image_encoder
    if not loaded.adapted:
        assert layers == []
        return
    blocks = [block for _, block in attention_blocks(encoder)]
    assert [index for index, _ in layers] == list(range(len(blocks))) == [0, 1, 2, 3]  # blocks="all"
    assert all(layer is blocks[index].attn.qkv for index, layer in layers)
    assert [layer for _, layer in layers] == adapted_qkvs(loaded.model)


def expect_architecture_parameters(loaded: Loaded, alphas: list) -> None:
    expected = [adapter.alpha for adapter in adapters(loaded.model)]  # nas_pc_lora: every adapter has a cell
    assert ids(alphas) == ids(expected) and len(alphas) == len(expected) == (12 if loaded.adapted else 0)
    assert all(alpha.requires_grad for alpha in alphas)


def expect_weight_parameters(loaded: Loaded, weights: list) -> None:
    model = loaded.model
    alphas = ids(adapter.alpha for adapter in adapters(model))
    trainable = ids(p for p in model.parameters() if p.requires_grad)
    assert ids(weights) == trainable - alphas and len(weights) == len(ids(weights))
    adapter_weights = ids(p for a in adapters(model) for p in (a.lora_A, a.lora_B))
    assert adapter_weights <= ids(weights) and bool(adapter_weights) == loaded.adapted
    assert ids(sam_of(model).mask_decoder.parameters()) <= ids(weights)
    if loaded.adapted:  # the base encoder is frozen
        assert id(sam_of(model).image_encoder.patch_embed.proj.weight) not in ids(weights)


def expect_trainable_summary(loaded: Loaded, summary) -> None:
    params = list(loaded.model.parameters())
    assert summary.total == sum(p.numel() for p in params)
    assert summary.trainable == sum(p.numel() for p in params if p.requires_grad)
    assert summary.decoder.total == sum(p.numel() for p in sam_of(loaded.model).mask_decoder.parameters())
    adapter_total = sum(p.numel() for a in adapters(loaded.model) for p in a.parameters())
    assert summary.adapters.total == adapter_total and (adapter_total > 0) == loaded.adapted
    parts = (summary.adapters, summary.decoder, summary.other)
    assert sum(part.total for part in parts) == summary.total
    assert sum(part.trainable for part in parts) == summary.trainable
    assert summary.ratio_percent == pytest.approx(100 * summary.trainable / summary.total)


def embeddings_with_adapters_disabled(model):
    """(inside the context, after it)."""
    with adapters_disabled(model):
        inside = encode(model)
    return inside, encode(model)


def expect_adapters_disabled(loaded: Loaded, result) -> None:
    inside, after = result
    assert not any(layer.disabled for layer in adapted_qkvs(loaded.model)), "switched back on"
    assert rel(after, loaded.embedding) < SAME
    if loaded.adapted:
        assert rel(inside, loaded.base_embedding) < SAME  # the base SAM
        assert rel(loaded.embedding, loaded.base_embedding) > CHANGED  # which the adapters really change
    else:
        assert rel(inside, loaded.embedding) < SAME


def naive_cell_forward(model):
    """(cell forward of each adapted layer, embedding) under ``naive``, then ``kernel`` again."""
    set_cell_forward(model, "naive")
    try:
        return [layer.cell_forward for layer in adapted_qkvs(model)], encode(model)
    finally:
        set_cell_forward(model, "kernel")


def expect_set_cell_forward(loaded: Loaded, result) -> None:
    modes, naive = result
    assert modes == ["naive"] * (4 if loaded.adapted else 0)
    assert all(layer.cell_forward == "kernel" for layer in adapted_qkvs(loaded.model))
    assert rel(naive, loaded.embedding) < SAME  # the same maths, eight ops instead of one kernel


def adapters_on_a_copy(model):
    """(the copy given, what ``add_adapters`` returned)."""
    fresh = copy.deepcopy(model)
    return fresh, add_adapters(fresh, AdapterConfig(method="lora", seed=5))


def expect_add_adapters(loaded: Loaded, result) -> None:
    given, returned = result
    assert returned is given
    layers = adapted_qkvs(returned)
    assert len(layers) == 4 and all(layer.config.method == "lora" for layer in layers)
    assert sam_of(returned).adapter_config.method == "lora"
    assert rel(encode(returned), loaded.embedding) < SAME  # W_d starts at zero: nothing changes
    trainable = ids(p for p in sam_of(returned).image_encoder.parameters() if p.requires_grad)
    assert trainable == ids(p for layer in layers for p in layer.adapters.parameters())


def adapter_refusal(loaded: Loaded) -> Optional[str]:
    if loaded.adapted:
        return "already has adapters"
    return "not a Linear" if loaded.fused else None


def expect_merge(loaded: Loaded, result) -> None:
    merged, report = result
    assert type(merged) is type(loaded.model)
    assert not adapted_qkvs(merged) and len(adapted_qkvs(loaded.model)) == 4  # the input is untouched
    assert isinstance(report, MergeReport) and report.mode == "fused" and report.images == 1
    assert report.embedding_rel_error <= SAME  # exact: an upper bound, as rounding may give 0
    assert rel(encode(merged), loaded.embedding) < SAME
    if isinstance(merged, SegmentationModel):
        assert report.mask_iou["none"] == pytest.approx(1.0, abs=1e-3)


def merge_refusal(loaded: Loaded) -> Optional[str]:
    return None if loaded.adapted else "no adapters"


def model_probe_images(model) -> torch.Tensor:
    parameter = next(model.parameters())
    return probe_images(sam_of(model).image_encoder.img_size, count=1, seed=0, dtype=parameter.dtype)


def expect_probe_images(loaded: Loaded, images: torch.Tensor) -> None:
    assert images.shape == (1, 3, 256, 256) and torch.equal(images, IMAGE)  # seeded
    embedding = encode(loaded.model, images)
    assert embedding.shape == (1, 64, 16, 16) and torch.isfinite(embedding).all()


def expect_build_sam(loaded: Loaded, sam) -> None:
    assert type(sam).__name__ == "Sam" and not adapted_qkvs(sam) and variant_of(sam) == "vit_tiny"
    assert sam.normalization == sam_of(loaded.model).normalization == "imagenet"
    if not loaded.adapted and not loaded.fused:  # a plain SAM's weights fit the rebuilt one
        sam.load_state_dict(sam_of(loaded.model).state_dict())  # strict
        assert rel(encode(sam), loaded.embedding) < SAME


def recorded_config(model):
    """(the ``AdapterConfig`` the model records or None, its dict round trip)."""
    config = getattr(sam_of(model), "adapter_config", None)
    return config, None if config is None else AdapterConfig.from_dict(config.to_dict())


def expect_adapter_config(loaded: Loaded, result) -> None:
    config, again = result
    if not loaded.adapted:  # a merge leaves no adapters, so no config
        assert config is None
        return
    assert isinstance(config, AdapterConfig) and again == config
    layers = adapted_qkvs(loaded.model)
    assert config.block_indices(4) == [0, 1, 2, 3] and len(layers) == 4
    assert all(tuple(layer.adapters) == tuple(config.targets) for layer in layers)


def expect_merge_report(loaded: Loaded, report) -> None:
    assert isinstance(report, MergeReport) and MergeReport.from_dict(report.to_dict()) == report
    assert report.mode == "dense" and report.method == sam_of(loaded.model).adapter_config.method
    assert len(report.projections) == 12 and report.summary().startswith("merge dense (nas_pc_lora")
    assert report.embedding_rel_error < 0.1  # a constant-response fold approximates the spatial ops


@dataclass(frozen=True)
class Case:
    """A public name, how to call it on a loader's output, and the check of what that gives."""

    call: Callable
    expect: Callable[[Loaded, object], None]
    refusal: Callable[[Loaded], Optional[str]] = lambda loaded: None  # the error message it must raise


CASES: Dict[str, Case] = {
    "variant_of": Case(variant_of, expect_variant),
    "adapted_layers": Case(lambda model: list(adapted_layers(model)), expect_adapted_layers),
    "architecture_parameters": Case(architecture_parameters, expect_architecture_parameters),
    "weight_parameters": Case(weight_parameters, expect_weight_parameters),
    "trainable_summary": Case(trainable_summary, expect_trainable_summary),
    "adapters_disabled": Case(embeddings_with_adapters_disabled, expect_adapters_disabled),
    "set_cell_forward": Case(naive_cell_forward, expect_set_cell_forward),
    "add_adapters": Case(adapters_on_a_copy, expect_add_adapters, adapter_refusal),
    "merge": Case(lambda model: merge(model, "fused", probe_count=1), expect_merge, merge_refusal),
    "probe_images": Case(model_probe_images, expect_probe_images),
    "build_sam": Case(lambda model: build_sam(variant_of(model)), expect_build_sam),
    "AdapterConfig": Case(recorded_config, expect_adapter_config),
    "MergeReport": Case(
        lambda model: merge(model, "dense", probe_count=1)[1], expect_merge_report, merge_refusal
    ),
}

KINDS: Dict[str, Callable[[object], bool]] = {  # the public names that take no model
    "load_adapter": callable,  # a loader: its output is driven through every case above
    "VARIANTS": lambda value: value is VARIANTS and value["vit_tiny"].image_size == 256,
    "__version__": lambda value: isinstance(value, str) and re.fullmatch(r"\d+\.\d+\.\d+\S*", value),
    "NasloraError": lambda value: issubclass(value, Exception),
    "CheckpointError": lambda value: issubclass(value, NasloraError),
    "MergeError": lambda value: issubclass(value, NasloraError),
}


def check(case: Case, loaded: Loaded) -> None:
    """The shared check: the case's refusal where it has one, else its expectations."""
    refusal = case.refusal(loaded)
    if refusal is not None:
        with pytest.raises((ValueError, NasloraError), match=refusal):
            case.call(loaded.model)
        return
    case.expect(loaded, case.call(loaded.model))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_public_function_takes_each_loader_output(name, loader, loader_outputs):
    check(CASES[name], loader_outputs[loader])


@pytest.mark.parametrize("name", sorted(KINDS))
def test_public_name_is_of_its_kind(name):
    assert KINDS[name](getattr(naslora_deploy, name))


def test_the_tables_cover_every_public_name():
    assert not set(CASES) & set(KINDS)
    assert set(CASES) | set(KINDS) == set(naslora_deploy.__all__)


@pytest.mark.parametrize("loader", LOADERS)
def test_each_loader_gives_a_sam_or_a_segmentation_model(loader, loader_outputs):
    model = loader_outputs[loader].model
    assert type(model).__name__ == LOADER_TYPES[loader]
    assert sam_of(model) is (model.sam if isinstance(model, SegmentationModel) else model)
    if loader == "load_adapter":  # the run it was loaded from is recorded on it
        assert model.spec.variant == "vit_tiny" and model.spec.adapter == sam_of(model).adapter_config


def test_anything_else_is_one_type_error():
    for wrong in ("run_dir", torch.nn.Linear(2, 2)):
        with pytest.raises(TypeError, match="expected a SAM model"):
            weight_parameters(wrong)


def test_error_classes_are_raised_as_documented(loader_outputs):
    with pytest.raises(MergeError):
        merge(loader_outputs["build_sam"].model, "fused")
    with pytest.raises(CheckpointError):
        load_adapter(loader_outputs["load_adapter"].model.spec.base_checkpoint)  # a weights file, not a run


RUNTIME_CHECKS = {  # naslora_deploy.runtime's public names, each driven on an exported artifact
    "Segmenter": lambda runtime, artifacts, image: (
        runtime.Segmenter.open(artifacts, "onnxruntime", "cpu").segment(image).mask.shape == image.shape[:2]
    ),
    "Segmentation": lambda runtime, artifacts, image: isinstance(
        runtime.Segmenter.open(artifacts, "onnxruntime", "cpu").segment(image), runtime.Segmentation
    ),
    "SamPredictor": lambda runtime, artifacts, image: _sam_predictor_answers(runtime, artifacts, image),
}


def _sam_predictor_answers(runtime, artifacts, image) -> bool:
    """segment-anything's predictor calls, and its answer's shapes and dtypes."""
    import numpy as np

    predictor = runtime.SamPredictor.open(artifacts, "onnxruntime", "cpu")
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(point_coords=np.array([[20, 30]]), point_labels=np.array([1]))
    refined = predictor.predict(box=np.array([5, 5, 60, 80]), mask_input=low_res[:1], multimask_output=False)
    return (
        masks.shape == (3, *image.shape[:2])
        and masks.dtype == bool
        and scores.dtype == np.float32
        and low_res.shape == (3, 64, 64)
        and refined[0].shape == (1, *image.shape[:2])
    )


def test_runtime_public_names(binary_artifacts, photo):
    import naslora_deploy.runtime as runtime

    assert set(RUNTIME_CHECKS) == set(runtime.__all__)
    for name, check_name in RUNTIME_CHECKS.items():
        assert check_name(runtime, binary_artifacts, photo), name
