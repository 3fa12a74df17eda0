"""What ``--augment`` is worth on real weights and real photographs: none vs light vs medium.

LiteMedSAM (its real pretrained weights) fine-tuned with NAS-PC-LoRA, box-prompted, on the
binary photograph task of ``bench_methods`` / ``bench_protocol`` table (a) (one fixed data
set; the same settings: 10 training photographs, 3 epochs x batch 2, lr 2e-4, constant
schedule), equal steps per arm, several seeds. The seeds vary the training (adapter
initialisation, order, flips, box jitter and the augmentation draws). Each run's final
checkpoint (``last/``) is evaluated on the same held-out photographs. Prints mean +- std and
writes benchmarks/results/augment_litemedsam.json (rewritten after every run, so an
interrupted benchmark keeps what it finished).

    python benchmarks/bench_augment.py            # 3 seeds x 3 arms: about 15 min on a 2-core CPU
    python benchmarks/bench_augment.py --smoke    # 1 seed, 1 step per run: a minute or two
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
from naslora_deploy.training.data.augment import AUGMENTS
from naslora_deploy.training.data.folder import discover
from naslora_deploy.training.data.photos import write_photo_dataset
from naslora_deploy.training.evaluate import evaluate
from naslora_deploy.training.trainer import train

try:
    from timing import mean_and_std, write_run_record
except ImportError:
    from benchmarks.timing import mean_and_std, write_run_record

FIGURES = ("iou", "dice")


def run_arm(args, arm: str, data: Path, root: Path, seed: int) -> dict:
    """Train one (augment, seed) box-prompted and evaluate its final checkpoint on the test split."""
    config = TrainConfig(
        data=str(data),
        out=str(root / f"{arm}-{seed}"),
        model="litemedsam",
        method="nas_pc_lora",
        epochs=args.epochs,
        search_start=args.search_start,
        batch_size=args.batch_size,
        lr=args.lr,
        prompt="box",
        alpha_pass=args.alpha_pass,
        augment=arm,
        seed=seed,
        progress=False,
    )
    started = time.perf_counter()
    run = train(config)
    seconds = time.perf_counter() - started
    splits = discover(data, check=False)
    metrics = evaluate(
        load_adapter(run / "last"), splits.split("test"), splits.classes, batch_size=4, prompt="box"
    )
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    row = {"arm": arm, "seed": seed, "train_s": seconds}
    row.update({key: metrics[key] for key in FIGURES})
    row["train_loss"] = [e.get("train_loss") for e in epochs]
    return row


def summarise(rows: List[dict]) -> List[dict]:
    """Mean and standard deviation of IoU, Dice and training time per arm over seeds."""
    groups: Dict[str, List[dict]] = {}
    for row in rows:
        groups.setdefault(row["arm"], []).append(row)
    table = []
    for arm, members in groups.items():
        entry = {"arm": arm, "seeds": len(members)}
        entry.update(mean_and_std(members, FIGURES + ("train_s",)))
        table.append(entry)
    return table


def print_table(table: List[dict]) -> None:
    """One line per arm: mean +- std of test IoU and Dice, and the training time."""
    print(f"{'augment':<9} {'iou mean +- std':>22} {'dice mean +- std':>22}  train s")
    for e in table:
        cells = " ".join(f"{e[f + '_mean']:>12.4f} +- {e[f + '_std']:<6.4f}" for f in FIGURES)
        print(f"{e['arm']:<9} {cells}  {e['train_s_mean']:7.1f}")


def parse_args() -> argparse.Namespace:
    """The benchmark's options (defaults: bench_protocol's table (a) settings)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--arms", default=",".join(AUGMENTS), help="comma-separated --augment values")
    parser.add_argument("--images", type=int, default=10, help="training photographs")
    parser.add_argument("--test-images", type=int, default=8)
    parser.add_argument("--val-images", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--search-start", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--alpha-pass", default="same", choices=("same", "second"))
    parser.add_argument("--smoke", action="store_true", help="1 seed, 2 train / 1 test image, 1 step per run")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "augment_litemedsam.json"
    )
    args = parser.parse_args()
    args.arms = [a for a in args.arms.split(",") if a]
    if not args.arms or any(a not in AUGMENTS for a in args.arms):
        parser.error(f"--arms: choose from {', '.join(AUGMENTS)}")
    if args.smoke:
        args.seeds, args.images, args.test_images, args.val_images, args.epochs = 1, 2, 1, 1, 1
        args.search_start = 0
        if args.out == parser.get_default("out"):
            args.out = args.out.with_name("augment_litemedsam_smoke.json")
    return args


def main() -> None:
    """Train every (seed, arm), print the table and write the JSON record."""
    args = parse_args()
    started = time.perf_counter()
    rows: List[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_photo_dataset(
            root / "data", count=args.images, seed=0, val=args.val_images, test=args.test_images
        )
        for seed in range(args.seeds):
            for arm in args.arms:
                rows.append(run_arm(args, arm, data, root, seed))
                print(f"  done {arm} seed {seed} ({time.perf_counter() - started:.0f} s)", flush=True)
                write_run_record(args, summarise(rows), rows, started, complete=False)
    steps = args.epochs * -(-args.images // args.batch_size)
    print(
        f"litemedsam nas_pc_lora, box-prompted, lr {args.lr}, {args.images} train / {args.test_images} test "
        f"photographs, {args.epochs} epochs x batch {args.batch_size} ({steps} steps), {args.seeds} seed(s):"
    )
    print_table(summarise(rows))
    write_run_record(args, summarise(rows), rows, started, complete=True)
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
