"""Peak training memory of nas_pc_lora against lora (target: <= 1.10x), per phase of Alg. 1.

Three measures, each of one real training step on a fixed batch:

- ``activations``: bytes autograd keeps for the backward pass (unique storages
  packed by ``saved_tensors_hooks``, parameters and buffers excluded): exact,
  deterministic, and the part of training memory an adapter can grow;
- ``state``: parameters + gradients + both Adams' moments of the trainable ones;
- ``peak``: on CUDA ``torch.cuda.max_memory_allocated`` over the step; on the CPU
  the peak resident memory of a fresh process running that one contender, minus
  the same process's resident memory before its first step (noisy: allocator).

    python benchmarks/bench_train_memory.py [--model vit_tiny] [--batch-size 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from naslora_deploy.training.data.synthetic import write_synthetic_dataset

try:
    from bench_train_step import CONTENDERS, build_trainer, make_step
    from timing import register_sized_variant, write_record
except ImportError:
    from benchmarks.bench_train_step import CONTENDERS, build_trainer, make_step
    from benchmarks.timing import register_sized_variant, write_record

TARGET = 1.10


def saved_activation_bytes(trainer, step, model_tensors) -> int:
    """Largest bytes autograd holds for one backward while ``step`` runs.

    Unique storages packed by ``saved_tensors_hooks``, ``model_tensors``' own
    excluded, counted per forward (each ``trainer.loss`` call opens a new count,
    since the backward before it freed the last one); the maximum is returned.
    """
    passes = []

    def pack(tensor):
        storage = tensor.untyped_storage()
        passes[-1][storage.data_ptr()] = storage.nbytes()
        return tensor

    loss = trainer.loss

    def counting_loss(batch):
        passes.append({})
        return loss(batch)

    trainer.loss = counting_loss
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            step()
    finally:
        trainer.loss = loss
    parameters = {t.untyped_storage().data_ptr() for t in model_tensors}
    return max(sum(size for ptr, size in saved.items() if ptr not in parameters) for saved in passes)


def state_bytes(trainer) -> int:
    """Parameters and buffers, plus gradient and two Adam moments per trainable element."""
    model_bytes = sum(
        t.numel() * t.element_size() for t in list(trainer.model.parameters()) + list(trainer.model.buffers())
    )
    trainable = trainer.weights + trainer.alphas
    return model_bytes + sum(3 * p.numel() * p.element_size() for p in trainable)


def rss_mb() -> float:
    """Peak resident memory of this process so far (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_one(args, name: str) -> dict:
    """Build one contender, run one warm step, then measure one more; returns its figures."""
    model = register_sized_variant(args.model)
    method, stage, alpha_pass = CONTENDERS[name]
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "data", count=max(8, args.batch_size), seed=0)
        trainer = build_trainer(data, Path(tmp) / "run", model, method, alpha_pass, args)
        step = make_step(trainer, stage)
        before_rss = rss_mb()
        if trainer.device.type == "cuda":
            step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        activations = saved_activation_bytes(
            trainer, step, list(trainer.model.parameters()) + list(trainer.model.buffers())
        )
        figures = {
            "contender": name,
            "activations_mb": activations / 2**20,
            "state_mb": state_bytes(trainer) / 2**20,
        }
        if trainer.device.type == "cuda":
            figures["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            figures["peak_over_start_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            step()
            figures["peak_mb"] = rss_mb()
            figures["peak_over_start_mb"] = rss_mb() - before_rss
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny", help="a variant, or NAME@SIZE (e.g. vit_b@512)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--grad-checkpoint", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one contender, print JSON
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args, args.one)))
        return
    rows = [run_in_fresh_process(name) for name in CONTENDERS]  # a fresh process each: clean peaks
    report(rows, args)


def run_in_fresh_process(name: str) -> dict:
    """Measure one contender in a child process running this script with ``--one``."""
    command = [sys.executable, __file__, *sys.argv[1:], "--one", name]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(rows, args) -> None:
    """Print the table with ratios to lora and write the JSON record."""
    lora = rows[0]
    print(f"{args.model}, batch {args.batch_size}, {args.device}: memory of one training step")
    print(
        f"  {'contender':<48} {'activations MB':>14} {'vs lora':>8} {'state MB':>9} {'state+act':>9} "
        f"{'peak MB':>8} {'vs lora':>8} {'step peak MB':>12} {'vs lora':>8}"
    )
    for row in rows:
        row["activations_over_lora"] = row["activations_mb"] / lora["activations_mb"]
        row["step_peak_over_lora"] = row["peak_over_start_mb"] / lora["peak_over_start_mb"]
        row["total_over_lora"] = (row["activations_mb"] + row["state_mb"]) / (
            lora["activations_mb"] + lora["state_mb"]
        )
        row["peak_over_lora"] = row["peak_mb"] / lora["peak_mb"]
        # judged on the measured device peak on CUDA; on the CPU on state + activations (RSS is too coarse)
        judged = row["peak_over_lora"] if args.device.startswith("cuda") else row["total_over_lora"]
        row["target"] = TARGET if row is not lora else None
        row["met"] = None if row is lora else judged <= TARGET
        print(
            f"  {row['contender']:<48} {row['activations_mb']:>14.1f} {row['activations_over_lora']:>7.3f}x "
            f"{row['state_mb']:>9.1f} {row['total_over_lora']:>8.3f}x {row['peak_mb']:>8.0f} "
            f"{row['peak_over_lora']:>7.3f}x {row['peak_over_start_mb']:>12.1f} "
            f"{row['step_peak_over_lora']:>7.2f}x"
        )
    device_tag = args.device.split(":")[0]
    out = (
        args.out
        or Path(__file__).parent
        / "results"
        / f"train_memory_{args.model.replace('@', '_')}_{device_tag}.json"
    )
    write_record(out, rows, extra={"model": args.model, "batch_size": args.batch_size, "device": args.device})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
