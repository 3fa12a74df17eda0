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
from pathlib import Path
from typing import List

from naslora_deploy.training.data.augment import AUGMENTS

try:
    import harness
except ImportError:
    from benchmarks import harness

FIGURES = ("iou", "dice")


def run_arm(protocol: harness.TrainingProtocol, arm: str, data: Path, root: Path, seed: int) -> dict:
    """Train one (augment, seed) box-prompted and evaluate its final checkpoint on the test split."""
    config = protocol.config(data, root / f"{arm}-{seed}", "nas_pc_lora", seed, prompt="box", augment=arm)
    trained = harness.train_and_evaluate(config)
    row = {"arm": arm, "seed": seed, "train_s": trained.seconds}
    row.update({key: trained.metrics[key] for key in FIGURES})
    row["train_loss"] = [e.get("train_loss") for e in trained.epoch_records()]
    return row


def summarise(rows: List[dict]) -> List[dict]:
    """Mean and standard deviation of IoU, Dice and training time per arm over seeds."""
    return harness.summarise_by(rows, ("arm",), FIGURES + ("train_s",))


def print_table(table: List[dict]) -> None:
    """One line per arm: mean +- std of test IoU and Dice, and the training time."""
    print(f"{'augment':<9} {'iou mean +- std':>22} {'dice mean +- std':>22}  train s")
    for e in table:
        cells = " ".join(harness.mean_std(e, f, ">12.4f", "<6.4f") for f in FIGURES)
        print(f"{e['arm']:<9} {cells}  {e['train_s_mean']:7.1f}")


def parse_args() -> argparse.Namespace:
    """The benchmark's options (defaults: bench_protocol's table (a) settings)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_protocol_options(parser)
    parser.add_argument("--arms", default=",".join(AUGMENTS), help="comma-separated --augment values")
    harness.add_record_options(
        parser, Path(__file__).parent / "results" / "augment_litemedsam.json", smoke=True
    )
    args = parser.parse_args()
    args.arms = [a for a in args.arms.split(",") if a]
    if not args.arms or any(a not in AUGMENTS for a in args.arms):
        parser.error(f"--arms: choose from {', '.join(AUGMENTS)}")
    if args.smoke:
        harness.apply_smoke(parser, args)
    return args


def main() -> None:
    """Train every (seed, arm), print the table and write the JSON record."""
    args = parse_args()
    protocol = harness.TrainingProtocol.from_args(args)
    record = harness.SeededRecord(args, summarise)
    with harness.photo_workspace(args) as (root, data):
        for seed in range(args.seeds):
            for arm in args.arms:
                record.add([run_arm(protocol, arm, data, root, seed)], f"{arm} seed {seed}")
    header = (
        f"litemedsam nas_pc_lora, box-prompted, lr {args.lr}, {args.images} train / {args.test_images} test "
        f"photographs, {args.epochs} epochs x batch {args.batch_size} ({protocol.steps} steps), "
        f"{args.seeds} seed(s):"
    )
    record.finish(header, print_table)


if __name__ == "__main__":
    main()
