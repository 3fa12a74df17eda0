"""What each method is worth on real weights and real photographs: LiteMedSAM fine-tuned with
decoder-only, LoRA, NAS-LoRA and NAS-PC-LoRA, equal steps, several seeds, prompt-free and box-prompted.

The task is the demo's (one real texture inside a random shape on another, cut from
scikit-image's bundled photographs), one fixed data set; the seeds vary the training
(adapter initialisation, order, flips, box jitter). Every run is evaluated on the same
held-out photographs with the protocol it was trained for, the NAS methods also after
the fused and the dense merge. Prints mean +- std and writes benchmarks/results/methods_litemedsam.json.

    python benchmarks/bench_methods.py                      # 3 seeds, about an hour on a 2-core CPU
    python benchmarks/bench_methods.py --seeds 1 --epochs 1 --images 8 --test-images 4   # a smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from naslora_deploy.core.merging.calibration import calibration_images
from naslora_deploy.core.merging.merge import merge
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.variants import build_sam
from naslora_deploy.training.data.folder import discover

try:
    import harness
except ImportError:
    from benchmarks import harness

METHODS = ("none", "lora", "nas_lora", "nas_pc_lora")
BINARY = ClassSpec()


def run_arm(
    protocol: harness.TrainingProtocol, data: Path, root: Path, method: str, prompt: str, seed: int, test
) -> List[dict]:
    """Train one (method, prompt, seed) and evaluate it (and its merges, for the NAS methods)."""
    config = protocol.config(data, root / f"{method}-{prompt}-{seed}", method, seed, prompt=prompt)
    # the run folder's own checkpoint (best/ on validation), its loading timed with the training
    trained = harness.train_arm(config, checkpoint=None, time_load=True)
    model, seconds = trained.model, trained.seconds
    rows = [_row(method, prompt, seed, "unmerged", model, test, seconds)]
    if method.startswith("nas"):
        calibration = calibration_images(data, 4, 256, "minmax")
        for mode in ("fused", "dense"):
            merged, report = merge(model, mode, calibration=calibration)
            row = _row(method, prompt, seed, mode, merged, test, seconds)
            row["merge_embedding_rel_error"] = report.embedding_rel_error
            rows.append(row)
    return rows


def _row(method, prompt, seed, form, model, test, seconds) -> dict:
    metrics = harness.evaluate_on_test(model, test, BINARY, prompt)
    return {
        "method": method,
        "prompt": prompt,
        "seed": seed,
        "form": form,
        "iou": metrics["iou"],
        "dice": metrics["dice"],
        "train_s": seconds,
    }


def summarise(rows: List[dict]) -> List[dict]:
    """Mean and standard deviation of IoU and Dice per (method, prompt, form) over seeds."""
    return harness.summarise_by(rows, ("method", "prompt", "form"), ("iou", "dice", "train_s"))


def print_table(table: List[dict]) -> None:
    """One line per (method, prompt, form): mean +- std of test IoU and Dice, and the training time."""
    print(
        f"{'method':<12} {'prompt':<6} {'form':<10} {'IoU mean +- std':>18} {'Dice mean +- std':>18} train s"
    )
    for e in table:
        iou, dice = harness.mean_std(e, "iou"), harness.mean_std(e, "dice")
        print(
            f"{e['method']:<12} {e['prompt']:<6} {e['form']:<10} {iou:>18} {dice:>18} "
            f"{e['train_s_mean']:>7.1f}"
        )


def parse_args() -> argparse.Namespace:
    """The benchmark's options (no --val-images: 4 validation photographs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_protocol_options(parser, images=16, test_images=16, val_images=None, epochs=2)
    parser.add_argument("--prompts", default="box,none")
    harness.add_record_options(parser, Path(__file__).parent / "results" / "methods_litemedsam.json")
    return parser.parse_args()


def main() -> None:
    """The zero-shot model, then every (prompt, seed, method); print the table and write the record."""
    args = parse_args()
    protocol = harness.TrainingProtocol.from_args(args)
    record = harness.SeededRecord(args, summarise)
    with harness.photo_workspace(args, val=4) as (root, data):
        test = discover(data, check=False).split("test")
        zero_shot = SegmentationModel(build_sam("litemedsam")).eval()
        record.rows = [
            _row("zero-shot", prompt, 0, "pretrained", zero_shot, test, 0.0)
            for prompt in args.prompts.split(",")
        ]
        for prompt in args.prompts.split(","):
            for seed in range(args.seeds):
                for method in METHODS:
                    rows = run_arm(protocol, data, root, method, prompt, seed, test)
                    record.add(rows, f"{method} {prompt} seed {seed}")
    header = (
        f"litemedsam, {args.images} train / {len(test)} test photographs, {args.epochs} epochs x batch "
        f"{args.batch_size} ({protocol.steps} steps), {args.seeds} seed(s):"
    )
    record.finish(header, print_table)


if __name__ == "__main__":
    main()
