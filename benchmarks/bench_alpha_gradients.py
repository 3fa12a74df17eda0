"""How big alpha's gradient is during the search, per cell form, and whether single cells move.

bench_cell_forms.py found the mean op shares (over every block and q, k, v) within about
1e-4 of 1/8 after its 9 steps. Two explanations fit that: alpha's gradient is of the order
of Adam's epsilon (1e-8), so Adam's step is a fraction of the alpha lr; or each cell's alpha
moves but the cells disagree, so the mean stays put. This script trains exactly as that
benchmark does (LiteMedSAM, box prompt, the same photographs, lr and alpha lr) and records,
at every search step: the median |d loss / d alpha| over all alpha entries, the fraction of
entries below 10 x epsilon, Adam's effective first-step fraction |g| / (|g| + eps), each
op's share of negative gradients (alpha rising) over cells, and after each step the
largest and median per-cell share change and the mean-share change. Writes
benchmarks/results/alpha_gradients_litemedsam.json.

    python benchmarks/bench_alpha_gradients.py                    # 3 forms x 9 steps, about 10 minutes
    python benchmarks/bench_alpha_gradients.py --forms linear --epochs 2 --images 2   # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import List

import torch

from naslora_deploy.core.adapters.injection import adapted_layers
from naslora_deploy.training.sampling import epoch_order, flip_batch
from naslora_deploy.training.trainer import Trainer

try:
    import harness
    from timing import write_record
except ImportError:
    from benchmarks import harness
    from benchmarks.timing import write_record

ADAM_EPS = 1e-8  # torch.optim.Adam's default, which the trainer uses


def cell_adapters(sam) -> list:
    """Every adapter that has a searchable cell, in block order."""
    return [a for _, layer in adapted_layers(sam) for a in layer.adapters.values() if a.op_names]


def step_figures(adapters, start_shares: torch.Tensor) -> dict:
    """Alpha's gradient (as left by the step) and how far the shares have moved since the start."""
    grads = torch.stack([a.alpha.grad.detach().double() for a in adapters])  # (cells, ops)
    shares = torch.stack([a.op_weights().detach().double() for a in adapters])
    magnitude = grads.abs().flatten()
    moved = (shares - start_shares).abs().amax(dim=1)  # per cell, the largest share change
    ops = adapters[0].op_names
    return {
        "grad_abs_median": magnitude.median().item(),
        "grad_abs_max": magnitude.max().item(),
        "grad_below_10eps": (magnitude < 10 * ADAM_EPS).double().mean().item(),
        "adam_first_step_fraction_median": (magnitude / (magnitude + ADAM_EPS)).median().item(),
        "alpha_rising_share": dict(zip(ops, (grads < 0).double().mean(dim=0).tolist())),
        "cell_share_change_max": moved.max().item(),
        "cell_share_change_median": moved.median().item(),
        "mean_share_change_max": (shares.mean(dim=0) - start_shares.mean(dim=0)).abs().max().item(),
    }


def run_form(args, data: Path, root: Path, form: str) -> dict:
    """Train one cell form step by step as the trainer would; record alpha at every search step."""
    protocol = harness.TrainingProtocol.from_args(args)
    config = protocol.config(data, root / form, "nas_pc_lora", args.seed, prompt="box", cell_form=form)
    trainer = Trainer(config)
    adapters = cell_adapters(trainer.model.sam)
    start = torch.stack([a.op_weights().detach().double() for a in adapters])
    pairs = trainer.splits.split("train")
    steps: List[dict] = []
    started = time.perf_counter()
    for epoch in range(args.epochs):
        stage = trainer.stage(epoch)
        for batch in trainer._loader(pairs, epoch_order(len(pairs), args.seed, epoch)):
            result = trainer.train_step(flip_batch(batch, args.seed, epoch), None, stage)
            trainer.step += 1
            if stage != "weights":
                steps.append({"step": trainer.step, "loss": result["loss"], **step_figures(adapters, start)})
    return {
        "cell_form": form,
        "cells": len(adapters),
        "seconds": time.perf_counter() - started,
        "steps": steps,
    }


def print_form(entry: dict) -> None:
    """One line per search step."""
    print(f"{entry['cell_form']} ({entry['cells']} cells):")
    print("  step  |g| median   |g|<10eps  Adam step  cell dshare max/median  mean dshare")
    for s in entry["steps"]:
        print(
            f"  {s['step']:>4}  {s['grad_abs_median']:.2e}  {s['grad_below_10eps']:>9.2f}"
            f"  {s['adam_first_step_fraction_median']:>9.3f}"
            f"  {s['cell_share_change_max']:.2e} / {s['cell_share_change_median']:.2e}"
            f"  {s['mean_share_change_max']:.2e}"
        )
    last = entry["steps"][-1]["alpha_rising_share"] if entry["steps"] else {}
    print("  cells whose alpha rises at the last step: " + " ".join(f"{k}={v:.2f}" for k, v in last.items()))


def main() -> None:
    """Train each cell form, print its per-step alpha figures and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forms", default="linear,scaled,darts")
    # bench_cell_forms' training, one seed, no --alpha-pass (the trainer's default)
    harness.add_protocol_options(
        parser,
        seeds=None,
        images=6,
        test_images=None,
        val_images=None,
        arch_lr=1e-2,
        alpha_pass=None,
        helps={"images": None},
    )
    parser.add_argument("--seed", type=int, default=0)
    harness.add_record_options(parser, Path(__file__).parent / "results" / "alpha_gradients_litemedsam.json")
    args = parser.parse_args()
    rows = []
    with harness.photo_workspace(args, val=2, test=6) as (root, data):
        for form in args.forms.split(","):
            rows.append(run_form(args, data, root, form))
            print_form(rows[-1])
            write_record(args.out, rows, {"args": vars(args) | {"out": str(args.out)}})
    medians = {r["cell_form"]: statistics.median(s["grad_abs_median"] for s in r["steps"]) for r in rows}
    print(
        "median |d loss / d alpha| over search steps: "
        + ", ".join(f"{k} {v:.2e}" for k, v in medians.items())
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
