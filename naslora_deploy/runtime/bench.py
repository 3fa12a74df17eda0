"""``naslora-deploy bench``: latency percentiles, throughput and memory of artifacts.

With two artifact directories the runs alternate one by one (A B A B ...), so
both see the same machine state, and the ratio of medians is reported.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np


def device_memory_mb() -> Optional[float]:
    """GPU memory in use on device 0 (cuda-python), or None without a GPU."""
    try:
        from cuda.bindings import runtime as cudart

        err, free, total = cudart.cudaMemGetInfo()
        return None if int(err) != 0 else (total - free) / 2**20
    except Exception:
        return None


def peak_host_mb() -> float:
    """Peak resident memory of this process."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _step(segmenter, batch: np.ndarray):
    def run():
        segmenter.backend.decode(segmenter.backend.encode(batch))

    return run


def summarise(samples: List[float], batch: int) -> Dict[str, float]:
    """p50/p90/p99 in ms and images per second (from the median)."""
    ms = np.array(samples) * 1000.0
    p50 = float(np.percentile(ms, 50))
    return {
        "p50_ms": p50,
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "images_per_s": batch * 1000.0 / p50,
        "runs": len(samples),
    }


def bench(
    segmenters: Sequence, batch_sizes: Sequence[int], runs: int = 20, warmup: int = 3, seed: int = 0
) -> List[dict]:
    """Time encoder + decoder per batch size; alternate when given two segmenters."""
    rng = np.random.default_rng(seed)
    rows = []
    for batch_size in batch_sizes:
        size = segmenters[0].image_size
        batch = rng.standard_normal((batch_size, 3, size, size)).astype(np.float32)
        steps = [_step(s, batch) for s in segmenters]
        for _ in range(warmup):
            for step in steps:
                step()
        samples: List[List[float]] = [[] for _ in steps]
        for _ in range(runs):
            for i, step in enumerate(steps):
                start = time.perf_counter()
                step()
                samples[i].append(time.perf_counter() - start)
        row = {"batch": batch_size}
        for label, segmenter, times in zip("ab", segmenters, samples):
            row[label] = {
                "artifact": str(segmenter.directory),
                "backend": segmenter.backend_name,
                **summarise(times, batch_size),
            }
        if len(segmenters) == 2:
            row["ratio_a_over_b"] = row["a"]["p50_ms"] / row["b"]["p50_ms"]
        row["peak_host_mb"] = peak_host_mb()
        row["device_mb"] = device_memory_mb()
        rows.append(row)
    return rows


def format_rows(rows: List[dict]) -> str:
    """A printable table."""
    lines = [
        f"{'batch':>5} {'run':>3} {'backend':<22} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>8}"
    ]
    for row in rows:
        for label in ("a", "b"):
            if label in row:
                r = row[label]
                lines.append(
                    f"{row['batch']:>5} {label:>3} {r['backend']:<22} {r['p50_ms']:>9.2f} "
                    f"{r['p90_ms']:>9.2f} "
                    f"{r['p99_ms']:>9.2f} {r['images_per_s']:>8.2f}"
                )
        extra = f"      peak host {row['peak_host_mb']:.0f} MB"
        if row["device_mb"] is not None:
            extra += f", device {row['device_mb']:.0f} MB"
        if "ratio_a_over_b" in row:
            extra += f", a/b median ratio {row['ratio_a_over_b']:.3f}"
        lines.append(extra)
    return "\n".join(lines)
