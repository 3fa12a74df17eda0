"""Does NAS-LoRA's gain survive the zero-overhead merge? The merged forms against the unmerged model and LoRA.

Real LiteMedSAM weights on the real-photograph task (``training.data.photos``), box-prompted
training and evaluation (one box per ground-truth component, as bench_methods' box arm). Per
seed: NAS-PC-LoRA trained once, then evaluated unmerged, with its adapters switched off (how much
the adapters contribute at all), fused (exact), dense with the original joint fold, dense with the
sequential fold + intercept, and dense + merge-aware recovery; plus plain LoRA trained for the same
total number of steps (NAS training steps + recovery steps), dense-merged (exact for LoRA). Every
form gets the test IoU and, against the unmerged NAS model, the mask IoU of its test predictions
(probability > 0.5, per image, mean). Calibration images for the folds and the recovery are
unlabelled training images; the merge report's figures are on its held-out half.

Targets (issue 12): dense test IoU within 0.5 IoU points (0.005) of unmerged; mask IoU >= 0.98.
Read them beside the "adapters off" row: where switching the adapters off also meets them, the
adapters learned too little for the merge to be tested.

    python benchmarks/bench_merge.py                  # 3 seeds: 37 min on a (partly shared) 2-core CPU
    python benchmarks/bench_merge.py --seeds 1 --images 4 --test-images 2 --epochs 1 --recover-steps 2 \\
        --calibration 4 --out /tmp/merge_smoke.json  # a smoke run: 9.5 min on a shared, busy 2-core CPU
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import List

import numpy as np

from naslora_deploy.common.imaging import read_image
from naslora_deploy.core.adapters.injection import adapters_disabled
from naslora_deploy.core.merging.calibration import calibration_images
from naslora_deploy.core.merging.merge import merge
from naslora_deploy.core.merging.recovery import Recovery
from naslora_deploy.core.model.classes import ClassSpec
from naslora_deploy.training.data.dataset import load_labels
from naslora_deploy.training.data.folder import discover
from naslora_deploy.training.evaluate import predict_probabilities
from naslora_deploy.training.metrics import BinaryMetrics
from naslora_deploy.training.prompts import component_boxes

try:
    import harness
except ImportError:
    from benchmarks import harness

BINARY = ClassSpec()
PROMPT = "box"
TARGET_IOU_GAP = 0.005  # 0.5 IoU points
TARGET_MASK_IOU = 0.98
TARGETS = {"iou_gap_to_unmerged": TARGET_IOU_GAP, "mask_iou_vs_unmerged": TARGET_MASK_IOU}


def load_test(pairs) -> List[tuple]:
    """(image, labels, ground-truth boxes) of every test pair, read once."""
    test = []
    for image_path, mask_path in pairs:
        labels = load_labels(mask_path, BINARY)
        test.append((read_image(image_path), labels, component_boxes(labels == 1)[0]))
    return test


def predict(model, test, batch_size: int = 4) -> List[np.ndarray]:
    """Box-prompted foreground probabilities of ``model`` on every test image (their own resolution)."""
    model.eval()
    probs = []
    for start in range(0, len(test), batch_size):
        chunk = test[start : start + batch_size]
        probs += predict_probabilities(model, [c[0] for c in chunk], "cpu", [c[2] for c in chunk])
    return probs


def test_iou(probs: List[np.ndarray], test) -> float:
    """The evaluation protocol's IoU (``training.metrics.BinaryMetrics``)."""
    metrics = BinaryMetrics()
    for prob, (_, labels, _) in zip(probs, test):
        metrics.update(prob, labels)
    return float(metrics.results()["iou"])


def agreement(probs: List[np.ndarray], reference: List[np.ndarray]) -> float:
    """Mean per-image IoU between two models' thresholded (0.5) masks; two empty masks agree (1)."""
    values = []
    for a, b in zip(probs, reference):
        a, b = a > 0.5, b > 0.5
        union = int((a | b).sum())
        values.append(1.0 if union == 0 else int((a & b).sum()) / union)
    return float(np.mean(values))


def train_run(protocol: harness.TrainingProtocol, data: Path, root: Path, method: str, seed: int, **changes):
    """Train one box-prompted LiteMedSAM run; returns (its final checkpoint, seconds, with its loading).

    The final one (``last/``), not the best on validation: every arm then has had exactly
    its steps, and a noisy pick among epochs on two validation images cannot favour one arm.
    """
    config = protocol.config(data, root / f"{method}-{seed}", method, seed, prompt=PROMPT, **changes)
    trained = harness.train_arm(config, "last", time_load=True)
    return trained.model, trained.seconds


def run_seed(args, data: Path, root: Path, seed: int, test, calibration) -> List[dict]:
    """Every form of one seed: NAS-PC-LoRA and its merges, and LoRA for the same total steps."""
    protocol = harness.TrainingProtocol.from_args(args)
    steps_per_epoch = math.ceil(args.images / args.batch_size)
    nas_steps = protocol.steps
    rows: List[dict] = []

    def row(form: str, probs, reference, seconds: float, report=None, steps=nas_steps) -> None:
        entry = {
            "seed": seed,
            "form": form,
            "iou": test_iou(probs, test),
            "mask_iou_vs_unmerged": agreement(probs, reference),
            "steps": steps,
            "seconds": seconds,
        }
        if report is not None:
            entry["calibration_embedding_rel_error"] = report.embedding_rel_error
            entry["calibration_error_of_adaptation"] = report.embedding_rel_error_of_adaptation
            entry["calibration_mask_iou"] = report.mask_iou.get(PROMPT)
            if report.recovery is not None:
                entry["recovery_loss_before"] = report.recovery.loss_before
                entry["recovery_loss_after"] = report.recovery.loss_after
        rows.append(entry)
        print(
            f"  seed {seed} {form:<22} IoU {entry['iou']:.4f}  mask IoU vs unmerged "
            f"{entry['mask_iou_vs_unmerged']:.4f}  ({seconds:.0f} s)",
            flush=True,
        )

    nas, seconds = train_run(protocol, data, root, "nas_pc_lora", seed)
    unmerged = predict(nas, test)
    row("nas unmerged", unmerged, unmerged, seconds)
    with adapters_disabled(nas.sam):
        row("nas adapters off", predict(nas, test), unmerged, 0.0)
    recovery = Recovery(
        steps=args.recover_steps, lr=args.recover_lr, batch_size=args.batch_size, decoder=args.recover_decoder
    )
    forms = {
        "nas fused": dict(mode="fused"),
        "nas dense joint": dict(mode="dense", fit="joint"),
        "nas dense sequential": dict(mode="dense", fit="sequential"),
        "nas dense + recovery": dict(mode="dense", fit="sequential", recover=recovery),
    }
    for form, options in forms.items():
        started = time.perf_counter()
        merged, report = merge(nas, calibration=calibration, **options)
        steps = nas_steps + (args.recover_steps if "recover" in options else 0)
        row(form, predict(merged, test), unmerged, time.perf_counter() - started, report, steps)
    total = nas_steps + args.recover_steps
    lora, seconds = train_run(
        protocol, data, root, "lora", seed, max_steps=total, epochs=math.ceil(total / steps_per_epoch)
    )
    merged, report = merge(lora, "dense")
    row("lora (same steps) dense", predict(merged, test), unmerged, seconds, report, total)
    return rows


def summarise(rows: List[dict]) -> List[dict]:
    """Mean and standard deviation of every figure per form, over seeds, with the targets checked."""
    unmerged = {r["seed"]: r["iou"] for r in rows if r["form"] == "nas unmerged"}

    def gap_and_targets(entry: dict, members: List[dict]) -> None:
        gaps = [unmerged[m["seed"]] - m["iou"] for m in members if m["seed"] in unmerged]
        entry["iou_gap_to_unmerged_mean"] = statistics.fmean(gaps) if gaps else None
        if entry["form"].startswith("nas dense"):
            entry["meets_targets"] = bool(
                entry["iou_gap_to_unmerged_mean"] <= TARGET_IOU_GAP
                and entry["mask_iou_vs_unmerged_mean"] >= TARGET_MASK_IOU
            )

    figures = ("iou", "mask_iou_vs_unmerged", "calibration_embedding_rel_error", "seconds")
    return harness.summarise_by(rows, ("form",), figures, finish=gap_and_targets)


def print_table(table: List[dict]) -> None:
    """One line per form: test IoU, its gap to the unmerged model, the mask IoU, the targets."""
    print(f"{'form':<24} {'test IoU mean +- std':>22} {'gap':>8} {'mask IoU vs unmerged':>22} targets")
    for e in table:
        iou, agree = harness.mean_std(e, "iou"), harness.mean_std(e, "mask_iou_vs_unmerged")
        gap = e["iou_gap_to_unmerged_mean"]
        met = {True: "met", False: "MISSED"}.get(e.get("meets_targets"), "")
        print(f"{e['form']:<24} {iou:>22} {gap:>8.4f} {agree:>22} {met}")


def parse_args() -> argparse.Namespace:
    """The benchmark's options (no --val-images: 2 validation photographs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_protocol_options(
        parser,
        images=12,
        test_images=12,
        val_images=None,
        lr=1e-3,
        alpha_pass=None,
        helps={"lr": "weights' lr (high enough to move the adapters)"},
    )
    parser.add_argument(
        "--calibration", type=int, default=6, help="unlabelled training images: half fit, half measure"
    )
    parser.add_argument("--recover-steps", type=int, default=16, help="a few hundred on a GPU")
    parser.add_argument("--recover-lr", type=float, default=Recovery().lr, help="relative step (Recovery)")
    parser.add_argument("--recover-decoder", action="store_true")
    harness.add_record_options(parser, Path(__file__).parent / "results" / "merge_litemedsam.json")
    return parser.parse_args()


def main() -> None:
    """Every form of every seed; print the table and write the JSON record."""
    args = parse_args()
    record = harness.SeededRecord(args, summarise, targets=TARGETS)
    with harness.photo_workspace(args, val=2) as (root, data):
        test = load_test(discover(data, check=False).split("test"))
        calibration = calibration_images(data, args.calibration, 256, "minmax")
        for seed in range(args.seeds):
            record.add(run_seed(args, data, root, seed, test, calibration), f"seed {seed}")
    header = (
        f"litemedsam, {args.images} train / {len(test)} test photographs, box prompts, "
        f"{args.epochs} epochs x batch {args.batch_size}, recovery {args.recover_steps} steps, "
        f"{args.seeds} seed(s):"
    )
    record.finish(header, print_table)


if __name__ == "__main__":
    main()
