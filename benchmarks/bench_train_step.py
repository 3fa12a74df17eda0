"""Training step time of nas_pc_lora against lora, each phase of Alg. 1, contenders alternating.

Targets (issue 6): weight phase <= 1.05x lora; weight + alpha phase <= 1.10x lora.
The weight + alpha phase is timed both ways the trainer offers it:
``--alpha-pass second`` (Alg. 1 as written: a second forward/backward at the updated
weights) and ``--alpha-pass same`` (alpha's gradient from stage 1's backward).

    python benchmarks/bench_train_step.py [--model vit_tiny] [--batch-size 4] [--repeats 15] [--device cpu]
    python benchmarks/bench_train_step.py --model vit_b@512 --batch-size 1 --repeats 5

``vit_b@512`` is segment-anything's vit_b (same modules, width, depth, heads and
windows) built at 512 px: a 32x32 token grid, a quarter of the 1024-px cost, so
the CPU can time it. ``vit_b`` is the real 1024-px model (a GPU job).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from naslora_deploy.training.data.synthetic import write_synthetic_dataset
from naslora_deploy.training.trainer import TrainConfig, Trainer, epoch_order

try:
    from timing import alternate, median_ms, median_ratio, register_sized_variant, write_record
except ImportError:
    from benchmarks.timing import alternate, median_ms, median_ratio, register_sized_variant, write_record

# contender -> (method, stage, alpha pass)
CONTENDERS = {
    "lora": ("lora", "weights", "second"),
    "nas_pc_lora weight phase": ("nas_pc_lora", "weights", "second"),
    "nas_pc_lora weight+alpha, same pass": ("nas_pc_lora", "weights+alpha", "same"),
    "nas_pc_lora weight+alpha, second pass (Alg. 1)": ("nas_pc_lora", "weights+alpha", "second"),
}
TARGETS = {
    "nas_pc_lora weight phase": 1.05,
    "nas_pc_lora weight+alpha, same pass": 1.10,
    "nas_pc_lora weight+alpha, second pass (Alg. 1)": 1.10,
}


def build_trainer(data: Path, out: Path, model: str, method: str, alpha_pass: str, args) -> Trainer:
    """A trainer on the synthetic data, as ``naslora-deploy train`` would build it."""
    config = TrainConfig(
        data=str(data),
        out=str(out),
        model=model,
        pretrained=False,  # step time and memory do not depend on the weights' values
        method=method,
        alpha_pass=alpha_pass,
        batch_size=args.batch_size,
        progress=False,
        device=args.device,
        bf16=args.bf16,
        grad_checkpoint=args.grad_checkpoint,
        compile=args.compile,
    )
    return Trainer(config)


def make_step(trainer: Trainer, stage: str):
    """A closure running one real training step on a fixed batch (synchronised on CUDA)."""
    pairs = trainer.splits.split("train")
    batch = next(iter(trainer._loader(pairs, epoch_order(len(pairs), 0, 0))))

    def step():
        trainer.train_step(batch, None, stage)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny", help="a variant, or NAME@SIZE (e.g. vit_b@512)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA"
    )
    parser.add_argument("--grad-checkpoint", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = register_sized_variant(args.model)
    device_tag = args.device.split(":")[0]
    out = (
        args.out
        or Path(__file__).parent / "results" / f"train_step_{args.model.replace('@', '_')}_{device_tag}.json"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "data", count=max(8, args.batch_size), seed=0)
        steps = {}
        for name, (method, stage, alpha_pass) in CONTENDERS.items():
            trainer = build_trainer(data, Path(tmp) / name.replace(" ", "_"), model, method, alpha_pass, args)
            steps[name] = make_step(trainer, stage)
        times = alternate(steps, args.repeats, warmup=args.warmup)
    rows = report(times, args)
    write_record(
        out,
        rows,
        extra={
            "model": args.model,
            "batch_size": args.batch_size,
            "device": args.device,
            "bf16": args.bf16,
            "compile": args.compile,
        },
    )
    print(f"wrote {out}")


def report(times, args) -> list:
    """Print the table and return its rows (ratio of medians and median of per-round ratios)."""
    lora = times["lora"]
    rows = []
    print(
        f"{args.model}, batch {args.batch_size}, {args.device}: training step, {args.repeats} alternating "
        "rounds"
    )
    print(f"  {'contender':<48} {'median ms':>10} {'vs lora':>8} {'per-round':>9} {'target':>7}")
    for name, samples in times.items():
        ratio = median_ms(samples) / median_ms(lora)
        per_round = median_ratio(samples, lora)
        target = TARGETS.get(name)
        met = None if target is None else per_round <= target
        rows.append(
            {
                "contender": name,
                "median_ms": median_ms(samples),
                "over_lora": ratio,
                "median_round_ratio": per_round,
                "target": target,
                "met": met,
                "runs": len(samples),
            }
        )
        mark = "" if target is None else f"<={target:.2f} {'met' if met else 'MISSED'}"
        print(f"  {name:<48} {median_ms(samples):>10.1f} {ratio:>7.2f}x {per_round:>8.2f}x {mark}")
    return rows


if __name__ == "__main__":
    main()
