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
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from naslora_deploy.core.merging.calibration import calibration_images
from naslora_deploy.core.merging.merge import merge
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.core.model.heads import SegmentationModel
from naslora_deploy.core.model.variants import build_sam
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

METHODS = ("none", "lora", "nas_lora", "nas_pc_lora")
BINARY = ClassSpec()


def run_arm(args, data: Path, root: Path, method: str, prompt: str, seed: int, test) -> List[dict]:
    """Train one (method, prompt, seed) and evaluate it (and its merges, for the NAS methods)."""
    config = TrainConfig(
        data=str(data),
        out=str(root / f"{method}-{prompt}-{seed}"),
        model="litemedsam",
        method=method,
        epochs=args.epochs,
        search_start=args.search_start,
        batch_size=args.batch_size,
        lr=args.lr,
        prompt=prompt,
        alpha_pass=args.alpha_pass,
        seed=seed,
        progress=False,
    )
    started = time.perf_counter()
    model = load_adapter(train(config))
    seconds = time.perf_counter() - started
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
    metrics = evaluate(model, test, BINARY, batch_size=4, prompt=prompt)
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
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["prompt"], row["form"]), []).append(row)
    table = []
    for (method, prompt, form), members in groups.items():
        entry = {"method": method, "prompt": prompt, "form": form, "seeds": len(members)}
        entry.update(mean_and_std(members, ("iou", "dice", "train_s")))
        table.append(entry)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images", type=int, default=16, help="training photographs")
    parser.add_argument("--test-images", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--search-start", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--alpha-pass", default="same", choices=("same", "second"))
    parser.add_argument("--prompts", default="box,none")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "methods_litemedsam.json"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_photo_dataset(root / "data", count=args.images, seed=0, val=4, test=args.test_images)
        test = discover(data, check=False).split("test")
        zero_shot = SegmentationModel(build_sam("litemedsam")).eval()
        rows = [
            _row("zero-shot", prompt, 0, "pretrained", zero_shot, test, 0.0)
            for prompt in args.prompts.split(",")
        ]
        for prompt in args.prompts.split(","):
            for seed in range(args.seeds):
                for method in METHODS:
                    rows += run_arm(args, data, root, method, prompt, seed, test)
                    print(
                        f"  done {method} {prompt} seed {seed} ({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )
                    write_run_record(
                        args, summarise(rows), rows, started, complete=False
                    )  # what is done survives an interrupted run
    table = summarise(rows)
    print(
        f"litemedsam, {args.images} train / {len(test)} test photographs, {args.epochs} epochs x batch "
        f"{args.batch_size} ({args.epochs * -(-args.images // args.batch_size)} steps), {args.seeds} seed(s):"
    )
    print(
        f"{'method':<12} {'prompt':<6} {'form':<10} {'IoU mean +- std':>18} {'Dice mean +- std':>18} train s"
    )
    for e in table:
        iou, dice = (
            f"{e['iou_mean']:.4f} +- {e['iou_std']:.4f}",
            f"{e['dice_mean']:.4f} +- {e['dice_std']:.4f}",
        )
        print(
            f"{e['method']:<12} {e['prompt']:<6} {e['form']:<10} {iou:>18} {dice:>18} "
            f"{e['train_s_mean']:>7.1f}"
        )
    write_run_record(args, summarise(rows), rows, started, complete=True)
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
