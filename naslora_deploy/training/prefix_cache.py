"""A cache of the image encoder's frozen prefix: every stage before the first trained one, run once per input.

With adapters on the last blocks only, most of a training step's forward is the
frozen prefix (LiteMedSAM: patch embedding and the MBConv layer are a third of it,
layers 1-2 another half), and its output depends on the input image alone: the
frozen modules stay in eval mode (``core.model.modes``) and hold no trained weight. So
the prefix runs once per distinct input (an image, its flipped copy, a validation
image), on that input alone, and its output is kept in memory; a decoder-only run caches the whole
encoder, i.e. trains on cached embeddings.

Entries are keyed by the input's content (a 128-bit BLAKE2 digest of its bytes,
shape and dtype) and by the autocast state, so the cache is exact by construction:
a changed image, a new augmentation draw or another precision is a miss, never a
stale hit. It lives for one run (base weights, data and preprocessing cannot
change inside it), is bounded by ``max_bytes`` (past that, misses are computed and
not kept) and counts its hits for the run's metrics.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Tuple

import torch

from naslora_deploy.core.model.stages import encoder_stages, run_stages, trainable_start


def _digest(image: torch.Tensor) -> str:
    data = image.detach().contiguous().cpu()
    text = f"{tuple(data.shape)}-{data.dtype}".encode()
    return hashlib.blake2b(data.numpy().tobytes() + text, digest_size=16).hexdigest()


def _autocast_state(device_type: str) -> Tuple[bool, Optional[str]]:
    """Whether autocast is on for ``device_type``, and its dtype (a cached output depends on both)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
        return enabled, str(torch.get_autocast_dtype(device_type)) if enabled else None
    except (TypeError, AttributeError):  # torch < 2.4: one query per device kind
        if device_type == "cpu":
            enabled = torch.is_autocast_cpu_enabled()
            return enabled, str(torch.get_autocast_cpu_dtype()) if enabled else None
        enabled = torch.is_autocast_enabled()
        return enabled, str(torch.get_autocast_gpu_dtype()) if enabled else None


class PrefixCache:
    """Callable like the image encoder: ``cache(images (B, 3, S, S)) -> embeddings``, with the
    frozen prefix's outputs remembered per input."""

    def __init__(self, image_encoder, max_bytes: int) -> None:
        self.stages = encoder_stages(image_encoder)
        self.start = trainable_start(image_encoder, self.stages)
        self.max_bytes = max_bytes
        self.entries: Dict[Tuple, torch.Tensor] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def prefix_names(self) -> List[str]:
        """The stages the cache holds the output of, in order (empty: nothing is frozen in front)."""
        return [stage.name for stage in self.stages[: self.start]]

    def _key(self, image: torch.Tensor) -> Tuple:
        return (_digest(image), *_autocast_state(image.device.type))

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen prefix's output for ``images``: cached rows, the rest computed (and kept if room)."""
        keys = [self._key(image) for image in images]
        missing = [i for i, key in enumerate(keys) if key not in self.entries]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        computed = {}
        for i in missing:  # one image at a time: an entry never depends on what shared its batch
            with torch.no_grad():
                output = run_stages(self.stages, images[i : i + 1], 0, self.start)[0]
            computed[i] = output
            size = output.numel() * output.element_size()
            if self.bytes + size <= self.max_bytes:
                self.entries[keys[i]] = output
                self.bytes += size
        return torch.stack(
            [computed[i] if i in computed else self.entries[key] for i, key in enumerate(keys)]
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.start == 0:
            return run_stages(self.stages, images)
        return run_stages(self.stages, self.prefix(images), self.start)

    def stats(self) -> Dict[str, object]:
        """What the cache held and saved: its prefix, entries, megabytes, hits and misses."""
        return {
            "prefix": self.prefix_names[-1] if self.start else None,
            "entries": len(self.entries),
            "megabytes": round(self.bytes / 2**20, 1),
            "hits": self.hits,
            "misses": self.misses,
        }
