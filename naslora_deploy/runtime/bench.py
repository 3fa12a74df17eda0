"""``naslora-deploy bench``: latency percentiles, throughput and memory of artifacts.

With two artifact directories the runs alternate one by one (A B A B ...), so
both see the same machine state, and the ratio of medians is reported.
``bench_prompts`` times the predictor path: one embedding (``set_image``), then
N box prompts in one batched ``predict``, against N one-shot ``segment`` calls.
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


def _prompt_steps(segmenter, image: np.ndarray, boxes: np.ndarray):
    """Timed callables: set_image; one batched predict of the boxes; one one-shot segment (box 0)."""
    return (
        lambda: segmenter.set_image(image),
        lambda: segmenter.predict(boxes=boxes, multimask_output=False),
        lambda: segmenter.segment(image, box=tuple(boxes[0])),
    )


def bench_prompts(
    segmenters: Sequence, prompt_counts: Sequence[int], runs: int = 20, warmup: int = 3, seed: int = 0
) -> List[dict]:
    """The predictor (one embedding, N box prompts in one decoder call) against one-shot ``segment``.

    Per N: p50 of ``set_image``, of ``predict`` with N boxes, of one ``segment``
    (encoder + one prompt), and ``speedup``: N one-shot calls over one embedding + one predict.
    Segmenters alternate step by step. A random image at the model's input size.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for count in prompt_counts:
        size = segmenters[0].image_size
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        corners = np.sort(rng.uniform(0, size - 1, (count, 2, 2)), axis=1)
        boxes = corners.reshape(count, 4).astype(np.float32)  # (x0, y0) <= (x1, y1) per box
        steps = [_prompt_steps(s, image, boxes) for s in segmenters]
        samples = [[[], [], []] for _ in steps]
        for repeat in range(warmup + runs):
            for index, trio in enumerate(steps):
                for which, step in enumerate(trio):  # set_image, predict on it, then a one-shot segment
                    start = time.perf_counter()
                    step()
                    if repeat >= warmup:
                        samples[index][which].append(time.perf_counter() - start)
        row = {"prompts": count}
        for label, segmenter, (embed, predict, one_shot) in zip("ab", segmenters, samples):
            embed_ms, predict_ms, one_ms = (1000 * float(np.median(t)) for t in (embed, predict, one_shot))
            row[label] = {
                "artifact": str(segmenter.directory),
                "backend": segmenter.backend_name,
                "set_image_p50_ms": embed_ms,
                "predict_p50_ms": predict_ms,
                "per_prompt_ms": predict_ms / count,
                "one_shot_p50_ms": one_ms,
                "speedup": count * one_ms / (embed_ms + predict_ms),
            }
        rows.append(row)
    return rows


def _runs(row: dict):
    """A table row's runs, as (label, figures): ``a`` and, when two artifacts alternate, ``b``."""
    return [(label, row[label]) for label in ("a", "b") if label in row]


# (title, width, key, number format, suffix) of each figure column
BATCH_COLUMNS = (
    ("p50 ms", 9, "p50_ms", ".2f", ""),
    ("p90 ms", 9, "p90_ms", ".2f", ""),
    ("p99 ms", 9, "p99_ms", ".2f", ""),
    ("img/s", 8, "images_per_s", ".2f", ""),
)
PROMPT_COLUMNS = (
    ("set_image", 10, "set_image_p50_ms", ".2f", ""),
    ("predict", 9, "predict_p50_ms", ".2f", ""),
    ("/prompt", 8, "per_prompt_ms", ".2f", ""),
    ("one-shot", 9, "one_shot_p50_ms", ".2f", ""),
    ("speedup", 8, "speedup", ".1f", "x"),
)


def _table(rows: List[dict], key: str, columns, footer=None) -> str:
    """One line per row and run (``key``, run label, backend, the ``columns``), and ``footer(row)``
    after each row where given."""
    width = max(5, len(key))
    lines = [f"{key:>{width}} {'run':>3} {'backend':<22} " + " ".join(f"{c[0]:>{c[1]}}" for c in columns)]
    for row in rows:
        for label, r in _runs(row):
            figures = " ".join(f"{r[k]:>{w - len(sfx)}{fmt}}{sfx}" for _, w, k, fmt, sfx in columns)
            lines.append(f"{row[key]:>{width}} {label:>3} {r['backend']:<22} {figures}")
        if footer is not None:
            lines.append(footer(row))
    return "\n".join(lines)


def format_prompt_rows(rows: List[dict]) -> str:
    """A printable table of ``bench_prompts``."""
    return _table(rows, "prompts", PROMPT_COLUMNS)


def _memory_line(row: dict) -> str:
    extra = f"      peak host {row['peak_host_mb']:.0f} MB"
    if row["device_mb"] is not None:
        extra += f", device {row['device_mb']:.0f} MB"
    if "ratio_a_over_b" in row:
        extra += f", a/b median ratio {row['ratio_a_over_b']:.3f}"
    return extra


def format_rows(rows: List[dict]) -> str:
    """A printable table."""
    return _table(rows, "batch", BATCH_COLUMNS, _memory_line)
