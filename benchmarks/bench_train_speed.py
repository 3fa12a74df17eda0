"""Optimiser steps per hour of LiteMedSAM fine-tuning recipes on this machine, as ratios in one run.

Recipes (all NAS-PC-LoRA unless named): today's ``old`` one (adapters on all 10 blocks,
no prefix cache, fp32), also on the issue's code path (its qkv delta scattered, ``index_add``); the
same with the prefix cache; adapters on blocks 2-9 or 8-9
with the cache (layer 1 or layer 2 then cached); bf16 autocast; decoder-only on cached
embeddings; full fine-tuning. Each is timed in the same process, interleaved (A B C ... A B C),
after a cold first epoch that fills its cache (the cold epoch is measured too and counted in
the steps per hour of a ``--run-steps`` run). Prompt-free, batch 4, 64 training photographs.

    python benchmarks/bench_train_speed.py            # about 10 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import types
from pathlib import Path

import torch

from naslora_deploy.core.adapters.layers import AdaptedQKV
from naslora_deploy.training.config import TrainConfig
from naslora_deploy.training.sampling import flip_batch
from naslora_deploy.training.trainer import Trainer

try:
    from compare_data import photo_set
    from timing import write_record
except ImportError:
    from benchmarks.compare_data import photo_set
    from benchmarks.timing import write_record

FP32 = dict(precision="fp32")  # named: --precision auto is bf16 on a CPU with native bf16
RECIPES = {  # name -> TrainConfig fields
    "old": dict(method="nas_pc_lora", prefix_cache=False, **FP32),  # all blocks, no cache, fp32
    "all+cache": dict(method="nas_pc_lora", **FP32),
    "b2-9+cache": dict(method="nas_pc_lora", blocks=list(range(2, 10)), **FP32),
    "b8-9+cache": dict(method="nas_pc_lora", blocks=[8, 9], **FP32),
    "b8-9+cache+bf16": dict(method="nas_pc_lora", blocks=[8, 9], precision="bf16"),
    "all+cache+bf16": dict(method="nas_pc_lora", precision="bf16"),
    "decoder-only (cached embeddings)": dict(method="none", **FP32),
    "full fine-tuning": dict(method="full", prefix_cache=False, **FP32),
}
# the old recipe on the issue's code path: the adapters' delta scattered into TinyViT's interleaved
# qkv columns (index_add), replaced on 2026-12-07 by W_d's rows placed at their columns (a plain add)
RECIPES["old+scattered-add"] = RECIPES["old"]
SCATTERED = {"old+scattered-add"}


def scattered_forward(self, x):
    """``AdaptedQKV.forward`` before 2026-12-07: the K-column delta scattered into qkv's output."""
    out = self.base_layer(x)
    if self.disabled:
        return out
    return out.index_add(-1, self.target_columns, self.delta(x))


def scatter_qkv_adds(model) -> None:
    """Put this model's adapted qkv layers (only) on the scattered forward."""
    for module in model.modules():
        if isinstance(module, AdaptedQKV):
            module.forward = types.MethodType(scattered_forward, module)


def trainer_for(data: Path, out: Path, batch_size: int, **recipe) -> Trainer:
    config = TrainConfig(
        data=str(data),
        out=str(out),
        model="litemedsam",
        batch_size=batch_size,
        epochs=100,
        search_start=100,
        progress=False,
        **recipe,
    )
    return Trainer(config)


def batches(trainer: Trainer):
    """One epoch's training batches (flipped as a run flips them)."""
    pairs = trainer.splits.split("train")
    order = list(range(len(pairs)))
    return [flip_batch(b, 0, 0) for b in trainer._loader(pairs, order)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="steps timed per recipe per round")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--run-steps", type=int, default=400, help="the run length steps/hour is quoted for")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_speed.json")
    args = parser.parse_args()
    data = photo_set()
    names = [n for n in RECIPES if n in args.recipes.split(",")]
    if names[0] != "old":
        parser.error("the ratios are against the old recipe: keep 'old' in --recipes")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        trainers, epochs, cold = {}, {}, {}
        for i, name in enumerate(names):
            trainers[name] = trainer_for(data, Path(tmp) / str(i), args.batch_size, **RECIPES[name])
            if name in SCATTERED:
                scatter_qkv_adds(trainers[name].model)
            epochs[name] = batches(trainers[name])
            if trainers[name].model.encoder_cache is not None:  # the cold epoch fills the cache
                began = time.perf_counter()
                for batch in epochs[name]:
                    trainers[name].train_step(batch, None, "weights")
                cold[name] = time.perf_counter() - began
                print(f"{name}: cold epoch {cold[name]:.1f} s ({len(epochs[name])} steps)", flush=True)
        times = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names:
                for s in range(args.steps):
                    batch = epochs[name][(r * args.steps + s) % len(epochs[name])]
                    began = time.perf_counter()
                    trainers[name].train_step(batch, None, "weights")
                    times[name].append(time.perf_counter() - began)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    old = statistics.median(times[names[0]])
    per_epoch = len(epochs[names[0]])
    for name in names:
        warm = statistics.median(times[name])
        extra = cold.get(name, warm * per_epoch) - warm * per_epoch  # the cold epoch's extra cost
        run_s = args.run_steps * warm + max(extra, 0.0)
        rows.append(
            {
                "recipe": name,
                **RECIPES[name],
                "warm_step_s": warm,
                "cold_epoch_s": cold.get(name),
                "steps_per_hour": 3600 * args.run_steps / run_s,
                "speedup_vs_old": (old * args.run_steps) / run_s,
                "threads": torch.get_num_threads(),
            }
        )
    print(f"{'recipe':<36} {'step s':>7} {'steps/h':>8} {'x old':>6}")
    for row in rows:
        print(
            f"{row['recipe']:<36} {row['warm_step_s']:>7.2f} {row['steps_per_hour']:>8.0f} "
            f"{row['speedup_vs_old']:>6.2f}"
        )
    write_record(args.out, rows, {"args": {k: str(v) for k, v in vars(args).items()}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
