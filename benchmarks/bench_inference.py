"""Inference targets: dense-merged and fused artifacts against plain SAM, per backend.

Builds the variant with random weights (seeded), gives it NAS-PC-LoRA adapters with
random non-zero values, saves an adapter checkpoint and the base, and exports three
ONNX fp32 artifact directories with the project's exporter: plain SAM, dense-merged
and fused-merged. Each backend opens them with the runtime's ``Segmenter`` and times
encoder + prompt-free decoder (``backend.encode`` then ``backend.decode``, as
``naslora-deploy bench`` does), all contenders alternating run by run (A B C A B C
...) after a warm-up. The torch backend also times the unmerged NAS-PC-LoRA model
(``AdaptedQKV`` layers, eval, no_grad), which exists in torch only.

Targets: dense / plain = 1.00 +-2 % and fused / plain <= 1.03x on every backend,
judged on the median of per-round ratios (each round's time over plain SAM's in the
same round: robust to the machine drifting between rounds); the ratio of medians is
reported beside it.

    python benchmarks/bench_inference.py [--model vit_tiny] [--runs 20] [--warmup 3] [--batch-sizes 1,4]
        [--backends onnxruntime,torch] [--device cuda|cpu] [--out benchmarks/results/inference_vit_tiny.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from naslora_deploy.core.runs.checkpoint import load_adapter
from naslora_deploy.exporters.export import ExportSpec, export_artifacts
from naslora_deploy.exporters.torch_backend import TorchBackend, open_segmenter
from naslora_deploy.runtime.bench import summarise
from naslora_deploy.runtime.manifest import read_manifest

try:
    from bench_runtime import make_sources
    from timing import add_latency_options, median_ratio, parse_batch_sizes, write_record
except ImportError:
    from benchmarks.bench_runtime import make_sources
    from benchmarks.timing import add_latency_options, median_ratio, parse_batch_sizes, write_record

BACKENDS = ("onnxruntime", "torch")
CONTENDERS = ("plain", "dense", "fused", "unmerged")
TARGETS = {"plain": "reference", "dense": "1.00 +-2%", "fused": "<= 1.03x", "unmerged": "report"}
DENSE_TOLERANCE = 0.02
FUSED_LIMIT = 1.03


def export_contenders(variant: str, root: Path) -> Dict[str, Path]:
    """Adapter checkpoint and the plain / dense / fused artifact directories (ONNX fp32)."""
    adapter, base = make_sources(variant, root)
    dense, _ = export_artifacts(adapter, root / "dense", ExportSpec(merge="dense"))
    fused, _ = export_artifacts(adapter, root / "fused", ExportSpec(merge="fused"))
    plain, _ = export_artifacts(base, root / "plain", ExportSpec(), variant=variant)
    return {"adapter": adapter, "plain": plain, "dense": dense, "fused": fused}


def open_backends(backend: str, sources: Dict[str, Path], device: str) -> Dict[str, object]:
    """Contender name -> an object with ``encode`` / ``decode``; plain first, unmerged on torch only."""
    opened = {
        name: open_segmenter(sources[name], backend=backend, device=device).backend
        for name in ("plain", "dense", "fused")
    }
    if backend == "torch":
        opened["unmerged"] = TorchBackend(load_adapter(sources["adapter"], device=device), device, "unmerged")
    return opened


def step(backend) -> Callable[[], object]:
    """Encoder then prompt-free decoder on one batch, as ``runtime.bench._step``."""

    def run(batch: np.ndarray):
        return backend.decode(backend.encode(batch))

    return run


def time_alternating(
    steps: Dict[str, Callable], batch: np.ndarray, runs: int, warmup: int
) -> Dict[str, List[float]]:
    """Seconds per run of every contender, interleaved run by run after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in steps.values():
            fn(batch)
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(runs):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn(batch)
            times[name].append(time.perf_counter() - start)
    return times


def target_met(contender: str, ratio: float) -> Optional[bool]:
    """Whether a ratio of medians meets the contender's target (None: no target)."""
    if contender == "dense":
        return abs(ratio - 1.0) <= DENSE_TOLERANCE
    if contender == "fused":
        return ratio <= FUSED_LIMIT
    return None


def backend_version(backend: str) -> str:
    """The version of the library behind ``backend``."""
    if backend == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    return torch.__version__


def rows_for(
    backend: str, names: Dict[str, str], times: Dict[str, List[float]], batch_size: int
) -> List[dict]:
    """One row per contender: p50, images/s, ratio of medians and median round ratio against plain."""
    plain = times["plain"]
    plain_p50 = summarise(plain, batch_size)["p50_ms"]
    rows = []
    for contender, samples in times.items():
        summary = summarise(samples, batch_size)
        ratio = summary["p50_ms"] / plain_p50
        round_ratio = median_ratio(samples, plain)
        rows.append(
            {
                "backend": backend,
                "backend_name": names[contender],
                "backend_version": backend_version(backend),
                "batch": batch_size,
                "contender": contender,
                **summary,
                "ratio_vs_plain": ratio,
                "median_round_ratio": round_ratio,
                "target": TARGETS[contender],
                "met": target_met(contender, round_ratio),
            }
        )
    return rows


def bench_backend(
    backend: str,
    sources: Dict[str, Path],
    device: str,
    batch_sizes: Sequence[int],
    runs: int,
    warmup: int,
    image_size: int,
    seed: int = 0,
) -> List[dict]:
    """Open every contender on ``backend`` and time them alternating at each batch size."""
    opened = open_backends(backend, sources, device)
    names = {name: b.name for name, b in opened.items()}
    steps = {name: step(b) for name, b in opened.items()}
    rng = np.random.default_rng(seed)
    rows = []
    for batch_size in batch_sizes:
        batch = rng.standard_normal((batch_size, 3, image_size, image_size)).astype(np.float32)
        rows.extend(rows_for(backend, names, time_alternating(steps, batch, runs, warmup), batch_size))
    return rows


def format_table(rows: List[dict]) -> str:
    """A printable table."""
    lines = [
        f"{'backend':<28} {'batch':>5} {'contender':<9} {'p50 ms':>9} {'img/s':>8} {'ratio':>7} "
        f"{'round':>7} {'target':<10} met"
    ]
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(
            f"{r['backend_name']:<28} {r['batch']:>5} {r['contender']:<9} {r['p50_ms']:>9.2f} "
            f"{r['images_per_s']:>8.2f} {r['ratio_vs_plain']:>7.3f} {r['median_round_ratio']:>7.3f} "
            f"{r['target']:<10} {met}"
        )
    return "\n".join(lines)


def parse_backends(text: str) -> List[str]:
    """The comma-separated ``--backends``, checked."""
    chosen = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BACKENDS]
    if unknown or not chosen:
        raise SystemExit(f"--backends: unknown {unknown or text!r}; choose from {', '.join(BACKENDS)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_latency_options(parser)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--device",
        default=None,
        help="torch device (default: cuda if available, else cpu); "
        "cpu also keeps onnxruntime on its CPU provider",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    backends = parse_backends(args.backends)
    batch_sizes = parse_batch_sizes(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = args.out or Path(__file__).parent / "results" / f"inference_{args.model}.json"
    rows: List[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = export_contenders(args.model, Path(tmp))
        image_size = int(read_manifest(sources["plain"])["image_size"])
        for backend in backends:
            rows.extend(
                bench_backend(backend, sources, device, batch_sizes, args.runs, args.warmup, image_size)
            )
    print(
        f"{args.model}: encoder + prompt-free decoder, contenders alternating run by run, "
        f"{args.runs} runs after {args.warmup} warm-up rounds"
    )
    print(
        "plain = plain SAM artifact, dense / fused = merged NAS-PC-LoRA artifacts (ONNX fp32), "
        "unmerged = adapted PyTorch model (torch backend only: there is no unmerged artifact)"
    )
    print(
        "ratio = p50 / plain p50 of the same backend and batch; "
        "round = median of per-round ratios (the target is judged on it)"
    )
    print(format_table(rows))
    write_record(
        out, rows, extra={"model": args.model, "runs": args.runs, "warmup": args.warmup, "device": device}
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
