"""Training step time of nas_pc_lora (stage 1, and stages 1+2) against lora, on the CPU.

vit_tiny at 256 px, batch 4, synthetic binary data; the contenders alternate in
one process and medians are quoted.

    python benchmarks/bench_train_step.py [--repeats 15] [--model vit_tiny]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from naslora_deploy.data.synthetic import write_synthetic_dataset
from naslora_deploy.train import Trainer, TrainConfig, epoch_order

try:
    from timing import alternate, median_ms, write_record
except ImportError:
    from benchmarks.timing import alternate, median_ms, write_record


def make_step(trainer: Trainer, stage: str):
    pairs = trainer.splits.split("train")
    batch = next(iter(trainer._loader(pairs, epoch_order(len(pairs), 0, 0))))
    return lambda: trainer.train_step(batch, None, stage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--model", default="vit_tiny")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_step.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "data", count=8, seed=0)
        trainers = {
            method: Trainer(TrainConfig(data=str(data), out=f"{tmp}/{method}", model=args.model, method=method,
                                        progress=False, device="cpu"))
            for method in ("lora", "nas_pc_lora")
        }
        times = alternate(
            {
                "lora": make_step(trainers["lora"], "weights"),
                "nas_pc_lora stage 1": make_step(trainers["nas_pc_lora"], "weights"),
                "nas_pc_lora stages 1+2": make_step(trainers["nas_pc_lora"], "weights+alpha"),
            },
            args.repeats,
        )
    lora = median_ms(times["lora"])
    rows = [{"contender": name, "median_ms": median_ms(t), "over_lora": median_ms(t) / lora} for name, t in times.items()]
    print(f"{args.model}, batch 4, CPU: training step, median of {args.repeats} alternating runs")
    for row in rows:
        print(f"  {row['contender']:<24} {row['median_ms']:>8.1f} ms   {row['over_lora']:.2f}x lora")
    write_record(args.out, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
