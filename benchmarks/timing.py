"""Shared benchmark helpers: alternating timings, medians, and a JSON record."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional


def alternate(
    contenders: Dict[str, Callable[[], object]], repeats: int, warmup: int = 2
) -> Dict[str, List[float]]:
    """Time each contender ``repeats`` times, interleaved (A B A B ...), in seconds."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(samples: List[float], baseline: List[float]) -> float:
    """Median over rounds of (this round's time / the baseline's time in the same round)."""
    return statistics.median(a / b for a, b in zip(samples, baseline))


def median_ms(samples: List[float]) -> float:
    """Median of a list of seconds, in milliseconds."""
    return 1000.0 * statistics.median(samples)


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """Where and with what the figures were taken."""
    import torch

    from naslora_deploy.training.acceleration import cpu_has_bf16

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_native_bf16": cpu_has_bf16(),  # the probe --precision auto decides by
        "cpu_amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }


def mean_and_std(members: List[dict], keys) -> dict:
    """``{key}_mean`` and ``{key}_std`` (sample std, 0 for one value) of each key over runs; None skipped."""
    figures = {}
    for key in keys:
        values = [m[key] for m in members if m.get(key) is not None]
        if values:
            figures[f"{key}_mean"] = statistics.fmean(values)
            figures[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return figures


def write_record(path: Path, rows: List[dict], extra: Optional[dict] = None) -> None:
    """Write the rows, the settings in ``extra`` and the machine description as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), **(extra or {}), "rows": rows}
    path.write_text(json.dumps(record, indent=2) + "\n")


def write_run_record(
    args, table: List[dict], runs: List[dict], started: float, complete: bool, **extra
) -> None:
    """A seeded benchmark's record at ``args.out``: the summary ``table``, every run, the settings
    (``args``), the wall time since ``started`` and whether every run finished (rewritten after each
    run, so what is done survives an interruption); ``extra``: more settings worth keeping."""
    settings = {
        "complete": complete,
        **extra,
        "runs": runs,
        "args": vars(args) | {"out": str(args.out)},
        "wall_s": time.perf_counter() - started,
    }
    write_record(args.out, table, settings)


def add_latency_options(parser, model: str = "vit_tiny") -> None:
    """The latency benchmarks' shared options: the variant, the timed runs, the warm-up rounds and
    the batch sizes (comma-separated; ``parse_batch_sizes`` reads them)."""
    parser.add_argument("--model", default=model)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,4")


def parse_batch_sizes(args) -> List[int]:
    """The ``--batch-sizes`` of ``add_latency_options`` as integers."""
    return [int(b) for b in args.batch_sizes.split(",")]


def register_sized_variant(name: str) -> str:
    """``vit_b@512`` -> register a variant with vit_b's encoder at 512 px; plain names pass through.

    Benchmark-only: the same segment-anything modules, width, depth, heads and windows,
    with the positional embedding and prompt grid sized for the smaller image, so
    the CPU can time a full-width model. Returns the registered name.
    """
    if "@" not in name:
        return name
    from naslora_deploy.core.model.variants import VARIANTS

    base, size = name.split("@")
    # segment-anything's own modules and decoder dimensions, assembled at the smaller size
    VARIANTS[name] = dataclasses.replace(VARIANTS[base], image_size=int(size), registry=None)
    return name
