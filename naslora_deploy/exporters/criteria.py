"""What ``verify`` holds each precision's outputs to (``PASS_CRITERIA``), declared once.

Torch-free: the command line quotes these limits in ``verify --help``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class PassCriteria:
    """What ``verify`` holds one precision's outputs to; a limit left None is reported, not checked.

    Embeddings: the encoder's (N, C, h, w) output against PyTorch's. Decoder: each decoder
    output computed from PyTorch's embeddings (so the decoder alone is measured). End to
    end: the encoder's and decoder's masks (logits > 0) against PyTorch's, as mask IoU.
    """

    precision: str
    embeddings_max_abs: Optional[float] = None
    embeddings_max_rel: Optional[float] = None
    decoder_max_abs: Optional[float] = None
    decoder_max_rel: Optional[float] = None
    end_to_end_min_mask_iou: Optional[float] = None
    basis: str = ""

    def limits(self, part: str) -> dict:
        """``ParityRow`` limits for ``part``: embeddings, decoder or end_to_end."""
        if part == "end_to_end":
            return {"min_mask_iou": self.end_to_end_min_mask_iou}
        return {"tolerance": getattr(self, f"{part}_max_abs"), "max_rel": getattr(self, f"{part}_max_rel")}

    def describe(self) -> str:
        """One line: what is checked and what is only reported."""
        parts = [
            f"{label} {criterion_text(**self.limits(part))}"
            for part, label in (
                ("embeddings", "image_embeddings"),
                ("decoder", "decoder outputs on PyTorch's embeddings"),
                ("end_to_end", "end-to-end masks"),
            )
        ]
        return f"pass criteria ({self.precision}): " + "; ".join(parts) + f" [{self.basis}]"

    def to_dict(self) -> dict:
        """The criteria as JSON."""
        return dataclasses.asdict(self)


def criterion_text(tolerance=None, max_rel=None, min_mask_iou=None) -> str:
    """``ParityRow``'s limits as a short text ("reported only" where there are none)."""
    checks = [f"max abs <= {tolerance:.0e}"] if tolerance is not None else []
    checks += [f"rel <= {max_rel:.0e}"] if max_rel is not None else []
    checks += [f"mask IoU >= {min_mask_iou:.2f}"] if min_mask_iou is not None else []
    return " and ".join(checks) or "reported only"


FP16_MARGIN = 4  # benchmarks/bench_fp16_parity.py: criteria = worst real-weight figure with this margin
PASS_CRITERIA = {
    "fp32": PassCriteria(
        "fp32", embeddings_max_abs=1e-4, decoder_max_abs=1e-3, basis="float32 rounding; end to end reported"
    ),
    "fp16": PassCriteria(
        "fp16",
        embeddings_max_rel=3e-2,
        decoder_max_rel=1e-2,
        end_to_end_min_mask_iou=0.98,
        basis=f"{FP16_MARGIN}x the worst measured on LiteMedSAM's real weights, plain and NAS-PC-LoRA fused "
        "and dense, on photographs: rel 5.0e-3, 2.5e-3, IoU 0.9973 (benchmarks/bench_fp16_parity.py)",
    ),
    # the encoder is quantized (its embeddings are reported), the decoders stay fp32 (held to fp32's
    # limit on PyTorch's embeddings), the masks must agree (benchmarks/RESULTS.md, Issue 14: INT8)
    "int8": PassCriteria(
        "int8",
        decoder_max_abs=1e-3,
        end_to_end_min_mask_iou=0.9,
        basis="int8 encoder reported; box masks measured at mean IoU 0.98, worst image 0.954 "
        "(benchmarks/bench_int8.py)",
    ),
    "bf16": PassCriteria("bf16", basis="bf16 exists as TensorRT engines only and has not been measured here"),
}


def criteria_for(precision: str, tolerance: Optional[float] = None) -> PassCriteria:
    """The criteria of ``precision``; ``tolerance`` (``--tolerance``) replaces the embeddings' limits."""
    criteria = PASS_CRITERIA[precision]
    if tolerance is None:
        return criteria
    return dataclasses.replace(
        criteria,
        embeddings_max_abs=tolerance,
        embeddings_max_rel=None,
        basis=criteria.basis + "; --tolerance",
    )


def criteria_summary() -> str:
    """The embeddings' limit per precision, short (``verify --tolerance``'s help quotes it)."""
    parts = []
    for precision, criteria in PASS_CRITERIA.items():
        limits = criteria.limits("embeddings")
        if limits["tolerance"] is not None or limits["max_rel"] is not None:
            parts.append(f"{precision} {criterion_text(**limits)}")
    return ", ".join(parts)


LATENCY_REPEATS = 10  # verify --latency: alternating encoder runs per artifact (medians quoted)
