"""Warm training steps with the adapters' delta scattered into qkv (``index_add``, before 2026-12-07)
against added through W_d's rows placed at their qkv columns (``AdaptedQKV.forward`` now), in one
process, alternating A B B A on the same batches; medians and their ratio per recipe.

The profile of the default recipe's step on an AMD EPYC (``probe_step_profile.py``) showed the scatter's
gather backward (``index_select`` over TinyViT's interleaved qkv columns) among the largest costs.

    python benchmarks/probe_qkv_add.py --recipes all+cache,all+cache+bf16   # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from naslora_deploy.core.adapters.layers import AdaptedQKV

try:
    from bench_train_speed import RECIPES, batches, scattered_forward, trainer_for
    from compare_data import photo_set
    from timing import write_record
except ImportError:
    from benchmarks.bench_train_speed import RECIPES, batches, scattered_forward, trainer_for
    from benchmarks.compare_data import photo_set
    from benchmarks.timing import write_record

PLACED = AdaptedQKV.forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="all+cache,all+cache+bf16")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data, rows = photo_set(), []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(args.recipes.split(",")):
            trainer = trainer_for(data, Path(tmp) / str(i), 4, **RECIPES[name])
            epoch = batches(trainer)[: args.rounds]
            for batch in epoch:  # fills the prefix cache for these images
                trainer.train_step(batch, None, "weights")
            times = {"scattered": [], "placed": []}
            ways = [("scattered", scattered_forward), ("placed", PLACED)]
            for r, batch in enumerate(epoch):
                for way, forward in ways if r % 2 == 0 else ways[::-1]:  # each goes first half the time
                    AdaptedQKV.forward = forward
                    began = time.perf_counter()
                    trainer.train_step(batch, None, "weights")
                    times[way].append(time.perf_counter() - began)
            AdaptedQKV.forward = PLACED
            row = {"recipe": name, **{f"{w}_step_s": statistics.median(t) for w, t in times.items()}}
            row["placed_over_scattered"] = row["placed_step_s"] / row["scattered_step_s"]
            rows.append(row)
            print(
                f"{name}: scattered {row['scattered_step_s']:.2f} s, placed {row['placed_step_s']:.2f} s, "
                f"ratio {row['placed_over_scattered']:.3f}",
                flush=True,
            )
    if args.out:
        write_record(args.out, rows, {"args": {k: str(v) for k, v in vars(args).items()}})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
