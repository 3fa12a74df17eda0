"""The evaluation protocol's open choices, measured on real weights and real photographs:
(a) the weights' learning-rate schedule (constant, cosine, poly) and (b) the multi-class loss's
"no object" weight (1.0, Mask2Former's 0.1).

LiteMedSAM (its real pretrained weights) fine-tuned with NAS-PC-LoRA, several
seeds, equal steps per arm. Table (a) trains box-prompted on the binary photograph task of
``bench_methods`` and reports test IoU (and Dice); table (b) trains on its three-class version
(background, a textured blob, a photo-filled box), prompt-free, and reports test mIoU, MAE, mBER. The data
sets are fixed; the seeds vary the training (adapter initialisation, order, flips). Each run's
per-epoch learning rates and op shares (softmax(alpha)) are kept in the record, so alpha's
trajectory can be plotted. Prints mean +- std and writes benchmarks/results/protocol_litemedsam.json
(rewritten after every run, so an interrupted benchmark keeps what it finished).

    python benchmarks/bench_protocol.py            # 3 seeds, both tables: about 20-25 min on a 2-core CPU
    python benchmarks/bench_protocol.py --smoke    # 1 seed, 1 step per run: a few minutes
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from naslora_deploy.core.runs.checkpoint import load_adapter
from naslora_deploy.training.config import TrainConfig
from naslora_deploy.training.data.folder import discover
from naslora_deploy.training.data.photos import write_photo_dataset
from naslora_deploy.training.evaluate import evaluate
from naslora_deploy.training.trainer import train

try:
    from timing import mean_and_std, write_run_record
except ImportError:
    from benchmarks.timing import mean_and_std, write_run_record

TABLES = ("schedule", "no_object")
SCHEDULES = ("constant", "cosine", "poly")
NO_OBJECT_WEIGHTS = (1.0, 0.1)
FIGURES = {"schedule": ("iou", "dice"), "no_object": ("miou", "mae", "mber", "accuracy")}


def run_arm(args, table: str, arm, data: Path, root: Path, seed: int) -> dict:
    """Train one (table, arm, seed) and evaluate its final checkpoint (``last/``) on the test split.

    The final one, not the best on validation: the schedules differ most at the end of a run,
    and a two-image validation set would mostly add noise to the choice.
    """
    changes = (
        {"lr_schedule": arm, "prompt": "box", "lr": args.lr}  # binary: LiteMedSAM's own use, with a box
        if table == "schedule"
        else {"no_object_weight": arm, "queries": args.queries, "lr": args.no_object_lr}  # some unmatched
    )
    config = TrainConfig(
        data=str(data),
        out=str(root / f"{table}-{arm}-{seed}"),
        model="litemedsam",
        method="nas_pc_lora",
        epochs=args.epochs,
        search_start=args.search_start,
        batch_size=args.batch_size,
        warmup_steps=args.warmup_steps,
        alpha_pass=args.alpha_pass,
        seed=seed,
        progress=False,
        **changes,
    )
    started = time.perf_counter()
    run = train(config)
    seconds = time.perf_counter() - started
    splits = discover(data, check=False)
    metrics = evaluate(
        load_adapter(run / "last"), splits.split("test"), splits.classes, batch_size=4, prompt=config.prompt
    )
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    row = {"table": table, "arm": arm, "seed": seed, "train_s": seconds}
    row.update({key: metrics[key] for key in FIGURES[table]})
    row["epochs"] = [
        {
            key: e.get(key)
            for key in ("epoch", "stage", "train_loss", "lr", "lr_end", "step_time_ms", "op_shares")
        }
        for e in epochs
    ]
    return row


def summarise(rows: List[dict]) -> List[dict]:
    """Mean and standard deviation of each table's figures per arm over seeds."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row["table"], row["arm"]), []).append(row)
    table = []
    for (name, arm), members in groups.items():
        entry = {"table": name, "arm": arm, "seeds": len(members)}
        entry.update(mean_and_std(members, FIGURES[name] + ("train_s",)))
        table.append(entry)
    return table


def print_table(table: List[dict]) -> None:
    """One line per (table, arm): mean +- std of its figures."""
    for name in TABLES:
        entries = [e for e in table if e["table"] == name]
        if not entries:
            continue
        figures = FIGURES[name]
        print(
            f"\n({name}) {'arm':<10} " + " ".join(f"{f + ' mean +- std':>22}" for f in figures) + "  train s"
        )
        for e in entries:
            cells = " ".join(f"{e[f + '_mean']:>12.4f} +- {e[f + '_std']:<6.4f}" for f in figures)
            print(f"    {str(e['arm']):<13} {cells}  {e['train_s_mean']:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", type=int, default=10, help="training photographs per data set")
    parser.add_argument("--test-images", type=int, default=8)
    parser.add_argument("--val-images", type=int, default=1, help="validation images (the per-epoch record)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--search-start", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--lr", type=float, default=2e-4, help="table (a): the weights' initial lr (the demo's)"
    )
    parser.add_argument("--no-object-lr", type=float, default=4e-4, help="table (b): the weights' initial lr")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--alpha-pass", default="same", choices=("same", "second"))
    parser.add_argument(
        "--queries", type=int, default=6, help="(no_object) mask queries; with 3 classes, 3+ go unmatched"
    )
    parser.add_argument("--tables", default=",".join(TABLES), help="schedule, no_object or both")
    parser.add_argument("--smoke", action="store_true", help="1 seed, 2 train / 1 test image, 1 step per run")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "protocol_litemedsam.json"
    )
    args = parser.parse_args()
    tables = [t for t in args.tables.split(",") if t]
    if not tables or any(t not in TABLES for t in tables):
        parser.error(f"--tables: choose from {', '.join(TABLES)}")
    if args.smoke:
        args.seeds, args.images, args.test_images, args.val_images, args.epochs = 1, 2, 1, 1, 1
        args.batch_size, args.search_start = 2, 0
        if args.out == parser.get_default("out"):
            args.out = args.out.with_name("protocol_litemedsam_smoke.json")
    started = time.perf_counter()
    rows: List[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = {
            table: write_photo_dataset(
                root / f"data-{table}",
                count=args.images,
                seed=0,
                val=args.val_images,
                test=args.test_images,
                multiclass=table == "no_object",
            )
            for table in tables
        }
        for seed in range(args.seeds):
            for table in tables:
                for arm in SCHEDULES if table == "schedule" else NO_OBJECT_WEIGHTS:
                    rows.append(run_arm(args, table, arm, sets[table], root, seed))
                    print(
                        f"  done {table} {arm} seed {seed} ({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )
                    write_run_record(args, summarise(rows), rows, started, complete=False)
    steps = args.epochs * -(-args.images // args.batch_size)
    print(
        f"litemedsam nas_pc_lora (a: box-prompted, lr {args.lr}; b: prompt-free, lr {args.no_object_lr}), "
        f"{args.images} train / {args.test_images} test photographs, "
        f"{args.epochs} epochs x batch {args.batch_size} ({steps} steps), {args.seeds} seed(s):"
    )
    print_table(summarise(rows))
    write_run_record(args, summarise(rows), rows, started, complete=True)
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
