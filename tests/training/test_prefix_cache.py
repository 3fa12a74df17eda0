"""The frozen-prefix cache: exact (cached and uncached steps agree), keyed by content and precision,
bounded, and where it applies."""

import pytest
import torch
from conftest import train_config

from naslora_deploy.core.adapters.config import AdapterConfig
from naslora_deploy.core.adapters.injection import add_adapters
from naslora_deploy.core.adapters.testing import perturb_adapters
from naslora_deploy.core.model.variants import build_sam
from naslora_deploy.training.prefix_cache import PrefixCache
from naslora_deploy.training.trainer import Trainer

DEFAULTS = dict(model="vit_tiny", method="lora", blocks=[2, 3], epochs=3, batch_size=4, lr=1e-3)


def _config(data, out, **changes):
    return train_config(data, out, DEFAULTS, **changes)


@pytest.mark.parametrize("method", ["lora", "none"])
def test_cached_and_uncached_runs_end_with_the_same_weights(binary_data, tmp_path, method):
    """Compared as the whole update: Adam's near-sign steps may flip single entries whose gradient
    is at rounding level (the cache runs one image at a time, the plain forward a batch). In fp32:
    exactness is an fp32 property; under bf16 autocast (``auto`` on a CPU with native bf16) the
    batched and the per-image prefix round apart at bf16's 3 digits, and Adam carries that on."""
    fp32 = dict(method=method, precision="fp32")
    cached = Trainer(_config(binary_data, tmp_path / "cached", **fp32))
    plain = Trainer(_config(binary_data, tmp_path / "plain", prefix_cache=False, **fp32))
    for trainer in (cached, plain):
        perturb_adapters(trainer.model.sam, seed=3)
    start = torch.cat([w.detach().flatten().clone() for w in plain.weights])
    cache = cached.model.encoder_cache
    cached.run()
    plain.run()
    assert plain.model.encoder_cache is None and cache.hits > 0 and cache.misses > 0
    moved = [torch.cat([w.detach().flatten() for w in t.weights]) - start for t in (cached, plain)]
    assert float((moved[0] - moved[1]).norm() / moved[1].norm()) < 1e-2 and float(moved[1].norm()) > 0


def test_the_cache_applies_only_where_something_in_front_is_frozen_and_inputs_repeat(binary_data, tmp_path):
    assert Trainer(_config(binary_data, tmp_path / "a", method="full")).model.encoder_cache is None
    assert Trainer(_config(binary_data, tmp_path / "b", augment="light")).model.encoder_cache is None
    decoder_only = Trainer(_config(binary_data, tmp_path / "c", method="none")).model.encoder_cache
    assert decoder_only.prefix_names[-1] == "neck"  # decoder-only: the embeddings themselves


def _assert_same_up_to_rounding(out, expected):
    """The cache runs the prefix one image at a time, the reference a batch: kernels may round a
    few entries differently, so the check is relative to the output's scale, not to 1e-6."""
    assert out.shape == expected.shape
    assert float((out - expected).norm() / expected.norm()) < 1e-5
    assert float((out - expected).abs().max()) < 1e-4 * float(expected.abs().max())


def _cache(max_bytes=2**30):
    torch.manual_seed(0)
    sam = add_adapters(build_sam("vit_tiny"), AdapterConfig(method="lora", blocks=[2, 3]))
    perturb_adapters(sam, seed=1)
    return sam, PrefixCache(sam.image_encoder, max_bytes)


def test_entries_are_keyed_by_content_and_autocast():
    sam, cache = _cache()
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        first = cache(images)
        again = cache(images)
        changed = images.clone()
        changed[1, 0, 0, 0] += 1.0
        cache(changed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cache(images)
        expected = sam.image_encoder(images)
    assert torch.equal(first, again)
    _assert_same_up_to_rounding(first, expected)
    assert (cache.hits, cache.misses) == (2 + 1, 1 + 1 + 1 + 2)


def test_the_bound_is_kept_and_misses_past_it_are_still_right():
    sam, cache = _cache(max_bytes=1)
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        out = cache(images)
        expected = sam.image_encoder(images)
    assert cache.entries == {} and cache.bytes == 0
    _assert_same_up_to_rounding(out, expected)
