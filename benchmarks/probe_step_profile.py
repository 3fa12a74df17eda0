"""Where a warm training step's time goes, per operator, for train recipes side by side.

Why the default recipe (all blocks, prefix cache, bf16) reaches 3.3x the old recipe's steps per hour on
an Intel CPU with AMX but 2.6x on an AMD EPYC without it (benchmarks/RESULTS.md): each recipe's
trainer takes one step on a batch (filling its prefix cache), then ``--steps`` warm steps on that
batch run under ``torch.profiler``; operators are summed by self CPU time, per step.

    python benchmarks/probe_step_profile.py --recipes all+cache,all+cache+bf16   # ~2 min, 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

try:
    from bench_train_speed import RECIPES, batches, trainer_for
    from compare_data import photo_set
    from timing import write_record
except ImportError:
    from benchmarks.bench_train_speed import RECIPES, batches, trainer_for
    from benchmarks.compare_data import photo_set
    from benchmarks.timing import write_record


def operator_times(trainer, batch, steps: int) -> dict:
    """Self CPU seconds per operator per step over ``steps`` warm steps on ``batch``."""
    trainer.train_step(batch, None, "weights")  # fills the prefix cache for these images
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.train_step(batch, None, "weights")
    return {event.key: event.self_cpu_time_total / 1e6 / steps for event in prof.key_averages()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="all+cache,all+cache+bf16")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None, help="JSON record (default: none written)")
    args = parser.parse_args()
    names = args.recipes.split(",")
    data = photo_set()
    per_recipe = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            trainer = trainer_for(data, Path(tmp) / str(i), 4, **RECIPES[name])
            per_recipe[name] = operator_times(trainer, batches(trainer)[0], args.steps)
            print(f"{name}: {sum(per_recipe[name].values()):.2f} s per step (profiled)", flush=True)
    keys = {k for times in per_recipe.values() for k in times}
    ranked = sorted(keys, key=lambda k: -max(r.get(k, 0.0) for r in per_recipe.values()))
    print(f"{'operator':<44}" + "".join(f"{n:>18}" for n in names))
    for key in ranked[: args.top]:
        print(f"{key[:43]:<44}" + "".join(f"{per_recipe[n].get(key, 0.0):>18.3f}" for n in names))
    if args.out:
        rows = [{"recipe": n, "step_s": sum(t.values()), "operators_s": t} for n, t in per_recipe.items()]
        write_record(args.out, rows, {"args": {k: str(v) for k, v in vars(args).items()}})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
