"""Shared benchmark helpers: alternating timings, medians, and a JSON record."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List


def alternate(contenders: Dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> Dict[str, List[float]]:
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


def median_ms(samples: List[float]) -> float:
    """Median of a list of seconds, in milliseconds."""
    return 1000.0 * statistics.median(samples)


def machine() -> dict:
    """Where and with what the figures were taken."""
    import torch

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }


def write_record(path: Path, rows: List[dict]) -> None:
    """Write the rows and the machine description as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
