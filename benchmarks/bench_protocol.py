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
import tempfile
from pathlib import Path
from typing import List, Tuple

from naslora_deploy.training.data.photos import write_photo_dataset

try:
    import harness
except ImportError:
    from benchmarks import harness

TABLES = ("schedule", "no_object")
SCHEDULES = ("constant", "cosine", "poly")
NO_OBJECT_WEIGHTS = (1.0, 0.1)
FIGURES = {"schedule": ("iou", "dice"), "no_object": ("miou", "mae", "mber", "accuracy")}
EPOCH_KEYS = ("epoch", "stage", "train_loss", "lr", "lr_end", "step_time_ms", "op_shares")


def run_arm(
    args, protocol: harness.TrainingProtocol, table: str, arm, data: Path, root: Path, seed: int
) -> dict:
    """Train one (table, arm, seed) and evaluate its final checkpoint (``last/``) on the test split.

    The final one, not the best on validation: the schedules differ most at the end of a run,
    and a two-image validation set would mostly add noise to the choice.
    """
    changes = (
        {"lr_schedule": arm, "prompt": "box", "lr": args.lr}  # binary: LiteMedSAM's own use, with a box
        if table == "schedule"
        else {"no_object_weight": arm, "queries": args.queries, "lr": args.no_object_lr}  # some unmatched
    )
    config = protocol.config(
        data, root / f"{table}-{arm}-{seed}", "nas_pc_lora", seed, warmup_steps=args.warmup_steps, **changes
    )
    trained = harness.train_and_evaluate(config)
    row = {"table": table, "arm": arm, "seed": seed, "train_s": trained.seconds}
    row.update({key: trained.metrics[key] for key in FIGURES[table]})
    row["epochs"] = [{key: e.get(key) for key in EPOCH_KEYS} for e in trained.epoch_records()]
    return row


def summarise(rows: List[dict]) -> List[dict]:
    """Mean and standard deviation of each table's figures per arm over seeds."""
    return harness.summarise_by(rows, ("table", "arm"), lambda group: FIGURES[group[0]] + ("train_s",))


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
            cells = " ".join(harness.mean_std(e, f, ">12.4f", "<6.4f") for f in figures)
            print(f"    {str(e['arm']):<13} {cells}  {e['train_s_mean']:7.1f}")


def parse_args() -> Tuple[argparse.Namespace, List[str]]:
    """The benchmark's options (the shared protocol's, table (b)'s lr and queries) and the chosen tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_protocol_options(
        parser,
        helps={
            "images": "training photographs per data set",
            "val_images": "validation images (the per-epoch record)",
            "lr": "table (a): the weights' initial lr (the demo's)",
        },
    )
    parser.add_argument("--no-object-lr", type=float, default=4e-4, help="table (b): the weights' initial lr")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument(
        "--queries", type=int, default=6, help="(no_object) mask queries; with 3 classes, 3+ go unmatched"
    )
    parser.add_argument("--tables", default=",".join(TABLES), help="schedule, no_object or both")
    harness.add_record_options(
        parser, Path(__file__).parent / "results" / "protocol_litemedsam.json", smoke=True
    )
    args = parser.parse_args()
    tables = [t for t in args.tables.split(",") if t]
    if not tables or any(t not in TABLES for t in tables):
        parser.error(f"--tables: choose from {', '.join(TABLES)}")
    if args.smoke:
        harness.apply_smoke(parser, args, batch_size=2)
    return args, tables


def main() -> None:
    """Train every (seed, table, arm), print both tables and write the JSON record."""
    args, tables = parse_args()
    protocol = harness.TrainingProtocol.from_args(args)
    record = harness.SeededRecord(args, summarise)
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
                    row = run_arm(args, protocol, table, arm, sets[table], root, seed)
                    record.add([row], f"{table} {arm} seed {seed}")
    header = (
        f"litemedsam nas_pc_lora (a: box-prompted, lr {args.lr}; b: prompt-free, lr {args.no_object_lr}), "
        f"{args.images} train / {args.test_images} test photographs, "
        f"{args.epochs} epochs x batch {args.batch_size} ({protocol.steps} steps), {args.seeds} seed(s):"
    )
    record.finish(header, print_table)


if __name__ == "__main__":
    main()
